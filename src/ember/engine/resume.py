"""Which checkpoint a run continues from, and trimming logs written after it."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..config.errors import ConfigError
from .checkpoint import MARKER, CheckpointError, checkpoint_folders, is_complete, read_checkpoint

log = logging.getLogger("ember")


def restarted_by_torchrun() -> bool:
    """torchrun --max-restarts brought this process back after a failure: continue, don't restart."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def wants_resume(cfg) -> bool:
    value = cfg.resume_from_checkpoint
    return restarted_by_torchrun() or (value is not None and str(value).lower() not in ("false", "no", "none", ""))


def load_resume_bundle(cfg, rank: int = 0) -> tuple[Path, dict] | None:
    """The newest readable checkpoint (or the named one) and its contents; None to start fresh.

    Incomplete or corrupt folders are skipped with a warning naming them, never resumed from.
    """
    if not wants_resume(cfg):
        return None
    value = "auto" if restarted_by_torchrun() else str(cfg.resume_from_checkpoint)
    if value.lower() in ("true", "auto", "yes", "1"):
        for path in reversed(checkpoint_folders(cfg.output_dir)):
            if not is_complete(path):
                log.warning("skipping %s: incomplete (no %s marker or truncated files)", path, MARKER)
                continue
            try:
                return path, read_checkpoint(path, rank)
            except CheckpointError as err:
                log.warning("skipping %s", err)
        log.warning("resume_from_checkpoint is set but %s has no complete checkpoint; starting fresh", cfg.output_dir)
        return None
    path = Path(value)
    if not path.is_dir():
        raise ConfigError(f"resume_from_checkpoint: no checkpoint folder at {path}")
    if not is_complete(path):
        raise ConfigError(f"resume_from_checkpoint: {path} is incomplete (no {MARKER} marker or truncated files); "
                          "use resume_from_checkpoint: true to take the newest complete one")
    try:
        return path, read_checkpoint(path, rank)
    except CheckpointError as err:
        raise ConfigError(str(err)) from None


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records the interrupted run wrote after the checkpoint, so the log reads as one run."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short when the process was killed mid-write
    path.write_text("".join(line + "\n" for line in kept))
