"""The process group as the loop sees it: one process, or many under torchrun.

nccl on CUDA, gloo on CPU, chosen at run time; a second gloo group carries Python objects
and statistics so they cost no GPU memory. DDP or FSDP2 wrap the model; the loop calls the
same methods whatever the strategy.
"""
from __future__ import annotations

import contextlib
import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class World:
    """Rank, size and the collectives the loop needs (identities on a single process)."""

    def __init__(self, cfg=None):
        self.rank = int(os.environ.get("RANK", 0)) if under_torchrun() else 0
        self.size = int(os.environ.get("WORLD_SIZE", 1)) if under_torchrun() else 1
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0)) if under_torchrun() else 0
        self.strategy = cfg.distributed_strategy if cfg is not None else "ddp"
        self.timeout = timedelta(seconds=cfg.ddp_timeout if cfg is not None else 1800)
        self.cpu_group = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def start(self, device: torch.device) -> None:
        """Join the process group (FSDP needs one even on a single process)."""
        if self.active or (self.size == 1 and self.strategy != "fsdp"):
            return
        backend = "nccl" if device.type == "cuda" else "gloo"
        if under_torchrun():
            # torchrun keeps one store across restarts; a per-attempt prefix stops a restarted
            # rank from reading the addresses the failed attempt left there
            store, _, _ = next(dist.rendezvous("env://", self.rank, self.size, timeout=self.timeout))
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            store = dist.PrefixStore(f"ember/attempt_{attempt}/", store)
            dist.init_process_group(backend, store=store, rank=self.rank, world_size=self.size, timeout=self.timeout)
        else:  # a one-process group so FSDP and DCP run the same code path
            dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1,
                                    timeout=self.timeout)
        self.cpu_group = dist.new_group(backend="gloo") if backend != "gloo" else dist.group.WORLD

    def stop(self) -> None:
        if self.active:
            dist.destroy_process_group()

    # ---- collectives --------------------------------------------------------------------
    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (a new tensor; identity on one process)."""
        if self.size == 1 or not self.active:
            return tensor
        out = tensor.detach().clone()
        dist.all_reduce(out)
        return out

    def mean_floats(self, values: dict[str, float]) -> dict[str, float]:
        if self.size == 1 or not self.active:
            return values
        gathered = [None] * self.size
        dist.all_gather_object(gathered, values, group=self.cpu_group)
        return {k: sum(g[k] for g in gathered) / self.size for k in values}

    def any(self, flag: bool) -> bool:
        """True on every rank if it is true on any (used to fail a save everywhere at once)."""
        if self.size == 1 or not self.active:
            return flag
        votes = torch.tensor([int(flag)])
        dist.all_reduce(votes, group=self.cpu_group)  # a CPU tensor on the gloo group: cheap every step
        return bool(votes.item())

    def gather(self, obj) -> list:
        """Every rank's obj (picklable), in rank order, on every rank; [obj] on one process."""
        if self.size == 1 or not self.active:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj, group=self.cpu_group)
        return out

    def broadcast(self, obj):
        if self.size == 1 or not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.cpu_group)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1 and self.active:
            dist.barrier(group=self.cpu_group)

    # ---- model wrapping -----------------------------------------------------------------
    def wrap(self, model: nn.Module, device: torch.device, precision, cpu_offload: bool = False,
             find_unused: bool = False, broadcast_buffers: bool = True) -> nn.Module:
        """DDP or FSDP2 around the model; the unwrapped module stays reachable via `unwrap`.

        find_unused: the forward may leave parameters out (a VLM batch without images), so DDP
        looks for them every step instead of waiting for their gradients forever.
        broadcast_buffers: False when every rank keeps the buffers identical itself (an EMA
        updated from the same weights everywhere), so DDP need not re-send them each forward."""
        if self.strategy == "fsdp" and self.active:
            from .sharding import shard_model
            return shard_model(model, precision, cpu_offload)
        if self.size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            ids = [device.index] if device.type == "cuda" else None
            return DDP(model, device_ids=ids, find_unused_parameters=find_unused, broadcast_buffers=broadcast_buffers)
        return model

    @staticmethod
    def unwrap(model: nn.Module) -> nn.Module:
        return model.module if hasattr(model, "no_sync") and hasattr(model, "module") else model  # DDP's interface

    def no_sync(self, model: nn.Module, sync: bool):
        """Skip gradient communication on micro-steps that do not update the weights."""
        if sync or self.size == 1:
            return contextlib.nullcontext()
        # told apart by interface, not class: FSDP2 (fully_shard) makes a class of its own per module type
        if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
            model.set_requires_gradient_sync(False)
            return _ResyncOnExit(model)
        return model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext()


class _ResyncOnExit(contextlib.AbstractContextManager):
    def __init__(self, model):
        self.model = model

    def __exit__(self, *exc):
        self.model.set_requires_gradient_sync(True)
        return False
