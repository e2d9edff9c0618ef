"""SFT packing: the knapsack, the packed rows, and isolation of samples inside a pack.

Isolation is checked numerically: each sample's per-token losses (and logits) inside a packed
row equal those of the same sample run alone, within 1e-5 in fp32.
"""
from __future__ import annotations

import logging
import random
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ember.data.labels import IGNORE
from ember.data.packing import SFTDataset, collate_sft, knapsack
from ember.models.hf import load_causal_lm
from ember.tasks import build_task

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "data"


# ---- knapsack ------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(8))
def test_knapsack_places_every_sample_once_and_never_overfills(seed):
    rng = random.Random(seed)
    capacity = rng.choice([16, 64, 256])
    lengths = [rng.randint(1, capacity) for _ in range(rng.randint(1, 300))]
    bins = knapsack(lengths, capacity)
    placed = sorted(i for b in bins for i in b)
    assert placed == list(range(len(lengths)))
    loads = [sum(lengths[i] for i in b) for b in bins]
    assert all(0 < load <= capacity for load in loads)
    # a bin is opened only for a sample that fits in no open bin, so no two bins could be merged
    for a in range(len(loads)):
        for b in range(a + 1, len(loads)):
            assert loads[a] + loads[b] > capacity, (a, b, loads[a], loads[b])


def test_knapsack_finds_the_tight_packing():
    lengths = [6, 4, 5, 5, 3, 7, 2, 8]  # sums to 40: four full bins of 10 exist
    bins = knapsack(lengths, 10)
    assert len(bins) == 4
    assert sorted(sum(lengths[i] for i in b) for b in bins) == [10, 10, 10, 10]


def test_knapsack_edge_cases():
    assert knapsack([], 8) == []
    assert knapsack([8, 8], 8) == [[0], [1]]
    assert sorted(map(sorted, knapsack([1] * 8, 8))) == [list(range(8))]


# ---- packed rows ---------------------------------------------------------------------------

IDS = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]]
LABELS = [[IGNORE, 6, 7], [IGNORE, 9], [IGNORE, IGNORE, 12, 13], [14]]


def test_packed_row_concatenates_samples_with_restarting_positions():
    packs = knapsack([len(x) for x in IDS], 6)
    data = SFTDataset(IDS, LABELS, packs)
    assert len(data) == len(packs)
    seen = []
    for k, pack in enumerate(packs):
        item = data[k]
        assert item["input_ids"].tolist() == [t for i in pack for t in IDS[i]]
        assert item["position_ids"].tolist() == [p for i in pack for p in range(len(IDS[i]))]
        # the first token of every sample is not a target: no loss across a sample boundary
        assert item["labels"].tolist() == [l for i in pack for l in [IGNORE] + LABELS[i][1:]]
        assert len(item["input_ids"]) <= 6
        seen += pack
    assert sorted(seen) == list(range(len(IDS)))


def test_collate_pads_packed_rows_as_separate_runs():
    data = SFTDataset(IDS, LABELS, [[2, 0], [1]])
    batch = collate_sft(pad_id=0)([data[0], data[1]])
    assert batch["input_ids"].tolist() == [[10, 11, 12, 13, 5, 6, 7], [8, 9, 0, 0, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2], [0, 1, 0, 1, 2, 3, 4]]
    assert batch["labels"][1, 2:].eq(IGNORE).all()
    assert "attention_mask" not in batch


# ---- isolation --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def packed(tiny_model_dir):
    from ember.config import build_config
    cfg = build_config(dict(model_name_or_path=str(tiny_model_dir), stage="sft", template="default",
                            dataset="pydoc_alpaca,pydoc_sharegpt", dataset_dir=str(DEMO), max_samples=12,
                            cutoff_len=512, packing=True, output_dir="unused", max_steps=1))
    task = build_task(cfg)
    train, _, collate = task.build_data()
    model = load_causal_lm(str(tiny_model_dir)).eval()
    return task, train, collate, model


def per_token_loss(logits, labels):
    return F.cross_entropy(logits[:-1].float(), labels[1:], ignore_index=IGNORE, reduction="none")


