"""Demo videos ember makes itself: coloured shapes bouncing off the walls over a slowly changing
background, each shape's colour drifting over time. Written as real video files with PyAV."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .video_io import write_video


def bouncing_shapes(num_frames: int, size: int, rng: np.random.Generator, num_shapes: int = 3) -> np.ndarray:
    """uint8 (T, size, size, 3)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    background = rng.uniform(20, 120, size=3)
    drift = rng.uniform(-2, 2, size=3)
    shapes = []
    for _ in range(num_shapes):
        radius = rng.uniform(0.08, 0.2) * size
        shapes.append({"pos": rng.uniform(radius, size - radius, size=2), "vel": rng.uniform(-0.06, 0.06, size=2) * size,
                       "radius": radius, "colour": rng.uniform(60, 255, size=3), "shift": rng.uniform(-8, 8, size=3),
                       "square": rng.random() < 0.5})
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        canvas = np.empty((size, size, 3), dtype=np.float32)
        canvas[:] = np.clip(background + drift * t, 0, 255)
        for s in shapes:
            (cy, cx), r = s["pos"], s["radius"]
            if s["square"]:
                mask = (np.abs(yy - cy) < r) & (np.abs(xx - cx) < r)
            else:
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            canvas[mask] = np.clip(s["colour"] + s["shift"] * t, 0, 255)
            s["pos"] = s["pos"] + s["vel"]
            for axis in range(2):  # bounce off the walls
                if not r <= s["pos"][axis] <= size - r:
                    s["vel"][axis] *= -1
                    s["pos"][axis] = np.clip(s["pos"][axis], r, size - r)
        frames[t] = canvas.astype(np.uint8)
    return frames


def write_demo_videos(folder: str | Path, count: int, num_frames: int = 24, size: int = 64, seed: int = 0,
                      codec: str = "libx264", suffix: str = ".mp4") -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"shapes_{i:04d}{suffix}"
        write_video(path, bouncing_shapes(num_frames, size, rng), codec=codec)
        paths.append(path)
    return paths
