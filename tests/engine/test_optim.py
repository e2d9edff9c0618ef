"""Optimizers: which tensors decay, and every optimizer name builds, steps and trains."""
from __future__ import annotations

import importlib.util
import math
import sys

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from ember.config import ConfigError, build_config
from ember.engine.optim import build_optimizer, decay_split, default_param_groups
from ember.models.hf import read_model_config

from conftest import read_metrics

CPU = torch.device("cpu")


def optim_cfg(**overrides):
    base = dict(model_config="llama-tiny", dataset="unused", output_dir="unused", learning_rate=1e-2)
    base.update(overrides)
    return build_config(base)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.proj = nn.Linear(6, 6)  # weight decays, bias does not
        self.norm = nn.LayerNorm(6)  # weight and bias do not decay
        self.head = nn.Linear(6, 10, bias=False)
        self.frozen = nn.Linear(6, 6)
        self.frozen.requires_grad_(False)

    def forward(self, ids):
        return self.head(self.norm(torch.relu(self.proj(self.embed(ids)))))


def tiny_llama(**config_overrides) -> nn.Module:
    torch.manual_seed(0)
    data = read_model_config("llama-tiny")
    data.update(config_overrides)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(**data))


def ids_of(tensors) -> set[int]:
    return {id(t) for t in tensors}


def test_decay_split_keeps_biases_and_norm_weights_out_of_decay():
    model = Toy()
    groups = decay_split(model.named_parameters(), 0.1, lr=3e-4)
    decay, no_decay = groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decay["lr"] == no_decay["lr"] == 3e-4, "extra group options reach both groups"
    assert ids_of(decay["params"]) == ids_of([model.embed.weight, model.proj.weight, model.head.weight])
    assert ids_of(no_decay["params"]) == ids_of([model.proj.bias, model.norm.weight, model.norm.bias])
    assert not ids_of(model.frozen.parameters()) & ids_of(decay["params"] + no_decay["params"])


def test_decay_split_on_a_llama_with_biases():
    model = tiny_llama(attention_bias=True, mlp_bias=True)
    decay, no_decay = default_param_groups(model, optim_cfg(weight_decay=0.05))["model"]
    named = dict(model.named_parameters())
    no_decay_names = {n for n, p in named.items() if id(p) in ids_of(no_decay["params"])}
    decay_names = {n for n, p in named.items() if id(p) in ids_of(decay["params"])}
    assert decay_names | no_decay_names == set(named) and not decay_names & no_decay_names
    assert any(n.endswith(".bias") for n in no_decay_names) and any("norm" in n for n in no_decay_names)
    assert all(n.endswith(".bias") or "norm" in n for n in no_decay_names), no_decay_names
    assert all(n.endswith(".weight") and "norm" not in n for n in decay_names), decay_names
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05


def test_adamw_decays_matrices_and_leaves_biases_and_norms_alone():
    """With zero gradients AdamW's only move is the decoupled decay: p ← p·(1 − lr·wd) for matrices."""
    lr, wd = 1e-2, 0.5
    model = Toy()
    cfg = optim_cfg(learning_rate=lr, weight_decay=wd)
    groups = default_param_groups(model, cfg)["model"]
    optimizer = build_optimizer(groups, cfg, CPU)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():
        if name.startswith("frozen"):
            assert torch.equal(p, before[name])
        elif p.ndim >= 2:
            torch.testing.assert_close(p.detach(), before[name] * (1 - lr * wd), msg=name)
        else:
            assert torch.equal(p, before[name]), f"{name} (1-D) was decayed"


OPTIMIZERS = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
    "adafactor": torch.optim.Adafactor,
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_each_optimizer_builds_and_steps(name):
    torch.manual_seed(0)
    model = Toy()
    cfg = optim_cfg(optim=name, weight_decay=0.01, momentum=0.9, adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-6)
    optimizer = build_optimizer(default_param_groups(model, cfg)["model"], cfg, CPU)
    assert type(optimizer) is OPTIMIZERS[name]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]
    assert all(g["lr"] == 1e-2 for g in optimizer.param_groups)
    if name in ("adamw", "adam"):
        assert all(g["betas"] == (0.8, 0.95) and g["eps"] == 1e-6 for g in optimizer.param_groups)
    if name == "sgd":
        assert all(g["momentum"] == 0.9 for g in optimizer.param_groups)

    ids = torch.randint(0, 10, (4, 5))
    target = torch.randint(0, 10, (4, 5))
    losses = []
    for _ in range(5):
        loss = nn.functional.cross_entropy(model(ids).reshape(-1, 10), target.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0], f"{name} did not reduce the loss: {losses}"


def test_explicit_group_learning_rates_survive_build_optimizer():
    model = Toy()
    cfg = optim_cfg(learning_rate=1e-3)
    groups = [{"params": list(model.proj.parameters()), "lr": 5e-2}, {"params": list(model.head.parameters())}]
    optimizer = build_optimizer(groups, cfg, CPU)
    assert [g["lr"] for g in optimizer.param_groups] == [5e-2, 1e-3]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_each_optimizer_trains_end_to_end(make_config, train, name):
    lr = {"sgd": 0.3, "adafactor": 1e-2}.get(name, 3e-3)
    cfg = make_config(optim=name, learning_rate=lr, weight_decay=0.01, momentum=0.9, max_steps=6, cutoff_len=32,
                      max_samples=20, lr_scheduler_type="constant")
    trainer = train(cfg)
    assert type(trainer.optimizers["model"]) is OPTIMIZERS[name]
    losses = [r["loss"] for r in read_metrics(cfg.output_dir) if "loss" in r]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0], f"{name}: {losses}"


def test_adamw_8bit_without_bitsandbytes_is_a_config_error(monkeypatch):
    """Runs whether or not bitsandbytes is installed: a None entry in sys.modules makes the import fail."""
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    cfg = optim_cfg(optim="adamw_8bit")
    with pytest.raises(ConfigError, match="bitsandbytes"):
        build_optimizer(default_param_groups(Toy(), cfg)["model"], cfg, CPU)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
def test_adamw_8bit_with_bitsandbytes_builds_and_steps():
    import bitsandbytes as bnb
    torch.manual_seed(0)
    model = nn.Linear(96, 96)  # ≥ 4096 elements: bitsandbytes keeps 8-bit state only for large tensors
    cfg = optim_cfg(optim="adamw_8bit", weight_decay=0.01)
    optimizer = build_optimizer(default_param_groups(model, cfg)["model"], cfg, CPU)
    assert isinstance(optimizer, bnb.optim.AdamW8bit)
    x = torch.randn(16, 96)
    losses = []
    for _ in range(5):
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
