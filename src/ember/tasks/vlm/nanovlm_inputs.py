"""image_token_layout: nanovlm — images and their tokens exactly as nanoVLM's data pipeline makes them.

Pixels: the image is resized (bicubic) so its long side is max_img_size (resize_to_max_side_len) or the
next multiple of the tile size up to it, the short side following the aspect ratio rounded up to a
multiple of the tile; values stay in [0, 1] (no mean/std). A canvas of several tiles gives a global view
first (the canvas shrunk to one tile, bilinear with antialiasing, as torchvision resizes a tensor) and then
the tiles row by row; a one-tile canvas is that tile only.

Tokens: each image becomes <|global_image|> + tokens_per_image × <|image|>, then per tile (when split)
<row_i_col_j> + tokens_per_image × <|image|>; a sample with several images puts the text "<image: k>"
before image k. Only <|image|> positions receive image features; the others are ordinary tokens.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...config.errors import ConfigError
from ...data.labels import IGNORE
from .images import RESAMPLE


class NanoVLMImages:
    """PIL image → (views, 3, tile, tile) float32 in [0, 1], nanoVLM's DynamicResize + GlobalAndSplitImages."""

    def __init__(self, image_size: int, max_img_size: int, resize_to_max_side_len: bool):
        if max_img_size % image_size:
            # nanoVLM's splitter would refuse the resized canvas; say so before any image is read
            raise ConfigError(f"image_token_layout nanovlm: max_img_size {max_img_size} is not a multiple of the "
                              f"encoder's image size {image_size}")
        self.image_size, self.max_side, self.to_max = image_size, max_img_size, resize_to_max_side_len

    def canvas(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the resized image, both multiples of the tile."""
        tile = self.image_size
        long_side, short_side = max(width, height), min(width, height)
        target_long = self.max_side if self.to_max else min(self.max_side, math.ceil(long_side / tile) * tile)
        scale = target_long / long_side  # computed as nanoVLM does, so rounding at the edges agrees
        target_short = max(tile, math.ceil(short_side * scale / tile) * tile)
        return (target_long, target_short) if width >= height else (target_short, target_long)

    def grid(self, width: int, height: int) -> tuple[int, int]:
        canvas_w, canvas_h = self.canvas(width, height)
        return canvas_h // self.image_size, canvas_w // self.image_size

    def num_views(self, width: int, height: int) -> int:
        rows, cols = self.grid(width, height)
        return 1 if rows * cols == 1 else 1 + rows * cols

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "RGB":
            image = image.convert("RGB")
        tile = self.image_size
        canvas_w, canvas_h = self.canvas(*image.size)
        resized = image.resize((canvas_w, canvas_h), RESAMPLE)
        pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        rows, cols = canvas_h // tile, canvas_w // tile
        tiles = pixels.view(3, rows, tile, cols, tile).permute(1, 3, 0, 2, 4).reshape(rows * cols, 3, tile, tile)
        if rows * cols == 1:
            return tiles
        whole = F.interpolate(pixels[None], size=(tile, tile), mode="bilinear", align_corners=False, antialias=True)
        return torch.cat([whole, tiles])


class NanoVLMLayout:
    """The token ids standing for a sample's images, from the tokenizer holding nanoVLM's extra tokens."""

    def __init__(self, tokenizer, extra_tokens: dict, tokens_per_image: int):
        self.tokenizer, self.tokens_per_image = tokenizer, tokens_per_image
        ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in extra_tokens.items()}
        missing = [extra_tokens[n] for n, i in ids.items() if i is None or i == tokenizer.unk_token_id]
        if missing:
            raise ConfigError(f"image_token_layout nanovlm: the tokenizer lacks nanoVLM's tokens {missing[:3]}")
        self.ids = ids

    def image_ids(self, index: int, count: int, grid: tuple[int, int]) -> list[int]:
        run = [self.ids["image_token"]] * self.tokens_per_image
        out = []
        if count > 1:  # plain text, tokenised on its own (special tokens on both sides: no merges across)
            out += self.tokenizer.encode(f"<image: {index}>", add_special_tokens=False)
        out += [self.ids["global_image_token"], *run]
        rows, cols = grid
        if rows * cols > 1:
            for i in range(rows):
                for j in range(cols):
                    out += [self.ids[f"r{i + 1}c{j + 1}"], *run]
        return out

    def expand(self, ids: np.ndarray, labels: np.ndarray, at: np.ndarray, grids: list[tuple[int, int]]):
        """Replace the placeholder at each position of `at` by its image's ids; none of them a target."""
        pieces_ids, pieces_labels, start = [], [], 0
        for k, (pos, grid) in enumerate(zip(at, grids)):
            block = np.asarray(self.image_ids(k, len(grids), grid), dtype=np.int64)
            pieces_ids += [ids[start:pos], block]
            pieces_labels += [labels[start:pos], np.full(len(block), IGNORE, dtype=np.int64)]
            start = pos + 1
        pieces_ids.append(ids[start:])
        pieces_labels.append(labels[start:])
        return np.concatenate(pieces_ids), np.concatenate(pieces_labels)


def nanovlm_pipeline(cfg, shape, tokenizer) -> tuple[NanoVLMImages, NanoVLMLayout] | None:
    """The images and token layout for image_token_layout (default: the model's own, nanovlm for a model
    that came from a nanoVLM checkpoint); None for the plain layout."""
    if (cfg.image_token_layout or shape.image_token_layout) != "nanovlm":
        return None
    nano = shape.nanovlm
    if nano is None:
        raise ConfigError("image_token_layout nanovlm needs a model that came from a nanoVLM checkpoint "
                          "(its extra tokens are in the vocabulary); this model uses the plain layout")
    to_max = nano.get("resize_to_max_side_len", False) if cfg.resize_to_max_side_len is None else cfg.resize_to_max_side_len
    images = NanoVLMImages(shape.image_size, cfg.max_img_size or nano["max_img_size"], to_max)
    return images, NanoVLMLayout(tokenizer, nano["vlm_extra_tokens"], shape.tokens_per_image)
