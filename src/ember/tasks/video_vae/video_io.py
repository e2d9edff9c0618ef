"""Reading frames with PyAV (and Pillow for images) and turning them into model input.

Frames come out as uint8 (T, H, W, 3); `to_clip_tensor` resizes the short side to the
resolution, centre-crops and scales to [-1, 1] as float (3, T, H, W).
"""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

VIDEO_SUFFIXES = (".mp4", ".avi", ".webm", ".mkv", ".mov")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def is_image(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def count_frames(path: str | Path) -> int:
    """Frames in a video (1 for an image); raises on a file that cannot be decoded.

    The container's frame count is trusted only after the first frame decodes; when the
    container does not record one (webm, mkv), packets are counted without decoding them.
    """
    if is_image(path):
        with Image.open(path) as img:
            img.verify()
        return 1
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        next(container.decode(stream))  # proves the stream decodes at all
        if stream.frames > 0:
            return int(stream.frames)
        container.seek(0)
        return sum(1 for packet in container.demux(stream) if packet.size > 0)


def read_frames(path: str | Path, indices: list[int]) -> np.ndarray:
    """The frames at these indices (ascending, repeats allowed) as uint8 (T, H, W, 3).

    Decodes from the start and stops after the last wanted frame: clips are short and
    frame-accurate seeking is not reliable across containers.
    """
    if is_image(path):
        with Image.open(path) as img:
            frame = np.asarray(img.convert("RGB"))
        return np.stack([frame] * len(indices))
    wanted = sorted(set(indices))
    found: dict[int, np.ndarray] = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                found[index] = frame.to_ndarray(format="rgb24")
            if index >= wanted[-1]:
                break
    if not found:
        raise ValueError(f"{path}: no frame decoded")
    last = max(found)
    # a container may hold fewer frames than it announced: repeat the last decoded frame
    return np.stack([found.get(i, found[last]) for i in indices])


def to_clip_tensor(frames_thwc: np.ndarray, resolution: int, crop_at: tuple[float, float] | None = None) -> torch.Tensor:
    """uint8 (T, H, W, 3) → float (3, T, resolution, resolution) in [-1, 1]; the crop is centred, or
    at crop_at = (fraction of the spare height, of the spare width) for a random crop."""
    x_tchw = torch.from_numpy(frames_thwc).permute(0, 3, 1, 2).float()
    h, w = x_tchw.shape[-2:]
    scale = resolution / min(h, w)
    size = (max(resolution, round(h * scale)), max(resolution, round(w * scale)))
    if size != (h, w):
        x_tchw = F.interpolate(x_tchw, size=size, mode="bilinear", antialias=scale < 1, align_corners=False)
    if crop_at is None:
        top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    else:
        top, left = int(crop_at[0] * (size[0] - resolution + 1)), int(crop_at[1] * (size[1] - resolution + 1))
        top, left = min(top, size[0] - resolution), min(left, size[1] - resolution)
    x_tchw = x_tchw[:, :, top:top + resolution, left:left + resolution]
    return (x_tchw / 127.5 - 1.0).clamp(-1, 1).permute(1, 0, 2, 3).contiguous()


def to_uint8_frames(x_ctHW: torch.Tensor) -> np.ndarray:
    """[-1, 1] float (3, T, H, W) → uint8 (T, H, W, 3), for writing videos and images."""
    x = ((x_ctHW.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return x.permute(1, 2, 3, 0).cpu().numpy()


def write_video(path: str | Path, frames_thwc: np.ndarray, fps: int = 8, codec: str = "libx264") -> None:
    """uint8 (T, H, W, 3) → a video file with PyAV (H and W must be even for yuv420p)."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames_thwc.shape[1:3]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast"}
        else:
            stream.bit_rate = 4_000_000
        for frame in frames_thwc:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
