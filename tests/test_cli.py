"""The `ember` command as users run it: exit codes, one-line errors, output_dir rules, repeat runs."""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ember.cli import main
from ember.config import ConfigError, load_config

from conftest import read_metrics

EMBER = Path(sys.executable).with_name("ember")


def ember(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(EMBER), *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture
def valid_args(corpus_dir, tokenizer_dir, tmp_path) -> list[str]:
    """Arguments of a tiny run that would really train: a bad key added to them must stop it first."""
    return ["--model_config", "llama-tiny", "--tokenizer_name_or_path", str(tokenizer_dir), "--dataset", "tiny_text",
            "--dataset_dir", str(corpus_dir), "--cutoff_len", "32", "--per_device_train_batch_size", "2",
            "--max_steps", "2", "--logging_steps", "1", "--save_steps", "0", "--disable_tqdm",
            "--output_dir", str(tmp_path / "out")]


# ---- bad input stops before anything is built -------------------------------------------
BAD = {
    "unknown key": (["--learning_rat", "1e-4"], ["learning_rat", "learning_rate"]),
    "unknown alias-like key": (["lr_schedulr=cosine"], ["lr_schedulr", "lr_scheduler"]),
    "wrong type": (["max_steps=two"], ["max_steps"]),
    "out of range": (["--warmup_ratio", "1.5"], ["warmup_ratio"]),
    "invalid choice": (["--lr_scheduler_type", "cosin"], ["lr_scheduler_type", "cosine_with_restarts", "inverse_sqrt"]),
    "invalid precision": (["--precision", "fp8"], ["precision", "fp32", "bf16", "fp16"]),
    "fp16 with bf16": (["--fp16", "--bf16"], ["fp16", "bf16"]),
    "eval without data": (["eval_strategy=steps"], ["eval_strategy", "val_size"]),
    "no length": (["--max_steps", "0", "--num_train_epochs", "0"], ["max_steps", "num_train_epochs"]),
    "two model sources": (["--model_name_or_path", "some/model"], ["model_name_or_path", "model_config"]),
}
# Each `ember` process costs seconds of imports: these few run as real processes, side by side.
IN_SUBPROCESS = ["unknown key", "invalid choice", "fp16 with bf16", "non-empty output_dir"]


def assert_one_line_naming(rc: int, stderr: str, words: list[str]) -> None:
    assert rc == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    for word in words:
        assert word in lines[0]


@pytest.fixture
def run_main(monkeypatch, capfd):
    """`ember ...` in this process (cheap); restores the global logging and progress-bar state main() sets."""
    import datasets
    import transformers
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    bars = datasets.is_progress_bar_enabled(), transformers.utils.logging.is_progress_bar_enabled()

    def run(*args: str) -> tuple[int, str, str]:
        rc = main(list(args))
        out, err = capfd.readouterr()
        return rc, out, err
    yield run
    root.handlers[:], root.level = handlers, level
    if bars[0]:
        datasets.enable_progress_bars()
    if bars[1]:
        transformers.utils.logging.enable_progress_bar()


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_with_one_line_naming_the_key(case, valid_args, tmp_path, run_main):
    extra, must_name = BAD[case]
    rc, _, err = run_main("train", *valid_args, *extra)
    assert_one_line_naming(rc, err, must_name)
    assert not (tmp_path / "out").exists(), "nothing may be built or written on a config error"


@pytest.mark.parametrize("content", [None, "max_steps: 2\nbetas: [0.9, 0.95\n"], ids=["missing", "syntax error"])
def test_bad_config_file_exits_2_naming_the_file(content, valid_args, tmp_path, run_main):
    path = tmp_path / "run.yaml"
    if content is not None:
        path.write_text(content)
    rc, _, err = run_main("train", str(path), *valid_args)
    assert_one_line_naming(rc, err, [str(path)])
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def cli_runs(corpus_dir, tokenizer_dir, tmp_path_factory) -> dict[str, tuple]:
    """Run IN_SUBPROCESS cases as real `ember` processes at once; case → (returncode, stderr, output_dir, cwd)."""
    procs = {}
    for case in IN_SUBPROCESS:
        cwd = tmp_path_factory.mktemp("cli")
        out = cwd / "out"
        args = ["--model_config", "llama-tiny", "--tokenizer_name_or_path", str(tokenizer_dir),
                "--dataset", "tiny_text", "--dataset_dir", str(corpus_dir), "--cutoff_len", "32",
                "--max_steps", "2", "--save_steps", "0", "--disable_tqdm", "--output_dir", str(out)]
        if case == "non-empty output_dir":
            out.mkdir()
            (out / "notes.txt").write_text("mine")
        else:
            args += BAD[case][0]
        procs[case] = (subprocess.Popen([str(EMBER), "train", *args], cwd=cwd, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE), out, cwd)
    runs = {}
    for case, (proc, out, cwd) in procs.items():
        _, err = proc.communicate(timeout=300)
        runs[case] = (proc.returncode, err, out, cwd)
    return runs


@pytest.mark.parametrize("case", IN_SUBPROCESS[:3])
def test_real_process_bad_input_exits_2_with_one_line(case, cli_runs):
    rc, err, out, _ = cli_runs[case]
    assert_one_line_naming(rc, err, BAD[case][1])
    assert not out.exists(), "nothing may be built or written on a config error"


def test_real_process_refuses_non_empty_output_dir(cli_runs):
    rc, err, out, _ = cli_runs["non-empty output_dir"]
    assert rc == 2, err
    assert "overwrite_output_dir" in err.strip().splitlines()[-1]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"], "a refused run writes nothing"


def test_unknown_command_exits_2(capsys):
    assert main(["trian"]) == 2
    assert "train" in capsys.readouterr().err


def test_no_command_prints_usage(capsys):
    assert main([]) == 0
    assert "ember train" in capsys.readouterr().out


# ---- output_dir ----------------------------------------------------------------------------
def test_non_empty_output_dir_is_refused_naming_overwrite_output_dir(make_config, train, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    cfg = make_config(output_dir=str(out), max_steps=1, cutoff_len=32)
    with pytest.raises(ConfigError, match="overwrite_output_dir"):
        train(cfg)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"], "a refused run writes nothing"


def test_non_empty_output_dir_is_accepted_with_overwrite_output_dir(make_config, train, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "metrics.jsonl").write_text(json.dumps({"step": 999, "loss": 1.0, "lr": 0.1}) + "\n")
    cfg = make_config(output_dir=str(out), max_steps=2, cutoff_len=32, overwrite_output_dir=True)
    trainer = train(cfg)
    steps = [r["step"] for r in read_metrics(out)]
    assert steps == [1, 2], "the old run's metrics are replaced, not appended to"
    assert (out / "notes.txt").read_text() == "mine", "files ember did not write are left alone"
    # the config as resolved for the run (its automatic name filled in); cfg itself is never changed
    assert cfg.run_name is None
    assert load_config([str(out / "config.yaml")]) == cfg.model_copy(update={"run_name": trainer.run_name})


def test_a_run_stopped_by_bad_data_leaves_output_dir_reusable(make_config, train, corpus_dir, tmp_path):
    """The data is read after config.yaml is written; once the user fixes the line, the same
    command must run, not stop on 'output_dir is not empty' because of the failed attempt."""
    data = tmp_path / "data"
    shutil.copytree(corpus_dir, data)
    good = (data / "tiny.jsonl").read_text()
    (data / "tiny.jsonl").write_text(good + '{"content": "an unterminated string}\n')
    cfg = make_config(dataset="tiny_json", dataset_dir=str(data), max_steps=1, cutoff_len=32, overwrite_cache=True)
    with pytest.raises(ConfigError, match="tiny.jsonl"):
        train(cfg)
    assert sorted(p.name for p in Path(cfg.output_dir).iterdir()) == ["config.yaml"]
    (data / "tiny.jsonl").write_text(good)
    train(cfg)
    assert [r["step"] for r in read_metrics(cfg.output_dir)] == [1]


def test_a_config_yaml_of_the_users_own_in_output_dir_is_not_written_over(make_config, train, tmp_path):
    out = tmp_path / "run1"
    out.mkdir()
    (out / "config.yaml").write_text("# my notes\nlearning_rate: 1e-3\n")
    with pytest.raises(ConfigError, match="overwrite_output_dir"):
        train(make_config(output_dir=str(out), max_steps=1, cutoff_len=32))
    assert (out / "config.yaml").read_text() == "# my notes\nlearning_rate: 1e-3\n"


# ---- the resolved config repeats the run ----------------------------------------------------
def test_written_config_repeats_the_run_through_the_cli(make_config, train, tmp_path):
    first = make_config(max_steps=2, cutoff_len=32, per_device_train_batch_size=2, logging_steps=1,
                        learning_rate=3e-3, output_dir=str(tmp_path / "first"))
    name = train(first).run_name  # the automatic name is written with the config and kept by the rerun
    again = tmp_path / "again"
    done = ember("train", str(tmp_path / "first" / "config.yaml"), f"output_dir={again}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert load_config([str(again / "config.yaml")]) == first.model_copy(update={"output_dir": str(again),
                                                                               "run_name": name})
    want, got = read_metrics(tmp_path / "first"), read_metrics(again)
    assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2]
    for a, b in zip(want, got):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-6)
