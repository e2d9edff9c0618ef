"""The one checkpoint manager every task uses: save, track the best, retain, resume, restore.

The rule (also in `ember train --help`): a checkpoint is written aside and renamed into place
when complete; then the oldest complete checkpoints beyond save_total_limit are deleted, the
best one (metric_for_best_model) excepted. A new checkpoint is always complete before an
old one goes.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from .format import PREFIX, TMP_PREFIX, read_checkpoint, step_of, write_checkpoint
from .retention import is_better, prune

log = logging.getLogger("ember")


class CheckpointManager:
    def __init__(self, cfg, root: Path, world):
        self.cfg, self.root, self.world = cfg, root, world
        self.metric = cfg.metric_for_best_model
        if not self.metric.startswith("eval_") and self.metric != "loss":
            self.metric = f"eval_{self.metric}"
        self.greater = cfg.greater_is_better if cfg.greater_is_better is not None else not self.metric.endswith("loss")
        self.best_metric: float | None = None
        self.best_step: int | None = None
        self.busy_steps = lambda: frozenset()  # checkpoints an external evaluation still reads
        if world.is_main:
            for leftover in root.glob(f"{TMP_PREFIX}*"):  # saves cut short by a kill; never resumed from
                shutil.rmtree(leftover, ignore_errors=True)
        world.barrier()

    def should_save(self, step: int) -> bool:
        return bool(self.cfg.save_steps) and step % self.cfg.save_steps == 0

    def save(self, step: int, state_io, optimizers: dict, parts: dict, eval_record: dict) -> Path:
        """Write checkpoint-<step>: weights and optimizers through state_io, and the state of every
        Stateful part (this manager's own record of the best among them) in trainer_state.json."""
        value = eval_record.get(self.metric)
        is_best = is_better(value, self.best_metric, self.greater)
        if is_best:
            self.best_metric, self.best_step = value, step
        state = {name: part.state_dict() for name, part in parts.items()}
        state.update(world_size=self.world.size, save_only_model=self.cfg.save_only_model)
        started = time.perf_counter()
        writer = state_io.writer(None if self.cfg.save_only_model else optimizers)
        path = write_checkpoint(self.root, step, self.world, writer, state)
        if self.world.is_main:
            self._record(path, step, eval_record, is_best, started)
        self.world.barrier()  # no rank moves on while rank 0 still prunes
        return path

    def _record(self, path: Path, step: int, eval_record: dict, is_best: bool, started: float) -> None:
        record = {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "path": str(path),
                  "bytes": sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
                  "seconds": round(time.perf_counter() - started, 3),
                  "metrics": {k: v for k, v in eval_record.items() if k != "step"}, "is_best": is_best}
        with (self.root / "checkpoints.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
        for gone in prune(self.root, self.cfg.save_total_limit, self.best_step, frozenset(self.busy_steps())):
            log.info("deleted %s (save_total_limit %d)", gone.name, self.cfg.save_total_limit)

    def state_dict(self) -> dict:
        return {"metric": self.metric, "best_metric": self.best_metric, "best_step": self.best_step}

    def load_state_dict(self, state: dict) -> None:
        self.best_metric, self.best_step = state.get("best_metric"), state.get("best_step")

    def restore_best(self, state_io) -> int | None:
        """Load the best checkpoint's weights into the model (load_best_model_at_end)."""
        if self.best_step is None:
            log.warning("load_best_model_at_end: no checkpoint was evaluated; keeping the last weights")
            return None
        path = self.root / f"{PREFIX}{self.best_step}"
        state_io.load(read_checkpoint(path, self.world.rank), optimizers=None)
        log.info("loaded the best model from %s (%s %.4f)", path.name, self.metric, self.best_metric)
        return step_of(path)
