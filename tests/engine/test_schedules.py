"""LR schedules: every curve equals transformers' `get_scheduler` with the same settings.

The reference is transformers' LambdaLR on a dummy optimizer, stepped exactly as a training
loop steps it; ember's LRSchedule is stepped the same way and read back through its
optimizer, so the check covers schedule_fn, the warmup resolution and how LRSchedule
applies the factor to each param group.
"""
from __future__ import annotations

import math
import pytest
import torch
from transformers.optimization import get_scheduler

from ember.config import build_config
from ember.engine.schedules import LRSchedule

from conftest import read_metrics

LR = 1e-3


def schedule_cfg(**overrides):
    """A validated config: only the schedule keys matter here; nothing is read from disk."""
    base = dict(model_config="llama-tiny", dataset="unused", output_dir="unused", learning_rate=LR)
    base.update(overrides)
    return build_config(base)


def dummy_optimizer(*lrs: float) -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


def ember_curve(cfg, total: int, *lrs: float) -> list[list[float]]:
    """The LR of every param group at steps 0..total (the LR each optimizer step would use)."""
    opt = dummy_optimizer(*(lrs or (cfg.learning_rate,)))
    schedule = LRSchedule({"model": opt}, cfg, total)
    curve = []
    for _ in range(total + 1):
        curve.append([g["lr"] for g in opt.param_groups])
        schedule.step()
    return curve


def reference_curve(name: str, total: int, warmup: int, lr: float = LR, **kwargs) -> list[float]:
    opt = dummy_optimizer(lr)
    sched = get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=total,
                          scheduler_specific_kwargs=kwargs or None)
    curve = []
    for _ in range(total + 1):
        curve.append(opt.param_groups[0]["lr"])
        opt.step()  # no grads: a no-op, but keeps torch from warning about the call order
        sched.step()
    return curve


# (ember lr_scheduler_type, extra ember keys, transformers name, transformers scheduler_specific_kwargs)
CASES = [
    ("linear", {}, "linear", {}),
    ("cosine", {}, "cosine", {}),
    ("cosine", {"num_cycles": 1.25}, "cosine", {"num_cycles": 1.25}),
    ("cosine_with_restarts", {}, "cosine_with_restarts", {}),
    ("cosine_with_restarts", {"num_cycles": 3}, "cosine_with_restarts", {"num_cycles": 3}),
    ("polynomial", {}, "polynomial", {}),  # transformers' default lr_end 1e-7, power 1
    ("polynomial", {"power": 2.0, "min_lr_ratio": 0.1}, "polynomial", {"power": 2.0, "lr_end": 0.1 * LR}),
    ("constant", {}, "constant", {}),
    ("constant_with_warmup", {}, "constant_with_warmup", {}),
    ("inverse_sqrt", {}, "inverse_sqrt", {}),
    ("cosine", {"min_lr_ratio": 0.1}, "cosine_with_min_lr", {"min_lr_rate": 0.1}),
    ("cosine", {"min_lr_ratio": 0.2, "num_cycles": 1.0}, "cosine_with_min_lr", {"min_lr_rate": 0.2, "num_cycles": 1.0}),
]


@pytest.mark.parametrize("total,warmup", [(100, 10), (37, 0)], ids=["100steps-warmup10", "37steps-nowarmup"])
@pytest.mark.parametrize("name,ember_keys,hf_name,hf_kwargs", CASES,
                         ids=[f"{c[0]}-{'-'.join(f'{k}={v}' for k, v in c[1].items()) or 'default'}" for c in CASES])
def test_curve_equals_transformers(name, ember_keys, hf_name, hf_kwargs, total, warmup):
    cfg = schedule_cfg(lr_scheduler_type=name, warmup_steps=warmup, **ember_keys)
    ours = [lrs[0] for lrs in ember_curve(cfg, total)]
    theirs = reference_curve(hf_name, total, warmup, **hf_kwargs)
    assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-15)
    if name != "constant" and not (name == "constant_with_warmup" and warmup == 0):
        assert len(set(ours)) > 2, "a degenerate curve proves nothing"


