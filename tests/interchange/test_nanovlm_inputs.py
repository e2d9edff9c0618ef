"""image_token_layout: nanovlm builds nanoVLM's own input_ids, labels and pixels: the fixture's samples
are rebuilt token for token from text and images through ember's data pipeline."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from nanovlm_helpers import CHECKPOINT, FIXTURE, stand_in_tokenizer
from PIL import Image
from safetensors.torch import load_file

from ember.config import build_config
from ember.config.errors import ConfigError
from ember.tasks import build_task

IMG, GLOBAL = 100, 101


@pytest.fixture(scope="module")
def batch():
    return load_file(str(FIXTURE / "batch.safetensors"))


def _text(ids) -> str:
    return " ".join(f"w{i}" for i in ids)


def _row(ids: list[int]) -> dict:
    """The cauldron row behind one of the fixture's samples: user text after the image string, the answer."""
    user_start = max(i for i, t in enumerate(ids[:ids.index(12)]) if t in (IMG, GLOBAL) or t >= 102) + 1
    user_end = ids.index(2, user_start)
    answer_start = ids.index(12) + 2
    answer_end = ids.index(2, answer_start)
    return {"user": _text(ids[user_start:user_end]), "assistant": _text(ids[answer_start:answer_end])}


def _image(path, width, height, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


@pytest.fixture(scope="module")
def task(batch, tmp_path_factory):
    root = tmp_path_factory.mktemp("nano_inputs")
    unpacked = batch["input_ids"][1].tolist()  # the row without padding; one image, not split
    packed = batch["packed_input_ids"][0].tolist()
    split = packed[37:37 + 68]  # the packed row's second sample (1 × 2 tiles), without its separator
    _image(root / "square.png", 64, 64, 0)
    _image(root / "wide.png", 128, 64, 1)
    rows = [{"images": ["square.png"], "texts": [_row(unpacked)]}, {"images": ["wide.png"], "texts": [_row(split)]}]
    (root / "rows.json").write_text(json.dumps(rows))
    cfg = build_config({"task": "vlm", "resume_from_vlm_checkpoint": True, "vlm_checkpoint_path": str(CHECKPOINT),
                            "tokenizer_name_or_path": stand_in_tokenizer(root / "tok"), "dataset": str(root / "rows.json"),
                            "dataset_dir": str(root), "resize_to_max_side_len": False, "seq_length": 128,
                            "per_device_train_batch_size": 1, "max_steps": 1, "output_dir": str(root / "run"), "seed": 0})
    task = build_task(cfg)
    task.expected = [(unpacked, batch["labels"][1].tolist()), (split, batch["packed_labels"][0, 37:37 + 68].tolist())]
    task.root = root
    return task


def test_ids_and_labels_are_nanovlms(task):
    train, _, _ = task.build_data()
    samples = train.samples
    for k, (ids, shifted) in enumerate(task.expected):
        assert samples.input_ids[k].tolist() == ids
        # nanoVLM stores labels already shifted left; ember shifts when computing the loss
        labels = np.roll(np.asarray(samples.labels[k]), -1)
        labels[-1] = -100
        assert labels.tolist() == shifted
    assert samples.views == [[1], [3]]  # the split image: global view + 2 tiles


def test_pixels_are_nanovlms(task):
    square = np.asarray(Image.open(task.root / "square.png"), dtype=np.float32)
    views = task.processor(Image.open(task.root / "square.png"))
    assert views.shape == (1, 3, 64, 64)  # one tile: no separate global view
    assert torch.equal(views[0], torch.from_numpy(square).permute(2, 0, 1) / 255.0)  # [0, 1], no mean/std
    wide = np.asarray(Image.open(task.root / "wide.png"), dtype=np.float32)
    views = task.processor(Image.open(task.root / "wide.png"))
    assert views.shape == (3, 3, 64, 64)  # global view first, then the tiles left to right
    canvas = torch.from_numpy(wide).permute(2, 0, 1) / 255.0
    assert torch.equal(views[1], canvas[:, :, :64]) and torch.equal(views[2], canvas[:, :, 64:])
    assert 0 <= views.min() and views.max() <= 1


def test_resize_to_max_side_len_scales_up(task):
    from ember.tasks.vlm.nanovlm_inputs import NanoVLMImages
    assert NanoVLMImages(64, 128, True).grid(40, 30) == (2, 2)  # long side to 128, short side rounded up
    assert NanoVLMImages(64, 128, False).grid(40, 30) == (1, 1)
    assert NanoVLMImages(64, 128, False).grid(200, 60) == (1, 2)


def test_the_plain_layout_needs_no_nanovlm_model(tmp_path):
    with pytest.raises(ConfigError, match="image_token_layout nanovlm needs a model"):
        build_task(build_config({"task": "vlm", "vision_config": "siglip-tiny", "model_config": "llama-tiny",
                                     "tokenizer_name_or_path": str(FIXTURE.parents[2] / "examples/data/tokenizer"),
                                     "image_token_layout": "nanovlm", "dataset": "x", "max_steps": 1,
                                     "output_dir": str(tmp_path / "run")}))
