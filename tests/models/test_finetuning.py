"""finetuning_type freeze and lora on the tiny Llama: which weights train, what is saved, what reloads.

Runs are a few optimizer steps of stage sft on the demo alpaca/sharegpt data (a dozen samples
of each), starting from the tiny_model_dir fixture as a LLaMA-Factory user would.
"""
from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from conftest import read_metrics
from ember.config import ConfigError, build_config
from ember.engine.trainer import Trainer
from ember.models.finetuning import apply_freeze, apply_lora
from ember.models.hf import load_causal_lm
from ember.tasks import build_task

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "data"
ALL_LINEAR = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def sft_config(model_dir, output_dir, **overrides):
    base = dict(model_name_or_path=str(model_dir), stage="sft", template="default",
                dataset="pydoc_alpaca,pydoc_sharegpt", dataset_dir=str(DEMO), max_samples=12, cutoff_len=256,
                per_device_train_batch_size=4, learning_rate=1e-2, max_steps=3, logging_steps=1, save_steps=0,
                output_dir=str(output_dir), disable_tqdm=True)
    base.update(overrides)
    return build_config(base)


def run(cfg) -> Trainer:
    trainer = Trainer(cfg, build_task(cfg))
    trainer.fit()
    return trainer


def base_model(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def sample_ids(model, seed=0):
    vocab = model.get_input_embeddings().num_embeddings
    return torch.randint(0, vocab, (2, 40), generator=torch.Generator().manual_seed(seed))


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


# ---- freeze: selection ------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, expected", [
    ({"freeze_trainable_layers": 1}, r"model\.layers\.1\..*"),
    ({"freeze_trainable_layers": -1}, r"model\.layers\.0\..*"),
    ({"freeze_trainable_layers": 2}, r"model\.layers\.[01]\..*"),
    ({"freeze_trainable_layers": 1, "freeze_trainable_modules": "mlp"}, r"model\.layers\.1\.mlp\..*"),
    ({"freeze_trainable_layers": -1, "freeze_trainable_modules": "self_attn"}, r"model\.layers\.0\.self_attn\..*"),
    ({"freeze_trainable_layers": 2, "freeze_trainable_modules": "q_proj,down_proj"},
     r"model\.layers\.[01]\.(self_attn\.q_proj|mlp\.down_proj)\.weight"),
    ({"freeze_trainable_layers": 1, "freeze_extra_modules": "norm"}, r"model\.layers\.1\..*|model\.norm\.weight"),
    ({"freeze_trainable_layers": -1, "freeze_trainable_modules": "mlp", "freeze_extra_modules": "embed_tokens,norm"},
     r"model\.layers\.0\.mlp\..*|model\.norm\.weight|model\.embed_tokens\.weight"),
])
def test_freeze_selects_the_right_parameters(tiny_model_dir, tmp_path, overrides, expected):
    model = load_causal_lm(str(tiny_model_dir))
    apply_freeze(model, sft_config(tiny_model_dir, tmp_path, finetuning_type="freeze", **overrides))
    names = [n for n, _ in model.named_parameters()]
    want = {n for n in names if re.fullmatch(expected, n)}
    assert want, "the pattern should match something"
    assert trainable(model) == want


@pytest.mark.parametrize("key, value, listed", [
    ("freeze_trainable_modules", "mlpp", ["mlp", "self_attn", "q_proj"]),
    ("freeze_extra_modules", "final_norm", ["norm", "embed_tokens"]),
])
def test_freeze_unknown_module_lists_available_names(tiny_model_dir, tmp_path, key, value, listed):
    model = load_causal_lm(str(tiny_model_dir))
    with pytest.raises(ConfigError) as err:
        apply_freeze(model, sft_config(tiny_model_dir, tmp_path, finetuning_type="freeze", **{key: value}))
    message = str(err.value)
    assert key in message and value in message
    for name in listed:
        assert re.search(rf"\b{name}\b", message), (name, message)


@pytest.mark.parametrize("layers", [0, 3, -3])
def test_freeze_layer_count_out_of_range(tiny_model_dir, tmp_path, layers):
    model = load_causal_lm(str(tiny_model_dir))
    with pytest.raises(ConfigError, match="freeze_trainable_layers"):
        apply_freeze(model, sft_config(tiny_model_dir, tmp_path, finetuning_type="freeze",
                                       freeze_trainable_layers=layers))