@pytest.mark.parametrize("total,warmup", [(100, 10), (37, 0)])
@pytest.mark.parametrize("decay_ratio,min_lr_ratio,num_cycles", [(0.1, 0.0, None), (0.25, 0.05, None), (0.3, 0.0, 1.0)])
def test_warmup_stable_decay_equals_transformers_wsd(total, warmup, decay_ratio, min_lr_ratio, num_cycles):
    cfg = schedule_cfg(lr_scheduler_type="warmup_stable_decay", warmup_steps=warmup, decay_ratio=decay_ratio,
                       min_lr_ratio=min_lr_ratio, num_cycles=num_cycles)
    ours = [lrs[0] for lrs in ember_curve(cfg, total)]
    kwargs = {"num_decay_steps": int(decay_ratio * total), "min_lr_ratio": min_lr_ratio}
    if num_cycles is not None:
        kwargs["num_cycles"] = num_cycles
    theirs = reference_curve("warmup_stable_decay", total, warmup, **kwargs)
    assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-15)
    assert ours[total - int(decay_ratio * total) - 1] == pytest.approx(LR), "the stable phase holds the peak"


def test_warmup_ratio_gives_ceil_of_ratio_times_total():
    total, ratio = 90, 0.05  # 4.5 steps: ceil → 5 (int() and round() would give 4)
    cfg = schedule_cfg(lr_scheduler_type="linear", warmup_ratio=ratio)
    ours = [lrs[0] for lrs in ember_curve(cfg, total)]
    assert ours == pytest.approx(reference_curve("linear", total, math.ceil(ratio * total)), rel=1e-9, abs=1e-15)
    assert ours[4] < LR and ours[5] == pytest.approx(LR)


def test_warmup_steps_win_over_warmup_ratio():
    cfg = schedule_cfg(lr_scheduler_type="cosine", warmup_steps=7, warmup_ratio=0.5)
    ours = [lrs[0] for lrs in ember_curve(cfg, 60)]
    assert ours == pytest.approx(reference_curve("cosine", 60, 7), rel=1e-9, abs=1e-15)


def test_reduce_lr_on_plateau_matches_torch_plateau_semantics():
    """patience=2: two evaluations without improvement are tolerated, the third cuts the LR."""
    patience, factor = 2, 0.5
    cfg = schedule_cfg(lr_scheduler_type="reduce_lr_on_plateau", val_size=0.1,
                       plateau_patience=patience, plateau_factor=factor)
    opt = dummy_optimizer(LR)
    schedule = LRSchedule({"model": opt}, cfg, total_steps=100)
    ref_opt = dummy_optimizer(LR)
    reference = get_scheduler("reduce_lr_on_plateau", ref_opt,
                              scheduler_specific_kwargs={"patience": patience, "factor": factor})

    evals = [3.0, 2.5, 2.6, 2.7, 2.8, 2.9, 3.0, 3.1, 1.0, 1.5, 1.6, 1.7]
    ours, theirs = [], []
    for loss in evals:
        for _ in range(3):  # a few optimizer steps between evaluations must not undo a cut
            schedule.step()
        schedule.observe(loss)
        ref_opt.step()
        reference.step(loss)
        ours.append(schedule.current_lr())
        theirs.append(ref_opt.param_groups[0]["lr"])
    assert ours == pytest.approx(theirs, rel=1e-12)
    # spelled out: improvements at 3.0, 2.5; 2.6, 2.7 tolerated; 2.8 cuts; 2.9, 3.0 tolerated; 3.1 cuts;
    # 1.0 improves; 1.5, 1.6 tolerated; 1.7 cuts
    assert ours == pytest.approx([LR] * 4 + [LR / 2] * 3 + [LR / 4] * 4 + [LR / 8], rel=1e-12)


