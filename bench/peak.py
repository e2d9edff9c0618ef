"""The machine's limit: peak matmul FLOP/s per dtype, the denominator of every MFU.

Square matmuls of 2048, 3072 and 4096 in the dtype, with the thread count the contenders use;
the median of five runs at the fastest size is the peak. Measured here, independently of ember (whose
training-time `mfu` measures its own, quicker estimate at start-up).

    python bench/peak.py [--threads 2] [--clock wall|cpu]
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from harness import arguments, progress, save_json

OUT = Path(__file__).resolve().parent / "out" / "peak.json"
SIZES = (2048, 3072, 4096)


def matmul_peak(dtype: torch.dtype, clock: str = "wall", repeats: int = 5) -> float:
    """FLOP/s of the fastest size, each size's rate the median of `repeats` products: a median,
    as a contender's tokens/s is, so a lucky instant on a noisy machine does not set the peak."""
    now = time.thread_time if clock == "cpu" else time.perf_counter
    best = 0.0
    for n in SIZES:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        a @ b  # warm-up
        rates = []
        for _ in range(repeats):
            start = now()
            a @ b
            rates.append(2 * n**3 / (now() - start))
        best = max(best, statistics.median(rates))
    return best


def main(threads: int, clock: str = "wall") -> dict:
    torch.set_num_threads(threads)
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        peaks[name] = matmul_peak(dtype, clock)
        progress(f"peak {name} matmul: {peaks[name] / 1e9:.0f} GFLOP/s ({threads} threads)")
    result = {"threads": threads, "clock": clock, "peak_flops": peaks, "cpu": _cpu_name(), "torch": torch.__version__}
    save_json(OUT, result)
    return result


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    import platform
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    args = arguments(__doc__, workload=False).parse_args()
    main(args.threads, args.clock)
