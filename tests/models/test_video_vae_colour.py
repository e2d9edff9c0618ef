"""The causal VAE keeps a clip's colour: its resampling shortcuts pass a flat clip's colour on
unchanged, an untrained VAE already maps flat colours through, and a tiny VAE trained briefly on
flat-colour clips gives their colours back. The VAE before this colour path returned grey for
every flat clip (one trained on the demo videos turned RGB (0.5, -0.3, 0.1) into (0.02, -0.07,
-0.07)).
"""
from __future__ import annotations

import pytest
import torch

from ember.tasks.video_vae.blocks import SpatialDownsample, SpatialUpsample, TimeDownsample, TimeUpsample
from ember.tasks.video_vae.model import CausalVAE, CausalVAEConfig

TINY = {"base_channels": 8, "channel_mult": [1, 2, 2, 2], "temporal_downsample": [False, True, True],
        "num_res_blocks": 1, "z_channels": 4, "mid_attention": False}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def flat_clips(colours_b3: torch.Tensor, frames: int, size: int) -> torch.Tensor:
    return colours_b3[:, :, None, None, None].expand(-1, -1, frames, size, size).contiguous()


@pytest.mark.parametrize("block", [SpatialDownsample, SpatialUpsample, TimeDownsample, TimeUpsample])
def test_resampling_passes_a_flat_clip_on_when_its_convolution_is_silent(block):
    """The parameter-free shortcut alone (convolution zeroed) keeps every channel's level; odd
    sizes included (a 5-pixel side averages its last pixel alone)."""
    layer = block(2)
    conv = layer.conv.conv if hasattr(layer.conv, "conv") else layer.conv
    torch.nn.init.zeros_(conv.weight)
    torch.nn.init.zeros_(conv.bias)
    levels = torch.tensor([[0.7, -0.4]])
    with torch.no_grad():
        out = layer(levels[:, :, None, None, None].expand(1, 2, 5, 5, 5))
    assert torch.allclose(out, levels[:, :, None, None, None].expand_as(out))


def test_an_untrained_vae_already_maps_flat_colours_through():
    """At initialisation, the map from a flat clip's colour to its reconstruction's colour has
    every direction (smallest singular value 0.29 here; 0.002 before the colour path, when a
    colour change barely reached the output and training had to build the map from nothing)."""
    torch.manual_seed(0)
    vae = CausalVAE(CausalVAEConfig.from_spec("causal_vae-tiny")).eval()
    colours = torch.rand(16, 3, generator=torch.Generator().manual_seed(9)) * 2 - 1
    with torch.no_grad():
        out = vae(flat_clips(colours, frames=5, size=16), sample=False)[0].mean(dim=(2, 3, 4))
    affine = torch.linalg.lstsq(torch.cat([colours, torch.ones(16, 1)], 1), out).solution
    assert torch.linalg.svdvals(affine[:3]).min() > 0.05


def test_a_short_training_on_flat_clips_gives_their_colours_back():
    """200 steps of 16 flat clips (8 px, 5 frames) leave a mean error of 0.05-0.1 (over seeds);
    before the colour path the error stayed at 0.48, that of answering grey whatever the colour."""
    torch.manual_seed(0)
    vae = CausalVAE(CausalVAEConfig.from_dict(TINY))
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    data = torch.Generator().manual_seed(1)
    for _ in range(200):
        x = flat_clips(torch.rand(16, 3, generator=data) * 2 - 1, frames=5, size=8)
        recon, posterior = vae(x)
        loss = (recon - x).abs().mean() + 1e-6 * posterior.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    held_out = torch.tensor([[0.5, -0.3, 0.1], [-0.8, 0.6, 0.3], [0.1, 0.9, -0.7], [-0.2, -0.6, 0.8]])
    with torch.no_grad():
        recon, _ = vae(flat_clips(held_out, frames=5, size=8), sample=False)
    error = (recon.mean(dim=(2, 3, 4)) - held_out).abs()
    assert error.mean() < 0.15 and error.max() < 0.35, \
        f"flat colours came back as {recon.mean(dim=(2, 3, 4)).round(decimals=2).tolist()}"
