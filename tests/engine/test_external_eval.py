"""eval_command: checkpoints evaluated in the background, results logged at their own step."""
import re
import sys
import time
from pathlib import Path

import pytest
from conftest import read_metrics

from ember.config import ConfigError
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

    # no shell runs the template: a pipeline is a shell of its own, the values its arguments
    to_stdout = ExternalEval(r"""sh -c 'echo evaluating "$1" at "$2"; echo "{\"acc\": 0.25, \"name\": \"x\"}"' """
                             "_ {checkpoint} {step}", tmp_path)
    to_stdout.submit(ckpt, 7)
    assert _finish(to_stdout) == [{"step": 7, "external/acc": 0.25}]
    assert f"evaluating {ckpt} at 7" in (tmp_path / "eval_results" / "step_7.log").read_text()


def test_a_failing_command_logs_nothing_and_training_goes_on(tmp_path, caplog):
    evaluator = ExternalEval(r"""sh -c 'echo "{\"acc\": 1}"; exit 3'""", tmp_path)
    evaluator.submit(tmp_path, 1)
    assert _finish(evaluator) == []
    assert "exited with code 3" in caplog.text


def test_a_running_evaluation_does_not_block_and_keeps_its_checkpoint(tmp_path):
    evaluator = ExternalEval(r"""sh -c 'sleep 1; echo "{\"acc\": 1}"'""", tmp_path)
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


# ---- no value can change the command ---------------------------------------------------------

HOSTILE = ["run;touch pwned;#", "run$(touch pwned)", "run`touch pwned`", "my run", "it's \"quoted\"", "run'; touch pwned; '"]
ECHO_ARG = "import json, os, sys; json.dump({'same': float(sys.argv[1] == os.environ['EMBER_CHECKPOINT'])}, open(sys.argv[2], 'w'))"


@pytest.mark.parametrize("form", ["{checkpoint}", "'{checkpoint}'", '"{checkpoint}"'], ids=["bare", "single", "double"])
@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_path_reaches_the_command_as_one_argument_in_every_quoting(tmp_path, monkeypatch, form, name):
    monkeypatch.chdir(tmp_path)  # where an injected `touch pwned` would land
    script = tmp_path / "echo_arg.py"
    script.write_text(ECHO_ARG)
    ckpt = tmp_path / name / "checkpoint-2"
    ckpt.mkdir(parents=True)
    evaluator = ExternalEval(f"{PY} {script} {form} {{output}}", tmp_path)
    evaluator.submit(ckpt, 2)
    assert _finish(evaluator) == [{"step": 2, "external/same": 1.0}]
    assert not list(tmp_path.rglob("pwned")), "a path ran a command"


@pytest.mark.parametrize("template, why", [
    ("python eval.py {checkpoint}; rm -rf /", "shell operator ';'"),
    ("python eval.py {checkpoint} | tail -1", "shell operator '|'"),
    ("python eval.py {checkpoint} > out.json", "shell operator '>'"),
    ("sh -c 'python eval.py {checkpoint}'", "inside sh's -c code"),
    ("bash -c \"python eval.py '{checkpoint}'\"", "inside bash's -c code"),
    (f"{PY} -c 'import sys; print(\"{{output}}\")'", "-c code"),
    ("python eval.py 'unbalanced", "quotes"),
])
def test_templates_that_would_turn_a_path_into_code_are_refused(template, why):
    with pytest.raises(ConfigError, match=re.escape(why)):
        ExternalEval(template, Path("."))


def test_an_injection_through_output_dir_runs_nothing_in_a_real_run(make_config, train, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "echo_arg.py"
    script.write_text(ECHO_ARG)
    cfg = make_config(max_steps=2, save_steps=2, output_dir=str(tmp_path / "run;touch pwned;#$(touch pwned)"),
                      eval_command=f"{PY} {script} '{{checkpoint}}' {{output}}")
    train(cfg)
    assert [r["external/same"] for r in read_metrics(cfg.output_dir) if "external/same" in r] == [1.0]
    assert not list(tmp_path.rglob("pwned"))
