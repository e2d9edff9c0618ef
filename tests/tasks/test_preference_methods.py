"""Every fine-tuning method with the preference stages, and FSDP.

The start of a reference-based run is known exactly whatever the method: the reference is the
starting model, so DPO's first loss is ln 2 and KTO's 1/2. QLoRA's reference is the 4-bit base
with the adapters disabled (no copy); freeze's and full's a frozen copy. A reward model starts
from a new random head, so for rm the check is that it trains and exports what reloads.

FSDP (FSDP2 on two gloo processes, batch 4 per rank) must log the one-process run's numbers
(batch 8) step for step and export the same weights, for dpo (LoRA: adapters disabled inside the
sharded model) and rm (full: the new head sharded too). (DDP with a frozen copy beside the model:
test_preference_ddp.py.)
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from conftest import read_metrics
from ember.config import build_config
from ember.engine.trainer import Trainer
from ember.tasks import build_task

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))

from multiprocess_helpers import (as_args, assert_ran, assert_same_logged_run, clean_env,  # noqa: E402
                                  run_logged)

DEMO = Path(__file__).resolve().parents[2] / "examples" / "data"
EMBER = str(Path(sys.executable).parent / "ember")
START = {"dpo": math.log(2), "kto": 0.5}
PAIR_KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")


def _base(model_dir, stage: str, finetuning_type: str, **overrides) -> dict:
    base = dict(model_name_or_path=str(model_dir), stage=stage, finetuning_type=finetuning_type, template="default",
                dataset="pydoc_kto" if stage == "kto" else "pydoc_pref_alpaca", dataset_dir=str(DEMO), cutoff_len=96,
                max_samples=16, per_device_train_batch_size=4, max_steps=3, learning_rate=5e-3, logging_steps=1,
                save_steps=0, seed=7, disable_tqdm=True)
    if finetuning_type == "qlora":
        base.update(quantization_bit=4, lora_target="all", lora_rank=4)
    return {**base, **overrides}


@pytest.mark.parametrize("stage,finetuning_type", [("dpo", "qlora"), ("kto", "qlora"), ("rm", "qlora"),
                                                   ("dpo", "freeze"), ("kto", "freeze"), ("kto", "full")])
def test_every_method_trains_every_stage(stage, finetuning_type, tiny_model_dir, tmp_path):
    cfg = build_config(_base(tiny_model_dir, stage, finetuning_type, output_dir=str(tmp_path / "run")))
    trainer = Trainer(cfg, build_task(cfg))
    trainer.fit()
    records = read_metrics(cfg.output_dir)
    if stage in START:
        assert abs(records[0]["loss"] - START[stage]) <= 1e-6  # the reference is the starting model
    assert all(math.isfinite(r["loss"]) for r in records) and records[-1]["loss"] != records[0]["loss"]
    reference = trainer.task.pairs.reference if stage != "rm" else None
    if finetuning_type == "qlora":
        assert reference is None  # the quantized base with adapters off: no second model
        assert (Path(cfg.output_dir) / "adapter_model.safetensors").is_file()
    elif stage != "rm":
        assert reference is not None and not any(p.requires_grad for p in reference.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("stage,finetuning_type", [("dpo", "lora"), ("rm", "full")])
def test_fsdp_on_two_processes_equals_one(stage, finetuning_type, tiny_model_dir, tmp_path):
    base = _base(tiny_model_dir, stage, finetuning_type, optim="sgd", momentum=0.9,
                 learning_rate=2.0 if finetuning_type == "lora" else 0.5)
    single = build_config({**base, "per_device_train_batch_size": 8, "output_dir": str(tmp_path / "one")})
    Trainer(single, build_task(single)).fit()
    rc, log = run_logged([EMBER, "train", *as_args({**base, "per_device_train_batch_size": 4,
                                                    "distributed_strategy": "fsdp",
                                                    "output_dir": str(tmp_path / "two")}), "--nproc_per_node", "2"],
                         tmp_path / "two.log", clean_env())
    assert_ran(rc, log)
    name = "adapter_model.safetensors" if finetuning_type == "lora" else "model.safetensors"
    assert_same_logged_run(tmp_path / "one", tmp_path / "two", PAIR_KEYS, name, [1, 2, 3])
