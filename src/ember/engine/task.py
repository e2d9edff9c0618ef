"""What the engine asks of a task. The engine drives any object with these methods."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

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
    # optional: extra per-batch validation metrics (PSNR, accuracy); the engine computes the
    # eval losses itself from training_step and averages these over batches and ranks
    # def eval_metrics(self, model: nn.Module, batch: Any) -> dict[str, float]: ...
    # optional: called after every optimizer step (an EMA update); state the task keeps across
    # steps belongs in the model as buffers, so checkpoints carry it
    # def after_optimizer_step(self, model: nn.Module, step: int) -> None: ...
    # optional: the training FLOPs of one micro-batch (a tensor or int, no host sync); with it
    # the engine logs `mfu` against the measured or configured peak (engine/flops.py)
    # def flops(self, model: nn.Module, batch: Any) -> torch.Tensor | int: ...
    def export(self, model: nn.Module, path: str, state_dict: dict | None = None) -> None: ...  # full weights under FSDP
