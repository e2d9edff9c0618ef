"""Every fine-tuning recipe in examples/ runs as written, on the tiny model, for a few steps.

Only what cannot stay as written is overridden: the base model (the recipes point at the demo's
runs/llm_pretrain), output_dir, and the number of steps (with eval/save intervals brought inside it).
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import read_metrics
from ember.config.loader import load_config
from ember.engine.trainer import Trainer
from ember.tasks import build_task

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"

RECIPES = {
    # name: (extra overrides, what the run leaves behind)
    "pt_lora.yaml": (["eval_steps=2", "save_steps=2"], "adapter"),
    "sft_lora.yaml": (["eval_steps=2", "save_steps=2"], "adapter"),
    "sft_qlora.yaml": (["eval_steps=2", "save_steps=2"], "adapter"),
    "sft_full.yaml": (["eval_steps=2", "save_steps=2"], "model"),
    "sft_freeze.yaml": ([], "model"),
    "dpo_lora.yaml": (["eval_steps=2", "save_steps=2"], "adapter"),
    "rm_lora.yaml": (["eval_steps=2", "save_steps=2"], "adapter"),
    "kto_lora.yaml": (["eval_steps=2", "save_steps=2"], "adapter"),
}


def test_every_recipe_is_covered():
    recipes = {p.name for p in EXAMPLES.glob("*.yaml")} - {"llm_pretrain.yaml"}
    assert set(RECIPES) <= recipes
    missing = {n for n in recipes - set(RECIPES) if n.startswith(("sft_", "pt_"))}
    assert not missing, f"recipes without a test: {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_runs(name, tiny_model_dir, tmp_path, monkeypatch):
    if name == "sft_qlora.yaml":
        pytest.importorskip("bitsandbytes")
    monkeypatch.chdir(REPO)  # the recipes name dataset_dir relative to the repository
    extra, kind = RECIPES[name]
    out = tmp_path / "out"
    cfg = load_config([str(EXAMPLES / name), f"model_name_or_path={tiny_model_dir}", f"output_dir={out}",
                       "max_steps=2", *extra])
    assert cfg.model_name_or_path == str(tiny_model_dir)
    trainer = Trainer(cfg, build_task(cfg))
    result = trainer.fit()
    assert result["step"] == 2
    losses = [r["loss"] for r in read_metrics(out) if "loss" in r]
    assert losses and all(math.isfinite(x) for x in losses)
    if cfg.val_size:
        assert any("eval_loss" in r and math.isfinite(r["eval_loss"]) for r in read_metrics(out))
    if kind == "adapter":
        assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
        assert any(p.requires_grad for n, p in trainer.model.named_parameters() if "lora_" in n)
    else:
        assert (out / "config.json").is_file() and list(out.glob("*.safetensors"))
    if cfg.finetuning_type == "freeze":
        frozen = [n for n, p in trainer.model.named_parameters() if not p.requires_grad]
        assert frozen, "freeze should leave some weights frozen"
    assert (out / "config.yaml").is_file()
    if cfg.plot_loss:
        assert (out / "training_loss.png").is_file()
    assert not torch.isnan(next(trainer.model.parameters())).any()
