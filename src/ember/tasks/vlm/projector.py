"""nanoVLM's modality projector: pixel shuffle on the patch grid, then one Linear to the decoder width."""
from __future__ import annotations

import math

import torch
from torch import nn


class ModalityProjector(nn.Module):
    """(views, patches, vision_hidden) → (views, patches / factor², decoder_hidden).

    Pixel shuffle (space-to-depth) turns each factor×factor block of neighbouring patches into one
    token holding the block's patch vectors side by side: an image costs factor² fewer decoder
    tokens, and the Linear still sees every patch feature.
    """

    def __init__(self, vision_hidden: int, decoder_hidden: int, factor: int):
        super().__init__()
        self.factor = factor
        self.proj = nn.Linear(vision_hidden * factor * factor, decoder_hidden, bias=False)
        nn.init.normal_(self.proj.weight, mean=0.0, std=0.02)  # new layer, trained from scratch at lr_mp

    def pixel_shuffle(self, x_bsd: torch.Tensor) -> torch.Tensor:
        views, seq, dim = x_bsd.shape
        side, f = math.isqrt(seq), self.factor
        if side * side != seq or side % f:
            raise ValueError(f"pixel shuffle needs a square patch grid whose side divides by mp_pixel_shuffle_factor; "
                             f"got {seq} patches and factor {f}")
        out = side // f
        # patch (row, col) = (r·f + dy, c·f + dx): split both grid axes into (block, offset within block)
        x_brfcfd = x_bsd.reshape(views, out, f, out, f, dim)
        # block (r, c) becomes the token index; (dy, dx, dim) become its features
        x_brcffd = x_brfcfd.permute(0, 1, 3, 2, 4, 5)
        return x_brcffd.reshape(views, out * out, f * f * dim)

    def forward(self, patches_bsd: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pixel_shuffle(patches_bsd))
