"""Evaluation over a validation set split across ranks, reduced to one set of numbers."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .step import metric_parts, to_device


@dataclass(frozen=True)
class EvalCadence:
    """When to evaluate: every `every` steps, or at each epoch's end, and always after the last step."""
    strategy: str  # "steps" | "epoch" | "no"
    every: int
    total_steps: int
    micro_per_epoch: int
    accumulation: int

    def due(self, step: int) -> bool:
        if self.strategy == "no":
            return False
        if step == self.total_steps:
            return True
        if self.strategy == "steps":
            return step % self.every == 0
        accum = self.accumulation  # "epoch": this step crossed an epoch boundary
        return (step * accum) // self.micro_per_epoch > ((step - 1) * accum) // self.micro_per_epoch


class Evaluator:
    """Each rank evaluates a disjoint shard; every rank runs the same number of batches (FSDP
    forwards are collectives), re-running its last batch without counting it when short."""

    def __init__(self, dataset: Dataset, batch_size: int, collate, world, num_workers: int, pin: bool,
                 max_batches: int | None, cadence: EvalCadence):
        self.world, self.cadence = world, cadence
        shard = Subset(dataset, range(world.rank, len(dataset), world.size))
        self.loader = DataLoader(shard, batch_size=batch_size, collate_fn=collate, num_workers=num_workers,
                                 pin_memory=pin)
        longest = math.ceil(math.ceil(len(dataset) / world.size) / batch_size)
        self.batches = longest if max_batches is None else min(longest, max_batches)

    def should_evaluate(self, step: int) -> bool:
        return self.cadence.due(step)

    def run(self, task, model, device, precision) -> dict[str, float]:
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, torch.Tensor] = {}
        metric_sums: dict[str, torch.Tensor] = {}
        metric_counts: dict[str, torch.Tensor] = {}
        extra: list[dict] = []
        batch, real = None, 0
        iterator = iter(self.loader)
        with torch.no_grad(), precision.autocast():
            for _ in range(self.batches):
                try:
                    batch, real = to_device(next(iterator), device), 1
                except StopIteration:
                    real = 0  # keep step with the other ranks; this batch is not counted
                for name, loss in task.evaluation_step(model, batch).items():
                    sums[name] = sums.get(name, 0) + real * loss.total.detach().float()
                    counts[name] = counts.get(name, 0) + real * torch.as_tensor(loss.count, device=device).float()
                    count = torch.as_tensor(loss.count, device=device).float()
                    for key, value in loss.metrics.items():  # summed like the loss, over its own items
                        total, n = metric_parts(value, count)
                        metric_sums[key] = metric_sums.get(key, 0) + real * total
                        metric_counts[key] = metric_counts.get(key, 0) + real * n
                metrics = task.eval_metrics(self.world.unwrap(model), batch) if real else {}
                if metrics:
                    extra.append(metrics)
        out = {}
        for name in sums:
            key = "eval_loss" if len(sums) == 1 else f"eval_{name}_loss"
            out[key] = (self.world.sum(sums[name]) / self.world.sum(counts[name]).clamp(min=1)).item()
        for key in metric_sums:
            out[f"eval_{key}"] = (self.world.sum(metric_sums[key]) / self.world.sum(metric_counts[key]).clamp(min=1)).item()
        if extra:
            means = {k: sum(e[k] for e in extra) / len(extra) for k in extra[0]}
            out.update(self.world.mean_floats(means))
        return out
