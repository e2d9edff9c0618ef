"""Knapsack packing of VLM samples and the batch the model receives.

Samples here are built by hand (ids, labels, images as embedded PNG bytes of one solid colour
each), so every expected value is known without running the encoder; one test goes through
build_vlm_datasets to check that no kept sample is lost or doubled.
"""
from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from ember.config.schema import TrainConfig
from ember.data.labels import IGNORE
from ember.tasks.vlm.data import build_vlm_datasets
from ember.tasks.vlm.images import ImageProcessor
from ember.tasks.vlm.packing import VLMSamples, build_packed, collate_vlm, knapsack

REPO = Path(__file__).resolve().parents[2]
IMAGE_ID, PAD, TPI, SIZE = 99, 0, 3, 4


def png(red: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), (red, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def sample(samples: VLMSamples, text: int, reds: list[int], supervised: int = 2) -> None:
    """A sample: its images' tokens first (one view each), then `text` text tokens, the last
    `supervised` of them carrying loss."""
    ids = [IMAGE_ID] * (TPI * len(reds)) + list(range(1, text + 1))
    labels = [IGNORE] * (len(ids) - supervised) + ids[len(ids) - supervised:]
    samples.add(ids, labels, [(png(r), f"red {r}") for r in reds], [1] * len(reds))


def red_of(view: torch.Tensor) -> int:
    return round(float((view[0].mean() * 0.5 + 0.5) * 255))


# ---- knapsack --------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_knapsack_respects_both_limits_and_places_every_sample_once(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 100) for _ in range(300)]
    images = [rng.choice([0, 0, 1, 2, 3]) for _ in range(300)]
    packs = knapsack(lengths, images, capacity=128, max_images=4, seed=seed)
    assert sorted(i for pack in packs for i in pack) == list(range(300))
    assert all(sum(lengths[i] for i in p) <= 128 and sum(images[i] for i in p) <= 4 for p in packs)
    assert sum(lengths) / (128 * len(packs)) > 0.8  # and it actually packs
    assert packs == knapsack(lengths, images, capacity=128, max_images=4, seed=seed)  # deterministic


def test_image_limit_opens_new_packs_when_tokens_would_fit():
    packs = knapsack([10] * 6, [1] * 6, capacity=1000, max_images=2)
    assert len(packs) == 3 and all(len(p) == 2 for p in packs)
    # text-only samples still fill the packs that are full of images
    packs = knapsack([10] * 4 + [5] * 4, [1] * 4 + [0] * 4, capacity=30, max_images=2)
    assert len(packs) == 2


# ---- the packed dataset ----------------------------------------------------------------------

def test_positions_restart_and_seams_carry_no_loss():
    samples = VLMSamples()
    sample(samples, 5, [10])
    sample(samples, 4, [], supervised=4)  # its first token too (as with train_on_prompt)
    sample(samples, 6, [20, 30])
    packed = build_packed(samples, seq_length=64, max_images_per_knapsack=8, processor=ImageProcessor(SIZE), label="t")
    assert len(packed) == 1
    item = packed[0]
    order = packed.packs[0]
    lengths = [len(samples.input_ids[i]) for i in order]
    expected_positions = [p for n in lengths for p in range(n)]
    assert item["position_ids"].tolist() == expected_positions
    starts = np.cumsum([0] + lengths[:-1])
    assert all(item["labels"][s] == IGNORE for s in starts)
    assert int((item["labels"] != IGNORE).sum()) == 2 + 3 + 2  # the rest of the labels kept
    assert item["input_ids"].tolist() == [t for i in order for t in samples.input_ids[i].tolist()]
    assert item["pixel_values"].shape == (3, 3, SIZE, SIZE)


def test_build_packed_drops_what_cannot_fit(caplog):
    samples = VLMSamples()
    sample(samples, 100, [])          # longer than seq_length
    sample(samples, 2, [1, 2, 3])     # more images than a pack may hold
    sample(samples, 2, [4])
    packed = build_packed(samples, seq_length=32, max_images_per_knapsack=2, processor=ImageProcessor(SIZE), label="t")
    assert packed.packs == [[2]]


# ---- collate ---------------------------------------------------------------------------------

def test_collate_pixel_values_follow_image_tokens():
    samples = VLMSamples()
    reds = [[10, 20], [], [30], [40, 50, 60], []]
    for i, r in enumerate(reds):
        sample(samples, 3 + i, r)
    packed = build_packed(samples, seq_length=24, max_images_per_knapsack=3, processor=ImageProcessor(SIZE),
                          label="t", seed=1)
    assert len(packed) >= 2
    batch = collate_vlm(PAD, SIZE)([packed[i] for i in range(len(packed))])
    n_views = batch["pixel_values"].shape[0]
    assert batch["pixel_values"].dtype == torch.float32
    assert int((batch["input_ids"] == IMAGE_ID).sum()) == n_views * TPI
    # walk the image tokens row by row: each run of TPI tokens is the next view, and each view
    # is the image of the sample it sits in
    expected = [red for row in range(len(packed)) for i in packed.packs[row] for red in reds[i]]
    assert [red_of(v) for v in batch["pixel_values"]] == expected


def test_collate_pads_with_fresh_positions_and_no_loss():
    samples = VLMSamples()
    sample(samples, 10, [7])
    sample(samples, 2, [])
    packed = build_packed(samples, 14, 4, ImageProcessor(SIZE), "t")  # 13 + 2 tokens: two packs
    items = [packed[0], packed[1]]
    batch = collate_vlm(PAD, SIZE)(items)
    short = min(range(2), key=lambda r: len(items[r]["input_ids"]))
    n = len(items[short]["input_ids"])
    width = batch["input_ids"].shape[1]
    assert batch["labels"][short, n:].eq(IGNORE).all() and batch["input_ids"][short, n:].eq(PAD).all()
    assert batch["position_ids"][short, n:].tolist() == list(range(width - n))


def test_batch_without_images_has_empty_pixel_values():
    samples = VLMSamples()
    sample(samples, 4, [])
    item = build_packed(samples, 16, 4, ImageProcessor(SIZE), "t")[0]
    batch = collate_vlm(PAD, SIZE)([item, item])
    assert batch["pixel_values"].shape == (0, 3, SIZE, SIZE)
    assert int((batch["input_ids"] == IMAGE_ID).sum()) == 0


# ---- through the encoder ---------------------------------------------------------------------

def test_every_kept_sample_is_packed_once_and_the_invariant_holds(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(str(REPO / "examples" / "data" / "tokenizer"))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|image|>"]})
    rng = random.Random(0)
    rows = []
    for i in range(30):
        n = rng.choice([0, 1, 2])
        names = []
        for k in range(n):
            names.append(f"{i}_{k}.jpg")
            Image.new("RGB", rng.choice([(8, 8), (20, 9), (9, 30)]), (i * 8, 0, 0)).save(tmp_path / names[-1])
        rows.append({"messages": [{"role": "user", "content": "<image>" * n + "q" * rng.randint(1, 30)},
                                  {"role": "assistant", "content": f"a{i}"}], "images": names})
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    cfg = TrainConfig(task="vlm", dataset="rows.json", dataset_dir=str(tmp_path), seq_length=200,
                      max_images_per_knapsack=3)
    processor = ImageProcessor(8, max_img_size=16)  # some images split into tiles
    train, _, collate = build_vlm_datasets(cfg, tokenizer, processor, "<|image|>", 2)
    assert sorted(i for pack in train.packs for i in pack) == list(range(len(train.samples))) == list(range(30))
    image_id = tokenizer.convert_tokens_to_ids("<|image|>")
    for start in range(0, len(train), 4):
        batch = collate([train[i] for i in range(start, min(start + 4, len(train)))])
        assert int((batch["input_ids"] == image_id).sum()) == batch["pixel_values"].shape[0] * 2
        assert batch["input_ids"].shape[1] <= 200
    assert all(sum(len(train.samples.images[i]) for i in p) <= 3 for p in train.packs)
