"""The contract between the engine and a task family: every hook the engine may call.

A task family (tasks/<family>/) subclasses Task. The four required hooks build the model and
the data, compute a training step's losses and export the result; every optional hook has a
default here, so the engine calls each one unconditionally and never asks what a task has.
The engine owns everything else: batching, precision, optimizers, schedules, accumulation,
distribution, evaluation, checkpoints and logs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

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
    #: extra numbers to log (reward accuracy, a KL estimate), each *summed* over the same items
    #: as `total`, or a Loss of its own (a sum over some of them, and how many: KTO's desirable
    #: answers): the engine divides each by its count over the window and the ranks, so they are
    #: as exact as the loss; logged under their own names (eval_<name> in evaluation)
    metrics: dict[str, torch.Tensor | Loss] = field(default_factory=dict)


class Task:
    """Subclass and implement the required hooks; override the optional ones that apply."""

    #: the forward may leave some parameters without a gradient (a VLM batch without images, a
    #: GAN before disc_start): DDP then looks for unused parameters every step instead of
    #: waiting for their gradients forever
    forward_may_skip_parameters: bool = False
    #: DDP re-sends the model's buffers from rank 0 at every forward unless every rank keeps
    #: them identical itself (an EMA updated from the same weights everywhere)
    ddp_broadcast_buffers: bool = True
    #: flops() is implemented: the engine then logs `mfu` against a measured or configured peak
    counts_flops: bool = False

    # ---- required -----------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """The model to train, on the CPU; the engine places, casts, compiles and wraps it."""
        raise NotImplementedError

    def build_data(self) -> tuple[Dataset, Dataset | None, Callable]:
        """(training set, validation set or None, collate function)."""
        raise NotImplementedError

    def training_step(self, model: nn.Module, batch: Any, step: int) -> dict[str, Loss]:
        """One micro-batch's losses, one per optimizer (named as in param_groups), under autograd.

        `model` is the wrapped model (DDP's hooks must see the forward); `step` is the number of
        optimizer steps taken so far."""
        raise NotImplementedError

    def export(self, model: nn.Module, path: str, state_dict: dict | None = None) -> None:
        """Write the trained model to `path` in the family's format; under FSDP `state_dict`
        holds the gathered full weights (the model's own are shards)."""
        raise NotImplementedError

    # ---- optional -----------------------------------------------------------------------
    def param_groups(self, model: nn.Module) -> dict[str, list[dict[str, Any]]] | None:
        """One entry per optimizer: its parameter groups (with per-group options such as lr).
        None: one optimizer, "model", over every trainable parameter (engine/optim.py)."""
        return None

    def initial_weights(self) -> str | None:
        """Weights the engine loads into the built model when load_from_checkpoint is not set (a
        checkpoint folder, an HF folder or a weights file), e.g. a family's own resume key."""
        return None

    def read_weights(self, source: str) -> dict[str, torch.Tensor] | None:
        """The weights at `source` (load_from_checkpoint or initial_weights) under the model's own names,
        when they are in a format only this family knows (another program's checkpoint folder);
        None: the engine reads them (checkpoint, HF folder, safetensors, state dict)."""
        return None

    def evaluation_step(self, model: nn.Module, batch: Any) -> dict[str, Loss]:
        """A validation micro-batch's losses, under torch.no_grad. By default the training
        losses; a task whose training step differs (sampling, a GAN term) overrides this."""
        return self.training_step(model, batch, step=0)

    def eval_metrics(self, model: nn.Module, batch: Any) -> dict[str, float]:
        """Extra per-batch validation numbers (PSNR, accuracy), averaged over batches and ranks."""
        return {}

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Called after every optimizer step with the unwrapped model (an EMA update). State kept
        across steps belongs in the model as buffers, so checkpoints carry it."""

    def recomputed_blocks(self, model: nn.Module) -> list[nn.Module]:
        """The repeated blocks whose activations gradient_checkpointing recomputes in backward, in
        forward order. By default the transformer blocks (HF's _no_split_modules, else the items
        of ModuleLists) of each kind that occurs more than once: a VLM's decoder and vision
        encoder layers, not its one patch embedding. A family whose blocks are found otherwise
        (a VAE's) overrides this."""
        from collections import Counter

        from .sharding import transformer_blocks
        blocks = transformer_blocks(model)
        kinds = Counter(type(block) for block in blocks)
        return [block for block in blocks if kinds[type(block)] > 1]

    def flops(self, model: nn.Module, batch: Any) -> torch.Tensor | int:
        """The training FLOPs of one micro-batch (a tensor or int, no host sync); set counts_flops."""
        return 0
