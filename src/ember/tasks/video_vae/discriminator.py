"""Open-Sora-Plan's 3D PatchGAN discriminator (NLayerDiscriminator3D of its LPIPSWithDiscriminator3D):
pix2pix's NLayerDiscriminator with 3×3×3 convolutions and BatchNorm3d. It scores overlapping
space-time patches of a clip as real or reconstructed.

The layers sit in one `main` Sequential with Open-Sora-Plan's indices, so a reference checkpoint's
`loss.discriminator.main.<i>.<param>` is VideoVAEModel's `discriminator.main.<i>.<param>`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NLayerDiscriminator3D(nn.Module):
    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 4):
        super().__init__()
        # biases are dropped where BatchNorm follows (it would cancel them), as in pix2pix
        layers: list[nn.Module] = [nn.Conv3d(input_nc, ndf, 3, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2 ** n, 8)
            # time is halved only by the first two convolutions; space by every one but the last two
            stride = (2 if n == 1 else 1, 2, 2)
            layers += [nn.Conv3d(ndf * prev, ndf * mult, 3, stride=stride, padding=1, bias=False),
                       BatchStatsNorm3d(ndf * mult), nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2 ** n_layers, 8)
        layers += [nn.Conv3d(ndf * prev, ndf * mult, 3, stride=1, padding=1, bias=False),
                   BatchStatsNorm3d(ndf * mult), nn.LeakyReLU(0.2, True),
                   nn.Conv3d(ndf * mult, 1, 3, stride=1, padding=1)]  # one logit per patch
        self.main = nn.Sequential(*layers)
        self.apply(_pix2pix_init)

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        return self.main(x_bcthw)


class BatchStatsNorm3d(nn.BatchNorm3d):
    """BatchNorm3d that always normalises with the batch's statistics, as the reference's
    discriminator does (it only ever runs in training mode), and leaves its running statistics
    alone: they are kept for the checkpoint names only. Updating them would make each process of
    a DDP run hold different buffers (per-rank batches) for no use."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


def _pix2pix_init(module: nn.Module) -> None:
    """Open-Sora-Plan's weights_init: convolution weights N(0, 0.02) (biases keep PyTorch's
    default), BatchNorm scale N(1, 0.02) and shift 0."""
    if isinstance(module, nn.Conv3d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm3d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.constant_(module.bias, 0.0)
