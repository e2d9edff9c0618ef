"""What a checkpoint holds besides weights and optimizers: every part speaks one protocol.

Each part a run must restore to continue exactly (step counters, the LR schedule, the loss
scaler, the data position, the best checkpoint so far, the open logging window) is a Stateful:
`state_dict()` gives JSON-able values, `load_state_dict()` takes them back. The trainer saves
and restores them by iterating over one dict, under the keys trainer_state.json has always used.
"""
from __future__ import annotations

import time
from typing import Protocol

import torch


class Stateful(Protocol):
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class Counters(dict):
    """The run's progress: optimizer steps taken and tokens (items) trained on."""

    def __init__(self):
        super().__init__(step=0, tokens_seen=0)

    def state_dict(self) -> dict:
        return dict(self)

    def load_state_dict(self, state: dict) -> None:
        self.update(state)


class LogWindow:
    """Everything summed since the last logged step: each optimizer's loss and item count (on the
    device, no host sync per step), the time spent training and waiting for data, and FLOPs.

    Saved summed over ranks and restored on rank 0 alone, so a resumed run logs the numbers the
    uninterrupted one logs even when a checkpoint falls inside a logging window."""

    def __init__(self, world, device: torch.device):
        self.world, self.device = world, device
        self.reset()

    def reset(self) -> None:
        self.sums: dict = {}
        self.counts: dict = {}
        self.t0 = time.perf_counter()
        self.wait = 0.0
        self.flops = 0

    def add(self, sums: dict, counts: dict) -> None:
        for name in sums:
            self.sums[name] = self.sums.get(name, 0) + sums[name]
            self.counts[name] = self.counts.get(name, 0) + counts[name]

    def exclude(self, since: float) -> None:
        """Leave the time since `since` (an evaluation, a save) out of tokens/s and mfu."""
        self.t0 += time.perf_counter() - since

    def state_dict(self) -> dict:
        return {part: {k: float(self.world.sum(torch.as_tensor(v))) for k, v in getattr(self, part).items()}
                for part in ("sums", "counts")}

    def load_state_dict(self, state: dict) -> None:
        if not self.world.is_main:
            return
        self.sums = {k: torch.tensor(v, device=self.device) for k, v in state["sums"].items()}
        self.counts = {k: torch.tensor(v, device=self.device) for k, v in state["counts"].items()}
