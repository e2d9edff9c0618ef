"""precompute_ref_log_probs: the reference's log-probs computed once, before training, as columns
of the dataset; the run then equals the one with the live reference and holds one model."""
from __future__ import annotations

from pathlib import Path

import pytest

from ember.engine.trainer import Trainer
from ember.tasks import build_task

from conftest import read_metrics

DEMO = Path(__file__).resolve().parents[2] / "examples" / "data"
COMPARED = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen")


@pytest.fixture
def pref_config(make_config, tiny_model_dir):
    def make(**overrides):
        base = dict(model_config=None, model_name_or_path=str(tiny_model_dir), stage="dpo", template="default",
                    dataset="pydoc_pref_alpaca", dataset_dir=str(DEMO), cutoff_len=96, max_samples=16,
                    per_device_train_batch_size=4, max_steps=4, optim="sgd", learning_rate=0.5, seed=3)
        base.update(overrides)
        return make_config(**base)
    return make


def _run(pref_config, tmp_path, name: str, **overrides):
    cfg = pref_config(output_dir=str(tmp_path / name), **overrides)
    trainer = Trainer(cfg, build_task(cfg))
    trainer.fit()
    return trainer, read_metrics(cfg.output_dir)


def _max_difference(live: list[dict], pre: list[dict], keys) -> float:
    """The largest gap, relative to the value where it is above 1. The reference pass batches rows
    differently from the live one, so its log-probs (~-235, where an fp32 step is 1.5e-5) may round
    differently: bit-identical on an AVX-512 Xeon, 1-2 steps apart on an AVX2 EPYC. A reward is
    beta (0.1) times a difference of two of them, so 1e-5 allows a few steps; a wrong reference
    (the policy's, or another row's) is off by 1e-3 and more."""
    worst = 0.0
    for a, b in zip(live, pre, strict=True):
        for key in keys:
            if key in a:
                worst = max(worst, abs(a[key] - b[key]) / max(1.0, abs(a[key])))
    return worst


@pytest.mark.parametrize("stage,dataset,finetuning_type", [
    ("dpo", "pydoc_pref_alpaca", "full"), ("dpo", "pydoc_pref_alpaca", "lora"),
    ("kto", "pydoc_kto", "full"), ("kto", "pydoc_kto", "lora"), ("dpo", "pydoc_pref_alpaca", "qlora")])
def test_precomputed_reference_equals_the_live_one(pref_config, tmp_path, stage, dataset, finetuning_type):
    common = dict(stage=stage, dataset=dataset, finetuning_type=finetuning_type,
                  **({"lora_rank": 4, "learning_rate": 5e-2} if finetuning_type in ("lora", "qlora") else {}),
                  **({"quantization_bit": 4, "lora_target": "all"} if finetuning_type == "qlora" else {}))
    _, live = _run(pref_config, tmp_path, "live", **common)
    trainer, pre = _run(pref_config, tmp_path, "pre", precompute_ref_log_probs=True, **common)
    assert trainer.task.pairs.reference is None  # no frozen copy, no ref_model: one model in memory
    assert "chosen_ref_logps" in trainer.task._pair_sets[0].rows or "ref_logps" in trainer.task._pair_sets[0].rows
    assert live[-1]["loss"] != live[0]["loss"]  # the policy moved away from the reference
    keys = COMPARED + (("kl",) if stage == "kto" else ())
    diff = _max_difference(live, pre, keys)
    print(f"{stage}/{finetuning_type}: max |live - precomputed| = {diff:.3g}")
    assert diff <= 1e-5


def test_full_finetuning_keeps_no_reference_copy(pref_config):
    task = build_task(pref_config(finetuning_type="full", precompute_ref_log_probs=True))
    train, _, collate = task.build_data()
    model = task.build_model()
    assert task.pairs.reference is None
    batch = collate([train[0], train[1]])
    assert batch["ref_logps"].shape == (4,)
    live = build_task(pref_config(finetuning_type="full"))
    live.build_data()
    live.build_model()
    assert live.pairs.reference is not None  # without the option, a frozen copy is held
    ref = live.pairs._reference_logps(model, collate([train[0], train[1]]))
    assert (ref - batch["ref_logps"]).abs().max() <= 1e-5