# ---- freeze: training ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def freeze_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("freeze") / "run"
    cfg = sft_config(tiny_model_dir, out, finetuning_type="freeze", freeze_trainable_layers=1,
                     freeze_extra_modules="norm", weight_decay=0.1, save_steps=2, max_steps=2)
    return run(cfg), out


def test_frozen_weights_stay_bit_identical_and_trainable_ones_move(freeze_run, tiny_model_dir):
    trainer, out = freeze_run
    base = dict(base_model(tiny_model_dir).named_parameters())
    trained = dict(trainer.model.named_parameters())
    saved = dict(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).named_parameters())
    assert trained.keys() == base.keys()
    moved = {n for n in base if not torch.equal(trained[n], base[n])}
    assert moved == trainable(trainer.model)
    assert all(n.startswith("model.layers.1.") or n == "model.norm.weight" for n in moved)
    for name in base:
        assert torch.equal(saved[name], trained[name]), name


def test_freeze_checkpoint_holds_only_trainable_weights(freeze_run):
    trainer, out = freeze_run
    tensors = load_file(str(out / "checkpoint-2" / "model.safetensors"))
    assert set(tensors) == trainable(trainer.model)


# ---- LoRA -----------------------------------------------------------------------------------------

def lora_modules(model) -> set[str]:
    return {name for name, module in model.named_modules() if hasattr(module, "lora_A")}


def test_lora_target_names(tiny_model_dir, tmp_path):
    model = apply_lora(load_causal_lm(str(tiny_model_dir)),
                       sft_config(tiny_model_dir, tmp_path, finetuning_type="lora", lora_target="q_proj,v_proj"))
    found = lora_modules(model)
    assert {n.split(".")[-1] for n in found} == {"q_proj", "v_proj"}
    assert len(found) == 2 * 2  # both layers
    assert all(".lora_" in n for n in trainable(model))


def test_lora_target_all_is_every_linear_but_the_head(tiny_model_dir, tmp_path):
    model = apply_lora(load_causal_lm(str(tiny_model_dir)),
                       sft_config(tiny_model_dir, tmp_path, finetuning_type="lora", lora_target="all"))
    found = lora_modules(model)
    assert {n.split(".")[-1] for n in found} == ALL_LINEAR
    assert len(found) == 2 * len(ALL_LINEAR)
    assert not any("lm_head" in n for n in found)


def test_lora_unknown_target_lists_linear_layers(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError) as err:
        apply_lora(load_causal_lm(str(tiny_model_dir)),
                   sft_config(tiny_model_dir, tmp_path, finetuning_type="lora", lora_target="q_proj,qkv"))
    message = str(err.value)
    assert "qkv" in message and "lora_target" in message
    for name in ALL_LINEAR:
        assert name in message


def test_dora_rslora_and_additional_target_are_applied(tiny_model_dir, tmp_path):
    cfg = sft_config(tiny_model_dir, tmp_path, finetuning_type="lora", lora_target="all", lora_rank=4,
                     lora_alpha=8, use_dora=True, use_rslora=True, additional_target="norm")
    model = build_task(cfg).build_model()
    peft_cfg = model.peft_config["default"]
    assert peft_cfg.use_dora and peft_cfg.use_rslora and peft_cfg.r == 4 and peft_cfg.lora_alpha == 8
    assert "norm" in peft_cfg.modules_to_save
    names = trainable(model)
    assert any("lora_magnitude_vector" in n for n in names)
    assert any("model.norm.modules_to_save" in n for n in names)
    layer = next(m for n, m in model.named_modules() if n.endswith("layers.0.self_attn.q_proj"))
    assert layer.scaling["default"] == pytest.approx(8 / 4 ** 0.5)  # rsLoRA: alpha / sqrt(r)


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    cfg = sft_config(tiny_model_dir, out, finetuning_type="lora", lora_target="all", lora_rank=4, lora_dropout=0.1,
                     use_rslora=True, additional_target="norm", packing=True, template="alpaca")
    return run(cfg), out