def test_reduce_lr_on_plateau_is_driven_by_the_trainers_evaluations(make_config):
    """Wiring: the loop feeds eval_loss to the schedule, and the logged LR shows the cut.

    The engine computes eval losses from the task's evaluation_step; the wrapper below
    replaces them with a scripted eval_loss per evaluation.
    """
    from ember.engine.task import Loss
    from ember.engine.trainer import Trainer
    from ember.tasks import build_task

    # eval_loss of the evaluation after step k: improve, improve, then only worse
    script = {1: 5.0, 2: 4.0, 3: 4.5, 4: 4.6, 5: 4.7, 6: 4.8}

    class ScriptedEval:
        def __init__(self, task):
            self.task, self.trained = task, 0

        def __getattr__(self, name):
            return getattr(self.task, name)

        def training_step(self, model, batch, step):
            self.trained = step + 1
            return self.task.training_step(model, batch, step)

        def evaluation_step(self, model, batch):
            losses = self.task.evaluation_step(model, batch)
            value = script[self.trained]
            return {name: Loss(torch.as_tensor(loss.count, dtype=torch.float32) * value, loss.count)
                    for name, loss in losses.items()}

    cfg = make_config(lr_scheduler_type="reduce_lr_on_plateau", val_size=0.1, eval_steps=1, max_steps=6,
                      plateau_patience=1, plateau_factor=0.1, cutoff_len=32, per_device_train_batch_size=2)
    Trainer(cfg, ScriptedEval(build_task(cfg))).fit()
    records = read_metrics(cfg.output_dir)
    assert {r["step"]: r["eval_loss"] for r in records if "eval_loss" in r} == pytest.approx(script)
    train_lrs = {r["step"]: r["lr"] for r in records if "lr" in r}
    # 4.5 is tolerated (patience 1), 4.6 cuts; 4.7 tolerated, 4.8 cuts. Step k trains with
    # the LR set after the evaluation of step k-1.
    expected = {1: LR, 2: LR, 3: LR, 4: LR, 5: LR * 0.1, 6: LR * 0.1}
    assert train_lrs == pytest.approx(expected, rel=1e-9)


def test_param_groups_keep_their_peak_ratio():
    peaks = (1e-3, 2.5e-4, 4e-5)
    total, warmup = 80, 8
    cfg = schedule_cfg(lr_scheduler_type="cosine", warmup_steps=warmup, min_lr_ratio=0.1)
    curve = ember_curve(cfg, total, *peaks)
    factors = reference_curve("cosine_with_min_lr", total, warmup, lr=1.0, min_lr_rate=0.1)
    for step, (lrs, factor) in enumerate(zip(curve, factors)):
        assert lrs == pytest.approx([p * factor for p in peaks], rel=1e-9, abs=1e-18), f"step {step}"
    assert max(curve[k][0] for k in range(total)) == pytest.approx(peaks[0])


def test_schedule_state_round_trips():
    """A resumed schedule continues the same curve (the state is the step and the plateau scale)."""
    cfg = schedule_cfg(lr_scheduler_type="cosine", warmup_steps=5)
    full = [lrs[0] for lrs in ember_curve(cfg, 40)]
    opt = dummy_optimizer(LR)
    first = LRSchedule({"model": opt}, cfg, 40)
    for _ in range(17):
        first.step()
    opt2 = dummy_optimizer(LR)
    resumed = LRSchedule({"model": opt2}, cfg, 40)
    resumed.load_state_dict(first.state_dict())
    rest = [resumed.current_lr()]
    for _ in range(40 - 17):
        resumed.step()
        rest.append(resumed.current_lr())
    assert rest == pytest.approx(full[17:], rel=1e-12)


def nanovlm_get_lr(it: int, max_lr: float, max_steps: int) -> float:
    """Seed 001's get_lr, written out from the seed's text as the reference."""
    min_lr = max_lr * 0.1
    warmup_steps = max_steps * 0.03
    if it < warmup_steps:  # ember caps this at the peak (the seed's overshoots when 3% is not a whole step)
        return min(max_lr, max_lr * (it + 1) / warmup_steps)
    if it > max_steps:
        return min_lr
    decay_ratio = (it - warmup_steps) / (max_steps - warmup_steps)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (max_lr - min_lr)


@pytest.mark.parametrize("total", [3, 40, 200])
def test_nanovlm_schedule_is_the_seeds_get_lr_for_every_component(total):
    # three param groups with nanoVLM's per-component peaks each follow the curve at their own scale
    peaks = (0.00512, 5e-5, 1e-4)
    curve = ember_curve(schedule_cfg(lr_scheduler_type="nanovlm"), total, *peaks)
    for step, lrs in enumerate(curve):
        for lr, peak in zip(lrs, peaks):
            assert lr == pytest.approx(nanovlm_get_lr(step, peak, total), rel=1e-12), (step, peak)
