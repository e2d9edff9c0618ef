"""Exact gradient accumulation: batch 8 × accumulation 1 equals batch 2 × accumulation 4.

The data is one document per sample (`packing: false`, each truncated to cutoff_len), chosen
so that one document is far shorter than the rest: the micro-batch that carries it has about
half the real (loss-bearing) tokens of the others. Averaging each micro-batch's mean loss (the
bug transformers shipped until 4.46) weights that micro-batch as much as a full one and
drifts from the big-batch run; normalising the window's summed loss by its token count does
not. `test_mean_of_micro_batch_means_would_be_caught` runs that naive variant (a task
wrapper reporting each micro-batch's mean with a count of 1) on the same data and checks
that the comparisons used here see it by a wide margin. max_samples and cutoff_len are
picked from the fixture corpus at run time, so the premise survives edits of the demo
corpus; ember's own data pipeline then confirms it.

Order: BatchStream shuffles block indices with one seeded permutation per epoch and cuts it
into micro-batches in order, so 8 consecutive indices form one big batch or four
micro-batches of 2. With a block count divisible by 8 no window straddles an epoch boundary,
and all runs see the same blocks at every optimizer step; each run records what it was
fed, and `test_every_optimizer_step_sees_the_same_blocks` checks it instead of assuming it.

Optimizers: weights are compared after SGD with momentum, where a gradient difference
shows up in the weights undamped. With AdamW the first update is ≈ lr·g/(|g|+eps), so an
element whose gradient is ~1e-8 (a cancellation) turns float-summation noise into weight
differences of 1e-5..1e-4 after a step: identical maths, different weights, in any framework.
So for the AdamW runs the tests compare what accumulation is responsible for: the loss of
every step and the gradient every optimizer step applies.
"""
from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ember.config import build_config
from ember.engine.task import Loss
from ember.engine.trainer import Trainer
from ember.tasks import build_task

from conftest import read_metrics

BIG_BATCH = 8
EPOCHS = 2
SGD = dict(optim="sgd", momentum=0.9, learning_rate=0.5)
ADAMW = dict(optim="adamw", learning_rate=3e-3, weight_decay=0.01)
LOSS_REL = 1e-5
WEIGHT_TOL = 1e-5
GRAD_REL = 1e-5  # of the gradient's norm


class Run(NamedTuple):
    seen: dict
    losses: list
    weights: dict
    grads: list


class Recording:
    """Wraps a task: records the real tokens of every block each optimizer step trains on.

    naive=True turns each micro-batch's loss into its mean (count 1), so the engine ends up
    averaging per-micro-batch means: the normalisation this file must be able to catch.
    """

    def __init__(self, task, naive: bool = False):
        self.task, self.naive = task, naive
        self.seen: dict[int, list[tuple[int, ...]]] = defaultdict(list)

    def __getattr__(self, name):
        return getattr(self.task, name)

    def training_step(self, model, batch, step):
        losses = self.task.training_step(model, batch, step)
        mask = batch.get("attention_mask")
        for row, ids in enumerate(batch["input_ids"]):
            length = int(mask[row].sum()) if mask is not None else len(ids)
            self.seen[step].append(tuple(ids[:length].tolist()))
        if self.naive:
            losses = {name: Loss(loss.total / loss.count, 1) for name, loss in losses.items()}
        return losses


def run(make_config, data: dict, name: str, batch: int, accum: int, naive: bool = False, **overrides) -> Run:
    """Train; return the blocks of each step, the logged losses, the final weights and the
    gradient each optimizer step applied (after normalisation and clipping)."""
    cfg = make_config(per_device_train_batch_size=batch, gradient_accumulation_steps=accum, max_steps=data["steps"],
                      logging_steps=1, seed=7, output_dir=name, max_samples=data["max_samples"],
                      cutoff_len=data["cutoff_len"], **overrides)
    task = Recording(build_task(cfg), naive=naive)
    grads = []

    def record_grads(optimizer, args, kwargs):
        grads.append(torch.cat([p.grad.detach().flatten().clone() for g in optimizer.param_groups
                                for p in g["params"] if p.grad is not None]))

    hook = register_optimizer_step_pre_hook(record_grads)
    try:
        trainer = Trainer(cfg, task)
        trainer.fit()
    finally:
        hook.remove()
    losses = [r["loss"] for r in read_metrics(cfg.output_dir) if "loss" in r]
    weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    return Run(dict(task.seen), losses, weights, grads)


