"""amp_level O1 and O2 of seed 000 (MindSpore's auto_mixed_precision) on the VAE, in torch terms.

MindSpore O1 runs only a white list (convolutions, matmuls) in the low precision and the rest in
fp32; O2 runs everything in the low precision except a black list (the norms) kept in fp32, so
activations travel between layers in bf16/fp16. Under torch autocast (which already puts
convolutions and matmuls in the low precision):
  O1  the VAE's norms compute in fp32 and hand fp32 on (CUDA autocast does this by itself, the
      CPU's does not), so the SiLUs and residual sums after them run in fp32;
  O2  the norms still compute in fp32, but their outputs are cast back to the autocast dtype, so
      activations, SiLUs, residual sums and resampling stay in the low precision (less memory).
Weights stay fp32 in both (master weights, as MindSpore keeps its parameters).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm3d, nn.BatchNorm2d)
_STATE = {"level": None}


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None


def _norm_in_fp32(module, args):
    if _STATE["level"] in ("O1", "O2") and args and isinstance(args[0], torch.Tensor) and _autocast_dtype(args[0]):
        return (args[0].float(), *args[1:])
    return None


def _hand_on_low(module, args, output):
    if _STATE["level"] == "O2" and isinstance(output, torch.Tensor):
        dtype = _autocast_dtype(output)
        if dtype is not None:
            return output.to(dtype)
    return output


@contextlib.contextmanager
def carry_low_precision(vae: nn.Module, amp_level: str | None):
    """Within it, the VAE's norms follow amp_level O1 or O2 (see above); other levels change nothing."""
    if amp_level not in ("O1", "O2"):
        yield
        return
    if not getattr(vae, "_amp_level_hooks", False):  # hooks once per model; they act only inside this context
        for module in vae.modules():
            if isinstance(module, _NORMS):
                module.register_forward_pre_hook(_norm_in_fp32)
                module.register_forward_hook(_hand_on_low)
        vae._amp_level_hooks = True
    _STATE["level"] = amp_level
    try:
        yield
    finally:
        _STATE["level"] = None
