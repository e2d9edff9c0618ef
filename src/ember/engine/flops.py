"""Model FLOPs utilisation (MFU): the FLOPs a model needs per second of training, as a fraction
of what this machine's matrix multiply can do at most.

The peak is measured, not looked up: datasheet numbers assume clocks, cores and instruction
sets a container or a laptop may not have, and a CPU's fp32 and bf16 (AMX) rates differ by
5x. A square matmul is grown until one takes long enough to time, then the best of a few runs
is the peak. That costs a fraction of a second once per process (the result is cached); on a
GPU whose datasheet is trusted, `mfu_peak_flops` replaces the measurement.
"""
from __future__ import annotations

import functools
import logging
import time

import torch

log = logging.getLogger("ember")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@functools.cache
def measure_peak_flops(device: torch.device, dtype: torch.dtype, min_seconds: float = 0.05,
                       max_size: int | None = None, repeats: int = 3) -> float:
    """FLOP/s of the fastest of `repeats` square (n x n) @ (n x n) products in `dtype`.

    n doubles from 256 until one product takes `min_seconds` (so timer resolution and launch
    costs vanish) or n reaches max_size, so a slow dtype (fp16 on most CPUs) stays cheap to
    measure while a fast one is measured at a size large enough to reach its peak.
    """
    max_size = max_size or (8192 if device.type == "cuda" else 2048)
    n = 256
    while True:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        a @ b  # warm-up: kernel selection, thread pool start
        times = [_timed(a, b, device)]
        if times[0] >= min_seconds or n >= max_size:
            break
        n *= 2
    times += [_timed(a, b, device) for _ in range(repeats - 1)]
    return 2 * n**3 / min(times)


def _timed(a: torch.Tensor, b: torch.Tensor, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    a @ b
    _sync(device)
    return time.perf_counter() - start


def compute_dtype(precision) -> torch.dtype:
    """The dtype the matmuls of a run happen in under the engine's precision policy."""
    return precision.autocast_dtype or precision.param_dtype or torch.float32


def run_peak_flops(cfg, task, device: torch.device, precision) -> float | None:
    """The peak this run's mfu divides by, logged once; None when the task cannot count its FLOPs."""
    if not task.counts_flops:
        return None
    dtype = compute_dtype(precision)
    if cfg.mfu_peak_flops:
        peak, source = float(cfg.mfu_peak_flops), "mfu_peak_flops"
    else:
        peak = measure_peak_flops(device, dtype)
        source = (f"measured: {str(dtype).removeprefix('torch.')} matmul on {device.type}; "
                  "set mfu_peak_flops to use another")
    log.info("mfu: against a peak of %.4g FLOP/s per device (%s)", peak, source)
    return peak
