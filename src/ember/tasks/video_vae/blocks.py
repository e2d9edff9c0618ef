"""Building blocks of the causal 3D VAE. Every block is causal in time: an output frame sees only
its own and earlier input frames, so a video's first latent never depends on what comes later.

Every resampling block adds its convolution to a parameter-free shortcut (an average when
shrinking, a copy when growing), as residual blocks add theirs to the identity, and a width
change starts as the channel shortcut (copies or averages of channels): a clip's colours and
coarse layout reach the latent and come back from it from the first step, instead of having to
be learned through a chain of random convolutions (the "residual autoencoding" of DC-AE, Chen et
al. 2024; Open-Sora-Plan's TimeDownsampleRes2x does the same in time).

Tensors are (batch, channels, time, height, width) throughout: x_bcthw.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CausalConv3d(nn.Module):
    """A 3D convolution padded only on the past side of time, with copies of the first frame
    (not zeros, so a still video stays still and the first frame is encoded as if alone)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.time_pad = kernel_size - 1
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, padding=(0, kernel_size // 2, kernel_size // 2))

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        if self.time_pad:
            first_bc1hw = x_bcthw[:, :, :1].expand(-1, -1, self.time_pad, -1, -1)
            x_bcthw = torch.cat([first_bc1hw, x_bcthw], dim=2)
        return self.conv(x_bcthw)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm per frame: statistics over a whole clip would leak future frames into the past."""

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x_bcthw.shape
        x_btchw = x_bcthw.transpose(1, 2).reshape(b * t, c, h, w)
        return super().forward(x_btchw).reshape(b, t, c, h, w).transpose(1, 2)


def norm(channels: int) -> FrameGroupNorm:
    return FrameGroupNorm(min(32, channels // 4) if channels >= 8 else 1, channels, eps=1e-6)


def channel_map(c_in: int, c_out: int) -> torch.Tensor:
    """(c_out, c_in) weights of the parameter-free channel shortcut: each output channel copies one
    input channel (more channels out) or averages a run of consecutive ones (fewer out)."""
    weights = torch.zeros(c_out, c_in)
    for o in range(c_out):
        sources = [i for i in range(c_in) if i * c_out // c_in == o] if c_in >= c_out else [o * c_in // c_out]
        weights[o, sources] = 1.0 / len(sources)
    return weights


def channel_shortcut_(conv: nn.Conv3d) -> nn.Conv3d:
    """A learned 1×1 convolution that starts as the channel shortcut."""
    with torch.no_grad():
        conv.weight.copy_(channel_map(conv.in_channels, conv.out_channels)[:, :, None, None, None])
        conv.bias.zero_()
    return conv


class ResBlock3D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1, self.conv1 = norm(in_channels), CausalConv3d(in_channels, out_channels)
        self.norm2, self.conv2 = norm(out_channels), CausalConv3d(out_channels, out_channels)
        # a learned projection where the width changes, starting as the channel shortcut so the
        # features' levels (a clip's colours) pass unmixed, like the resampling shortcuts
        self.skip = (channel_shortcut_(nn.Conv3d(in_channels, out_channels, 1)) if in_channels != out_channels
                     else nn.Identity())

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        h_bcthw = self.conv1(F.silu(self.norm1(x_bcthw)))
        h_bcthw = self.conv2(F.silu(self.norm2(h_bcthw)))
        return self.skip(x_bcthw) + h_bcthw


class FrameAttention(nn.Module):
    """Self-attention over the pixels of each frame separately (causal by construction)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = norm(channels)
        self.qkv = nn.Conv3d(channels, 3 * channels, 1)
        self.out = nn.Conv3d(channels, channels, 1)

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x_bcthw.shape
        qkv = self.qkv(self.norm(x_bcthw))  # b 3c t h w
        q_btnc, k_btnc, v_btnc = (part.permute(0, 2, 3, 4, 1).reshape(b * t, h * w, c) for part in qkv.chunk(3, dim=1))
        a_btnc = F.scaled_dot_product_attention(q_btnc, k_btnc, v_btnc)
        a_bcthw = a_btnc.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)
        return x_bcthw + self.out(a_bcthw)


class SpatialDownsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        # ceil_mode: an odd side rounds up, as the strided convolution does
        return self.conv(x_bcthw) + F.avg_pool3d(x_bcthw, (1, 2, 2), ceil_mode=True)


class SpatialUpsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, (1, 3, 3), padding=(0, 1, 1))

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        up_bcthw = F.interpolate(x_bcthw, scale_factor=(1, 2, 2), mode="nearest")
        return self.conv(up_bcthw) + up_bcthw


class TimeDownsample(nn.Module):
    """1 + 2k frames → 1 + k: the first frame passes alone, later frames are averaged in pairs
    (frames 2j-1 and 2j become j), then a causal convolution adds what the average misses."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = CausalConv3d(channels, channels)

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        if x_bcthw.shape[2] > 1:
            rest = F.avg_pool3d(x_bcthw[:, :, 1:], kernel_size=(2, 1, 1), stride=(2, 1, 1))
            x_bcthw = torch.cat([x_bcthw[:, :, :1], rest], dim=2)
        return self.conv(x_bcthw) + x_bcthw


class TimeUpsample(nn.Module):
    """1 + k frames → 1 + 2k: the first frame stays single, every later frame is doubled, then a
    causal convolution adds what the copies miss."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = CausalConv3d(channels, channels)

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        if x_bcthw.shape[2] > 1:
            rest = x_bcthw[:, :, 1:].repeat_interleave(2, dim=2)
            x_bcthw = torch.cat([x_bcthw[:, :, :1], rest], dim=2)
        return self.conv(x_bcthw) + x_bcthw
