"""The checkpoint-<step>/ folder, checkpoints.jsonl, and what a failed save leaves behind.

One tiny run (8 steps, evaluation and a save every 4) is shared by the layout tests; the
disk-error tests make the second save fail and check that the first stays as it was.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
import xxhash
from safetensors.torch import load_file

from ember.config import build_config
from ember.engine.checkpoint import CheckpointError, is_complete, verify
from ember.engine.trainer import Trainer
from ember.tasks import build_task

from conftest import read_metrics

FILES = {"model.safetensors", "optimizer.pt", "rng_state_0.pt", "trainer_state.json", "COMPLETE"}
SMALL = dict(cutoff_len=32, per_device_train_batch_size=4, max_samples=40, logging_steps=1)


@pytest.fixture(scope="module")
def run(corpus_dir, tokenizer_dir, tmp_path_factory):
    """8 steps, val_size 8 documents, evaluation and a checkpoint every 4 steps."""
    out = tmp_path_factory.mktemp("format") / "run"
    cfg = build_config(dict(model_config="llama-tiny", tokenizer_name_or_path=str(tokenizer_dir), dataset="tiny_text",
                            dataset_dir=str(corpus_dir), learning_rate=1e-3, max_steps=8, save_steps=4,
                            val_size=8, eval_steps=4, output_dir=str(out), disable_tqdm=True, **SMALL))
    trainer = Trainer(cfg, build_task(cfg))
    trainer.fit()
    return trainer, out


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_one_folder_per_save_with_every_file_and_nothing_temporary(run):
    _, out = run
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    assert not list(out.glob(".tmp-*")), "a temporary folder was left behind after a clean run"
    for folder in out.glob("checkpoint-*"):
        names = {p.name for p in folder.iterdir()}
        assert FILES <= names, f"{folder.name} lacks {FILES - names}"


def test_complete_marker_lists_the_size_and_hash_of_every_file(run):
    _, out = run
    for folder in out.glob("checkpoint-*"):
        marker = json.loads((folder / "COMPLETE").read_text())
        files = marker["files"]
        assert set(files) == FILES - {"COMPLETE"}
        for name, entry in files.items():
            assert (folder / name).stat().st_size == entry["size"], name
            assert entry["xxh3_128"] == xxhash.xxh3_128((folder / name).read_bytes()).hexdigest(), name
        assert is_complete(folder)
        verify(folder)


def test_a_marker_written_before_hashes_still_resumes_by_size(run, tmp_path):
    """Checkpoints of earlier ember versions recorded sizes only: still complete, checked by size."""
    _, out = run
    copy = tmp_path / "checkpoint-4"
    shutil.copytree(out / "checkpoint-4", copy)
    marker = json.loads((copy / "COMPLETE").read_text())
    marker["files"] = {name: entry["size"] for name, entry in marker["files"].items()}
    (copy / "COMPLETE").write_text(json.dumps(marker))
    assert is_complete(copy)
    verify(copy)
    (copy / "optimizer.pt").write_bytes((copy / "optimizer.pt").read_bytes()[:-1])
    with pytest.raises(CheckpointError, match="incomplete"):
        verify(copy)


@pytest.mark.parametrize("victim", sorted(FILES - {"COMPLETE"}))
def test_any_truncated_file_makes_the_folder_incomplete(run, tmp_path, victim):
    _, out = run
    copy = tmp_path / "checkpoint-4"
    shutil.copytree(out / "checkpoint-4", copy)
    assert is_complete(copy)
    data = (copy / victim).read_bytes()
    (copy / victim).write_bytes(data[:-1])
    assert not is_complete(copy)


def test_missing_marker_makes_the_folder_incomplete(run, tmp_path):
    _, out = run
    copy = tmp_path / "checkpoint-4"
    shutil.copytree(out / "checkpoint-4", copy)
    (copy / "COMPLETE").unlink()
    assert not is_complete(copy)


def test_weights_are_those_of_the_step(run):
    trainer, out = run
    last = load_file(str(out / "checkpoint-8" / "model.safetensors"))
    first = load_file(str(out / "checkpoint-4" / "model.safetensors"))
    own = trainer.model.state_dict()
    assert set(last) <= set(own) and len(last) >= len(own) - 1  # a tied lm_head may be stored once
    for name, tensor in last.items():
        assert torch.equal(tensor, own[name]), name
    assert any(not torch.equal(first[k], last[k]) for k in last), "checkpoint-4 holds the step-8 weights"


def test_optimizer_and_rng_files_load_without_unpickling(run):
    trainer, out = run
    for step in (4, 8):
        folder = out / f"checkpoint-{step}"
        optim = torch.load(folder / "optimizer.pt", weights_only=True)
        assert set(optim) == set(trainer.optimizers)
        state = optim["model"]["state"]
        assert state, "optimizer.pt holds no optimizer state"
        assert {float(s["step"]) for s in state.values()} == {float(step)}
        rng = torch.load(folder / "rng_state_0.pt", weights_only=True)
        assert {"python", "numpy", "torch"} <= set(rng)


def test_trainer_state_records_step_tokens_schedule_precision_data_and_best(run):
    trainer, out = run
    metrics = {r["step"]: r for r in read_metrics(out)}
    evals = {s: metrics[s]["eval_loss"] for s in (4, 8)}
    data = {}
    for step in (4, 8):
        state = json.loads((out / f"checkpoint-{step}" / "trainer_state.json").read_text())
        assert state["trainer"]["step"] == step
        assert state["trainer"]["tokens_seen"] == metrics[step]["tokens_seen"]
        assert state["schedule"]["step"] == step
        assert "scaler" in state["precision"]
        data[step] = state["data"]
        assert data[step]["epoch"] == int(metrics[step]["epoch"])
        best_step = min((s for s in evals if s <= step), key=evals.get)
        assert state["best"]["best_step"] == best_step
        assert state["best"]["best_metric"] == evals[best_step]
        assert state["best"]["metric"] == "eval_loss"
    assert data[4] != data[8], "the data position is not recorded"


def test_checkpoints_jsonl_has_one_line_per_save(run):
    _, out = run
    metrics = {r["step"]: r for r in read_metrics(out)}
    lines = _jsonl(out / "checkpoints.jsonl")
    assert [r["step"] for r in lines] == [4, 8]
    best_so_far = None
    for record in lines:
        folder = out / f"checkpoint-{record['step']}"
        assert Path(record["path"]) == folder
        assert record["bytes"] == sum(p.stat().st_size for p in folder.iterdir())
        time.strptime(record["time"], "%Y-%m-%dT%H:%M:%S")
        assert record["metrics"]["eval_loss"] == metrics[record["step"]]["eval_loss"]
        value = record["metrics"]["eval_loss"]
        expected_best = best_so_far is None or value < best_so_far
        assert record["is_best"] is expected_best
        best_so_far = value if expected_best else best_so_far


def test_fp16_checkpoint_holds_the_grad_scaler(make_config, train, tmp_path):
    trainer = train(make_config(fp16=True, init_loss_scale=512, max_steps=2, save_steps=2, **SMALL))
    state = json.loads((tmp_path / "run" / "checkpoint-2" / "trainer_state.json").read_text())
    scaler = state["precision"]["scaler"]
    assert scaler is not None, "fp16 checkpoint has no grad-scaler state"
    assert scaler["scale"] == trainer.precision.scaler.get_scale()


# ---- disk errors ------------------------------------------------------------------------------
# The second save (step 4) of a 6-step run fails; the first (step 2) must come through untouched.

def _check_failed_save(out: Path, caught, cause: str, before: dict) -> None:
    message = str(caught.value)
    assert str(out / "checkpoint-4") in message, message
    assert cause in message, message
    assert is_complete(out / "checkpoint-2")
    assert _digest(out / "checkpoint-2") == before, "the failed save changed the earlier checkpoint"
    assert not (out / "checkpoint-4").exists()
    assert not [p.name for p in out.iterdir() if "checkpoint-4" in p.name], "a half-written folder was left behind"
    assert [r["step"] for r in _jsonl(out / "checkpoints.jsonl")] == [2]


class At:
    """Wraps a task: calls hook() at the start of the training step that completes `step`."""

    def __init__(self, task, step: int, hook):
        self.task, self.step, self.hook = task, step, hook

    def __getattr__(self, name):
        return getattr(self.task, name)

    def training_step(self, model, batch, step):
        if step + 1 == self.step:
            self.hook()
        return self.task.training_step(model, batch, step)


def test_no_space_left_while_flushing_the_checkpoint(make_config, tmp_path, monkeypatch):
    """The disk fills up as the new checkpoint's files are flushed (os.fsync → ENOSPC)."""
    out = tmp_path / "run"
    real_fsync = os.fsync
    before: dict = {}

    def fsync(fd):
        if ".tmp-checkpoint-4" in os.readlink(f"/proc/self/fd/{fd}"):
            before.setdefault("digest", _digest(out / "checkpoint-2"))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    cfg = make_config(max_steps=6, save_steps=2, **SMALL)
    with pytest.raises(CheckpointError) as caught:
        Trainer(cfg, build_task(cfg)).fit()
    monkeypatch.undo()
    assert before, "the second save never flushed a file"
    _check_failed_save(out, caught, "No space left on device", before["digest"])


def test_a_write_the_os_refuses_names_the_path_and_the_cause(make_config, tmp_path):
    """A real write error from the OS while the weights are written: from step 3 on, no file
    may grow beyond 200 kB (RLIMIT_FSIZE), so writing checkpoint-4's model.safetensors
    fails with EFBIG 'File too large', whatever library does the writing."""
    out = tmp_path / "run"
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    xfsz = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # report EFBIG instead of killing the process
    before: dict = {}

    def clamp():
        before["digest"] = _digest(out / "checkpoint-2")
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, limit[1]))

    cfg = make_config(max_steps=6, save_steps=2, **SMALL)
    try:
        with pytest.raises(Exception) as caught:
            Trainer(cfg, At(build_task(cfg), 3, clamp)).fit()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, xfsz)
    assert (out / "checkpoint-2" / "model.safetensors").stat().st_size > 200_000, "precondition: weights > limit"
    assert caught.type is CheckpointError, f"{caught.type.__name__}: {caught.value}"
    _check_failed_save(out, caught, "File too large", before["digest"])
