"""Which checkpoints to keep: the save_total_limit newest, and the best one besides.

The best checkpoint (by metric_for_best_model) is never deleted, so `save_total_limit: 1`
with evaluation keeps the newest and the best (one folder when they are the same). Only
complete folders named checkpoint-<step> that carry ember's marker are ever deleted.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

from .format import complete_checkpoints, step_of


def is_better(value: float, best: float | None, greater_is_better: bool) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return best is None or (value > best if greater_is_better else value < best)


def prune(output_dir: str | Path, limit: int | None, best_step: int | None, busy: frozenset[int] = frozenset()) -> list[Path]:
    """Delete the old checkpoints beyond limit; `busy` ones (being evaluated externally) wait."""
    if not limit:
        return []
    complete = complete_checkpoints(output_dir)
    doomed = [p for p in complete[:-limit] if step_of(p) != best_step and step_of(p) not in busy]
    for path in doomed:
        shutil.rmtree(path)
    return doomed
