"""eval_command: checkpoints evaluated in the background, results logged at their own step."""
import sys
import time
from pathlib import Path

from conftest import read_metrics

from ember.engine.external_eval import ExternalEval

PY = sys.executable


def _finish(evaluator: ExternalEval, timeout: float = 30) -> list[dict]:
    deadline = time.time() + timeout
    records: list[dict] = []
    while evaluator.jobs and time.time() < deadline:
        records += evaluator.poll()
        time.sleep(0.05)
    return records


def test_results_from_the_output_file_and_from_stdout(tmp_path):
    ckpt = tmp_path / "checkpoint-5"
    ckpt.mkdir()
    to_file = ExternalEval(f"{PY} -c \"import json,sys; json.dump({{'acc': 0.5, 'sub': {{'f1': 1}}}}, "
                           f"open(sys.argv[1], 'w'))\" {{output}}", tmp_path)
    to_file.submit(ckpt, 5)
    assert _finish(to_file) == [{"step": 5, "external/acc": 0.5, "external/sub/f1": 1.0}]

    to_stdout = ExternalEval("echo evaluating {checkpoint} at {step}; echo '{\"acc\": 0.25, \"name\": \"x\"}'",
                             tmp_path)
    to_stdout.submit(ckpt, 7)
    assert _finish(to_stdout) == [{"step": 7, "external/acc": 0.25}]
    assert f"evaluating {ckpt} at 7" in (tmp_path / "eval_results" / "step_7.log").read_text()


def test_a_failing_command_logs_nothing_and_training_goes_on(tmp_path, caplog):
    evaluator = ExternalEval("echo '{\"acc\": 1}'; exit 3", tmp_path)
    evaluator.submit(tmp_path, 1)
    assert _finish(evaluator) == []
    assert "exited with code 3" in caplog.text


def test_a_running_evaluation_does_not_block_and_keeps_its_checkpoint(tmp_path):
    evaluator = ExternalEval("sleep 1; echo '{\"acc\": 1}'", tmp_path)
    started = time.perf_counter()
    evaluator.submit(tmp_path, 3)
    assert time.perf_counter() - started < 0.5  # submit returns at once
    assert evaluator.busy_steps == {3} and evaluator.poll() == []
    assert evaluator.wait() == [{"step": 3, "external/acc": 1.0}]
    assert evaluator.busy_steps == set()


def test_training_logs_external_results_and_retention_waits_for_them(make_config, train):
    # each evaluation checks that its checkpoint still exists while it runs (0.3 s), although
    # save_total_limit 1 would delete it at the next save
    script = ("import json,os,sys,time; time.sleep(0.3); "
              "json.dump({'exists': float(os.path.isdir(sys.argv[1]))}, open(sys.argv[2], 'w'))")
    cfg = make_config(max_steps=6, save_steps=2, save_total_limit=1, logging_steps=1,
                      eval_command=f"{PY} -c \"{script}\" {{checkpoint}} {{output}}")
    train(cfg)
    external = [r for r in read_metrics(cfg.output_dir) if "external/exists" in r]
    assert sorted(r["step"] for r in external) == [2, 4, 6]
    assert all(r["external/exists"] == 1.0 for r in external)


def test_wandb_runs_offline_under_output_dir_with_an_automatic_name(make_config, train, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = make_config(report_to="wandb", max_steps=2, logging_steps=1)
    train(cfg)
    runs = list((Path(cfg.output_dir) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    saved = (Path(cfg.output_dir) / "config.yaml").read_text()
    name = next(line.split(": ", 1)[1] for line in saved.splitlines() if line.startswith("run_name:"))
    assert name.startswith("ember_causal_lm_") and "_1xCPU_bs" in name and "_2_lr_" in name