def choose_data(corpus_dir, tokenizer_dir) -> dict:
    """max_samples and cutoff_len giving 16-32 documents (a multiple of 8), exactly one of them
    (the `tail`) at most half as long as cutoff_len and shorter than every other.

    Counts tokens as ember's pretraining data does with packing: false (each line a document,
    followed by EOS, truncated to cutoff_len); the fixture then checks it against ember's samples.
    """
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    lines = (corpus_dir / "tiny.txt").read_text(encoding="utf-8").splitlines()
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in lines[:80]]
    for blocks in (24, 16, 32):
        for cutoff_len in range(64, 31, -1):
            kept = [min(n, cutoff_len) for n in lengths[:blocks]]
            tail = min(kept)
            if kept.count(tail) == 1 and 2 * tail <= cutoff_len:
                return dict(max_samples=blocks, cutoff_len=cutoff_len, blocks=blocks, tail=tail,
                            steps=EPOCHS * blocks // BIG_BATCH)
    raise AssertionError("no max_samples/cutoff_len gives one short document in whole big batches")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus_dir, tokenizer_dir):
    """Every run the tests compare, built once (about a second each)."""
    tmp = tmp_path_factory.mktemp("accumulation")

    def make_config(output_dir, **overrides):
        base = dict(model_config="llama-tiny", tokenizer_name_or_path=str(tokenizer_dir), dataset="tiny_text",
                    dataset_dir=str(corpus_dir), save_steps=0, disable_tqdm=True, output_dir=str(tmp / output_dir),
                    packing=False)
        base.update(overrides)
        return build_config(base)

    data = choose_data(corpus_dir, tokenizer_dir)
    # the premise, as ember's pipeline builds it: whole big batches, one short document
    blocks, _, _ = build_task(make_config("probe", max_steps=1, max_samples=data["max_samples"],
                                          cutoff_len=data["cutoff_len"])).build_data()
    assert len(blocks) == data["blocks"], f"expected {data['blocks']} blocks, ember made {len(blocks)}"
    assert min(len(blocks[i]) for i in range(len(blocks))) == data["tail"], "one document should be short"

    return {
        "data": data,
        "sgd_8x1": run(make_config, data, "sgd_8x1", 8, 1, **SGD),
        "sgd_2x4": run(make_config, data, "sgd_2x4", 2, 4, **SGD),
        "sgd_4x2": run(make_config, data, "sgd_4x2", 4, 2, **SGD),
        "sgd_2x4_naive": run(make_config, data, "sgd_2x4_naive", 2, 4, naive=True, **SGD),
        "adamw_8x1": run(make_config, data, "adamw_8x1", 8, 1, **ADAMW),
        "adamw_2x4": run(make_config, data, "adamw_2x4", 2, 4, **ADAMW),
        "adamw_2x4_naive": run(make_config, data, "adamw_2x4_naive", 2, 4, naive=True, **ADAMW),
    }


def windows(seen):
    return {step: sorted(blocks) for step, blocks in seen.items()}


def loss_gap(a: list, b: list) -> float:
    assert len(a) == len(b)
    return max(abs(x - y) / abs(y) for x, y in zip(a, b))


def weight_gap(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def grad_gap(a: list, b: list, steps: int | None = None) -> float:
    """Largest difference of applied gradients, relative to the gradient's norm."""
    assert len(a) == len(b)
    return max(((x - y).abs().max() / y.norm()).item() for x, y in zip(a[:steps], b[:steps]))


@pytest.mark.parametrize("variant", ["sgd_2x4", "sgd_4x2", "adamw_2x4", "sgd_2x4_naive"])
def test_every_optimizer_step_sees_the_same_blocks(runs, variant):
    reference = windows(runs[variant.replace("2x4", "8x1").replace("4x2", "8x1").replace("_naive", "")].seen)
    data = runs["data"]
    assert sorted(reference) == list(range(data["steps"]))
    assert windows(runs[variant].seen) == reference
    assert all(len(blocks) == BIG_BATCH for blocks in reference.values())
    # the short block is trained on once per epoch, in a window with full blocks
    assert sum(min(map(len, blocks)) == data["tail"] for blocks in reference.values()) == EPOCHS


@pytest.mark.parametrize("variant", ["sgd_2x4", "sgd_4x2"])
def test_accumulated_run_matches_big_batch_losses_and_weights(runs, variant):
    big, acc = runs["sgd_8x1"], runs[variant]
    assert len(big.losses) == len(acc.losses) == runs["data"]["steps"]
    assert big.losses[-1] < big.losses[0] - 0.3, "the run should learn, or equality proves little"
    losses, grads = loss_gap(acc.losses, big.losses), grad_gap(acc.grads, big.grads)
    assert losses < LOSS_REL, f"per-step losses differ by {losses:.2e} relative"
    assert grads < GRAD_REL, f"applied gradients differ by {grads:.2e} of their norm"
    for name in big.weights:
        torch.testing.assert_close(acc.weights[name], big.weights[name], atol=WEIGHT_TOL, rtol=0, msg=name)


def test_accumulated_adamw_run_matches_big_batch_losses_and_gradients(runs):
    big, acc = runs["adamw_8x1"], runs["adamw_2x4"]
    assert big.losses[-1] < big.losses[0] - 0.3
    losses = loss_gap(acc.losses, big.losses)
    assert losses < LOSS_REL, f"per-step losses differ by {losses:.2e} relative"
    # the first step starts from identical weights: its gradient must agree to float precision
    first = grad_gap(acc.grads, big.grads, steps=1)
    assert first < GRAD_REL, f"step 1 gradients differ by {first:.2e} of their norm"
    # later steps start from weights that Adam's eps has already set ~1e-5 apart in a few
    # elements; that barely moves the gradients (~1e-7 here), but leave a little room
    later = grad_gap(acc.grads, big.grads)
    assert later < 10 * GRAD_REL, f"applied gradients differ by {later:.2e} of their norm"


def test_mean_of_micro_batch_means_would_be_caught(runs):
    """The same comparisons against the naive normalisation fail by a wide margin."""
    big, naive = runs["sgd_8x1"], runs["sgd_2x4_naive"]
    assert loss_gap(naive.losses, big.losses) > 100 * LOSS_REL
    assert grad_gap(naive.grads, big.grads, steps=1) > 100 * GRAD_REL
    assert weight_gap(naive.weights, big.weights) > 100 * WEIGHT_TOL
    adam_big, adam_naive = runs["adamw_8x1"], runs["adamw_2x4_naive"]
    assert loss_gap(adam_naive.losses, adam_big.losses) > 100 * LOSS_REL
    assert grad_gap(adam_naive.grads, adam_big.grads, steps=1) > 100 * GRAD_REL
