"""Which checkpoint a run continues from, and trimming logs written after it."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from ..config.errors import ConfigError
from .checkpoint import MARKER, complete_checkpoints

log = logging.getLogger("ember")


def find_resume_checkpoint(cfg) -> Path | None:
    value = cfg.resume_from_checkpoint
    if value is None or str(value).lower() in ("false", "no", "none", ""):
        return None
    if str(value).lower() in ("true", "auto", "yes", "1"):
        found = complete_checkpoints(cfg.output_dir)
        if not found:
            log.warning("resume_from_checkpoint is set but %s has no complete checkpoint; starting fresh",
                        cfg.output_dir)
            return None
        return found[-1]
    path = Path(value)
    if not path.is_dir():
        raise ConfigError(f"resume_from_checkpoint: no checkpoint folder at {path}")
    if not (path / MARKER).is_file():
        raise ConfigError(f"resume_from_checkpoint: {path} is incomplete (no {MARKER} marker); "
                          "it was interrupted while being written")
    return path


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records the interrupted run wrote after the checkpoint, so the log reads as one run."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))
