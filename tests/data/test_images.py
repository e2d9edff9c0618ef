"""Image opening, resizing, normalisation and tiling for the vision encoder.

Expected pixel values are worked out by hand from solid-colour images (a resize of a solid
image is the same solid image), so the checks do not reuse the processor's arithmetic.
"""
from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from ember.config import ConfigError
from ember.tasks.vlm.images import BadImage, ImageProcessor, open_image


def solid(width: int, height: int, rgb) -> Image.Image:
    return Image.new("RGB", (width, height), rgb)


def tiled(rows: int, cols: int, tile: int) -> Image.Image:
    """A picture of rows × cols solid tiles; tile k (row-major) has red channel 10·k."""
    image = Image.new("RGB", (cols * tile, rows * tile))
    for r in range(rows):
        for c in range(cols):
            image.paste(solid(tile, tile, (10 * (r * cols + c), 50, 200)), (c * tile, r * tile))
    return image


# ---- open_image --------------------------------------------------------------------------

def test_open_image_gives_rgb_from_other_modes(tmp_path):
    path = tmp_path / "grey.png"
    Image.new("L", (5, 4), 77).save(path)
    image = open_image(path)
    assert image.mode == "RGB" and image.size == (5, 4)
    assert image.getpixel((0, 0)) == (77, 77, 77)


def test_open_image_reads_embedded_bytes():
    buffer = io.BytesIO()
    solid(3, 2, (1, 2, 3)).save(buffer, format="PNG")
    assert open_image(buffer.getvalue(), "row 1 image").size == (3, 2)


def test_missing_image_names_the_file(tmp_path):
    missing = tmp_path / "nowhere" / "cat.jpg"
    with pytest.raises(BadImage, match=r"cat\.jpg does not exist") as err:
        open_image(missing)
    assert str(missing) in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, ConfigError)  # the CLI prints it as one line


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_corrupt_image_names_the_file(tmp_path, kind):
    path = tmp_path / f"{kind}.jpg"
    if kind == "garbage":
        path.write_bytes(b"this is not a jpeg at all")
    else:
        buffer = io.BytesIO()
        tiled(4, 4, 16).save(buffer, format="JPEG")
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(BadImage) as err:
        open_image(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message


# ---- resize and normalise ----------------------------------------------------------------

def test_single_view_is_resized_and_normalised():
    processor = ImageProcessor(16)
    out = processor(solid(40, 24, (255, 0, 51)))
    assert out.shape == (1, 3, 16, 16) and out.dtype == torch.float32
    # SigLIP's normalisation: (x / 255 - 0.5) / 0.5
    assert torch.allclose(out[0, 0], torch.full((16, 16), 1.0), atol=1e-5)
    assert torch.allclose(out[0, 1], torch.full((16, 16), -1.0), atol=1e-5)
    assert torch.allclose(out[0, 2], torch.full((16, 16), 51 / 255 * 2 - 1), atol=1e-5)
    assert processor.num_views(40, 24) == 1


def test_custom_mean_and_std():
    processor = ImageProcessor(8, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0))
    out = processor(solid(8, 8, (255, 255, 0)))
    assert out[0, :, 0, 0].tolist() == pytest.approx([(1 - 0.1) / 0.5, (1 - 0.2) / 0.25, (0 - 0.3) / 2.0], abs=1e-5)


def test_resize_keeps_layout_of_the_picture():
    """Left half red, right half blue, squeezed to 8 × 8: the left columns stay red."""
    image = Image.new("RGB", (64, 32), (255, 0, 0))
    image.paste(solid(32, 32, (0, 0, 255)), (32, 0))
    out = ImageProcessor(8)(image)[0]
    assert (out[0, :, :3] > 0.9).all() and (out[2, :, :3] < -0.9).all()
    assert (out[2, :, 5:] > 0.9).all() and (out[0, :, 5:] < -0.9).all()


def test_rgba_input_is_converted():
    out = ImageProcessor(4)(Image.new("RGBA", (4, 4), (255, 255, 255, 0)))
    assert out.shape == (1, 3, 4, 4)


# ---- tiling ------------------------------------------------------------------------------

def test_tiles_follow_the_global_view_row_major():
    processor = ImageProcessor(8, max_img_size=32)
    image = tiled(rows=2, cols=4, tile=8)  # 32 × 16: already a whole number of tiles
    out = processor(image)
    assert processor.grid(32, 16) == (2, 4)
    assert out.shape == (9, 3, 8, 8) and processor.num_views(32, 16) == 9
    for k in range(8):
        expected = 10 * k / 255 * 2 - 1
        assert torch.allclose(out[1 + k, 0], torch.full((8, 8), expected), atol=1e-5), f"tile {k} out of place"
    # the global view is the whole picture squeezed to one tile: its red channel rises left to right
    # along each row and from the top row to the bottom one, like the tiles' indices
    red = out[0, 0]
    assert red[2, 0] < red[2, 7] and red[0, 3] < red[7, 3]


@pytest.mark.parametrize("size, grid", [
    ((100, 50), (2, 4)),   # long side capped at 64, short side follows the aspect: 64 × 32
    ((20, 70), (2, 1)),    # tall, cap 40 (rounds down to 32): 16 × 32
    ((10, 10), (1, 1)),    # fits one tile: one view, no split
    ((17, 16), (2, 2)),    # a little over one tile: both sides round up (never squashed below the aspect)
    ((40, 16), (2, 3)),    # 48 wide; the short side's share (19.2 px) rounds up to 32
])
def test_grid_for_various_shapes(size, grid):
    cap = 40 if size == (20, 70) else 64
    processor = ImageProcessor(16, max_img_size=cap)
    assert processor.grid(*size) == grid
    rows, cols = grid
    views = 1 if rows * cols == 1 else 1 + rows * cols
    assert processor.num_views(*size) == views
    assert processor(solid(*size, (9, 9, 9))).shape == (views, 3, 16, 16)


def test_grid_respects_the_cap_and_tile_multiples():
    processor = ImageProcessor(16, max_img_size=50)  # cap rounds down to 48
    for width, height in [(1000, 30), (30, 1000), (333, 222), (48, 48), (49, 49), (1, 500)]:
        rows, cols = processor.grid(width, height)
        assert 1 <= rows * 16 <= 48 and 1 <= cols * 16 <= 48
        assert processor(solid(width, height, (0, 0, 0))).shape[0] == processor.num_views(width, height)