def test_evaluation_uses_the_precomputed_reference(pref_config, tmp_path):
    common = dict(finetuning_type="full", max_samples=20, val_size=4, eval_steps=2, max_steps=4)
    _, live = _run(pref_config, tmp_path, "live", **common)
    _, pre = _run(pref_config, tmp_path, "pre", precompute_ref_log_probs=True, **common)
    keys = ("eval_loss", "eval_rewards/margins", *COMPARED)
    assert any("eval_loss" in r for r in pre)
    assert _max_difference(live, pre, keys) <= 1e-5


def test_reference_free_stages_refuse_the_option(pref_config):
    from ember.config.errors import ConfigError
    for stage in ("orpo", "simpo", "rm"):
        with pytest.raises(ConfigError, match="precompute_ref_log_probs"):
            build_task(pref_config(stage=stage, finetuning_type="lora", precompute_ref_log_probs=True))


def test_resumed_run_with_precomputed_reference_equals_the_uninterrupted_one(pref_config, tmp_path):
    """On resume the pass runs again on the starting weights (before the checkpoint is loaded)."""
    from conftest import CrashAt, curve
    common = dict(finetuning_type="full", max_steps=4, save_steps=2, precompute_ref_log_probs=True)
    whole = pref_config(**common, output_dir=str(tmp_path / "whole"))
    Trainer(whole, build_task(whole)).fit()
    broken = pref_config(**common, output_dir=str(tmp_path / "broken"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(broken, CrashAt(build_task(broken), 3)).fit()
    resumed = pref_config(**common, output_dir=str(tmp_path / "broken"), resume_from_checkpoint="true")
    Trainer(resumed, build_task(resumed)).fit()
    assert curve(tmp_path / "broken") == curve(tmp_path / "whole")


@pytest.mark.slow
def test_two_ranks_share_the_reference_pass_and_get_one_rank_values(tiny_model_dir, tmp_path):
    """Under torchrun each rank runs every other batch of the reference pass and the ranks swap
    their values: each ends with the one-process columns, bit for bit, from half the batches.
    (kto's pass is the same code on its own columns.)"""
    stage, dataset = "dpo", "pydoc_pref_alpaca"
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
    from multiprocess_helpers import assert_ran, clean_env, run_logged

    worker = str(Path(__file__).with_name("precompute_worker.py"))
    keys = dict(model_name_or_path=str(tiny_model_dir), stage=stage, finetuning_type="lora", template="default",
                dataset=dataset, dataset_dir=str(DEMO), cutoff_len=96, max_samples=22, val_size=6,
                per_device_eval_batch_size=3, precompute_ref_log_probs=True, preprocessing_num_workers=1)
    runs = {}
    for name, launcher in (("one", [sys.executable]),
                           ("two", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                    "--nproc_per_node", "2"])):
        out = tmp_path / name
        rc, log = run_logged([*launcher, worker, json.dumps({**keys, "output_dir": str(out)})],
                             tmp_path / f"{name}.log", clean_env())
        assert_ran(rc, log)
        runs[name] = [json.loads((out / f"rank{r}.json").read_text()) for r in range(1 if name == "one" else 2)]
    (one,), two = runs["one"], runs["two"]
    assert one["columns"] and all(len(v) > 0 for v in one["columns"].values())
    for rank in two:
        assert rank["columns"] == one["columns"]  # the same floats, in the same rows
    # 16 train rows and 6 validation rows in batches of 3: 6 + 2 batches, split 4 / 4
    assert one["batches"] == 8 and [r["batches"] for r in two] == [4, 4]