def test_each_sample_in_a_pack_has_the_loss_it_has_alone(packed):
    task, train, collate, model = packed
    fullest = max(range(len(train)), key=lambda k: len(train.packs[k]))
    # beside it, the shortest pack of several samples: the batch then pads it
    shortest = min((k for k in range(len(train)) if k != fullest and len(train.packs[k]) >= 2),
                   key=lambda k: len(train[k]["input_ids"]))
    rows = [fullest, shortest]
    assert len(train.packs[rows[0]]) >= 3, "the pack should hold several samples"
    batch = collate([train[k] for k in rows])
    assert batch["input_ids"].shape[1] > len(train[rows[1]]["input_ids"]), "the second row should be padded"
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        naive = model(input_ids=batch["input_ids"], use_cache=False).logits  # no isolation: the control
    worst, naive_worst, checked = 0.0, 0.0, 0
    for row, k in enumerate(rows):
        offset = 0
        for i in train.packs[k]:
            ids, labels = torch.tensor(train.input_ids[i]), torch.tensor(train.labels[i])
            n = len(ids)
            with torch.no_grad():
                alone = model(input_ids=ids[None], use_cache=False).logits[0]
            inside = logits[row, offset:offset + n]
            torch.testing.assert_close(inside, alone, atol=1e-5, rtol=0)
            target = labels[1:] != IGNORE
            assert target.any()
            loss_alone = per_token_loss(alone, labels)[target]
            loss_inside = per_token_loss(inside, batch["labels"][row, offset:offset + n])[target]
            worst = max(worst, float((loss_alone - loss_inside).abs().max()))
            if offset:
                naive_loss = per_token_loss(naive[row, offset:offset + n], batch["labels"][row, offset:offset + n])
                naive_worst = max(naive_worst, float((naive_loss[target] - loss_alone).abs().max()))
            offset += n
            checked += 1
    assert checked >= 4
    assert worst <= 1e-5, worst
    assert naive_worst > 1e-3, "without position_ids the samples should see each other (control)"


def test_training_step_on_a_pack_equals_the_samples_alone(packed):
    task, train, collate, model = packed
    k = max(range(len(train)), key=lambda j: len(train.packs[j]))
    with torch.no_grad():
        loss = task.training_step(model, collate([train[k]]), 0)["model"]
        total, count = 0.0, 0
        for i in train.packs[k]:
            alone = task.training_step(model, {"input_ids": torch.tensor([train.input_ids[i]]),
                                               "labels": torch.tensor([train.labels[i]])}, 0)["model"]
            total, count = total + float(alone.total), count + int(alone.count)
    assert int(loss.count) == count
    assert float(loss.total) == pytest.approx(total, rel=1e-5)


def test_every_sample_is_packed_once_within_cutoff(packed):
    _, train, _, _ = packed
    assert sorted(i for p in train.packs for i in p) == list(range(len(train.input_ids)))
    assert all(len(train[k]["input_ids"]) <= 512 for k in range(len(train)))
    assert len(train) < len(train.input_ids)


def test_packing_efficiency_is_logged(make_config, tiny_model_dir, caplog):
    cfg = make_config(model_config=None, model_name_or_path=str(tiny_model_dir), stage="sft", template="default",
                      dataset="pydoc_alpaca", dataset_dir=str(DEMO), max_samples=20, cutoff_len=200, packing=True)
    with caplog.at_level(logging.INFO, logger="ember"):
        train, _, _ = build_task(cfg).build_data()
    messages = [r.getMessage() for r in caplog.records if r.name == "ember" and "efficiency" in r.getMessage()]
    assert messages, "packing efficiency should be logged"
    tokens = sum(len(x) for x in train.input_ids)
    expected = 100 * tokens / (len(train.packs) * 200)
    value = float(re.search(r"efficiency\D*?([\d.]+)\s*%", messages[0]).group(1))
    assert value == pytest.approx(expected, abs=0.05)
    assert 0 < value <= 100
