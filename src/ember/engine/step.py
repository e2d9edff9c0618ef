"""One optimizer step over a window of micro-batches, exactly normalised."""
from __future__ import annotations

import math

import torch


def to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def run_optimizer_step(trainer, window: list) -> tuple[dict, dict, dict]:
    """Forward/backward every micro-batch of the window, then step each optimizer once.

    Each micro-batch's summed loss is divided by a provisional reference (the first
    micro-batch's item count, averaged over ranks, × window length) so gradients keep a sane
    magnitude; once every
    count is known, gradients are rescaled by reference / total, which makes the step exactly
    that of one batch holding every item of the window (over all ranks). No host sync here
    (but under FSDP, whose DTensor gradients take a plain float).
    Several optimizers (a GAN's generator and discriminator) each get gradients only from
    their own loss.
    """
    optimizers, params, precision, world = trainer.optimizers, trainer.params, trainer.precision, trainer.world
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    several = len(optimizers) > 1
    sums, counts, refs = {}, {}, {}
    for index, batch in enumerate(window):
        batch = to_device(batch, trainer.device)
        with world.no_sync(trainer.model, sync=index == len(window) - 1):
            with precision.autocast():
                losses = trainer.task.training_step(trainer.model, batch, trainer.state["step"])
            for i, (name, loss) in enumerate(losses.items()):
                count = torch.as_tensor(loss.count, device=loss.total.device, dtype=torch.float32)
                if name not in refs:
                    # the same reference on every rank, so averaging gradients across ranks commutes
                    # with the rescaling below
                    refs[name] = (world.sum(count) / world.size).clamp(min=1) * len(window)
                precision.backward(loss.total.float() / refs[name], inputs=params[name] if several else None,
                                   retain_graph=several and i < len(losses) - 1)
                sums[name] = sums.get(name, 0) + loss.total.detach().float()
                counts[name] = counts.get(name, 0) + count
    grad_norms = {}
    max_norm = trainer.cfg.max_grad_norm or math.inf
    for name, opt in optimizers.items():
        if name not in refs:  # no loss for this optimizer in this window (e.g. a GAN before disc_start)
            continue
        precision.unscale(opt)
        factor = refs[name] * world.size / world.sum(counts[name]).clamp(min=1)
        grads = [p.grad for p in params[name] if p.grad is not None]
        if grads:
            # DTensor grads (FSDP) take a plain float; local grads take the tensor (no host sync)
            scale = factor.item() if world.strategy == "fsdp" and world.active else factor.to(grads[0].dtype)
            torch._foreach_mul_(grads, scale)
        grad_norms[name] = torch.nn.utils.clip_grad_norm_(params[name], max_norm, foreach=True)
        precision.step(opt)
    if hasattr(trainer.task, "after_optimizer_step"):  # e.g. an EMA of the weights, kept by the task
        trainer.task.after_optimizer_step(trainer.raw, trainer.state["step"])
    precision.update()
    return sums, counts, grad_norms
