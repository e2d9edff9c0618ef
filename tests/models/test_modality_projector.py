"""Pixel shuffle is a pure rearrangement that puts each f×f block of patches into one token, as nanoVLM does."""
from __future__ import annotations

import pytest
import torch

from ember.tasks.vlm.projector import ModalityProjector


def test_each_token_holds_its_block_of_patches_in_row_major_order():
    views, side, f, dim = 2, 4, 2, 3
    x_bsd = torch.arange(views * side * side * dim, dtype=torch.float32).reshape(views, side * side, dim)
    out = ModalityProjector(dim, 8, f).pixel_shuffle(x_bsd)
    assert out.shape == (views, (side // f) ** 2, f * f * dim)
    # by hand: on the 4×4 grid (patches 0..15 row-major), token 1 is block (row 0, col 1) = patches 2, 3, 6, 7
    assert torch.equal(out[1, 1], torch.cat([x_bsd[1, p] for p in (2, 3, 6, 7)]))
    # every element: token (r, c), feature (dy, dx, d) comes from patch (r·f + dy, c·f + dx), feature d
    for v in range(views):
        for r in range(side // f):
            for c in range(side // f):
                for dy in range(f):
                    for dx in range(f):
                        patch = (r * f + dy) * side + (c * f + dx)
                        start = (dy * f + dx) * dim
                        assert torch.equal(out[v, r * (side // f) + c, start:start + dim], x_bsd[v, patch])
    # nothing duplicated or lost
    assert torch.equal(out.flatten().sort().values, x_bsd.flatten())


@pytest.mark.parametrize("factor, tokens", [(1, 64), (2, 16), (4, 4), (8, 1)])
def test_token_count_is_grid_over_factor_squared(factor, tokens):
    projector = ModalityProjector(vision_hidden=6, decoder_hidden=5, factor=factor)
    assert projector(torch.randn(3, 64, 6)).shape == (3, tokens, 5)


def test_forward_is_the_linear_of_the_shuffled_patches():
    projector = ModalityProjector(4, 7, 2)
    x = torch.randn(2, 16, 4)
    assert torch.allclose(projector(x), projector.pixel_shuffle(x) @ projector.proj.weight.T)
    assert projector.proj.bias is None


@pytest.mark.parametrize("seq, factor", [(36, 4), (10, 1)])  # grid side 6 not divisible by 4; 10 patches not square
def test_grid_that_does_not_shuffle_is_a_clear_error(seq, factor):
    with pytest.raises(ValueError, match=f"got {seq} patches and factor {factor}"):
        ModalityProjector(4, 4, factor)(torch.randn(1, seq, 4))
