"""DPO on two gloo CPU processes equals one process with the whole batch: the loss and the pair
metrics of every step, and the final weights. Full fine-tuning exercises the frozen reference
copy beside DDP's model, LoRA the reference taken inside DDP with the adapters disabled."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ember.config import build_config
from ember.engine.trainer import Trainer
from ember.tasks import build_task

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))

from multiprocess_helpers import (as_args, assert_ran, assert_same_logged_run, clean_env,  # noqa: E402
                                  run_logged)

DEMO = Path(__file__).resolve().parents[2] / "examples" / "data"
EMBER = str(Path(sys.executable).parent / "ember")
KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
        "logps/rejected")


@pytest.mark.slow
@pytest.mark.parametrize("finetuning_type", ["full", "lora"])
def test_dpo_on_two_processes_equals_one(finetuning_type, tiny_model_dir, tmp_path):
    base = dict(model_name_or_path=str(tiny_model_dir), stage="dpo", finetuning_type=finetuning_type,
                template="default", dataset="pydoc_pref_alpaca", dataset_dir=str(DEMO), cutoff_len=96,
                max_samples=16, max_steps=3, logging_steps=1, save_steps=0, optim="sgd", momentum=0.9,
                learning_rate=0.5 if finetuning_type == "full" else 2.0, seed=7, disable_tqdm=True)
    single = build_config({**base, "per_device_train_batch_size": 8, "output_dir": str(tmp_path / "one")})
    Trainer(single, build_task(single)).fit()
    rc, log = run_logged([EMBER, "train", *as_args({**base, "per_device_train_batch_size": 4,
                                                    "output_dir": str(tmp_path / "two")}), "--nproc_per_node", "2"],
                         tmp_path / "two.log", clean_env())
    assert_ran(rc, log)
    name = "model.safetensors" if finetuning_type == "full" else "adapter_model.safetensors"
    assert_same_logged_run(tmp_path / "one", tmp_path / "two", KEYS, name, [1, 2, 3])
