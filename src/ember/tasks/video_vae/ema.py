"""An exponential moving average of a module's parameters, kept as buffers so every checkpoint
carries it and a resumed run continues the same average."""
from __future__ import annotations

import contextlib

import torch
from torch import nn


def _buffer_name(param_name: str) -> str:
    return param_name.replace(".", "__")


class EMAWeights(nn.Module):
    def __init__(self, module: nn.Module):
        super().__init__()
        for name, param in module.named_parameters():
            self.register_buffer(_buffer_name(name), param.detach().clone())

    @torch.no_grad()
    def update(self, module: nn.Module, decay: float) -> None:
        names = [name for name, _ in module.named_parameters()]
        averages = [getattr(self, _buffer_name(n)) for n in names]
        params = [p.detach() for _, p in module.named_parameters()]
        torch._foreach_lerp_(averages, params, 1.0 - decay)

    def state_for(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """The module's state dict with the averages in place of its parameters."""
        state = dict(module.state_dict())
        for name, _ in module.named_parameters():
            state[name] = getattr(self, _buffer_name(name))
        return state

    @contextlib.contextmanager
    def applied(self, module: nn.Module):
        """Run with the averaged weights, then put the trained ones back."""
        saved = [p.detach().clone() for p in module.parameters()]
        with torch.no_grad():
            for name, param in module.named_parameters():
                param.copy_(getattr(self, _buffer_name(name)))
        try:
            yield module
        finally:
            with torch.no_grad():
                for param, value in zip(module.parameters(), saved):
                    param.copy_(value)
