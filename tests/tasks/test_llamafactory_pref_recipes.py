"""LLaMA-Factory's own dpo, kto and reward recipes (examples/train_lora/llama3_lora_{dpo,kto,reward}.yaml)
run on data in the shape of its demo sets (dpo_en_demo, kto_en_demo). The test fills in only
model_name_or_path, dataset_dir and output_dir, plus a step limit and fewer worker processes (two
shared cores). The model's tokenizer carries a chat template, as Llama-3-Instruct's does, so
`template: llama3` is noted and the tokenizer's own template is used.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from conftest import read_metrics
from ember.config.loader import load_config
from ember.data.chat_template import JINJA_FORMATS
from ember.engine.trainer import Trainer
from ember.tasks import build_task

RECIPE = """\
### model
model_name_or_path: {model}
trust_remote_code: true

### method
stage: {stage}
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all
{method}
### dataset
dataset: {dataset}
dataset_dir: {data}
template: llama3
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16
dataloader_num_workers: 4

### output
output_dir: {out}
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
save_only_model: false
report_to: none  # choices: [none, wandb, tensorboard, swanlab, mlflow]

### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: {lr}
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000
resume_from_checkpoint: null

### eval
# eval_dataset: dpo_en_demo
# val_size: 0.1
# per_device_eval_batch_size: 1
# eval_strategy: steps
# eval_steps: 500
"""
RECIPES = {  # LLaMA-Factory's three files differ only in these lines
    "dpo": dict(stage="dpo", dataset="dpo_en_demo", lr="5.0e-6",
                method="pref_beta: 0.1\npref_loss: sigmoid  # choices: [sigmoid (dpo), orpo, simpo]\n"),
    "kto": dict(stage="kto", dataset="kto_en_demo", lr="5.0e-6", method="pref_beta: 0.1\n"),
    "reward": dict(stage="rm", dataset="dpo_en_demo", lr="1.0e-4", method=""),
}
QUESTIONS = [("What is 2 + 2?", "4.", "5."), ("Name a primary colour.", "Red.", "Seven."),
             ("Is water wet?", "Yes, usually.", "Never, it is dry."), ("Say hello.", "Hello!", "Goodbye.")] * 3


@pytest.fixture
def chat_model_dir(tiny_model_dir, tmp_path) -> Path:
    out = tmp_path / "chat_model"
    shutil.copytree(tiny_model_dir, out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    config["chat_template"] = JINJA_FORMATS["chatml"]
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


@pytest.fixture
def demo_data(tmp_path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    dpo = [{"conversations": [{"from": "human", "value": q}], "chosen": {"from": "gpt", "value": good},
            "rejected": {"from": "gpt", "value": bad}} for q, good, bad in QUESTIONS]
    kto = [{"messages": [{"content": q, "role": "user"}, {"content": good if i % 2 else bad, "role": "assistant"}],
            "label": bool(i % 2)} for i, (q, good, bad) in enumerate(QUESTIONS)]
    (root / "dpo_en_demo.json").write_text(json.dumps(dpo))
    (root / "kto_en_demo.json").write_text(json.dumps(kto))
    (root / "dataset_info.json").write_text(json.dumps({
        "dpo_en_demo": {"file_name": "dpo_en_demo.json", "ranking": True, "formatting": "sharegpt",
                        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
        "kto_en_demo": {"file_name": "kto_en_demo.json", "formatting": "sharegpt",
                        "columns": {"messages": "messages", "kto_tag": "label"},
                        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                 "assistant_tag": "assistant"}}}))
    return root


@pytest.mark.parametrize("name", list(RECIPES))
def test_llamafactory_recipe_runs(name, chat_model_dir, demo_data, tmp_path):
    out = tmp_path / "out"
    path = tmp_path / f"llama3_lora_{name}.yaml"
    path.write_text(RECIPE.format(model=chat_model_dir, data=demo_data, out=out, **RECIPES[name]))
    cfg = load_config([str(path), "max_steps=2", "logging_steps=1", "preprocessing_num_workers=1",
                       "dataloader_num_workers=0"])
    Trainer(cfg, build_task(cfg)).fit()
    records = read_metrics(out)
    assert len(records) == 2 and all(math.isfinite(r["loss"]) for r in records)
    expected_start = {"dpo": math.log(2), "kto": 0.5}.get(name)
    if expected_start is not None:  # the reference is the policy at step 0 (bf16 autocast: looser)
        assert abs(records[0]["loss"] - expected_start) < 1e-3
    assert "rewards/chosen" in records[-1]
    assert (out / "adapter_config.json").is_file() and (out / "training_loss.png").is_file()
