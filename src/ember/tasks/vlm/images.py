"""Images for the vision encoder: open one file, resize and normalise it, optionally split it.

Without max_img_size an image becomes one view: the whole picture squeezed to image_size ×
image_size, as SigLIP's own processor does (no crop, aspect not kept). With max_img_size an
image is first resized so each side is a multiple of image_size and at most max_img_size
(aspect kept as far as those two rules allow, small images scaled up to one tile), then cut
into rows × cols tiles; a squeezed global view goes first so the model always sees the whole
picture, then the tiles row by row. A 1 × 1 grid would repeat the global view, so it is only
that one view (nanoVLM does the same).
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ...config.errors import ConfigError

RESAMPLE = Image.Resampling.BICUBIC  # SigLIP's processor resamples bicubically


class BadImage(ConfigError):
    """A missing or undecodable image; the message names the file and the cause."""


def open_image(source: str | Path | bytes, name: str | None = None) -> Image.Image:
    """A fully decoded RGB image. `source` is a path, or the bytes of an image embedded in a
    dataset (then `name` says where it came from). Decoding here, not lazily, is what finds a
    truncated file."""
    label = name or str(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            image.load()
            image = ImageOps.exif_transpose(image)  # camera photos: honour the rotation tag
            return image.convert("RGB")
    except FileNotFoundError:
        raise BadImage(f"image {label} does not exist") from None
    except UnidentifiedImageError:
        raise BadImage(f"image {label} is not an image file PIL can read") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise BadImage(f"image {label} cannot be decoded: {err}") from None


class ImageProcessor:
    """PIL image → (num_views, 3, image_size, image_size) float32, normalised per channel."""

    def __init__(self, image_size: int, max_img_size: int | None = None,
                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)):
        if image_size <= 0:
            raise ConfigError(f"image_size must be positive, got {image_size}")
        self.image_size = image_size
        # the tiled canvas holds whole tiles only: round the cap down to a multiple of a tile
        self.max_side = None if max_img_size is None else max(image_size, max_img_size // image_size * image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def grid(self, width: int, height: int) -> tuple[int, int]:
        """(rows, cols) of tiles for an image of this size; (1, 1) when not splitting."""
        if self.max_side is None:
            return 1, 1
        tile = self.image_size
        long_side, short_side = max(width, height), min(width, height)
        target_long = min(self.max_side, math.ceil(long_side / tile) * tile)
        # ceil on the short side: never squash it below its share of the long side
        target_short = min(target_long, max(tile, math.ceil(short_side * target_long / long_side / tile) * tile))
        canvas_w, canvas_h = (target_long, target_short) if width >= height else (target_short, target_long)
        return canvas_h // tile, canvas_w // tile

    def num_views(self, width: int, height: int) -> int:
        rows, cols = self.grid(width, height)
        return 1 if rows * cols == 1 else 1 + rows * cols

    def _to_tensor(self, image: Image.Image) -> torch.Tensor:
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        return (pixels - self.mean) / self.std

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "RGB":
            image = image.convert("RGB")
        tile = self.image_size
        views = [self._to_tensor(image.resize((tile, tile), RESAMPLE))]
        rows, cols = self.grid(*image.size)
        if rows * cols > 1:
            canvas = self._to_tensor(image.resize((cols * tile, rows * tile), RESAMPLE))
            # (3, rows·t, cols·t) → (rows·cols, 3, t, t), row-major
            tiles = canvas.view(3, rows, tile, cols, tile).permute(1, 3, 0, 2, 4).reshape(rows * cols, 3, tile, tile)
            views += list(tiles)
        return torch.stack(views)
