"""One optimizer step over a window of micro-batches, exactly normalised."""
from __future__ import annotations

import math

import torch

from .task import Loss


def to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _tensors(batch):
    if isinstance(batch, torch.Tensor):
        yield batch
    elif isinstance(batch, dict):
        for v in batch.values():
            yield from _tensors(v)
    elif isinstance(batch, (list, tuple)):
        for v in batch:
            yield from _tensors(v)


_copy_streams: dict = {}


def window_to_device(window: list, device: torch.device):
    """The micro-batches of the window on the device, as (batch, ready) pairs, one at a time.

    On a GPU each copy (from pinned memory) is issued on a side stream one micro-batch ahead,
    so the copy of micro-batch i+1 overlaps the forward of i instead of queueing in front of
    it, and at most two micro-batches are on the device at once whatever the accumulation.
    `ready` is the event the compute stream waits on.
    """
    if device.type != "cuda":
        for batch in window:
            yield to_device(batch, device), None
        return
    if device not in _copy_streams:
        _copy_streams[device] = torch.cuda.Stream(device)
    stream = _copy_streams[device]

    def issue(batch):
        with torch.cuda.stream(stream):
            moved = to_device(batch, device)
            ready = torch.cuda.Event()
            ready.record(stream)
        return moved, ready

    ahead = issue(window[0]) if window else None
    for index in range(len(window)):
        current = ahead
        ahead = issue(window[index + 1]) if index + 1 < len(window) else None
        yield current


def _wait_until_ready(batch, ready) -> None:
    if ready is None:
        return
    compute = torch.cuda.current_stream()
    compute.wait_event(ready)
    for tensor in _tensors(batch):  # allocated on the copy stream, used on this one: keep it alive
        tensor.record_stream(compute)


def metric_parts(value, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A task metric as (summed value, item count): a tensor counts the loss's items, a Loss its own."""
    if isinstance(value, Loss):
        return value.total.detach().float(), torch.as_tensor(value.count, device=count.device, dtype=count.dtype)
    return value.detach().float(), count


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
    for index, (batch, ready) in enumerate(window_to_device(window, trainer.device)):
        _wait_until_ready(batch, ready)
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
                for key, value in loss.metrics.items():  # summed like the loss, over its own items
                    total, n = metric_parts(value, count)
                    sums[key] = sums.get(key, 0) + total
                    counts[key] = counts.get(key, 0) + n
    grad_norms = {}
    max_norm = trainer.cfg.max_grad_norm or math.inf
    for name, opt in optimizers.items():
        if name not in refs:  # no loss for this optimizer in this window (e.g. a GAN before disc_start)
            continue
        precision.unscale(opt)
        factor = refs[name] * world.size / world.sum(counts[name]).clamp(min=1)
        grads = [p.grad for p in params[name] if p.grad is not None]
        if grads and not (world.strategy == "fsdp" and world.active):
            # one pass over the gradients rescales and clips at once: the norm of grads × factor
            # is their norm × factor, and the clip coefficient multiplies the factor (no host sync)
            norm = torch.nn.utils.get_total_norm(grads, foreach=True) * factor
            torch._foreach_mul_(grads, ((max_norm / (norm + 1e-6)).clamp(max=1.0) * factor).to(grads[0].dtype))
            grad_norms[name] = norm
        else:
            if grads:  # DTensor grads (FSDP) take a plain float
                torch._foreach_mul_(grads, factor.item())
            grad_norms[name] = torch.nn.utils.clip_grad_norm_(params[name], max_norm, foreach=True)
        precision.step(opt)
    trainer.task.after_optimizer_step(trainer.raw, trainer.state["step"])  # e.g. an EMA of the weights
    precision.update()
    return sums, counts, grad_norms
