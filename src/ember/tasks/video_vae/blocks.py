"""Open-Sora-Plan's CausalVAE building blocks (opensora/models/causalvideovae/model/modules, commit
f7fa604): convolutions, residual blocks and attention, with its parameter names, so its checkpoints
load as they are and give the same numbers.

Two kinds of layer sit side by side, as in the reference: per-frame 2D layers (time folded into
the batch) and causal 3D layers (time padded on the past side with copies of the first frame).
GroupNorm is torch's own: in a 3D block its statistics span the clip's frames, as the reference's
do (only the per-frame 2D blocks normalise each frame alone).

Tensors are (batch, channels, time, height, width) throughout: x_bcthw.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def per_frame(fn, x_bcthw: torch.Tensor) -> torch.Tensor:
    """Apply a 2D (b, c, h, w) function to every frame of a clip (frames folded into the batch)."""
    b, _, t = x_bcthw.shape[:3]
    x_nchw = x_bcthw.transpose(1, 2).flatten(0, 1)
    y_nchw = fn(x_nchw)
    return y_nchw.unflatten(0, (b, t)).transpose(1, 2)


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels at every position (the reference's norm_type "layernorm"): unlike
    GroupNorm over a 3D block it never mixes frames, so such a VAE is causal throughout."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


def normalize(channels: int, norm_type: str = "groupnorm") -> nn.Module:
    """The reference's Normalize: 32 groups, eps 1e-6 (so every width is a multiple of 32)."""
    if norm_type == "layernorm":
        return ChannelLayerNorm(channels)
    return nn.GroupNorm(32, channels, eps=1e-6)


class Conv2d(nn.Conv2d):
    """A 2D convolution applied to each frame of a clip (the reference's Conv2d with video_to_image)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return per_frame(super().forward, x) if x.dim() == 5 else super().forward(x)


class CausalConv3d(nn.Module):
    """A 3D convolution whose past side in time is padded with copies of the first frame (never
    the future): output frame t sees input frames up to t only. Height and width are zero-padded
    by `padding`, time never (the reference sets its time padding to 0)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=0, bias: bool = True):
        super().__init__()
        kernel = tuple(kernel_size) if isinstance(kernel_size, (tuple, list)) else (kernel_size,) * 3
        stride = tuple(stride) if isinstance(stride, (tuple, list)) else (stride,) * 3
        pad = list(padding) if isinstance(padding, (tuple, list)) else [padding] * 3
        self.time_pad = kernel[0] - 1
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride=stride, padding=(0, pad[1], pad[2]), bias=bias)

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        if self.time_pad:
            first = x_bcthw[:, :, :1].repeat(1, 1, self.time_pad, 1, 1)
            x_bcthw = torch.cat([first, x_bcthw], dim=2)
        return self.conv(x_bcthw)


class ResnetBlock2D(nn.Module):
    """norm → swish → conv → norm → swish → dropout → conv, plus the input (through a 1×1 conv
    when the width changes), every frame on its own."""

    def __init__(self, *, in_channels: int, out_channels: int | None = None, dropout: float = 0.0,
                 norm_type: str = "groupnorm"):
        super().__init__()
        out_channels = out_channels or in_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = normalize(in_channels, norm_type)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = normalize(out_channels, norm_type)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def _frames(self, x_nchw: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x_nchw)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x_nchw = self.nin_shortcut(x_nchw)
        return x_nchw + h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return per_frame(self._frames, x) if x.dim() == 5 else self._frames(x)


class ResnetBlock3D(nn.Module):
    """The same residual block with causal 3D convolutions (GroupNorm over the whole clip)."""

    def __init__(self, *, in_channels: int, out_channels: int | None = None, dropout: float = 0.0,
                 norm_type: str = "groupnorm"):
        super().__init__()
        out_channels = out_channels or in_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = normalize(in_channels, norm_type)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3, padding=1)
        self.norm2 = normalize(out_channels, norm_type)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = CausalConv3d(in_channels, out_channels, 1)

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x_bcthw)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x_bcthw = self.nin_shortcut(x_bcthw)
        return x_bcthw + h


class AttnBlock3DFix(nn.Module):
    """Single-head self-attention among the positions of each frame (frames never attend to each
    other), 1×1×1 causal convs for q, k, v and the output, added to the input."""

    def __init__(self, in_channels: int, norm_type: str = "groupnorm"):
        super().__init__()
        self.norm = normalize(in_channels, norm_type)
        self.q = CausalConv3d(in_channels, in_channels, 1)
        self.k = CausalConv3d(in_channels, in_channels, 1)
        self.v = CausalConv3d(in_channels, in_channels, 1)
        self.proj_out = CausalConv3d(in_channels, in_channels, 1)

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        h = self.norm(x_bcthw)
        b, c, t, hh, ww = x_bcthw.shape

        def tokens(y_bcthw):  # (b·t, 1 head, h·w, c), laid out as the reference's (same kernel, same rounding)
            return y_bcthw.permute(0, 2, 3, 4, 1).reshape(b * t, hh * ww, c).contiguous().unsqueeze(2).transpose(1, 2)

        out = F.scaled_dot_product_attention(tokens(self.q(h)), tokens(self.k(h)), tokens(self.v(h)))
        out_bcthw = out.transpose(1, 2).reshape(b, t, hh, ww, c).permute(0, 4, 1, 2, 3)
        return x_bcthw + self.proj_out(out_bcthw)


class AttnBlock3D(AttnBlock3DFix):
    """The reference's older attention block: the same parameters, but its q/k/v reshape reads a
    (b, c, t, h, w) tensor as (b·t, c, h·w), which mixes frames and channels; kept as it is so
    checkpoints trained with it give their numbers (the reference itself warns against it)."""

    def __init__(self, in_channels: int, norm_type: str = "groupnorm"):
        super().__init__(in_channels, "groupnorm")  # the reference ignores norm_type here

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        h = self.norm(x_bcthw)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c, t, hh, ww = q.shape
        q_nlc = q.reshape(b * t, c, hh * ww).transpose(1, 2)
        weights = torch.softmax(torch.bmm(q_nlc, k.reshape(b * t, c, hh * ww)) * c ** -0.5, dim=2)
        out = torch.bmm(v.reshape(b * t, c, hh * ww), weights.transpose(1, 2)).reshape(b, c, t, hh, ww)
        return x_bcthw + self.proj_out(out)
