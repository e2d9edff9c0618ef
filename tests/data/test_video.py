"""Video data: real mp4/avi files decode, clips are seeded and shaped, bad files are skipped by name."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from ember.config.errors import ConfigError
from ember.tasks.video_vae.data import VideoClipDataset, clip_stride, probe_videos
from ember.tasks.video_vae.index import FrameIndex
from ember.tasks.video_vae.sources import INDEX_NAME, list_sources
from ember.tasks.video_vae.synth import bouncing_shapes, write_demo_videos
from ember.tasks.video_vae.video_io import count_frames, read_frames, to_clip_tensor, write_video


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    """mp4 (libx264) in a subfolder, avi (mpeg4), a 3-frame video, a corrupt file and an image."""
    root = tmp_path_factory.mktemp("videos")
    write_demo_videos(root / "sub", 2, num_frames=20, size=48, seed=0, codec="libx264", suffix=".mp4")
    write_demo_videos(root, 1, num_frames=20, size=48, seed=1, codec="mpeg4", suffix=".avi")
    write_video(root / "short.mp4", bouncing_shapes(3, 32, np.random.default_rng(2)))
    (root / "corrupt.mp4").write_bytes(b"\x00not a video" * 50)
    return root


def test_real_mp4_and_avi_decode_with_their_frame_counts(video_dir):
    assert count_frames(video_dir / "sub" / "shapes_0000.mp4") == 20
    assert count_frames(video_dir / "shapes_0000.avi") == 20
    frames = read_frames(video_dir / "shapes_0000.avi", [0, 5, 5, 19])
    assert frames.shape == (4, 48, 48, 3) and frames.dtype == np.uint8
    assert not np.array_equal(frames[0], frames[3])  # the shapes moved


def test_corrupt_and_short_files_are_skipped_and_named(video_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="ember"):
        entries = probe_videos(str(video_dir), num_frames=9, sample_rate=1, short_videos="skip")
    names = sorted(p.rsplit("/", 1)[-1] for p, _ in entries)
    assert names == ["shapes_0000.avi", "shapes_0000.mp4", "shapes_0001.mp4"]
    assert "corrupt.mp4" in caplog.text and "short.mp4 (3 frames)" in caplog.text
    padded = probe_videos(str(video_dir), num_frames=9, sample_rate=1, short_videos="pad")
    assert "short.mp4" in " ".join(p for p, _ in padded)


def test_frame_counts_are_cached(video_dir):
    probe_videos(str(video_dir), 9, 1, "skip")
    assert (video_dir / INDEX_NAME).is_file()
    index = FrameIndex(video_dir / INDEX_NAME)
    assert index.frames(str(video_dir / "shapes_0000.avi")) == (20, None) and index.probed == 0


def test_short_video_rule():
    assert clip_stride(frames=20, num_frames=9, sample_rate=2) == 2   # 17 frames span fits
    assert clip_stride(frames=12, num_frames=9, sample_rate=3) == 1   # the stride shrinks to fit
    assert clip_stride(frames=5, num_frames=9, sample_rate=1) is None


def test_clips_are_seeded_resized_cropped_and_scaled(video_dir):
    entries = probe_videos(str(video_dir), 9, 2, "skip")
    data = VideoClipDataset(entries, num_frames=9, sample_rate=2, resolution=32, seed=3, clips_per_video=2)
    again = VideoClipDataset(entries, num_frames=9, sample_rate=2, resolution=32, seed=3, clips_per_video=2)
    assert len(data) == 6
    assert [data.frame_indices(i) for i in range(6)] == [again.frame_indices(i) for i in range(6)]
    assert np.diff(data.frame_indices(0)).tolist() == [2] * 8
    clip = data[0]["video"]
    assert data[0]["index"] == 0 and clip.shape == (3, 9, 32, 32) and clip.min() >= -1 and clip.max() <= 1


def test_short_side_resize_and_centre_crop():
    frames = np.zeros((2, 40, 80, 3), dtype=np.uint8)
    frames[:, :, 16:64] = 255  # a white band wider than the centre crop
    clip = to_clip_tensor(frames, 20)
    assert clip.shape == (3, 2, 20, 20) and clip.min().item() == 1.0  # the crop is all centre band


def test_csv_and_json_lists_resolve_relative_paths(video_dir):
    (video_dir / "list.csv").write_text("path,label\nsub/shapes_0000.mp4,a\nshapes_0000.avi,b\n")
    (video_dir / "list.json").write_text(json.dumps(["sub/shapes_0001.mp4", {"path": "shapes_0000.avi"}]))
    csv_files, _ = list_sources(str(video_dir / "list.csv"))
    json_files, _ = list_sources(str(video_dir / "list.json"))
    assert [f.rsplit("/", 1)[-1] for f in csv_files] == ["shapes_0000.mp4", "shapes_0000.avi"]
    assert len(probe_videos(str(video_dir / "list.json"), 9, 1, "skip")) == len(json_files) == 2
    with pytest.raises(ConfigError, match="no such folder"):
        list_sources(str(video_dir / "missing"))


def test_images_are_one_frame_clips(tmp_path):
    from ember.tasks.video_vae.data import clip_frames_for
    for i in range(2):
        Image.fromarray(np.full((30, 40, 3), 60 * i, dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    entries = probe_videos(str(tmp_path), 9, 1, "skip")
    assert clip_frames_for(entries, 9) == 1
    clip = VideoClipDataset(entries, 1, 1, 16, seed=0)[1]["video"]
    assert clip.shape == (3, 1, 16, 16)
