"""Resume: an interrupted run continues exactly where it stopped, from a complete checkpoint only.

Interruptions are real: in-process runs crash inside a training step (the wrapped task raises),
and the kill-loop test SIGKILLs `ember train` subprocesses at random moments, some of them
while a checkpoint is being written. Every comparison is bit for bit: per-step records in
metrics.jsonl (everything except the wall-clock tokens_per_sec) and every tensor of the final
model.safetensors (torch.equal).

The data (12 documents → 25 blocks of 32 tokens, the rest dropped; batch 4) gives 7 micro-batches per epoch,
so an epoch is not a multiple of save_steps 4 and checkpoints land mid-epoch; the last
micro-batch of an epoch is short.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ember.config import ConfigError, load_config
from ember.engine.checkpoint import is_complete, step_of
from ember.engine.trainer import Trainer
from ember.tasks import build_task

from conftest import CrashAt, curve, read_metrics

SMALL = dict(cutoff_len=32, per_device_train_batch_size=4, max_samples=12, logging_steps=1,
             learning_rate=1e-3, max_steps=12, save_steps=4)
EMBER = str(Path(sys.executable).parent / "ember")


def crash(cfg, step: int) -> None:
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(cfg, CrashAt(build_task(cfg), step)).fit()


def resume(cfg_factory, **overrides):
    cfg = cfg_factory(**overrides)
    trainer = Trainer(cfg, build_task(cfg))
    return trainer, trainer.fit()


def assert_same_run(reference: Path, resumed: Path) -> None:
    assert curve(resumed) == curve(reference)
    want = load_file(str(reference / "model.safetensors"))
    got = load_file(str(resumed / "model.safetensors"))
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), f"{name} differs from the uninterrupted run"


@pytest.fixture
def runs(make_config, train, tmp_path):
    """make(name, **overrides) → config in tmp_path/name; reference(**overrides) → finished run dir."""
    def make(name="run", **overrides):
        return make_config(**{**SMALL, "output_dir": str(tmp_path / name), **overrides})

    def reference(**overrides):
        trainer = train(make("reference", **overrides))
        return tmp_path / "reference", trainer
    return make, reference


# ---- exactness ------------------------------------------------------------------------------

@pytest.mark.parametrize("settings, crash_step, resume_step", [
    ({}, 7, 4),                                            # resumes mid-epoch 0, then crosses into epoch 1
    ({}, 10, 8),                                           # resumes one batch into epoch 1
    ({"gradient_accumulation_steps": 2}, 10, 8),          # windows of 2 straddle the 7-batch epochs
    ({"max_samples": 17, "val_size": 3, "eval_steps": 4}, 11, 8),  # evaluation and the best in the state too
], ids=["mid-epoch-0", "mid-epoch-1", "accumulation-2", "with-eval"])
def test_resume_after_a_crash_is_bit_identical(runs, tmp_path, settings, crash_step, resume_step, caplog):
    make, reference = runs
    ref_dir, _ = reference(**settings)
    epochs = {r["step"]: r["epoch"] for r in read_metrics(ref_dir) if "epoch" in r}
    assert epochs[resume_step] != int(epochs[resume_step]), f"precondition: checkpoint-{resume_step} is mid-epoch"
    assert epochs[12] > 1, "precondition: the run goes past an epoch boundary"
    crash(make(**settings), crash_step)
    out = tmp_path / "run"
    assert max(r["step"] for r in read_metrics(out)) == crash_step - 1
    caplog.set_level(logging.INFO, logger="ember")
    resume(make, resume_from_checkpoint="true", **settings)
    assert f"checkpoint-{resume_step}" in caplog.text
    assert_same_run(ref_dir, out)


def test_resume_from_a_named_checkpoint_folder(runs, tmp_path):
    make, reference = runs
    ref_dir, _ = reference()
    crash(make(), 11)
    out = tmp_path / "run"
    resume(make, resume_from_checkpoint=str(out / "checkpoint-4"))  # not the newest (8): re-saves 8 over it
    assert_same_run(ref_dir, out)


def test_resume_between_logging_steps_logs_the_same_losses(runs, tmp_path):
    """logging_steps 3, save_steps 4: checkpoint-4 falls inside the logging window 4..6, whose
    loss average (and tokens_seen) must still come out as in the uninterrupted run."""
    make, reference = runs
    ref_dir, _ = reference(logging_steps=3)
    crash(make(logging_steps=3), 7)
    resume(make, logging_steps=3, resume_from_checkpoint="true")
    assert_same_run(ref_dir, tmp_path / "run")


# ---- which checkpoint is used --------------------------------------------------------------

def _remove_marker(folder: Path) -> None:
    (folder / "COMPLETE").unlink()


def _truncate_weights(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def _garble_header(folder: Path) -> None:
    """Same size as recorded in the marker, but safetensors cannot parse it."""
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:40] = b"\xff" * 32
    path.write_bytes(bytes(data))


def _flip_bytes(folder: Path, name: str = "model.safetensors") -> None:
    """Eight bytes of tensor data inverted: same size, the header still parses (a bad disk or copy)."""
    path = folder / name
    data = bytearray(path.read_bytes())
    at = len(data) - 64
    data[at:at + 8] = bytes(b ^ 0xFF for b in data[at:at + 8])
    path.write_bytes(bytes(data))


def _snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("damage", [_remove_marker, _truncate_weights, _garble_header, _flip_bytes],
                         ids=["no-marker", "truncated-weights", "garbled-header", "flipped-bytes"])
def test_damaged_newest_checkpoint_is_skipped_with_a_warning(runs, tmp_path, caplog, damage):
    make, reference = runs
    ref_dir, _ = reference()
    crash(make(), 11)
    out = tmp_path / "run"
    damage(out / "checkpoint-8")
    caplog.set_level(logging.INFO, logger="ember")
    resume(make, resume_from_checkpoint="true")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("checkpoint-8" in w for w in warnings), f"no warning names checkpoint-8: {warnings}"
    resumed = [r.getMessage() for r in caplog.records if "resumed from" in r.getMessage()]
    assert resumed and "checkpoint-4" in resumed[0], resumed
    assert is_complete(out / "checkpoint-8"), "the re-run did not replace the damaged checkpoint-8"
    assert (out / "unreadable-checkpoint-8").is_dir(), "the damaged checkpoint was deleted, not moved aside"
    assert_same_run(ref_dir, out)


def test_a_flipped_byte_is_caught_by_the_hash_even_though_the_size_matches(runs, tmp_path, caplog):
    """The corruption the size check cannot see: resume names the file and takes the older one."""
    make, _ = runs
    crash(make(), 11)
    out = tmp_path / "run"
    _flip_bytes(out / "checkpoint-8")
    assert is_complete(out / "checkpoint-8"), "precondition: sizes still match"
    caplog.set_level(logging.INFO, logger="ember")
    resume(make, resume_from_checkpoint="true")
    warning = next(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "checkpoint-8" in r.getMessage())
    assert "model.safetensors" in warning and "hash" in warning, warning
    assert "resumed from" in caplog.text and "checkpoint-4 at step 4" in caplog.text


def test_resume_with_no_readable_checkpoint_refuses_and_changes_nothing(runs, tmp_path):
    """Every checkpoint fails: one line naming them and the way to start afresh, not a retrain over them."""
    make, reference = runs
    ref_dir, _ = reference()
    crash(make(), 11)
    out = tmp_path / "run"
    _flip_bytes(out / "checkpoint-8")
    _truncate_weights(out / "checkpoint-4")
    before = _snapshot(out)
    with pytest.raises(ConfigError) as caught:
        resume(make, resume_from_checkpoint="true")
    message = str(caught.value)
    assert "checkpoint-8" in message and "checkpoint-4" in message and "overwrite_output_dir" in message, message
    assert "\n" not in message
    assert _snapshot(out) == before, "a refused resume changed output_dir"
    # starting afresh on purpose is one key away, and gives the uninterrupted run
    resume(make, resume_from_checkpoint="true", overwrite_output_dir=True)
    assert_same_run(ref_dir, out)


def test_a_checkpoint_without_its_log_line_gets_one_on_resume(runs, tmp_path):
    """A kill between the folder's rename and the checkpoints.jsonl append: the log is mended."""
    make, _ = runs
    crash(make(), 11)
    out = tmp_path / "run"
    log_file = out / "checkpoints.jsonl"
    lines = log_file.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [4, 8]
    log_file.write_text(lines[0] + "\n")  # checkpoint-8's line never written
    resume(make, resume_from_checkpoint="true")
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 8, 12]
    assert records[1]["recovered"] is True and records[1]["path"].endswith("checkpoint-8")


