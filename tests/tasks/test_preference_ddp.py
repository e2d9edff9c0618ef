"""DPO on two gloo CPU processes equals one process with the whole batch: the loss and the pair
metrics of every step, and the final weights. Full fine-tuning exercises the frozen reference
copy beside DDP's model, LoRA the reference taken inside DDP with the adapters disabled."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import read_metrics
from ember.config import build_config
from ember.engine.trainer import Trainer
from ember.tasks import build_task

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))

from multiprocess_helpers import as_args, assert_ran, clean_env, run_logged  # noqa: E402

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
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3]
    for a, b in zip(one, two):
        for key in KEYS:  # float32 noise of other batch shapes, as in the accumulation test
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-5), (a["step"], key)
    assert one[-1]["loss"] != one[0]["loss"]
    name = "model.safetensors" if finetuning_type == "full" else "adapter_model.safetensors"
    got, want = load_file(str(tmp_path / "two" / name)), load_file(str(tmp_path / "one" / name))
    assert got.keys() == want.keys()
    for key in want:
        assert torch.allclose(got[key], want[key], atol=1e-5), key
