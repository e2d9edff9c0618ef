"""`ember export`: merge a LoRA adapter into its base and write an HF model that transformers loads.

The adapter is DoRA on every linear layer; the merged model must give the logits of ember's in-memory adapted model; a quantized base is
refused (exit status 2, one line on stderr) since merging into k-bit weights loses the adapter.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from ember import cli
from ember.config import build_config
from ember.engine.trainer import Trainer
from ember.tasks import build_task

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "examples" / "data"


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "adapter"
    cfg = build_config(dict(
        model_name_or_path=str(tiny_model_dir), stage="sft", template="chatml", finetuning_type="lora",
        lora_target="all", lora_rank=4, lora_dropout=0.1, use_dora=True, dataset="pydoc_alpaca,pydoc_sharegpt",
        dataset_dir=str(DEMO), max_samples=8, cutoff_len=256, per_device_train_batch_size=4, learning_rate=2e-2,
        max_steps=3, logging_steps=1, save_steps=0, output_dir=str(out), disable_tqdm=True))
    trainer = Trainer(cfg, build_task(cfg))
    trainer.fit()
    return trainer, out


def logits_of(model, seed=0, vocab=None):
    vocab = vocab or model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (2, 40), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def export(*args) -> int:
    return cli.main(["export", *map(str, args)])


def test_export_merges_and_transformers_loads_it(lora_run, tiny_model_dir, tmp_path, capsys):
    trainer, adapter = lora_run
    out = tmp_path / "merged"
    code = export("--model_name_or_path", tiny_model_dir, "--adapter_name_or_path", adapter, "--export_dir", out)
    assert code == 0, capsys.readouterr().err
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    mine, theirs = logits_of(trainer.model), logits_of(merged)
    torch.testing.assert_close(theirs, mine, atol=1e-5, rtol=1e-5)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    n = base.get_input_embeddings().num_embeddings  # template chatml added its stop words in training
    assert not torch.allclose(logits_of(base), logits_of(merged, vocab=n)[..., :n], atol=1e-3), \
        "the adapter should have changed the model"


def test_export_writes_safetensors_and_the_training_tokenizer(lora_run, tiny_model_dir, tmp_path):
    _, adapter = lora_run
    out = tmp_path / "merged"
    assert export("--model_name_or_path", tiny_model_dir, "--adapter_name_or_path", adapter, "--export_dir", out) == 0
    assert list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template and "im_start" in tok.chat_template, "the chat template used in training goes along"
    text = "The while statement is used for repeated execution."
    assert tok(text)["input_ids"] == AutoTokenizer.from_pretrained(tiny_model_dir)(text)["input_ids"]


def test_export_from_a_yaml_with_key_value_overrides(lora_run, tiny_model_dir, tmp_path):
    trainer, adapter = lora_run
    config = tmp_path / "merge.yaml"
    config.write_text(yaml.safe_dump({"model_name_or_path": str(tiny_model_dir),
                                      "adapter_name_or_path": str(adapter), "export_dir": "unused"}))
    out = tmp_path / "merged"
    assert export(config, f"export_dir={out}") == 0
    torch.testing.assert_close(logits_of(AutoModelForCausalLM.from_pretrained(out)), logits_of(trainer.model),
                               atol=1e-5, rtol=1e-5)


def test_llamafactory_merge_yaml_is_accepted(lora_run, tiny_model_dir, tmp_path):
    """LLaMA-Factory's examples/merge_lora/llama3_lora_sft.yaml, paths pointed at local folders."""
    _, adapter = lora_run
    out = tmp_path / "merged"
    config = tmp_path / "llama3_lora_sft.yaml"
    config.write_text(
        "### Note: DO NOT use quantized model or quantization_bit when merging lora adapters\n\n"
        "### model\n"
        f"model_name_or_path: {tiny_model_dir}\n"
        f"adapter_name_or_path: {adapter}\n"
        "template: qwen\n"
        "trust_remote_code: true\n\n"
        "### export\n"
        f"export_dir: {out}\n"
        "export_size: 5\n"
        "export_device: cpu  # choices: [cpu, auto]\n"
        "export_legacy_format: false\n")
    assert export(config) == 0
    assert (out / "config.json").is_file()


def test_export_size_shards_the_model(lora_run, tiny_model_dir, tmp_path):
    _, adapter = lora_run
    out = tmp_path / "merged"
    limit_gb = 0.0002  # about 210 kB; the tiny model is about 500 kB
    assert export("--model_name_or_path", tiny_model_dir, "--adapter_name_or_path", adapter,
                  "--export_dir", out, "--export_size", limit_gb) == 0
    shards = sorted(out.glob("*.safetensors"))
    assert len(shards) > 1
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    AutoModelForCausalLM.from_pretrained(out)


def test_export_refuses_quantization_bit(lora_run, tiny_model_dir, tmp_path, capsys):
    _, adapter = lora_run
    out = tmp_path / "merged"
    code = export("--model_name_or_path", tiny_model_dir, "--adapter_name_or_path", adapter, "--export_dir", out,
                  "--quantization_bit", 4)
    err = capsys.readouterr().err
    assert code == 2
    assert "quantiz" in err and len(err.strip().splitlines()) == 1, err
    assert not (out / "config.json").exists()


def test_export_refuses_a_quantized_base(lora_run, tiny_model_dir, tmp_path, capsys):
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig
    _, adapter = lora_run
    quantized = tmp_path / "base_4bit"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, device_map={"": "cpu"},
                                                 quantization_config=BitsAndBytesConfig(load_in_4bit=True))
    model.save_pretrained(quantized)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(quantized)
    out = tmp_path / "merged"
    code = export("--model_name_or_path", quantized, "--adapter_name_or_path", adapter, "--export_dir", out)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "quantized" in err
    assert not (out / "config.json").exists()


def test_export_needs_an_adapter_folder(tiny_model_dir, tmp_path, capsys):
    code = export("--model_name_or_path", tiny_model_dir, "--adapter_name_or_path", tmp_path,
                  "--export_dir", tmp_path / "merged")
    assert code == 2
    assert "adapter_config.json" in capsys.readouterr().err


def test_export_unknown_key_is_refused(tiny_model_dir, tmp_path, capsys):
    code = export("--model_name_or_path", tiny_model_dir, "--export_dir", tmp_path / "m", "--export_sise", 1)
    assert code == 2
    assert "export_sise" in capsys.readouterr().err
