"""Building the parts a run trains with, each from its own keys: the model (initialised, placed,
cast, compiled, wrapped), its optimizers, and the number of steps the run will take."""
from __future__ import annotations

import logging
import math

import torch

from ..config.errors import ConfigError
from .checkpoint.weights import load_weights, read_weights
from .optim import build_optimizer, default_param_groups
from .optimizers import method_optimizer
from .recompute import checkpoint_blocks
from .runtime import compile_model

log = logging.getLogger("ember")


def build_model(task, cfg, device: torch.device, precision, world) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the model as the loop calls it — DDP/FSDP-wrapped when distributed —, the bare model)."""
    model = task.build_model()
    source = cfg.load_from_checkpoint or task.initial_weights()
    if source:
        load_weights(model, initial_tensors(task, source), source, cfg.ignore_mismatched_sizes)
        log.info("initialised weights from %s (fresh optimizer and schedule)", source)
    if next(model.parameters()).device != device:  # k-bit models are placed when loaded
        model.to(device)
    if precision.param_dtype is not None:
        model.to(precision.param_dtype)
    if cfg.gradient_checkpointing:  # before compile, so each compiled block traces its checkpoint
        checkpoint_blocks(task.recomputed_blocks(model), cfg.gradient_checkpointing_every)
    if cfg.compile:
        compile_model(model)
    wrapped = world.wrap(model, device, precision, cfg.fsdp_cpu_offload, find_unused=task.forward_may_skip_parameters,
                         broadcast_buffers=task.ddp_broadcast_buffers)
    return wrapped, model


def initial_tensors(task, source: str) -> dict[str, torch.Tensor]:
    """The weights at `source`, read by the family when it knows the format, else by the engine."""
    tensors = task.read_weights(source)
    return tensors if tensors is not None else read_weights(source)


def build_optimizers(task, raw: torch.nn.Module, cfg, device: torch.device, world) -> dict:
    """One optimizer per entry of the task's param_groups (one, "model", by default), or the one
    optimizer a use_* key names (GaLore, APOLLO, BAdam, Adam-mini, Muon) over the whole model."""
    special = method_optimizer(raw, cfg)
    if special is not None:
        return {"model": special}
    groups = task.param_groups(raw) or default_param_groups(raw, cfg)
    if len(groups) > 1 and world.strategy == "fsdp":
        # each optimizer's gradients are kept apart by backward(inputs=its parameters), and
        # FSDP2's sharded parameters are not in the autograd graph (the forward uses gathered
        # copies): they would get no gradient, and the run would train nothing without error
        raise ConfigError(f"distributed_strategy: fsdp cannot train a task with several optimizers "
                          f"({', '.join(groups)}); use ddp")
    return {name: build_optimizer(g, cfg, device) for name, g in groups.items()}


def total_steps(cfg, micro_per_epoch: int) -> int:
    """max_steps when set, else num_train_epochs over this rank's micro-batches per epoch."""
    if cfg.max_steps > 0:
        return cfg.max_steps
    return max(1, math.ceil(cfg.num_train_epochs * micro_per_epoch / cfg.gradient_accumulation_steps))
