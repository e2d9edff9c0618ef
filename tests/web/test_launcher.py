"""The page's queue: detached `ember train` processes started one after another, their outcome read back."""
from __future__ import annotations

import time

from ember.web import board, launcher

WAIT = 120  # seconds: the bound on any wait here


def tiny(corpus_dir, tokenizer_dir, out, **extra):
    return {"model_config": "llama-tiny", "tokenizer_name_or_path": str(tokenizer_dir), "dataset": "tiny_text",
            "dataset_dir": str(corpus_dir), "cutoff_len": 32, "per_device_train_batch_size": 2, "max_steps": 3,
            "logging_steps": 1, "save_steps": 3, "disable_tqdm": True, "output_dir": str(out), **extra}


def wait_until(predicate, what: str):
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"gave up after {WAIT} s waiting for {what}")


def test_queued_runs_start_one_after_another_and_report_how_they_ended(corpus_dir, tokenizer_dir, tmp_path):
    root = tmp_path / "runs"
    first = launcher.enqueue(root, tiny(corpus_dir, tokenizer_dir, root / "a"), str(root / "a"))
    second = launcher.enqueue(root, tiny(corpus_dir, tokenizer_dir, root / "b", learing_rate=1), str(root / "b"))
    third = launcher.enqueue(root, tiny(corpus_dir, tokenizer_dir, root / "c"), str(root / "c"))
    assert launcher.stop(root, root / "c").startswith("took c off the queue")
    wait_until(lambda: all(j["state"] == "done" for j in launcher.jobs(root)), "the queue to drain")
    jobs = {j["id"]: j for j in launcher.jobs(root)}
    a, b = jobs[first["id"]], jobs[second["id"]]
    assert a["exit_code"] == 0 and b["exit_code"] == 2
    assert b["started"] >= a["ended"]  # one after another
    assert jobs[third["id"]].get("cancelled") and not (root / "c").exists()
    rows = {r["run"]: r for r in board.overview(root)}
    assert rows["a"]["status"] == "finished" and rows["a"]["step"] == 3
    assert rows["b"]["status"] == "failed" and "unknown key 'learing_rate'" in rows["b"]["error"]
    assert "c" not in rows
    launcher.delete(root, root / "a")
    assert not (root / "a").exists() and not any(j["output_dir"] == str(root / "a") for j in launcher.jobs(root))
