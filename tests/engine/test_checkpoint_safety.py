"""What a checkpoint folder or output_dir can do to a run: never run code, never mix two runs,
never hide a full disk.

Payloads are real pickles whose __reduce__ calls os.system to create a sentinel file; each
test asserts the sentinel never appears.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from ember.config import ConfigError
from ember.engine.checkpoint import CheckpointError, is_complete, manifest
from ember.engine.run_lock import LOCK_NAME, OutputDirLock
from ember.engine.checkpoint.safe_dcp import SafeLoadPlanner, SafeReader
from ember.engine.trainer import Trainer
from ember.tasks import build_task

SMALL = dict(cutoff_len=32, per_device_train_batch_size=4, max_samples=12, logging_steps=1, learning_rate=1e-3)
EMBER = str(Path(sys.executable).parent / "ember")


class Payload:
    """Unpickling this runs a shell command that creates `sentinel`."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


def _reseal(folder: Path) -> None:
    """Rewrite the COMPLETE marker for the folder as it is now, as a forger would: hashes match."""
    marker = json.loads((folder / "COMPLETE").read_text())
    (folder / "COMPLETE").write_text(json.dumps({"step": marker["step"], "files": manifest(folder)}))


# ---- 1. no code from a checkpoint -------------------------------------------------------------

def test_a_crafted_dcp_metadata_never_runs_on_resume(make_config, train, tmp_path):
    sentinel = tmp_path / "pwned"
    cfg = make_config(max_steps=2, save_steps=1, **SMALL)
    train(cfg)
    out = Path(cfg.output_dir)
    forged = out / "checkpoint-2"
    (forged / "dcp").mkdir()
    (forged / "dcp" / ".metadata").write_bytes(pickle.dumps(Payload(sentinel)))
    _reseal(forged)
    assert is_complete(forged)

    # named explicitly: refused with the file named
    with pytest.raises(ConfigError, match=r"dcp/\.metadata"):
        Trainer(c := make_config(max_steps=3, save_steps=1, resume_from_checkpoint=str(forged), **SMALL),
                build_task(c)).fit()
    assert not sentinel.exists()
    # the newest in output_dir under resume_from_checkpoint: true: skipped and kept aside
    Trainer(c := make_config(max_steps=3, save_steps=1, resume_from_checkpoint="true", **SMALL), build_task(c)).fit()
    assert not sentinel.exists()
    assert (out / "unreadable-checkpoint-2" / "dcp" / ".metadata").is_file()


def test_dcp_items_are_read_without_unpickling_code(tmp_path):
    """DCP stores non-tensor values as pickles that torch's own planner loads with weights_only=False."""
    sentinel = tmp_path / "pwned"
    folder = tmp_path / "dcp"
    dcp.save({"weight": torch.ones(3), "extra": Payload(sentinel)}, checkpoint_id=str(folder))
    state = {"weight": torch.zeros(3), "extra": None}
    with pytest.raises(BaseException, match="refused a DCP item 'extra'"):  # DCP's CheckpointException
        dcp.load(state, storage_reader=SafeReader(str(folder)), planner=SafeLoadPlanner())
    assert not sentinel.exists()
    # plain values still load
    dcp.save({"weight": torch.ones(3), "lr": 0.5, "betas": (0.9, 0.99)}, checkpoint_id=str(tmp_path / "ok"))
    state = {"weight": torch.zeros(3), "lr": None, "betas": None}
    dcp.load(state, storage_reader=SafeReader(str(tmp_path / "ok")), planner=SafeLoadPlanner())
    assert torch.equal(state["weight"], torch.ones(3)) and state["lr"] == 0.5 and tuple(state["betas"]) == (0.9, 0.99)