def test_adapter_is_saved_at_output_dir(lora_run):
    _, out = lora_run
    assert (out / "adapter_config.json").is_file()
    assert (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists(), "a LoRA run saves the adapter, not a full model"
    # LLaMA-Factory's alpaca adds no tokens to this vocabulary (chatml would add its stop words)
    assert "### Instruction:" in (out / "tokenizer_config.json").read_text() + "".join(
        p.read_text() for p in out.glob("chat_template.*")), "the tokenizer should carry the chat template used"


def test_adapter_reloads_in_peft_with_identical_logits(lora_run, tiny_model_dir):
    from peft import PeftModel
    trainer, out = lora_run
    reloaded = PeftModel.from_pretrained(base_model(tiny_model_dir), str(out)).eval()
    model = trainer.model.eval()
    ids = sample_ids(model)
    with torch.no_grad():
        mine, theirs = model(input_ids=ids).logits, reloaded(input_ids=ids).logits
        plain = base_model(tiny_model_dir)(input_ids=ids).logits
    assert torch.equal(mine, theirs)
    assert not torch.allclose(mine, plain, atol=1e-4), "training should have changed the model"


def test_lora_training_moves_only_adapters_and_extra_modules(lora_run, tiny_model_dir):
    trainer, _ = lora_run
    base = dict(base_model(tiny_model_dir).named_parameters())
    for name, param in trainer.model.named_parameters():
        if not param.requires_grad:
            key = name.removeprefix("base_model.model.").replace(".base_layer", "").replace(".original_module", "")
            assert torch.equal(param, base[key]), name
    lora_b = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)


@pytest.mark.parametrize("dropout", [0.0, 0.2])  # with dropout, the RNG stream must resume exactly too
def test_lora_checkpoint_resume_reproduces_the_uninterrupted_adapter(tiny_model_dir, tmp_path, dropout):
    common = dict(finetuning_type="lora", lora_target="q_proj,v_proj,down_proj", lora_dropout=dropout, max_steps=4,
                  save_steps=2, learning_rate=5e-3)
    full = tmp_path / "full"
    run(sft_config(tiny_model_dir, full, **common))
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    # as if the run had stopped right after checkpoint-2
    shutil.rmtree(resumed / "checkpoint-4")
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (resumed / name).unlink()
    run(sft_config(tiny_model_dir, resumed, resume_from_checkpoint=True, **common))
    expected, got = load_file(str(full / "adapter_model.safetensors")), load_file(str(resumed / "adapter_model.safetensors"))
    assert expected.keys() == got.keys() and expected
    for name in expected:
        diff = float((expected[name] - got[name]).abs().max())
        assert torch.equal(expected[name], got[name]), f"{name} differs by up to {diff:.3g}"
    losses = lambda path: [(r["step"], r["loss"]) for r in read_metrics(path) if "loss" in r]  # noqa: E731
    assert losses(resumed) == losses(full)
    assert [s for s, _ in losses(full)] == [1, 2, 3, 4]


def test_lora_checkpoint_holds_only_the_adapter(tiny_model_dir, tmp_path):
    trainer = run(sft_config(tiny_model_dir, tmp_path / "run", finetuning_type="lora", lora_target="q_proj",
                             max_steps=1, save_steps=1))
    tensors = load_file(str(tmp_path / "run" / "checkpoint-1" / "model.safetensors"))
    assert set(tensors) == trainable(trainer.model)
    assert all("lora_" in n for n in tensors)


# ---- trainable-parameter summary ---------------------------------------------------------------

@pytest.mark.parametrize("overrides", [
    {"finetuning_type": "full"},
    {"finetuning_type": "freeze", "freeze_trainable_layers": 1},
    {"finetuning_type": "lora", "lora_target": "all"},
])
def test_trainable_parameter_summary_is_logged(tiny_model_dir, tmp_path, caplog, overrides):
    task = build_task(sft_config(tiny_model_dir, tmp_path, **overrides))
    with caplog.at_level(logging.INFO, logger="ember"):
        model = task.build_model()
    params = {id(p): p for p in model.parameters()}.values()
    n_train = sum(p.numel() for p in params if p.requires_grad)
    n_total = sum(p.numel() for p in params)
    lines = [r.getMessage() for r in caplog.records if r.name == "ember" and "trainable" in r.getMessage()]
    assert lines, "a trainable-parameter summary should be logged"
    numbers = re.search(r"([\d,]+)\s*/\s*([\d,]+)\s*\(\s*([\d.]+)\s*%\)", lines[-1])
    assert numbers, lines[-1]
    got_train, got_total = (int(numbers.group(i).replace(",", "")) for i in (1, 2))
    assert (got_train, got_total) == (n_train, n_total)
    assert float(numbers.group(3)) == pytest.approx(100 * n_train / n_total, abs=0.006)
    if overrides["finetuning_type"] == "full":
        assert n_train == n_total
    else:
        assert 0 < n_train < n_total
