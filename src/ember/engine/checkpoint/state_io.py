"""Moving model and optimizer state in and out of checkpoints, per strategy.

Replicated models (one process, DDP) are saved by rank 0 as safetensors + optimizer.pt.
FSDP-sharded models are saved by every rank through torch.distributed.checkpoint (DCP),
which also lets a run resume on a different number of processes.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from ...config.errors import first_line
from .format import CheckpointError, checkpoint_tensors
from .weights import load_weights


def _dcp():
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import state_dict as sd
    return dcp, sd


class StateIO:
    def __init__(self, world, model: torch.nn.Module, raw: torch.nn.Module):
        self.world, self.model, self.raw = world, model, raw
        self.sharded = world.strategy == "fsdp" and world.active

    # ---- save ---------------------------------------------------------------------------
    def writer(self, optimizers: dict | None):
        """A function that writes this rank's share of model (+ optimizer) state into a folder."""
        def write(folder: Path) -> None:
            if self.sharded:
                dcp, sd = _dcp()
                state = {"model": sd.get_model_state_dict(self.raw)}
                for name, opt in (optimizers or {}).items():
                    state[f"optim.{name}"] = sd.get_optimizer_state_dict(self.raw, opt)
                dcp.save(state, checkpoint_id=str(folder / "dcp"))
            elif self.world.is_main:
                save_file(checkpoint_tensors(self.raw), str(folder / "model.safetensors"))
                if optimizers is not None:
                    torch.save({name: opt.state_dict() for name, opt in optimizers.items()}, folder / "optimizer.pt")
        return write

    # ---- load ---------------------------------------------------------------------------
    def load(self, bundle: dict, optimizers: dict | None) -> None:
        """Weights (and optimizer state when given and saved) from a read_checkpoint bundle."""
        if bundle["weights"] is None:  # sharded: read straight from the DCP shards
            self._load_dcp(bundle["path"] / "dcp", optimizers if bundle["optimizers"] == "dcp" else None)
            return
        if self.sharded:
            raise ValueError("a replicated checkpoint cannot be resumed under distributed_strategy fsdp")
        load_weights(self.raw, bundle["weights"], str(bundle["path"]))
        if optimizers is not None and isinstance(bundle["optimizers"], dict):
            for name, opt in optimizers.items():
                opt.load_state_dict(bundle["optimizers"][name])

    def _load_dcp(self, folder: Path, optimizers: dict | None) -> None:
        from torch.distributed.checkpoint.api import CheckpointException

        from .safe_dcp import SafeLoadPlanner, SafeReader
        dcp, sd = _dcp()
        state = {"model": sd.get_model_state_dict(self.raw)}
        for name, opt in (optimizers or {}).items():
            state[f"optim.{name}"] = sd.get_optimizer_state_dict(self.raw, opt)
        try:
            dcp.load(state, storage_reader=SafeReader(str(folder)), planner=SafeLoadPlanner())
        except CheckpointException as err:  # every rank's failure gathered (a BaseException, not an Exception)
            causes = [failure for failure, _ in err.failures.values() if isinstance(failure, BaseException)]
            cause = first_line(causes[0]) if causes else "a rank failed to read its shards"
            raise CheckpointError(f"could not read the sharded checkpoint {folder}: {cause}") from None
        sd.set_model_state_dict(self.raw, state["model"])
        for name, opt in (optimizers or {}).items():
            sd.set_optimizer_state_dict(self.raw, opt, state[f"optim.{name}"])

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The whole model on rank 0's CPU for export (a collective under FSDP; None elsewhere)."""
        if not self.sharded:
            return None
        _, sd = _dcp()
        options = sd.StateDictOptions(full_state_dict=True, cpu_offload=True)
        full = sd.get_model_state_dict(self.raw, options=options)
        # gathered tied weights come back as separate copies: keep one name per tensor, as
        # named_parameters() does, so the export matches a single-process one
        keep = {n for n, _ in self.raw.named_parameters()} | {n for n, _ in self.raw.named_buffers()}
        return {name: tensor for name, tensor in full.items() if name in keep}
