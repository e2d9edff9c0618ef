"""A 3D PatchGAN discriminator (pix2pix's NLayerDiscriminator with 3D convolutions), as Open-Sora-Plan
uses for its CausalVAE: it scores overlapping space-time patches of a clip as real or reconstructed."""
from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator3D(nn.Module):
    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3):
        super().__init__()
        # time kernel 3 with stride 1: clips are short (down to one frame), space is 4×4 stride 2 as in pix2pix
        layers: list[nn.Module] = [nn.Conv3d(in_channels, base_channels, (3, 4, 4), stride=(1, 2, 2), padding=1),
                                   nn.LeakyReLU(0.2)]
        channels = base_channels
        for n in range(1, num_layers + 1):
            width = base_channels * min(2 ** n, 8)
            # the last hidden layer keeps resolution (stride 1), so patches overlap as in pix2pix
            stride = 2 if n < num_layers else 1
            layers += [nn.Conv3d(channels, width, (3, 4, 4), stride=(1, stride, stride), padding=1, bias=False),
                       nn.GroupNorm(1, width), nn.LeakyReLU(0.2)]
            channels = width
        layers.append(nn.Conv3d(channels, 1, 3, padding=1))  # one logit per patch
        self.net = nn.Sequential(*layers)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Conv3d):  # pix2pix initialisation: N(0, 0.02)
            nn.init.normal_(module.weight, 0.0, 0.02)

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        return self.net(x_bcthw)
