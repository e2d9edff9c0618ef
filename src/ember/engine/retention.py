"""Which checkpoints to keep: the save_total_limit newest, plus the best one, always.

The best checkpoint (by metric_for_best_model) never counts against the limit and is never
deleted, so `save_total_limit: 1` with evaluation keeps the newest and the best. Only
complete folders named checkpoint-<step> that carry ember's marker are ever deleted.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

from .checkpoint import complete_checkpoints, step_of


def is_better(value: float, best: float | None, greater_is_better: bool) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return best is None or (value > best if greater_is_better else value < best)


def prune(output_dir: str | Path, limit: int | None, best_step: int | None) -> list[Path]:
    if not limit:
        return []
    candidates = [p for p in complete_checkpoints(output_dir) if step_of(p) != best_step]
    doomed = candidates[:-limit] if len(candidates) > limit else []
    for path in doomed:
        shutil.rmtree(path)
    return doomed
