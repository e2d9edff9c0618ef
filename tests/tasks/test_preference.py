"""Stages dpo, orpo, simpo and rm end to end on the tiny model and the shipped demo pairs."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ember import cli
from ember.engine.trainer import Trainer
from ember.tasks import build_task

from conftest import read_metrics

DEMO = Path(__file__).resolve().parents[2] / "examples" / "data"
PAIR_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")


@pytest.fixture
def pref_config(make_config, tiny_model_dir):
    def make(**overrides):
        base = dict(model_config=None, model_name_or_path=str(tiny_model_dir), stage="dpo", template="default",
                    dataset="pydoc_pref_alpaca", dataset_dir=str(DEMO), cutoff_len=96, max_samples=16,
                    per_device_train_batch_size=4, max_steps=3, learning_rate=1e-3)
        base.update(overrides)
        return make_config(**base)
    return make


def fit(cfg) -> Trainer:
    trainer = Trainer(cfg, build_task(cfg))
    trainer.fit()
    return trainer


@pytest.mark.parametrize("finetuning_type", ["lora", "full"])
def test_dpo_starts_at_ln2_when_the_reference_is_the_policy(pref_config, finetuning_type):
    cfg = pref_config(finetuning_type=finetuning_type, max_steps=2)
    fit(cfg)
    records = read_metrics(cfg.output_dir)
    assert abs(records[0]["loss"] - math.log(2)) <= 1e-6
    assert records[0]["rewards/margins"] == 0 and records[0]["rewards/accuracies"] == 0
    for key in (*PAIR_METRICS, "logps/chosen", "logps/rejected"):
        assert key in records[-1]


def test_lora_dpo_keeps_no_second_model(pref_config):
    task = build_task(pref_config(finetuning_type="lora"))
    task.build_model()
    assert task.pairs.reference is None  # the reference is the base with the adapters disabled


def test_dpo_loss_falls_and_the_preference_is_learned(pref_config):
    cfg = pref_config(finetuning_type="lora", max_steps=12, learning_rate=5e-3, lora_rank=4, plot_loss=True)
    fit(cfg)
    assert (Path(cfg.output_dir) / "training_rewards_accuracies.png").is_file()
    records = read_metrics(cfg.output_dir)
    assert records[-1]["loss"] < records[0]["loss"]
    assert records[-1]["rewards/margins"] > 0


def test_evaluation_reports_the_pair_metrics(pref_config):
    cfg = pref_config(finetuning_type="lora", max_samples=20, val_size=4, eval_steps=3, max_steps=3,
                      metric_for_best_model="eval_rewards/accuracies", save_steps=3)
    fit(cfg)
    evaluated = [r for r in read_metrics(cfg.output_dir) if "eval_loss" in r]
    assert evaluated and all(f"eval_{k}" in evaluated[-1] for k in PAIR_METRICS)


def _dpo_run(pref_config, tmp_path, batch: int, accum: int):
    cfg = pref_config(finetuning_type="full", per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
                      max_steps=2, optim="sgd", momentum=0.9, learning_rate=0.5, seed=7,
                      output_dir=str(tmp_path / f"run_{batch}x{accum}"))
    trainer = fit(cfg)
    weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    return read_metrics(cfg.output_dir), weights


def test_accumulation_8x1_equals_2x4(pref_config, tmp_path):
    big, big_weights = _dpo_run(pref_config, tmp_path, 8, 1)
    small, small_weights = _dpo_run(pref_config, tmp_path, 2, 4)
    # rows padded to other widths run through other matmul shapes: float32 noise of ~1e-7 relative
    # on log-probs of ~-100, which the rewards (beta × a difference of two of them) carry as ~1e-6
    for a, b in zip(big, small, strict=True):
        for key in ("loss", *PAIR_METRICS, "logps/chosen"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-5), key
    assert big[-1]["loss"] != big[0]["loss"]  # the weights did move
    for name, value in big_weights.items():
        assert torch.allclose(value, small_weights[name], atol=1e-5), name


@pytest.mark.parametrize("stage", ["orpo", "simpo"])
def test_reference_free_stages_train_without_a_reference(pref_config, stage):
    cfg = pref_config(stage=stage, finetuning_type="lora", max_steps=2)
    trainer = fit(cfg)
    assert trainer.task.pairs.reference is None
    records = read_metrics(cfg.output_dir)
    assert all(math.isfinite(r["loss"]) for r in records)
    assert "rewards/accuracies" in records[-1]


def test_pref_loss_orpo_under_stage_dpo_is_stage_orpo(pref_config):
    task = build_task(pref_config(stage="dpo", pref_loss="orpo"))
    assert task.pairs.loss_type == "orpo" and not task.pairs.uses_reference


@pytest.mark.parametrize("finetuning_type", ["full", "lora", "freeze"])
def test_reward_model_trains_and_reloads_as_sequence_classification(pref_config, finetuning_type, tmp_path):
    from transformers import AutoModelForSequenceClassification
    cfg = pref_config(stage="rm", finetuning_type=finetuning_type, max_steps=3)
    trainer = fit(cfg)
    records = read_metrics(cfg.output_dir)
    assert all(k in records[-1] for k in PAIR_METRICS)
    train, _, collate = trainer.task.build_data()
    batch = collate([train[0], train[1]])
    model = trainer.raw.eval()
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    if finetuning_type == "freeze":  # the new head trains besides the chosen layers
        assert trainer.raw.score.weight.requires_grad
    if finetuning_type != "lora":
        loaded = AutoModelForSequenceClassification.from_pretrained(cfg.output_dir)
    else:
        from peft import PeftModel
        base = AutoModelForSequenceClassification.from_pretrained(cfg.model_name_or_path, num_labels=1)
        base.config.pad_token_id = trainer.task.tokenizer.pad_token_id
        loaded = PeftModel.from_pretrained(base, cfg.output_dir)
    with torch.no_grad():
        got = loaded.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(got, expected, atol=1e-5)


def test_dpo_lora_through_the_cli(tiny_model_dir, tmp_path):
    out = tmp_path / "dpo_cli"
    code = cli.main(["train", f"model_name_or_path={tiny_model_dir}", "stage=dpo", "finetuning_type=lora",
                     f"dataset_dir={DEMO}", "dataset=pydoc_pref_sharegpt", "template=default", "cutoff_len=96",
                     "max_samples=8", "per_device_train_batch_size=4", "max_steps=2", "logging_steps=1",
                     "pref_beta=0.2", "save_steps=0", "disable_tqdm=true", f"output_dir={out}"])
    assert code == 0
    records = read_metrics(out)
    assert abs(records[0]["loss"] - math.log(2)) <= 1e-6
    assert (out / "adapter_config.json").exists()


def test_unavailable_keys_are_refused_with_one_line(pref_config):
    from ember.config.errors import ConfigError
    for key, value in (("ref_model_adapters", "x"), ("ref_model_quantization_bit", 4), ("pref_bco_weight", 0.5)):
        with pytest.raises(ConfigError, match=key) as err:
            pref_config(**{key: value})
        assert "\n" not in str(err.value)


def test_chosen_and_rejected_go_through_one_forward(pref_config):
    """One policy forward per micro-batch holds both answers of every pair (the chosen rows, then
    the rejected rows); under LoRA the reference is one more forward of the same model."""
    task = build_task(pref_config(finetuning_type="lora", per_device_train_batch_size=4))
    train, _, collate = task.build_data()
    model = task.build_model()
    rows = []
    handle = model.get_base_model().register_forward_hook(lambda m, args, kwargs, out: rows.append(
        kwargs["input_ids"].shape[0]), with_kwargs=True)
    batch = collate([train[i] for i in range(4)])
    assert torch.equal(batch["input_ids"][:4, :len(train[0]["chosen_input_ids"])][0],
                       torch.tensor(train[0]["chosen_input_ids"]))
    task.training_step(model, batch, 1)
    handle.remove()
    assert rows == [8, 8]  # the policy's forward and the reference's, each on 4 pairs = 8 rows


def test_packing_is_refused_for_the_pair_stages(pref_config):
    from ember.config.errors import ConfigError
    for stage in ("rm", "dpo", "kto"):
        with pytest.raises(ConfigError, match="packing") as err:
            pref_config(stage=stage, packing=True)
        assert "\n" not in str(err.value)


def test_kto_pair_starts_at_one_half_and_trains(pref_config):
    """pref_loss kto_pair: with the reference equal to the policy each term is 1 - sigmoid(0)."""
    cfg = pref_config(finetuning_type="lora", pref_loss="kto_pair", max_steps=3, learning_rate=5e-3)
    fit(cfg)
    records = read_metrics(cfg.output_dir)
    assert abs(records[0]["loss"] - 0.5) <= 1e-6
    assert records[-1]["loss"] != records[0]["loss"] and "rewards/accuracies" in records[-1]


def test_ref_model_from_a_folder_is_the_reference(pref_config, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM
    other = tmp_path / "other_ref"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(other)
    same = pref_config(finetuning_type="full", ref_model=str(tiny_model_dir), max_steps=1,
                       output_dir=str(tmp_path / "same"))
    fit(same)
    assert abs(read_metrics(same.output_dir)[0]["loss"] - math.log(2)) <= 1e-6
    moved = pref_config(finetuning_type="lora", ref_model=str(other), max_steps=1, output_dir=str(tmp_path / "moved"))
    trainer = fit(moved)
    assert trainer.task.pairs.reference is not None
    assert abs(read_metrics(moved.output_dir)[0]["loss"] - math.log(2)) > 1e-3


def test_kto_starts_at_one_half_and_logs_kl(pref_config):
    """With the reference equal to the policy every log-ratio and the KL estimate are 0, so each
    sample's loss is 1 - sigmoid(0) = 1/2."""
    cfg = pref_config(stage="kto", dataset="pydoc_kto", finetuning_type="lora", max_steps=3, learning_rate=5e-3)
    fit(cfg)
    records = read_metrics(cfg.output_dir)
    assert abs(records[0]["loss"] - 0.5) <= 1e-6 and records[0]["kl"] == 0
    assert all(k in records[-1] for k in ("rewards/chosen", "rewards/rejected", "logps/chosen", "kl"))
    assert records[-1]["loss"] != records[0]["loss"]


@pytest.mark.parametrize("finetuning_type", ["full", "lora"])
def test_resumed_dpo_run_equals_the_uninterrupted_one(pref_config, finetuning_type, tmp_path):
    """The reference is rebuilt from the starting model on resume, so the run continues exactly."""
    from conftest import CrashAt, curve
    common = dict(finetuning_type=finetuning_type, max_steps=4, save_steps=2)
    whole = pref_config(**common, output_dir=str(tmp_path / "whole"))
    fit(whole)
    broken = pref_config(**common, output_dir=str(tmp_path / "broken"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(broken, CrashAt(build_task(broken), 3)).fit()
    fit(pref_config(**common, output_dir=str(tmp_path / "broken"), resume_from_checkpoint="true"))
    assert curve(tmp_path / "broken") == curve(tmp_path / "whole")
