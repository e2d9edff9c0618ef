"""Open-Sora-Plan's CausalVAE down- and up-sampling blocks (commit f7fa604, modules/updownsample.py),
with its parameter names. In time, the first frame always stays on its own: T = 1 + 2k frames
become 1 + k and back, so an image is a one-frame video at every level."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import CausalConv3d, per_frame


def _pad_first_frame(x_bcthw: torch.Tensor, frames: int) -> torch.Tensor:
    return torch.cat([x_bcthw[:, :, :1].repeat(1, 1, frames, 1, 1), x_bcthw], dim=2)


class Downsample(nn.Module):
    """Per frame: zero-pad right and bottom by one, then a stride-2 3×3 conv (H → H // 2)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2)

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        return per_frame(lambda x: self.conv(F.pad(x, (0, 1, 0, 1))), x_bcthw)


class SpatialDownsample2x(nn.Module):
    """The same as a 1×3×3 causal conv of stride (1, 2, 2)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = CausalConv3d(in_channels, out_channels, (1, 3, 3), stride=(1, 2, 2))

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x_bcthw, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Per frame: nearest 2× then a 3×3 conv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        return per_frame(lambda x: self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest")), x_bcthw)


class SpatialUpsample2x(nn.Module):
    """Nearest 2× in height and width, then a 1×3×3 causal conv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = CausalConv3d(in_channels, out_channels, (1, 3, 3), padding=1)

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x_bcthw, scale_factor=(1, 2, 2), mode="nearest"))


class TimeDownsample2x(nn.Module):
    """A causal average over 3 frames with stride 2 (no parameters)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.kernel_size = kernel_size
        self.conv = nn.AvgPool3d((kernel_size, 1, 1), stride=(2, 1, 1))

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        return self.conv(_pad_first_frame(x_bcthw, self.kernel_size - 1))


class TimeDownsampleRes2x(nn.Module):
    """sigmoid(mix_factor) × the causal 3-frame average + the rest × a stride-2 3×3×3 conv: the
    average is a parameter-free path through time, the conv what is learnt beside it."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, mix_factor: float = 2.0):
        super().__init__()
        self.kernel_size = kernel_size
        self.avg_pool = nn.AvgPool3d((kernel_size, 1, 1), stride=(2, 1, 1))
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride=(2, 1, 1), padding=(0, 1, 1))
        self.mix_factor = nn.Parameter(torch.full((1,), mix_factor))

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        alpha = torch.sigmoid(self.mix_factor)
        x_bcthw = _pad_first_frame(x_bcthw, self.kernel_size - 1)
        return alpha * self.avg_pool(x_bcthw) + (1 - alpha) * self.conv(x_bcthw)


def _double_later_frames(x_bcthw: torch.Tensor) -> torch.Tensor:
    """1 + k frames → 1 + 2k: the first kept, the rest stretched 2× by linear interpolation."""
    if x_bcthw.shape[2] == 1:
        return x_bcthw
    rest = F.interpolate(x_bcthw[:, :, 1:], scale_factor=(2, 1, 1), mode="trilinear")
    return torch.cat([x_bcthw[:, :, :1], rest], dim=2)


class TimeUpsample2x(nn.Module):
    """1 + k frames → 1 + 2k, no parameters."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        return _double_later_frames(x_bcthw)


class TimeUpsampleRes2x(nn.Module):
    """The stretched frames mixed, by sigmoid(mix_factor), with a causal 3×3×3 conv of them."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, mix_factor: float = 2.0):
        super().__init__()
        self.conv = CausalConv3d(in_channels, out_channels, kernel_size, padding=1)
        self.mix_factor = nn.Parameter(torch.full((1,), mix_factor))

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        alpha = torch.sigmoid(self.mix_factor)
        x_bcthw = _double_later_frames(x_bcthw)
        return alpha * x_bcthw + (1 - alpha) * self.conv(x_bcthw)
