"""Reading run folders made by real tiny ember runs: status, summary, curves, checkpoints."""
from __future__ import annotations

import fcntl

import pytest

from ember.engine.run_lock import LOCK_NAME
from ember.web import board, runs


@pytest.fixture
def finished_run(make_config, train, tmp_path):
    cfg = make_config(output_dir=str(tmp_path / "runs" / "done"), max_steps=6, save_steps=3, eval_steps=3,
                      val_size=0.1)
    train(cfg)
    return tmp_path / "runs" / "done"


def test_finds_a_finished_run_with_its_numbers(finished_run):
    root = finished_run.parent
    assert runs.find_runs(root) == [finished_run]
    row = runs.summary(finished_run, root)
    assert row["run"] == "done" and row["status"] == "finished" and row["step"] == 6
    assert float(row["loss"]) > 0 and float(row["eval_loss"]) > 0
    assert row["best"].startswith("step ") and "eval_loss" in row["best"]


def test_checkpoints_mark_only_the_best(finished_run):
    rows = runs.checkpoint_rows(finished_run)
    assert [r[1] for r in rows] == [3, 6]
    assert sum(r[0] == "★ best" for r in rows) == 1


def test_curves_cover_every_numeric_key(finished_run):
    keys = runs.metric_keys(runs.read_metrics(finished_run))
    assert keys[0] == "loss" and "eval_loss" in keys and {"lr", "grad_norm", "tokens_per_sec", "mfu"} <= set(keys)
    steps, values = runs.series(runs.read_metrics(finished_run), "eval_loss")
    assert steps == [3, 6] and len(values) == 2
    fig = board.curves_figure(finished_run.parent, ["done"], None)
    assert {ax.get_title() for ax in fig.axes if ax.get_title()} >= {"loss", "eval_loss", "lr"}


def test_a_held_lock_means_running_and_a_released_one_does_not(finished_run):
    lock = finished_run / LOCK_NAME
    with open(lock, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert runs.lock_held(finished_run)
        assert runs.status(finished_run)[0] == "running"
        fcntl.flock(handle, fcntl.LOCK_UN)
        assert not runs.lock_held(finished_run)
    assert runs.status(finished_run)[0] == "finished"


def test_stopped_and_failed_come_from_the_log_and_exit_code(finished_run):
    stop_log = "step 3/6\nember: stopped by SIGTERM after step 3; checkpoint x is complete. Resume with: ...\n"
    assert runs.status(finished_run, exit_code=143)[0] == "stopped"
    assert runs.status(finished_run, stop_log)[0] == "stopped"
    bad = "ember: error: unknown key 'learing_rate' (did you mean 'learning_rate'?)\n"
    assert runs.status(finished_run, bad, exit_code=2) == ("failed", "error: unknown key 'learing_rate' "
                                                          "(did you mean 'learning_rate'?)")
    crash = "Traceback (most recent call last):\n  File \"x.py\", line 1\nRuntimeError: out of memory\n"
    assert runs.error_line(crash) == "RuntimeError: out of memory"


def test_a_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    assert runs.read_jsonl(path) == [{"step": 1, "loss": 2.0}]
