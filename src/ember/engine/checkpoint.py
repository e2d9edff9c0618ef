"""checkpoint-<step>/ folders: written aside, marked complete, renamed into place.

A folder without the COMPLETE marker is never resumed from. Retention keeps the newest
save_total_limit checkpoints plus the best one, deleting only folders ember wrote.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_model

MARKER = "COMPLETE"
PREFIX = "checkpoint-"


def _fsync_tree(folder: Path) -> None:
    for path in [*folder.iterdir(), folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders, oldest step first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.glob(f"{PREFIX}*") if p.is_dir() and p.name[len(PREFIX):].isdigit()
             and (p / MARKER).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


class Checkpointer:
    """Saves and restores everything a run needs to continue exactly where it stopped."""

    def __init__(self, output_dir: str, save_total_limit: int | None, greater_is_better: bool = False):
        self.root = Path(output_dir)
        self.limit = save_total_limit
        self.greater_is_better = greater_is_better
        self.log_path = self.root / "checkpoints.jsonl"

    def save(self, step: int, model, optimizers: dict, trainer_state: dict, metrics: dict,
             best_metric: float | None) -> Path:
        final = self.root / f"{PREFIX}{step}"
        tmp = self.root / f".tmp-{PREFIX}{step}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_model(model, str(tmp / "model.safetensors"))
        torch.save({name: opt.state_dict() for name, opt in optimizers.items()}, tmp / "optimizer.pt")
        torch.save(rng_state(), tmp / "rng_state.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
        (tmp / MARKER).write_text(str(step))
        _fsync_tree(tmp)
        if final.exists():  # a re-save of the same step (e.g. after resume) replaces it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_tree(self.root)
        is_best = best_metric is not None and metrics.get("_is_best", False)
        size = sum(f.stat().st_size for f in final.iterdir())
        record = {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "path": str(final), "bytes": size,
                  "metrics": {k: v for k, v in metrics.items() if not k.startswith("_")}, "is_best": is_best}
        with self.log_path.open("a") as log:
            log.write(json.dumps(record) + "\n")
        return final

    def prune(self, best_step: int | None) -> list[Path]:
        """Delete the oldest complete checkpoints beyond the limit; the best one never counts or goes."""
        if not self.limit:
            return []
        candidates = [p for p in complete_checkpoints(self.root) if int(p.name[len(PREFIX):]) != best_step]
        doomed = candidates[:-self.limit] if len(candidates) > self.limit else []
        for path in doomed:
            shutil.rmtree(path)
        return doomed

    @staticmethod
    def load(path: Path, model, optimizers: dict) -> dict:
        """Restore weights, optimizer and RNG state in place; returns the trainer state."""
        load_model(model, str(path / "model.safetensors"))
        states = torch.load(path / "optimizer.pt", weights_only=True)
        for name, opt in optimizers.items():
            opt.load_state_dict(states[name])
        set_rng_state(torch.load(path / "rng_state.pt", weights_only=True))
        return json.loads((path / "trainer_state.json").read_text())
