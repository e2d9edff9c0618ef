"""SIGTERM / SIGINT: finish the optimizer step, write a checkpoint, exit 128+signal with a hint.

The subprocess tests send real signals to `ember train`. The in-process tests send the
signal to the test process itself from inside a chosen training step (or a chosen save), so
which step it lands in is exact and the outcome is deterministic.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ember.engine.checkpoint import is_complete
from ember.engine.preemption import Preempted
from ember.engine.trainer import Trainer
from ember.tasks import build_task

from conftest import curve

EMBER = str(Path(sys.executable).parent / "ember")
SMALL = dict(cutoff_len=32, per_device_train_batch_size=4, max_samples=12, logging_steps=1, learning_rate=1e-3)


# ---- subprocess: real signals to `ember train` ------------------------------------------------

def _start(corpus_dir, tokenizer_dir, out: Path, **overrides) -> subprocess.Popen:
    settings = {"model_config": "llama-tiny", "tokenizer_name_or_path": str(tokenizer_dir), "dataset": "tiny_text",
                "dataset_dir": str(corpus_dir), "output_dir": str(out), "disable_tqdm": "true",
                **SMALL, **overrides}
    return subprocess.Popen([EMBER, "train", *(f"{k}={v}" for k, v in settings.items())],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _steps(out: Path) -> list[int]:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    steps = []
    for line in lines:
        try:
            steps.append(json.loads(line)["step"])
        except (ValueError, KeyError):
            pass
    return steps


def _wait_for_steps(proc, out: Path, count: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while len(_steps(out)) < count:
        if proc.poll() is not None:
            raise AssertionError(f"ember train ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("ember train logged no steps in time")
        time.sleep(0.005)


def _signal_and_wait(proc, sig) -> tuple[int, str, float]:
    sent = time.monotonic()
    proc.send_signal(sig)
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"ember train did not stop within 60 s of {sig.name}")
    return proc.returncode, stderr, time.monotonic() - sent


def _stopped_step(out: Path, stderr: str) -> int:
    """The step of the one checkpoint the stop wrote (save_steps is too large for any other)."""
    folders = sorted(out.glob("checkpoint-*"))
    assert len(folders) == 1, f"expected exactly the stop checkpoint, found {[p.name for p in folders]}"
    step = int(folders[0].name.split("-")[1])
    assert re.search(rf"\b{step}\b", stderr), f"stderr does not name the stop step {step}:\n{stderr[-2000:]}"
    return step


def _assert_checkpoint_at(out: Path, step: int) -> None:
    folder = out / f"checkpoint-{step}"
    assert is_complete(folder), f"no complete checkpoint at the stop step {step}"
    assert json.loads((folder / "trainer_state.json").read_text())["trainer"]["step"] == step
    assert _steps(out)[-1] == step, "the checkpoint is not at the last step the run logged"
    assert not list(out.glob(".tmp-*"))


def test_sigterm_saves_exits_143_and_the_hint_resumes(corpus_dir, tokenizer_dir, tmp_path):
    out = tmp_path / "run"
    max_steps = 40
    proc = _start(corpus_dir, tokenizer_dir, out, max_steps=max_steps, save_steps=10_000)
    _wait_for_steps(proc, out, 3)
    code, stderr, took = _signal_and_wait(proc, signal.SIGTERM)
    assert code == 143, stderr[-2000:]
    assert took < 20, f"took {took:.1f} s to stop: more than one step and one save"
    step = _stopped_step(out, stderr)
    assert 3 <= step < max_steps
    _assert_checkpoint_at(out, step)

    hint = re.search(r"(ember train [^\n]*?resume_from_checkpoint\S*)", stderr)
    assert hint, f"stderr does not say how to resume:\n{stderr[-2000:]}"
    command = shlex.split(hint.group(1).rstrip(".;,)'\""))
    resumed = subprocess.run([EMBER, *command[1:]], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"checkpoint-{step}" in resumed.stderr
    assert _steps(out) == list(range(1, max_steps + 1))
    assert (out / "model.safetensors").exists()


def test_sigint_once_saves_and_exits_130(corpus_dir, tokenizer_dir, tmp_path):
    out = tmp_path / "run"
    proc = _start(corpus_dir, tokenizer_dir, out, max_steps=2000, save_steps=10_000)
    _wait_for_steps(proc, out, 3)
    code, stderr, took = _signal_and_wait(proc, signal.SIGINT)
    assert code == 130, stderr[-2000:]
    assert took < 20
    step = _stopped_step(out, stderr)
    _assert_checkpoint_at(out, step)
    assert "resume_from_checkpoint" in stderr


# ---- in-process: the signal lands in a chosen step or save -------------------------------------

class SignalAt:
    """Wraps a task: sends `signals` to this process during the training step completing `step`."""

    def __init__(self, task, step: int, signals: list[int]):
        self.task, self.step, self.signals = task, step, signals

    def __getattr__(self, name):
        return getattr(self.task, name)

    def training_step(self, model, batch, step):
        if step + 1 == self.step:
            for sig in self.signals:
                os.kill(os.getpid(), sig)
                time.sleep(0.05)  # the Python-level handler runs before the next signal is sent
        return self.task.training_step(model, batch, step)


def _same_weights(a: Path, b: Path) -> None:
    want, got = load_file(str(a)), load_file(str(b))
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_finishes_the_step_in_progress_and_resume_is_exact(make_config, train, tmp_path, sig):
    reference = tmp_path / "reference"
    train(make_config(output_dir=str(reference), max_steps=12, save_steps=4, **SMALL))
    cfg = make_config(max_steps=12, save_steps=4, **SMALL)
    handler_before = signal.getsignal(sig)
    with pytest.raises(Preempted) as stop:
        Trainer(cfg, SignalAt(build_task(cfg), 6, [sig])).fit()
    assert signal.getsignal(sig) == handler_before, "the previous signal handler was not restored"
    assert stop.value.exit_code == 128 + sig
    out = tmp_path / "run"
    assert re.search(r"\b6\b", str(stop.value)) and "resume_from_checkpoint" in str(stop.value), str(stop.value)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    _assert_checkpoint_at(out, 6)
    resumed_cfg = make_config(max_steps=12, save_steps=4, resume_from_checkpoint="true", **SMALL)
    Trainer(resumed_cfg, build_task(resumed_cfg)).fit()
    assert curve(out) == curve(reference)
    _same_weights(reference / "model.safetensors", out / "model.safetensors")


def test_second_sigint_stops_at_once_without_finishing_the_step(make_config, tmp_path):
    cfg = make_config(max_steps=12, save_steps=4, **SMALL)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, SignalAt(build_task(cfg), 6, [signal.SIGINT, signal.SIGINT])).fit()
    out = tmp_path / "run"
    assert _steps(out) == [1, 2, 3, 4, 5], "the step in progress was finished after the second Ctrl-C"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]
    assert is_complete(out / "checkpoint-4")


def test_second_sigint_during_a_save_leaves_nothing_resume_would_read(make_config, train, tmp_path, monkeypatch):
    """Ctrl-C twice while checkpoint-8's files are being flushed to disk: the half-written
    folder is never taken for a checkpoint, and resume continues from checkpoint-4 exactly."""
    reference = tmp_path / "reference"
    train(make_config(output_dir=str(reference), max_steps=12, save_steps=4, **SMALL))
    real_fsync = os.fsync
    sent = []

    def fsync(fd):
        if not sent and ".tmp-checkpoint-8" in os.readlink(f"/proc/self/fd/{fd}"):
            sent.append(fd)
            for _ in range(2):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    cfg = make_config(max_steps=12, save_steps=4, **SMALL)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, build_task(cfg)).fit()
    monkeypatch.undo()
    out = tmp_path / "run"
    assert sent, "the save of checkpoint-8 flushed nothing"
    assert not (out / "checkpoint-8").exists()
    for folder in out.glob("checkpoint-*"):
        assert is_complete(folder), folder.name
    cfg = make_config(max_steps=12, save_steps=4, resume_from_checkpoint="true", **SMALL)
    Trainer(cfg, build_task(cfg)).fit()
    assert not list(out.glob(".tmp-*")), "the half-written folder was never cleaned up"
    _same_weights(reference / "model.safetensors", out / "model.safetensors")
