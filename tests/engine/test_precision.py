"""Precision modes on CPU: fp16 (autocast + GradScaler), bf16 (autocast), pure_bf16 (bf16 weights).

Every run starts from the saved tiny model (tiny_model_dir), so the initial weights are
known and the tests can tell a skipped step from a taken one.
"""
from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from ember.config import build_config
from ember.engine.trainer import Trainer
from ember.tasks import build_task

from conftest import read_metrics

STEPS = 8


@pytest.fixture
def lm_config(tiny_model_dir, corpus_dir, tmp_path):
    def make(**overrides):
        base = dict(model_name_or_path=str(tiny_model_dir), dataset="tiny_text", dataset_dir=str(corpus_dir),
                    max_samples=20, cutoff_len=32, per_device_train_batch_size=4, learning_rate=5e-3,
                    warmup_steps=0, lr_scheduler_type="constant", max_steps=STEPS, logging_steps=1, save_steps=0,
                    disable_tqdm=True, output_dir=str(tmp_path / "run"))
        base.update(overrides)
        return build_config(base)
    return make


def fit(cfg) -> tuple[Trainer, list[dict]]:
    trainer = Trainer(cfg, build_task(cfg))
    trainer.fit()
    return trainer, [r for r in read_metrics(cfg.output_dir) if "loss" in r]


def initial_weights(model_dir) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).state_dict()


def assert_learns(records: list[dict]) -> None:
    losses = [r["loss"] for r in records]
    assert len(losses) == STEPS
    assert all(math.isfinite(x) for x in losses), losses
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1, f"loss should fall: {losses}"
    assert all(math.isfinite(r["grad_norm"]) for r in records)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "pure_bf16"])
def test_each_precision_trains(lm_config, precision):
    flags = {} if precision == "fp32" else {precision: True}
    if precision == "fp16":
        flags["init_loss_scale"] = 1024.0
    trainer, records = fit(lm_config(**flags))
    assert trainer.precision.name == precision
    assert_learns(records)
    expected_dtype = torch.bfloat16 if precision == "pure_bf16" else torch.float32
    dtypes = {p.dtype for p in trainer.model.parameters()}
    assert dtypes == {expected_dtype}
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    if precision == "fp16":
        assert records[0]["loss_scale"] == 1024.0, "the scaler starts at init_loss_scale"
        assert records[-1]["skipped_steps"] == 0
    else:
        assert "skipped_steps" not in records[-1]


def test_autocast_really_computes_in_half_precision(lm_config, tmp_path):
    """fp16 and bf16 runs are not fp32 runs under another name: their losses differ from fp32's."""
    _, fp32 = fit(lm_config(max_steps=2, output_dir=str(tmp_path / "fp32")))
    for flag in ("fp16", "bf16"):
        _, half = fit(lm_config(max_steps=2, output_dir=str(tmp_path / flag), **{flag: True}))
        assert half[0]["loss"] != fp32[0]["loss"], flag
        assert half[0]["loss"] == pytest.approx(fp32[0]["loss"], rel=1e-2), flag


def test_fp16_overflowing_steps_are_skipped_and_counted(lm_config, tiny_model_dir):
    """A loss scale of 1e30 overflows fp16 gradients: no update happens, and every step says so."""
    steps = 4
    trainer, records = fit(lm_config(fp16=True, init_loss_scale=1e30, max_steps=steps))
    assert [r["skipped_steps"] for r in records] == list(range(1, steps + 1))
    # GradScaler halves the scale at each overflow (backoff_factor 0.5)
    assert [r["loss_scale"] for r in records] == pytest.approx([1e30 / 2 ** k for k in range(1, steps + 1)])
    assert all(math.isfinite(r["loss"]) for r in records)
    start = initial_weights(tiny_model_dir)
    for name, value in trainer.model.state_dict().items():
        assert torch.isfinite(value).all(), name
        assert torch.equal(value, start[name]), f"{name} changed although every step overflowed"


def test_fp16_recovers_after_overflow(lm_config, tiny_model_dir):
    """A too-large initial scale costs a few skipped steps, then training proceeds."""
    scale, steps = 2.0 ** 22, 14
    trainer, records = fit(lm_config(fp16=True, init_loss_scale=scale, max_steps=steps, learning_rate=3e-3))
    skipped = records[-1]["skipped_steps"]
    assert 0 < skipped < steps // 2
    assert records[-1]["loss_scale"] == pytest.approx(scale / 2 ** skipped)
    assert min(r["loss"] for r in records[-3:]) < records[0]["loss"] - 0.1
    start = initial_weights(tiny_model_dir)
    assert any(not torch.equal(v, start[k]) for k, v in trainer.model.state_dict().items())
