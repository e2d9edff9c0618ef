"""Reconstructions you can look at: an mp4 per clip and a PNG strip (originals above reconstructions)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .video_io import to_uint8_frames, write_video


def write_reconstructions(folder: str | Path, tag: str, real_bcthw: torch.Tensor, recon_bcthw: torch.Tensor,
                          max_frames: int = 9) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    written = []
    for i in range(real_bcthw.shape[0]):
        real, recon = to_uint8_frames(real_bcthw[i]), to_uint8_frames(recon_bcthw[i])  # T H W 3
        side_by_side = np.concatenate([real, recon], axis=2)  # original left, reconstruction right
        h, w = side_by_side.shape[1:3]
        path = folder / f"{tag}-clip{i}.mp4"
        write_video(path, side_by_side[:, : h - h % 2, : w - w % 2])
        written.append(path)
        frames = slice(0, min(max_frames, real.shape[0]))
        rows.append(np.concatenate([np.concatenate(list(real[frames]), axis=1),
                                    np.concatenate(list(recon[frames]), axis=1)], axis=0))
    strip = folder / f"{tag}.png"
    Image.fromarray(np.concatenate(rows, axis=0)).save(strip)
    return [*written, strip]
