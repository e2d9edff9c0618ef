"""Activation checkpointing (`gradient_checkpointing`): a block keeps only its inputs from the forward
pass and recomputes its insides during backward.

Which blocks repeat is the task family's knowledge (Task.recomputed_blocks); how they are
recomputed is the engine's, the same for every family. Each chosen block's `forward` is replaced
on the instance by one that runs the original under torch's non-reentrant checkpoint, so:

- parameter names, state dicts and wrappers stay as they are (no wrapper module is inserted, so
  checkpoints and exports are identical with and without it);
- compile still compiles the block's `_call_impl`, which now traces the checkpoint as one region
  that inductor recomputes itself; DDP and FSDP2 hooks sit on `__call__`, outside `forward`, and
  run once per step as without it (FSDP2 has the block's weights gathered again for backward, when
  the recomputation runs);
- LoRA/QLoRA need no `enable_input_require_grads`: unlike the reentrant variant, non-reentrant
  checkpoint records the graph whether or not the block's inputs require grad.
"""
from __future__ import annotations

import logging
import types

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

log = logging.getLogger("ember")


def checkpoint_blocks(blocks: list[nn.Module], every: int = 1) -> int:
    """Recompute every `every`-th of `blocks` (the 1st, the (1+every)-th, ...) in backward; returns how many.

    Fewer checkpointed blocks trade memory back for speed: each one left out keeps its activations
    and skips its second forward."""
    chosen = blocks[::every]
    for block in chosen:
        # bound to the block (not a closure over it), so a deep copy of the model (an EMA) calls
        # its own weights; applied twice, it is still one checkpoint
        block.forward = types.MethodType(_recomputed_forward, block)
    if chosen:
        log.info("gradient_checkpointing: %d of %d %s recompute their activations in backward",
                 len(chosen), len(blocks), type(chosen[0]).__name__)
    return len(chosen)


def _recomputed_forward(block: nn.Module, *args, **kwargs):
    forward = types.MethodType(type(block).forward, block)
    if not torch.is_grad_enabled():  # evaluation: nothing is saved for backward anyway
        return forward(*args, **kwargs)
    # preserve_rng_state (the default) replays dropout's random draws, so the recomputed
    # forward is the same forward and gradients equal the run without checkpointing
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)