@pytest.mark.parametrize("victim", ["optimizer.pt", "rng_state_0.pt"])
def test_a_pickle_payload_in_a_checkpoint_file_is_refused(make_config, train, tmp_path, victim):
    sentinel = tmp_path / "pwned"
    cfg = make_config(max_steps=2, save_steps=2, **SMALL)
    train(cfg)
    folder = Path(cfg.output_dir) / "checkpoint-2"
    torch.save({"state": Payload(sentinel)}, folder / victim)
    _reseal(folder)
    with pytest.raises(ConfigError, match=victim.replace(".", r"\.") + "|checkpoint-2"):
        Trainer(c := make_config(max_steps=3, resume_from_checkpoint=str(folder), **SMALL), build_task(c)).fit()
    assert not sentinel.exists()


# ---- 4. one run per output_dir ------------------------------------------------------------------

def test_a_second_run_on_a_locked_output_dir_stops_naming_the_holder(make_config, tmp_path):
    cfg = make_config(max_steps=2, **SMALL)
    holder = OutputDirLock(Path(cfg.output_dir))
    holder.acquire()
    try:
        (Path(cfg.output_dir) / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
        before = (Path(cfg.output_dir) / "metrics.jsonl").read_bytes()
        proc = subprocess.run([EMBER, "train", *[f"{k}={v}" for k, v in _cli_keys(cfg).items()]],
                              capture_output=True, text=True, timeout=120)
    finally:
        holder.release()
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ember: error:")]
    assert len(errors) == 1 and f"pid {os.getpid()}" in errors[0] and "Traceback" not in proc.stderr, proc.stderr
    assert (Path(cfg.output_dir) / "metrics.jsonl").read_bytes() == before


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    script = ("import sys, time; from pathlib import Path; from ember.engine.run_lock import OutputDirLock; "
              "lock = OutputDirLock(Path(sys.argv[1])); lock.acquire(); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"pid {proc.pid}"):
            OutputDirLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait()
    assert (tmp_path / LOCK_NAME).read_text().strip() == str(proc.pid), "a kill -9 leaves the file, unlocked"
    lock = OutputDirLock(tmp_path)
    lock.acquire()  # the OS dropped the dead holder's lock
    assert (tmp_path / LOCK_NAME).read_text().strip() == str(os.getpid())
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists(), "a run that ends leaves output_dir as it found it"


def test_two_runs_started_together_one_trains_one_is_refused(make_config, tmp_path):
    cfg = make_config(max_steps=30, save_steps=10, **SMALL)
    args = [EMBER, "train", *[f"{k}={v}" for k, v in _cli_keys(cfg).items()]]
    procs = [subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "in use by another ember run" in refused
    steps = [json.loads(line)["step"] for line in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 31)), "the two runs' metrics mixed"
    assert [json.loads(line)["step"] for line in
            (Path(cfg.output_dir) / "checkpoints.jsonl").read_text().splitlines()] == [10, 20, 30]


def _cli_keys(cfg) -> dict:
    keys = ("model_config", "tokenizer_name_or_path", "dataset", "dataset_dir", "output_dir", "cutoff_len",
            "per_device_train_batch_size", "max_samples", "logging_steps", "learning_rate", "max_steps", "save_steps")
    attribute = {"model_config": "model_config_"}  # pydantic reserves the name model_config
    values = {k: getattr(cfg, attribute.get(k, k)) for k in keys}
    return {k: v for k, v in values.items() if v is not None} | {"disable_tqdm": True}


# ---- a full disk ---------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A real 3 MiB filesystem (tmpfs), so the disk really fills up; needs root, as CI has."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (not root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_says_so_keeps_the_older_checkpoint_and_prints_the_resume_command(make_config, small_disk):
    out = small_disk / "run"
    cfg = make_config(max_steps=20, save_steps=1, output_dir=str(out), **SMALL)
    with pytest.raises(CheckpointError) as caught:
        Trainer(cfg, build_task(cfg)).fit()
    message = str(caught.value)
    assert "No space left on device" in message and "resume_from_checkpoint=true" in message, message
    kept = sorted(p for p in out.glob("checkpoint-*"))
    assert kept and all(is_complete(p) for p in kept), "an older checkpoint was lost or left incomplete"
    assert not list(out.glob(".tmp-*")), "the half-written checkpoint was left to fill the disk"
