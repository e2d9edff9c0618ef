"""What the engine asks of a task. The engine drives any object with these methods."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset


@dataclass
class Loss:
    """A micro-batch's loss *summed* over its items (tokens, pixels) and how many items there were.

    Returning sums lets the engine normalise once over a whole accumulation window and all
    ranks, so accumulation is exactly a bigger batch.
    """
    total: torch.Tensor
    count: torch.Tensor | int


class Task(Protocol):
    def build_model(self) -> nn.Module: ...
    def build_data(self) -> tuple[Dataset, Dataset | None, Callable]: ...
    def param_groups(self, model: nn.Module) -> dict[str, list[dict[str, Any]]]: ...
    def training_step(self, model: nn.Module, batch: Any, step: int) -> dict[str, Loss]: ...
    def evaluate(self, model: nn.Module, batches: Iterable[Any]) -> dict[str, float]: ...
    def export(self, model: nn.Module, path: str) -> None: ...


def loss_metrics(task: Task, model: nn.Module, batches: Iterable[Any], prefix: str = "eval") -> dict[str, float]:
    """Item-weighted mean of each optimizer's loss over batches: the default evaluation."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, torch.Tensor] = {}
    for batch in batches:
        for name, loss in task.training_step(model, batch, step=-1).items():
            sums[name] = sums.get(name, 0) + loss.total.detach().float()
            counts[name] = counts.get(name, 0) + torch.as_tensor(loss.count)
    out = {}
    for name in sums:
        key = f"{prefix}_loss" if len(sums) == 1 else f"{prefix}_{name}_loss"
        out[key] = (sums[name] / torch.clamp(torch.as_tensor(counts[name]), min=1)).item()
    return out
