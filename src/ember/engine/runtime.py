"""Device, seeding and precision: chosen at run time, never hard-coded."""
from __future__ import annotations

import contextlib
import logging
import random

import numpy as np
import torch

from ..config.errors import ConfigError
from ..config.schema import PrecisionGroup

log = logging.getLogger("ember")


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """cuda:<local rank> when CUDA is there (one GPU per process under torchrun), else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device is '{name}' but no CUDA device is available; use device: auto or cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# an init_loss_scale other than the default was asked for (the Precision sees only its group's values)
_DEFAULT_LOSS_SCALE = PrecisionGroup.model_fields["init_loss_scale"].default


class Precision:
    """fp32, fp16 (autocast + loss scaling), bf16 (autocast) or pure_bf16 (bf16 weights).

    Owns the GradScaler so the loop reads the same whatever the precision.
    """

    def __init__(self, cfg, device: torch.device):
        self.device = device
        self.name = "fp16" if cfg.fp16 else "bf16" if cfg.bf16 else "pure_bf16" if cfg.pure_bf16 else "fp32"
        self.autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.name)
        self.param_dtype = torch.bfloat16 if self.name == "pure_bf16" else None
        self.scaler = (torch.amp.GradScaler(device.type, init_scale=cfg.init_loss_scale)
                       if self.name == "fp16" else None)
        self.skipped_steps = 0
        if self.name != "fp16" and cfg.init_loss_scale != _DEFAULT_LOSS_SCALE:
            # seed 000 passes --init_loss_scale 512 with --precision bf16: mindone scales every
            # low-precision loss, torch only needs it for fp16 (bf16 has fp32's exponent range)
            log.warning("init_loss_scale %g is unused: only fp16 scales the loss, and this run is %s",
                        cfg.init_loss_scale, self.name)
        if device.type == "cpu" and self.name in ("bf16", "pure_bf16") and not cpu_has_bf16():
            log.warning("%s on a CPU without bf16 instructions (AVX512-BF16 or AMX): bf16 is emulated there and "
                        "slower than fp32", self.name)

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def backward(self, loss: torch.Tensor, inputs=None, retain_graph: bool = False) -> None:
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        loss.backward(inputs=inputs, retain_graph=retain_graph)

    def unscale(self, optimizer) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)

    def update(self) -> None:
        """After every optimizer stepped: adjust the loss scale and count overflowed steps."""
        if self.scaler is None:
            return
        before = self.scaler.get_scale()
        self.scaler.update()
        if self.scaler.get_scale() < before:  # the scale only drops when a step had inf/nan grads
            self.skipped_steps += 1

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict() if self.scaler else None, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.skipped_steps = state.get("skipped_steps", 0)


def cpu_has_bf16() -> bool:
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # private probes of torch.cpu; when a release drops them, assume yes
        return True


def compile_model(model: torch.nn.Module) -> None:
    """torch.compile each repeated block in place (names, state dicts and wrappers unchanged).

    One block's code is compiled once and reused by every layer, so compilation takes seconds
    rather than minutes, and the elementwise work between matmuls (norms, rotary embeddings,
    activations, residual adds) fuses into few kernels. A model without repeated blocks is
    compiled whole. The first shape compiles static; a block that meets another shape (a short
    last batch, unpacked SFT rows) recompiles once with that dimension dynamic.
    """
    from .sharding import transformer_blocks
    blocks = transformer_blocks(model) or [model]
    inner = {id(m) for block in blocks for m in block.modules() if m is not block}
    blocks = [block for block in blocks if id(block) not in inner]  # a compiled block compiles its insides
    for block in blocks:
        block.compile()
    log.info("compile: torch.compile of %d %s (the first steps include compilation)", len(blocks),
             type(blocks[0]).__name__)
