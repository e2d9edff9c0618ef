"""MFU: the measured peak, the FLOPs a causal LM counts per batch, and what training logs."""
from __future__ import annotations

import logging
import time

import pytest
import torch

from ember.engine.flops import measure_peak_flops
from ember.tasks import build_task

from conftest import read_metrics


def test_peak_is_positive_and_measured_once_per_process():
    cpu = torch.device("cpu")
    first = measure_peak_flops(cpu, torch.float32, min_seconds=0.001, max_size=512)
    start = time.perf_counter()
    again = measure_peak_flops(cpu, torch.float32, min_seconds=0.001, max_size=512)
    assert first == again > 1e6
    assert time.perf_counter() - start < 0.01, "the second call is served from the cache"


def palm_flops_per_token(config, seq_len: int) -> int:
    """6·N + 12·L·H·Q·T written out from the config: N = attention and MLP weights of every
    layer plus the (tied) output head; the input embedding lookup is no matmul."""
    h, layers = config.hidden_size, config.num_hidden_layers
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    q = h // heads
    per_layer = 2 * h * heads * q + 2 * h * kv * q + 3 * h * config.intermediate_size
    n = layers * per_layer + config.vocab_size * h
    return 6 * n + 12 * layers * heads * q * seq_len


def test_causal_lm_counts_palm_flops_for_real_tokens_only(make_config):
    task = build_task(make_config())
    model = task.build_model()
    ids = torch.ones(3, 16, dtype=torch.long)
    assert task.flops(model, {"input_ids": ids}) == 3 * 16 * palm_flops_per_token(model.config, 16)
    mask = torch.ones(3, 16, dtype=torch.long)
    mask[1, 10:] = 0  # six padding positions do no useful work
    assert task.flops(model, {"input_ids": ids, "attention_mask": mask}) == 42 * palm_flops_per_token(model.config, 16)


def test_frozen_weights_cost_no_weight_gradients(make_config):
    """Frozen weights still pass gradients to the activations (4 FLOPs per weight per token),
    but compute none of their own (the 2 of the 6)."""
    full_task = build_task(make_config())
    full = full_task.flops(full_task.build_model(), {"input_ids": torch.ones(1, 8, dtype=torch.long)})
    lora_task = build_task(make_config(finetuning_type="lora"))
    lora_model = lora_task.build_model()
    lora = lora_task.flops(lora_model, {"input_ids": torch.ones(1, 8, dtype=torch.long)})
    adapters = sum(p.numel() for p in lora_model.parameters() if p.requires_grad)
    assert lora == pytest.approx(full * 4 / 6 + 8 * 6 * adapters, rel=0.03)  # the attention term is small here
    assert lora < full


def test_training_logs_mfu_and_data_wait_and_the_peak_once(make_config, train, caplog):
    cfg = make_config(max_steps=4, logging_steps=2)
    with caplog.at_level(logging.INFO, logger="ember"):
        train(cfg)
    records = [r for r in read_metrics(cfg.output_dir) if "loss" in r]
    assert len(records) == 2
    assert all(0 < r["mfu"] < 2 and 0 <= r["data_wait"] < 1 for r in records)
    assert len([m for m in caplog.messages if m.startswith("mfu: against a peak of")]) == 1


def test_the_peak_can_be_given_instead_of_measured(make_config, train, caplog):
    cfg = make_config(max_steps=2, logging_steps=2, mfu_peak_flops=1e18)  # a GPU's datasheet number, say
    with caplog.at_level(logging.INFO, logger="ember"):
        train(cfg)
    assert 0 < read_metrics(cfg.output_dir)[0]["mfu"] < 1e-3
    assert "mfu: against a peak of 1e+18 FLOP/s per device (mfu_peak_flops)" in caplog.messages


@pytest.mark.slow
def test_compile_trains_the_same_model_as_eager(make_config, train):
    """compile: true compiles each decoder block in place: same losses (to float rounding), same
    parameter names in the exported model."""
    eager = make_config(max_steps=3, output_dir=str(make_config().output_dir) + "-eager")
    compiled = make_config(max_steps=3, compile=True)
    trainer = train(compiled)
    train(eager)
    losses = [[r["loss"] for r in read_metrics(c.output_dir) if "loss" in r] for c in (eager, compiled)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    assert all("_orig_mod" not in name for name in trainer.raw.state_dict())


def test_compile_takes_each_repeated_block_once(monkeypatch):
    """Blocks nested in a compiled block are compiled with it, never on their own."""
    from torch import nn

    from ember.engine.runtime import compile_model
    compiled = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kw: compiled.append(self))
    inner = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
    outer = nn.ModuleList([nn.Sequential(nn.Linear(2, 2), inner[0]), nn.Linear(2, 2)])
    compile_model(nn.ModuleDict({"outer": outer, "inner": inner}))
    assert compiled == [outer[0], outer[1], inner[1]]
