"""LLaMA-Factory YAMLs: its keys that ember does not implement are recognised, not rejected.

Harmless ones are accepted with a one-line notice; those that would change the result are refused
with a pointer to ember's equivalent (deepspeed → distributed_strategy: fsdp).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest

from conftest import read_metrics
from ember import cli
from ember.config import ConfigError, build_config
from ember.config.loader import load_config
from ember.engine.trainer import Trainer
from ember.tasks import build_task

# LLaMA-Factory's examples/train_lora/llama3_lora_sft.yaml with its own demo datasets' shapes; only
# model_name_or_path, dataset_dir and output_dir are filled in by the test (and a step limit keeps it short)
LLAMAFACTORY_SFT = """\
### model
model_name_or_path: {model}
trust_remote_code: true

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all

### dataset
dataset: identity,alpaca_en_demo,glaive_demo
dataset_dir: {data}
template: qwen
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 2
dataloader_num_workers: 0

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
learning_rate: 1.0e-4
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000
resume_from_checkpoint: null
flash_attn: auto

### eval
# eval_dataset: alpaca_en_demo
val_size: 0.1
per_device_eval_batch_size: 1
eval_strategy: steps
eval_steps: 500
"""


@pytest.fixture
def llamafactory_data(tmp_path) -> Path:
    """A dataset_dir as LLaMA-Factory's data/ lays it out: alpaca entries and a sharegpt one."""
    root = tmp_path / "data"
    root.mkdir()
    identity = [{"instruction": "hi", "input": "", "output": "Hello! I am {{name}}, an AI assistant."},
                {"instruction": "Who are you?", "input": "", "output": "I am {{name}}, developed by {{author}}."}]
    alpaca = [{"instruction": f"Describe Python's {w} statement.", "input": "", "output": f"The {w} statement runs code."}
              for w in ("while", "for", "if", "with", "try", "pass")]
    glaive = [{"conversations": [{"from": "human", "value": f"What does {w} do?"},
                                 {"from": "gpt", "value": f"It is the {w} keyword."},
                                 {"from": "human", "value": "Thanks."},
                                 {"from": "gpt", "value": "You are welcome."}],
               "system": "You are helpful."} for w in ("del", "global", "yield", "return")]
    for name, rows in (("identity", identity), ("alpaca_en_demo", alpaca), ("glaive_demo", glaive)):
        (root / f"{name}.json").write_text(json.dumps(rows))
    (root / "dataset_info.json").write_text(json.dumps({
        "identity": {"file_name": "identity.json"},
        "alpaca_en_demo": {"file_name": "alpaca_en_demo.json"},
        "glaive_demo": {"file_name": "glaive_demo.json", "formatting": "sharegpt",
                        "columns": {"messages": "conversations", "system": "system"}},
    }))
    return root


def test_llamafactory_sft_yaml_runs_unchanged(tiny_model_dir, llamafactory_data, tmp_path, caplog):
    out = tmp_path / "saves" / "lora" / "sft"
    config = tmp_path / "llama3_lora_sft.yaml"
    config.write_text(LLAMAFACTORY_SFT.format(model=tiny_model_dir, data=llamafactory_data, out=out))
    with caplog.at_level(logging.INFO, logger="ember"):
        cfg = load_config([str(config), "max_steps=2"])
    notices = " ".join(r.getMessage() for r in caplog.records if r.name == "ember")
    assert "flash_attn" in notices, "a notice should name flash_attn"
    # ddp_timeout is either honoured (ember has the key) or accepted with a notice
    assert getattr(cfg, "ddp_timeout", None) == 180000000 or "ddp_timeout" in notices
    assert cfg.finetuning_type == "lora" and cfg.lora_target == "all" and cfg.stage == "sft"
    trainer = Trainer(cfg, build_task(cfg))
    result = trainer.fit()
    assert result["step"] == 2
    records = read_metrics(out)
    assert any("eval_loss" in r and math.isfinite(r["eval_loss"]) for r in records)
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert (out / "training_loss.png").is_file()
    targets = json.loads((out / "adapter_config.json").read_text())["target_modules"]
    assert {t.split(".")[-1] for t in targets} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_ddp_timeout_is_accepted(make_config, caplog):
    with caplog.at_level(logging.INFO, logger="ember"):
        cfg = make_config(ddp_timeout=180000000)
    notices = " ".join(r.getMessage() for r in caplog.records if r.name == "ember")
    assert getattr(cfg, "ddp_timeout", None) == 180000000 or "ddp_timeout" in notices


@pytest.mark.parametrize("key, value", [
    ("flash_attn", "auto"), ("flash_attn", "fa2"), ("enable_liger_kernel", True),
    ("use_unsloth", False), ("deepspeed", None),
])
def test_harmless_keys_are_accepted_with_a_notice(make_config, caplog, key, value):
    with caplog.at_level(logging.INFO, logger="ember"):
        make_config(**{key: value})
    notices = [r.getMessage() for r in caplog.records if r.name == "ember" and key in r.getMessage()]
    assert len(notices) == 1 and "\n" not in notices[0]


@pytest.mark.parametrize("key, value", [("trust_remote_code", True), ("save_only_model", False),
                                        ("report_to", "none"), ("overwrite_cache", True),
                                        ("preprocessing_num_workers", 2), ("do_train", True)])
def test_keys_ember_implements_are_taken_as_is(make_config, key, value):
    assert getattr(make_config(**{key: value}), key) == value


@pytest.mark.parametrize("path", ["examples/deepspeed/ds_z3_config.json", "examples/deepspeed/ds_z0_config.json"])
def test_deepspeed_points_to_fsdp(make_config, path):
    with pytest.raises(ConfigError) as err:
        make_config(deepspeed=path)
    message = str(err.value)
    assert "deepspeed" in message and "distributed_strategy" in message and "fsdp" in message


def test_deepspeed_from_the_command_line_exits_2(tiny_model_dir, tmp_path, capsys):
    code = cli.main(["train", "--model_name_or_path", str(tiny_model_dir), "--dataset", "x",
                     "--output_dir", str(tmp_path), "--deepspeed", "ds_z3_config.json"])
    err = capsys.readouterr().err
    assert code == 2
    assert "distributed_strategy" in err and "fsdp" in err


@pytest.mark.parametrize("key, value, pointer", [("use_llama_pro", True, "freeze"), ("reward_model", "rm_out", "PPO")])
def test_keys_that_would_change_the_result_are_refused_with_a_pointer(make_config, key, value, pointer):
    with pytest.raises(ConfigError, match=key) as err:
        make_config(**{key: value})
    assert pointer in str(err.value)


def test_unknown_keys_are_still_refused(make_config):
    with pytest.raises(ConfigError, match="flash_atn"):
        build_config(dict(model_config="llama-tiny", dataset="x", flash_atn="auto"))
