"""Which checkpoint a run continues from, and bringing the run's logs back in line with it.

Rank 0 decides, re-hashing each candidate against its marker, and every rank gets the same
answer. A checkpoint that fails is never deleted: the automatic choice moves it aside
(`unreadable-checkpoint-<step>`) and falls back to the next older one; when none can be
read the run stops with the folders named instead of starting over on top of them.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from ...config.errors import ConfigError
from .format import (CheckpointError, checkpoint_folders, complete_checkpoints, read_checkpoint, step_of,
                         verify)

log = logging.getLogger("ember")
ASIDE_PREFIX = "unreadable-"


def restarted_by_torchrun() -> bool:
    """torchrun --max-restarts brought this process back after a failure: continue, don't restart."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def wants_resume(cfg) -> bool:
    value = cfg.resume_from_checkpoint
    return restarted_by_torchrun() or (value is not None and str(value).lower() not in ("false", "no", "none", ""))


def load_resume_bundle(cfg, world) -> tuple[Path, dict] | None:
    """The newest checkpoint that verifies (or the named one) and its contents; None to start fresh."""
    if not wants_resume(cfg):
        return None
    kind, value, bundle = _decide(cfg) if world.is_main else (None, None, None)
    kind, value = world.broadcast((kind, value))
    if kind == "refuse":
        raise ConfigError(value)
    if kind == "fresh":
        return None
    path = Path(value)
    if bundle is None:  # the other ranks read what rank 0 chose (each its own RNG file)
        try:
            bundle = read_checkpoint(path, world.rank)
        except CheckpointError as err:
            raise ConfigError(str(err)) from None
    return path, bundle


def _decide(cfg) -> tuple[str, str | None, dict | None]:
    """("resume", folder, contents), ("fresh", None, None) or ("refuse", message, None); rank 0 only."""
    value = "auto" if restarted_by_torchrun() else str(cfg.resume_from_checkpoint)
    if value.lower() not in ("true", "auto", "yes", "1"):
        path = Path(value)
        if not path.is_dir():
            return "refuse", f"resume_from_checkpoint: no checkpoint folder at {path}", None
        bundle, problem = _read_verified(path)
        if problem:
            return ("refuse", f"resume_from_checkpoint: {problem}; use resume_from_checkpoint: true to take the "
                    "newest one that verifies", None)
        return "resume", str(path), bundle
    failed = []
    for path in reversed(checkpoint_folders(cfg.output_dir)):
        bundle, problem = _read_verified(path)
        if problem is None:
            for bad, reason in failed:
                log.warning("skipped %s (%s); moved it aside to %s", bad.name, reason, _move_aside(bad).name)
            return "resume", str(path), bundle
        failed.append((path, problem))
    if not failed:
        log.warning("resume_from_checkpoint is set but %s has no checkpoint yet; starting fresh", cfg.output_dir)
        return "fresh", None, None
    reasons = "; ".join(f"{path.name}: {reason}" for path, reason in failed[:3]) + ("; …" if len(failed) > 3 else "")
    if cfg.overwrite_output_dir:
        log.warning("no checkpoint in %s can be read (%s); overwrite_output_dir is set, so starting fresh",
                    cfg.output_dir, reasons)
        return "fresh", None, None
    return "refuse", (f"resume_from_checkpoint: no checkpoint in {cfg.output_dir} can be read ({reasons}); nothing "
                      "was changed. Name a good one with resume_from_checkpoint: <folder>, or set "
                      "overwrite_output_dir: true to start afresh on purpose"), None


def _read_verified(path: Path) -> tuple[dict | None, str | None]:
    """A checkpoint's contents once every file matches its recorded hash, or why it cannot be used."""
    try:
        verify(path)
        return read_checkpoint(path), None
    except CheckpointError as err:
        return None, str(err)


def _move_aside(path: Path) -> Path:
    target = path.with_name(ASIDE_PREFIX + path.name)
    if target.exists():
        target = path.with_name(f"{ASIDE_PREFIX}{path.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, target)
    return target


def reconcile_logs(root: Path, step: int, best_step: int | None) -> None:
    """Drop log lines the interrupted run wrote after the checkpoint, so the logs read as one run,
    and give checkpoints.jsonl a line for any checkpoint a kill left without one (the kill came
    between the folder's rename and the append)."""
    _keep_lines(root / "metrics.jsonl", lambda record: record["step"] <= step)
    log_file = root / "checkpoints.jsonl"
    kept = _keep_lines(log_file, lambda record: record["step"] <= step)
    logged = {record["step"] for record in kept}
    missing = [p for p in complete_checkpoints(root) if step_of(p) <= step and step_of(p) not in logged]
    with log_file.open("a") as f:
        for path in missing:
            f.write(json.dumps({
                "step": step_of(path), "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(path.stat().st_mtime)),
                "path": str(path), "bytes": sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
                "metrics": {}, "is_best": step_of(path) == best_step, "recovered": True}) + "\n")


def _keep_lines(path: Path, keep) -> list[dict]:
    """Rewrite a JSON-lines file with the lines whose record `keep` accepts (atomically); returns those records."""
    if not path.is_file():
        return []
    lines, records = [], []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            if keep(record):
                lines.append(line)
                records.append(record)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short when the process was killed mid-write
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, path)
    return records
