"""mode / jit_level of seed 000 as torch.compile: mode 0 compiles the VAE's forward (jit_level O1:
default inductor, O2: max-autotune, O0: no compilation), mode 1 runs eagerly.

Compilation is tried on the first call; where it cannot run (no C++ compiler, an unsupported
op), the run continues eagerly with one notice rather than failing. The module itself is never
replaced, so parameter names and checkpoints are the same in both modes.
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger("ember")


class CompiledForward:
    def __init__(self, mode: int, jit_level: str):
        self.enabled = mode == 0 and jit_level != "O0"
        self.options = {"mode": "max-autotune"} if jit_level == "O2" else {}
        self.compiled = {}

    def __call__(self, module: torch.nn.Module, method: str, *args):
        """module.<method>(*args) (the VAE's encode or decode), compiled once per method."""
        if not self.enabled:
            return getattr(module, method)(*args)
        key = (id(module), method)
        if key not in self.compiled:
            self.compiled[key] = torch.compile(getattr(module, method), dynamic=False, **self.options)
            log.info("mode 0: compiling the VAE's %s with torch.compile%s (the first steps are slow)", method,
                     " (max-autotune)" if self.options else "")
        try:
            return self.compiled[key](*args)
        except Exception as err:  # torch._dynamo / inductor raise many types; eager always works
            self.enabled = False
            log.warning("mode 0: torch.compile does not run here (%s); continuing in eager mode (mode 1)",
                        str(err).splitlines()[0][:200])
            return getattr(module, method)(*args)