def test_explicit_resume_from_an_incomplete_folder_is_refused(runs, tmp_path):
    make, _ = runs
    crash(make(), 6)
    folder = tmp_path / "run" / "checkpoint-4"
    _remove_marker(folder)
    with pytest.raises(ConfigError, match="checkpoint-4"):
        resume(make, resume_from_checkpoint=str(folder))
    with pytest.raises(ConfigError, match="checkpoint-77"):
        resume(make, resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-77"))


def test_existing_checkpoints_without_resume_or_overwrite_are_refused(runs, tmp_path):
    make, _ = runs
    crash(make(), 6)
    out = tmp_path / "run"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(ConfigError) as caught:
        resume(make)
    message = str(caught.value)
    assert "resume_from_checkpoint" in message and "overwrite_output_dir" in message
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before, "the refused run touched output_dir"


def test_resume_true_before_any_checkpoint_starts_the_run_afresh(runs, tmp_path, caplog):
    """Killed before its first save, a run resumed with resume_from_checkpoint: true has nothing
    to continue from: it says so and trains from the start, ending as the uninterrupted run."""
    make, reference = runs
    ref_dir, _ = reference()
    crash(make(), 3)
    out = tmp_path / "run"
    assert not list(out.glob("checkpoint-*")) and (out / "metrics.jsonl").exists()
    caplog.set_level(logging.INFO, logger="ember")
    resume(make, resume_from_checkpoint="true")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("checkpoint" in w for w in warnings), "no warning that there was nothing to resume from"
    assert_same_run(ref_dir, out)


@pytest.mark.parametrize("spelling", [["resume_from_checkpoint=true"], ["--resume_from_checkpoint", "true"],
                                      ["resume_from_checkpoint=auto"], "yaml"])
def test_resume_true_is_accepted_from_the_command_line_and_yaml(tmp_path, spelling):
    """The documented `resume_from_checkpoint: true` (and the preemption hint's
    `resume_from_checkpoint=true`) must parse to a resume request."""
    base = ["model_config=llama-tiny", "dataset=x", f"output_dir={tmp_path}"]
    if spelling == "yaml":
        (tmp_path / "c.yaml").write_text("model_config: llama-tiny\ndataset: x\nresume_from_checkpoint: true\n")
        cfg = load_config([str(tmp_path / "c.yaml")])
    else:
        cfg = load_config(base + spelling)
    from ember.engine.checkpoint.resume import wants_resume
    assert wants_resume(cfg)


def test_save_only_model_resumes_weights_and_warns_it_is_not_exact(runs, tmp_path, caplog):
    make, _ = runs
    crash(make(save_only_model=True), 6)
    folder = tmp_path / "run" / "checkpoint-4"
    assert is_complete(folder)
    assert (folder / "model.safetensors").exists() and not (folder / "optimizer.pt").exists()
    caplog.set_level(logging.INFO, logger="ember")
    trainer, result = resume(make, save_only_model=True, resume_from_checkpoint="true")
    warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "save_only_model" in warnings and "exact" in warnings, warnings
    assert result["step"] == SMALL["max_steps"]
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == list(range(1, 13))
    assert (tmp_path / "run" / "model.safetensors").exists()


# ---- SIGKILL at random moments --------------------------------------------------------------

KILL_RUN = dict(SMALL, max_steps=48, save_steps=3)


def _in_progress(out: Path) -> set[str]:
    """Folders of a save under way (or cut short): checkpoint-like, without a COMPLETE marker."""
    try:
        entries = [e.name for e in os.scandir(out) if "checkpoint-" in e.name and e.is_dir()]
    except FileNotFoundError:
        return set()
    # a folder renamed away between the listing and the marker check (moved aside by a resume) is gone, not in progress
    return {name for name in entries if not (out / name / "COMPLETE").exists() and (out / name).exists()}


def _last_step(out: Path) -> int:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [0]
    for line in lines:
        try:
            steps.append(json.loads(line)["step"])
        except (ValueError, KeyError):
            pass
    return max(steps)


def _kill_when(proc, out: Path, mode: str, after_step: int, rng: random.Random, deadline: float) -> str:
    """SIGKILL proc a few steps after `after_step`, or (mode 'save') while it writes a checkpoint.

    Returns 'killed-in-save' (a .tmp folder was left: the kill landed mid-save), 'killed', or
    'finished' (the run ended before the moment came).
    """
    stale = _in_progress(out)  # left by the previous kill; the new run removes them at start-up
    target = after_step + rng.randint(1, 5)
    pause = rng.uniform(0, 0.02)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return "finished"
        if mode == "save":
            current = _in_progress(out)
            stale &= current
            if current - stale:
                proc.kill()
                proc.wait()
                return "killed-in-save" if _in_progress(out) - stale else "killed"
        else:
            if _last_step(out) >= target:
                time.sleep(pause)
                proc.kill()
                proc.wait()
                return "killed"
            time.sleep(0.002)
    raise AssertionError(f"the run did not reach the kill moment ({mode}, step {target}) in time")


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_ends_bit_identical(runs, corpus_dir, tokenizer_dir, tmp_path):
    make, reference = runs
    ref_dir, _ = reference(**KILL_RUN)
    out = tmp_path / "killed"
    config = {"model_config": "llama-tiny", "tokenizer_name_or_path": str(tokenizer_dir), "dataset": "tiny_text",
              "dataset_dir": str(corpus_dir), "output_dir": str(out), "disable_tqdm": True, **KILL_RUN}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    rng = random.Random(20240611)
    modes = ["save", "step", "save"]
    rng.shuffle(modes)
    outcomes, resumed_from = [], []
    deadline = time.monotonic() + 150
    extra: list[str] = []
    proc = None
    damages = ["flip", "truncate", "flip"]  # done to the newest checkpoint between kills, when an older one exists
    damaged: list[int] = []
    try:
        for attempt in range(len(modes) + 1):
            complete = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if is_complete(p))
            if attempt and damages and len(complete) >= 2:
                victim = out / f"checkpoint-{complete.pop()}"
                if damages.pop(0) == "flip":
                    _flip_bytes(victim, rng.choice(["model.safetensors", "optimizer.pt", "trainer_state.json"]))
                else:
                    _truncate_weights(victim)
                damaged.append(step_of(victim))
            newest_complete = max(complete, default=None)
            stale_last = _last_step(out)  # lines after the checkpoint, dropped when the run resumes
            log = tmp_path / f"attempt-{attempt}.log"
            with log.open("w") as sink:
                proc = subprocess.Popen([EMBER, "train", str(tmp_path / "run.yaml"), *extra],
                                        stdout=subprocess.DEVNULL, stderr=sink)
                if attempt < len(modes):
                    if attempt == 0:  # wait for the first checkpoint; the random moments come after it
                        while not (out / "checkpoint-3").is_dir():
                            assert proc.poll() is None, log.read_text()[-2000:]
                            assert time.monotonic() < deadline, "no first checkpoint in time"
                            time.sleep(0.002)
                    after = max(3, stale_last)
                    outcomes.append(_kill_when(proc, out, modes[attempt], after, rng, deadline))
                else:
                    proc.wait(timeout=max(1, deadline - time.monotonic()))
            text = log.read_text()
            if attempt:
                match = re.search(r"resumed from (\S+) at step (\d+)", text)
                assert match, f"attempt {attempt} did not resume:\n{text[-2000:]}"
                resumed_from.append(match.group(0))
                assert Path(match.group(1)).name == f"checkpoint-{newest_complete}", (match.group(0), complete)
                assert is_complete(Path(match.group(1)))
                if damaged and step_of(Path(match.group(1))) < damaged[-1]:  # skipped and kept, not deleted
                    assert (out / f"unreadable-checkpoint-{damaged[-1]}").is_dir()
            for folder in out.glob("checkpoint-*"):  # a kill never leaves a partial folder where resume looks
                assert is_complete(folder), f"{folder.name} exists but is incomplete after attempt {attempt}"
            if outcomes and outcomes[-1] == "finished":
                break
            extra = ["resume_from_checkpoint=true"]
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, text[-2000:]
    assert outcomes.count("finished") == 0, f"a run ended before its kill moment: {outcomes}"
    assert "killed-in-save" in outcomes, f"no kill landed during a save: {outcomes}"
    assert damaged, "no checkpoint was damaged between kills"
    assert not _in_progress(out), "a half-written folder was left behind"
    assert_same_run(ref_dir, out)
