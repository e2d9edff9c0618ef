"""FSDP2: shard every transformer block, then the root, with a precision policy from the config."""
from __future__ import annotations

import torch
from torch import nn


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks: HF's _no_split_modules classes when declared, else ModuleList items."""
    names = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    if names:
        return [m for m in model.modules() if type(m).__name__ in names]
    return [child for m in model.modules() if isinstance(m, nn.ModuleList) for child in m]


def shard_model(model: nn.Module, precision, cpu_offload: bool) -> nn.Module:
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    compute = precision.autocast_dtype or precision.param_dtype
    options = {"mp_policy": MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32)}
    if cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy(pin_memory=torch.cuda.is_available())  # pinning needs a GPU
    for block in transformer_blocks(model):
        fully_shard(block, **options)
    fully_shard(model, **options)
    return model
