"""Video clips for the causal VAE: find the files, probe them once (cached), draw clips.

Short-video rule: a clip needs 1 + (video_num_frames - 1) × sample_rate frames. A shorter video
is read with the largest smaller stride that fits; if even consecutive frames do not fit, it is
skipped (short_videos: skip, the default) or its last frame is repeated (short_videos: pad).
Undecodable files and skipped videos are counted and named once, at start — a bad file never
stops an epoch (a clip that fails to decode later is replaced by the next video's, with a warning).
"""
from __future__ import annotations

import logging
import random
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ...config.errors import ConfigError
from .index import FrameIndex
from .sources import list_sources
from .video_io import IMAGE_SUFFIXES, VIDEO_SUFFIXES, is_image, read_frames, to_clip_tensor

log = logging.getLogger("ember")


def clip_stride(frames: int, num_frames: int, sample_rate: int) -> int | None:
    """The frame stride a clip uses in a video of `frames` frames, or None when none fits."""
    for stride in range(sample_rate, 0, -1):
        if 1 + (num_frames - 1) * stride <= frames:
            return stride
    return None


class VideoClipDataset(Dataset):
    """Item i is draw i // n of video i % n: clips_per_video clips per video per epoch, each from
    a start seeded by (seed, video, draw) so runs and resumed runs see the same clips."""

    def __init__(self, entries: list[tuple[str, int]], num_frames: int, sample_rate: int, resolution: int,
                 seed: int, clips_per_video: int = 1, random_start: bool = True, random_crop: bool = False,
                 dynamic_sample: bool = False):
        self.entries, self.num_frames, self.sample_rate = entries, num_frames, sample_rate
        self.resolution, self.seed, self.clips_per_video, self.random_start = resolution, seed, clips_per_video, random_start
        # mindone's flags: a random crop place, and a random stride in 1..sample_rate, per clip (seeded)
        self.random_crop, self.dynamic_sample = random_crop, dynamic_sample

    def __len__(self) -> int:
        return len(self.entries) * self.clips_per_video

    def frame_indices(self, index: int) -> list[int]:
        video, draw = index % len(self.entries), index // len(self.entries)
        frames = self.entries[video][1]
        rate = self.sample_rate
        if self.dynamic_sample:
            rate = random.Random(f"{self.seed}:{video}:{draw}:stride").randint(1, self.sample_rate)
        stride = clip_stride(frames, self.num_frames, rate) or 1  # None only under short_videos: pad
        spare = max(0, frames - (1 + (self.num_frames - 1) * stride))
        start = (random.Random(f"{self.seed}:{video}:{draw}").randint(0, spare) if self.random_start else spare // 2)
        return [min(start + k * stride, frames - 1) for k in range(self.num_frames)]

    def __getitem__(self, index: int) -> dict:
        """{"video": float (3, T, H, W) in [-1, 1], "index": index}: the index names the clip, e.g. to
        seed its posterior noise the same way whichever batch or process it lands in."""
        for attempt in range(len(self.entries)):
            position = (index + attempt) % len(self)
            path = self.entries[position % len(self.entries)][0]
            try:
                frames_thwc = read_frames(path, self.frame_indices(position))
                crop_at = None
                if self.random_crop:
                    place = random.Random(f"{self.seed}:{position}:crop")
                    crop_at = (place.random(), place.random())
                return {"video": to_clip_tensor(frames_thwc, self.resolution, crop_at), "index": index}
            except Exception as err:  # any decoder failure: never stop the epoch for one file
                log.warning("could not decode %s (%s); using the next video's clip instead", path, err)
        raise RuntimeError("no video in the dataset decodes any more")


def collate_clips(items: list[dict]) -> dict[str, torch.Tensor]:
    return {"video": torch.stack([item["video"] for item in items]),
            "index": torch.tensor([item["index"] for item in items])}


def probe_videos(spec: str, num_frames: int, sample_rate: int, short_videos: str, root: str | None = None,
                 column: str | None = None) -> list[tuple[str, int]]:
    """(path, frame count) of every usable file named by spec; the rest reported in one log line."""
    files, cache_file = list_sources(spec, root, column)
    if not files:
        raise ConfigError(f"video_path {spec} holds no videos ({', '.join(VIDEO_SUFFIXES)}) or images "
                          f"({', '.join(IMAGE_SUFFIXES)})")
    index = FrameIndex(cache_file)
    entries, broken, short = [], [], []
    for path in files:
        frames, error = index.frames(path)
        if error is not None:
            broken.append(f"{Path(path).name} ({error})")
        elif not is_image(path) and clip_stride(frames, num_frames, sample_rate) is None and short_videos == "skip":
            short.append(f"{Path(path).name} ({frames} frames)")
        else:
            entries.append((path, frames))
    index.save()
    if broken:
        log.warning("skipped %d undecodable file(s) of %s: %s", len(broken), spec, ", ".join(broken))
    if short:
        log.warning("skipped %d video(s) of %s shorter than a %d-frame clip (short_videos: skip): %s",
                    len(short), spec, num_frames, ", ".join(short))
    if not entries:
        why = ", ".join((broken + short)[:3]) + (", …" if len(broken + short) > 3 else "")
        raise ConfigError(f"video_path {spec}: none of its {len(files)} files gives a {num_frames}-frame clip ({why})")
    log.info("video data %s: %d usable file(s) of %d", spec, len(entries), len(files))
    return entries


def clip_frames_for(entries: list[tuple[str, int]], requested: int) -> int:
    """Images alone make one-frame clips; otherwise every item (images too, as stills) has the
    requested length."""
    return 1 if all(is_image(path) for path, _ in entries) else requested


def build_video_datasets(cfg, num_frames: int) -> tuple[VideoClipDataset, VideoClipDataset | None]:
    listed = cfg.data_file_path is not None and cfg.dataset == cfg.data_file_path  # mindone's data_file_path
    entries = probe_videos(cfg.dataset, num_frames, cfg.sample_rate, cfg.short_videos,
                           root=cfg.video_path if listed else None, column=cfg.video_column if listed else None)
    val_entries = None
    if cfg.eval_dataset:
        val_entries = probe_videos(cfg.eval_dataset, num_frames, cfg.sample_rate, cfg.short_videos)
    elif cfg.val_size > 0:
        held = int(cfg.val_size) if cfg.val_size >= 1 else max(1, round(cfg.val_size * len(entries)))
        if held >= len(entries):
            raise ConfigError(f"val_size {cfg.val_size} leaves no training videos (there are {len(entries)})")
        shuffled = entries[:]
        random.Random(cfg.seed).shuffle(shuffled)  # held-out videos, not held-out clips of seen videos
        val_entries, entries = sorted(shuffled[:held]), sorted(shuffled[held:])
    frames = clip_frames_for(entries, num_frames)
    train = VideoClipDataset(entries, frames, cfg.sample_rate, cfg.resolution, cfg.seed, cfg.clips_per_video,
                             random_crop=cfg.random_crop, dynamic_sample=cfg.dynamic_sample)
    val = (VideoClipDataset(val_entries, frames, cfg.sample_rate, cfg.resolution, cfg.seed, random_start=False)
           if val_entries else None)
    return train, val
