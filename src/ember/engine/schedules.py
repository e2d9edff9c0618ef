"""Learning-rate schedules as plain functions of the step: easy to check, trivially resumable.

Each returns the factor applied to every param group's own peak LR, so per-component
learning rates (a VLM's projector vs. its backbones) follow one shape. The curves equal
transformers' `get_scheduler` ones (tests hold them to it).
"""
from __future__ import annotations

import math
from typing import Callable


def warmup_factor(step: int, warmup: int) -> float:
    return step / max(1, warmup)


def schedule_fn(name: str, total: int, warmup: int, *, min_lr_ratio: float = 0.0, num_cycles: float | None = None,
                power: float = 1.0, decay_ratio: float = 0.1, lr_end_ratio: float = 0.0) -> Callable[[int], float]:
    """The LR factor at each step for the named schedule."""
    floor = min_lr_ratio

    def progress(step: int) -> float:
        return (step - warmup) / max(1, total - warmup)

    def with_floor(value: float) -> float:
        return floor + (1 - floor) * value

    def linear(step):
        if step < warmup:
            return warmup_factor(step, warmup)
        return with_floor(max(0.0, (total - step) / max(1, total - warmup)))

    def cosine(step):
        if step < warmup:
            return warmup_factor(step, warmup)
        cycles = 0.5 if num_cycles is None else num_cycles
        return with_floor(max(0.0, 0.5 * (1.0 + math.cos(math.pi * cycles * 2.0 * progress(step)))))

    def cosine_with_restarts(step):
        if step < warmup:
            return warmup_factor(step, warmup)
        p = progress(step)
        if p >= 1.0:
            return floor
        cycles = 1.0 if num_cycles is None else num_cycles
        return with_floor(max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((cycles * p) % 1.0)))))

    def polynomial(step):
        end = min_lr_ratio if min_lr_ratio > 0 else lr_end_ratio
        if step < warmup:
            return warmup_factor(step, warmup)
        if step > total:
            return end
        return (1 - end) * (1 - progress(step)) ** power + end

    def constant(step):
        return 1.0

    def constant_with_warmup(step):
        return warmup_factor(step, warmup) if step < warmup else 1.0

    def inverse_sqrt(step):
        if step < warmup:
            return warmup_factor(step, warmup)
        timescale = warmup or 10_000
        return 1.0 / math.sqrt((step + timescale - warmup) / timescale)

    decay_steps = int(decay_ratio * total)
    stable_end = total - decay_steps

    def warmup_stable_decay(step):
        if step < warmup:
            return with_floor(warmup_factor(step, warmup))
        if step < stable_end:
            return 1.0
        if step < total:
            p = (step - stable_end) / max(1, decay_steps)
            cycles = 0.5 if num_cycles is None else num_cycles
            return with_floor(max(0.0, 0.5 * (1.0 + math.cos(math.pi * cycles * 2.0 * p))))
        return floor

    def nanovlm(step):
        # nanoVLM's get_lr: warmup over 3% of the steps counting the current one, then cosine to
        # 10% of the peak (unless warmup/min_lr_ratio are set), held there past the end
        ramp = warmup if warmup > 0 else 0.03 * total
        low = min_lr_ratio if min_lr_ratio > 0 else 0.1
        if step < ramp:  # capped at the peak: nanoVLM's formula overshoots when 3% is not a whole step
            return min(1.0, (step + 1) / ramp)
        if step > total:
            return low
        ratio = (step - ramp) / max(1e-9, total - ramp)
        return low + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (1 - low)

    table = {
        "nanovlm": nanovlm, "linear": linear, "cosine": cosine, "cosine_with_restarts": cosine_with_restarts,
        "polynomial": polynomial, "constant": constant, "constant_with_warmup": constant_with_warmup,
        "inverse_sqrt": inverse_sqrt, "warmup_stable_decay": warmup_stable_decay,
        "reduce_lr_on_plateau": constant_with_warmup,  # the plateau cuts are applied on top
    }
    return table[name]


class LRSchedule:
    """Sets each param group's LR to its own peak × the schedule's factor at the current step.

    reduce_lr_on_plateau multiplies by plateau_factor after `patience` evaluations without
    improvement of the monitored metric (lower is better).
    """

    def __init__(self, optimizers: dict, cfg, total_steps: int):
        warmup = cfg.warmup_steps or math.ceil(cfg.warmup_ratio * total_steps)
        self.fn = schedule_fn(cfg.lr_scheduler_type, total_steps, warmup, min_lr_ratio=cfg.min_lr_ratio,
                              num_cycles=cfg.num_cycles, power=cfg.power, decay_ratio=cfg.decay_ratio,
                              lr_end_ratio=1e-7 / cfg.learning_rate)  # transformers' default lr_end is 1e-7
        self.optimizers = optimizers
        for opt in optimizers.values():
            for group in opt.param_groups:
                group.setdefault("peak_lr", group["lr"])
        self.plateau = cfg.lr_scheduler_type == "reduce_lr_on_plateau"
        self.patience, self.cut = cfg.plateau_patience, cfg.plateau_factor
        self.state = {"step": 0, "plateau_scale": 1.0, "best": math.inf, "bad_evals": 0}
        self._apply()

    def _apply(self) -> None:
        factor = self.fn(self.state["step"]) * self.state["plateau_scale"]
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = group["peak_lr"] * factor

    def step(self) -> None:
        self.state["step"] += 1
        self._apply()

    def observe(self, metric: float) -> None:
        """Feed an evaluation result (only reduce_lr_on_plateau reacts)."""
        if not self.plateau:
            return
        if metric < self.state["best"]:
            self.state.update(best=metric, bad_evals=0)
            return
        self.state["bad_evals"] += 1
        if self.state["bad_evals"] > self.patience:
            self.state.update(plateau_scale=self.state["plateau_scale"] * self.cut, bad_evals=0)
            self._apply()

    def current_lr(self) -> float:
        return next(iter(self.optimizers.values())).param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return dict(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.state.update(state)
        self._apply()
