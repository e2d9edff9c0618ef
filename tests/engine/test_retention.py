"""save_total_limit, the best checkpoint, folders ember did not write, load_best_model_at_end.

The eval-loss runs warm up to a learning rate far too high (1.0), so the model first improves
and then diverges: the best checkpoint is an early one, which retention must keep while it
deletes newer ones. Custom metrics come from a task whose evaluate() returns a scripted
sequence, so which step is best is known in advance.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ember.engine.checkpoint import is_complete
from ember.engine.trainer import Trainer
from ember.tasks import build_task

from conftest import CrashAt, read_metrics

SMALL = dict(cutoff_len=32, per_device_train_batch_size=4, max_samples=40, logging_steps=1)
# Evaluate and save every 2 steps; warm up over 8 steps to an LR that makes the run diverge.
DIVERGING = dict(SMALL, val_size=8, eval_steps=2, save_steps=2, max_steps=12, learning_rate=1.0,
                 lr_scheduler_type="constant_with_warmup", warmup_steps=8)


def _saves(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "checkpoints.jsonl").read_text().splitlines() if line.strip()]


def _kept(out: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if p.name.split("-")[1].isdigit())


def _best_step(saves: list[dict], metric: str, greater: bool) -> int:
    values = {r["step"]: r["metrics"][metric] for r in saves}
    return (max if greater else min)(values, key=values.get)


class Scripted:
    """Wraps a task: the evaluation after step s reports metric = values[s].

    Both ways a task can contribute evaluation metrics are served: evaluate(model, batches)
    for the whole validation set, and eval_metrics(model, batch) per batch (averaged by the
    engine; every batch of one evaluation reports the same value).
    """

    def __init__(self, task, metric: str, values: dict[int, float]):
        self.task, self.metric, self.values = task, metric, values
        self.step = 0  # the step the next evaluation follows
        self.used: set[int] = set()

    def __getattr__(self, name):
        return getattr(self.task, name)

    def training_step(self, model, batch, step):
        if step >= 0:
            self.step = step + 1
        return self.task.training_step(model, batch, step)

    def _value(self) -> float:
        self.used.add(self.step)
        return self.values[self.step]

    def eval_metrics(self, model, batch):
        return {self.metric: self._value()}

    def evaluate(self, model, batches):
        for _ in batches:
            pass
        return {"eval_loss": 1.0, self.metric: self._value()}


def _run_scripted(cfg, metric, values):
    """values: the metric after steps 2, 4, ..., 12."""
    task = Scripted(build_task(cfg), metric, dict(zip(range(2, 13, 2), values)))
    trainer = Trainer(cfg, task)
    result = trainer.fit()
    assert task.used == set(task.values), "the run did not evaluate at every save"
    return trainer, result


def test_limit_2_keeps_the_two_newest_and_an_early_best(make_config, train, tmp_path):
    train(make_config(save_total_limit=2, **DIVERGING))
    out = tmp_path / "run"
    saves = _saves(out)
    assert [r["step"] for r in saves] == [2, 4, 6, 8, 10, 12], "checkpoints.jsonl must list every save"
    evals = {r["step"]: r["eval_loss"] for r in read_metrics(out) if "eval_loss" in r}
    for record in saves:
        assert record["metrics"]["eval_loss"] == evals[record["step"]]
    best = _best_step(saves, "eval_loss", greater=False)
    assert best not in (10, 12), f"precondition: the diverging run's best ({best}) must be an early step"
    assert [r["step"] for r in saves if r["is_best"]][-1] == best
    assert _kept(out) == sorted({best, 10, 12})
    for step in _kept(out):
        assert is_complete(out / f"checkpoint-{step}")


def test_limit_1_keeps_the_newest_and_the_best(make_config, tmp_path):
    cfg = make_config(save_total_limit=1, metric_for_best_model="accuracy", **dict(DIVERGING, learning_rate=1e-3))
    _run_scripted(cfg, "eval_accuracy", [0.2, 0.9, 0.4, 0.3, 0.5, 0.6])
    out = tmp_path / "run"
    assert [r["is_best"] for r in _saves(out)] == [True, True, False, False, False, False]
    assert _kept(out) == [4, 12]


def test_best_among_the_newest_is_not_kept_twice(make_config, tmp_path):
    """The rule is 'the save_total_limit newest, plus the best one': when the best is itself one
    of the newest, nothing older is kept in its place."""
    cfg = make_config(save_total_limit=2, **dict(DIVERGING, learning_rate=1e-3))
    _run_scripted(cfg, "eval_loss", [6.0, 5.0, 4.0, 3.0, 2.0, 1.0])  # every save is the new best
    assert _kept(tmp_path / "run") == [10, 12]


@pytest.mark.parametrize("greater, best", [(None, 6), (True, 6), (False, 4)])
def test_greater_is_better_with_a_custom_metric(make_config, tmp_path, greater, best):
    """eval_bleu defaults to greater-is-better (its name does not end in loss)."""
    extra = {} if greater is None else {"greater_is_better": greater}
    cfg = make_config(save_total_limit=1, metric_for_best_model="eval_bleu", load_best_model_at_end=True,
                      **extra, **dict(DIVERGING, learning_rate=1e-3))
    trainer, result = _run_scripted(cfg, "eval_bleu", [0.3, 0.1, 0.8, 0.5, 0.4, 0.2])
    out = tmp_path / "run"
    assert _best_step(_saves(out), "eval_bleu", greater is not False) == best
    assert result["best_step"] == best
    assert _kept(out) == [best, 12]
    state = json.loads((out / "checkpoint-12" / "trainer_state.json").read_text())
    assert state["best"]["best_step"] == best


def test_a_folder_ember_did_not_write_is_never_deleted(make_config, train, tmp_path):
    out = tmp_path / "run"
    mine = out / "checkpoint-999"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("the user's own files")
    early = out / "checkpoint-1"  # an older step than any ember writes here, also without a marker
    early.mkdir()
    (early / "model.safetensors").write_bytes(b"not ember's")
    train(make_config(save_total_limit=1, save_steps=2, max_steps=8, overwrite_output_dir=True, **SMALL))
    assert (mine / "notes.txt").read_text() == "the user's own files"
    assert (early / "model.safetensors").read_bytes() == b"not ember's"
    assert [p.name for p in sorted(out.glob("checkpoint-*")) if (p / "COMPLETE").exists()] == ["checkpoint-8"]


def test_load_best_model_at_end_exports_the_best_checkpoint(make_config, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ember")
    cfg = make_config(save_total_limit=2, load_best_model_at_end=True, **DIVERGING)
    trainer = Trainer(cfg, build_task(cfg))
    result = trainer.fit()
    out = tmp_path / "run"
    best = _best_step(_saves(out), "eval_loss", greater=False)
    assert best != 12, "precondition: the last step must not be the best"
    assert result["best_step"] == best
    assert f"checkpoint-{best}" in caplog.text
    exported = load_file(str(out / "model.safetensors"))
    kept = load_file(str(out / f"checkpoint-{best}" / "model.safetensors"))
    last = load_file(str(out / "checkpoint-12" / "model.safetensors"))
    shared = set(exported) & set(kept)
    assert len(shared) >= len(kept) - 1
    for name in shared:
        assert torch.equal(exported[name], kept[name]), name
    assert any(not torch.equal(exported[n], last[n]) for n in shared), "the export holds the last step's weights"


def test_best_is_remembered_across_a_resume(make_config, train, tmp_path):
    """The best step from before an interruption is still kept and still exported afterwards."""
    settings = dict(save_total_limit=2, load_best_model_at_end=True, **DIVERGING)
    reference = train(make_config(output_dir=str(tmp_path / "ref"), **settings))
    best = reference.checkpoints.best_step
    assert best is not None and best < 6, "precondition: the best is an early step"
    out = tmp_path / "run"
    cfg = make_config(**settings)
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(cfg, CrashAt(build_task(cfg), 9)).fit()
    assert _kept(out) == sorted({best, 6, 8})
    cfg = make_config(resume_from_checkpoint="true", **settings)
    result = Trainer(cfg, build_task(cfg)).fit()
    assert result["best_step"] == best
    assert _kept(out) == sorted({best, 10, 12})
    exported = load_file(str(out / "model.safetensors"))
    expected = load_file(str(tmp_path / "ref" / "model.safetensors"))
    assert exported.keys() == expected.keys()
    for name in expected:
        assert torch.equal(exported[name], expected[name]), name


def test_the_retention_rule_is_stated_in_help():
    from ember.config.help import render_help
    line = next(l for l in render_help().splitlines() if l.strip().startswith("save_total_limit"))
    assert "newest" in line and "best" in line, line
