"""Host memory: huge pages for large CPU tensors, and freed activations given back to the system.

PyTorch's CPU tensors come from glibc's malloc. A request above malloc's mmap threshold gets its
own mapping, returned to the kernel when freed; below it, the request is served from the heap,
which glibc rarely shrinks. The threshold starts at 128 KB and *slides up* (to 32 MB) every time
a larger mapped block is freed, so after the first activations of a step are freed, most of the
next ones land in the heap, and the process's resident memory stays at its highest point.

- Huge pages (PyTorch's THP_MEM_ALLOC_ENABLE: tensors of 2 MB and more aligned to 2 MB and
  advised to the kernel): on by default. On the LLaMA-Factory comparison's LoRA recipe they made
  steps 1.08-1.21x faster and the peak lower (docs/benchmarks.md, "Host memory").
- A fixed threshold (mallopt M_MMAP_THRESHOLD, `malloc_mmap_threshold_kb`) stops the sliding, so
  large blocks always come and go as mappings, at the price of page faults each time they are
  made again (0.81x the speed of that recipe here, 0.84-0.93x at cutoff_len 2048). So it is the
  default only where a CPU run chose memory over speed: with gradient checkpointing.
"""
from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger("ember")

_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
_ENV = "MALLOC_MMAP_THRESHOLD_"  # a user's own setting, read by glibc itself at start-up
_THP_ENV = "THP_MEM_ALLOC_ENABLE"  # read by PyTorch once, at its first CPU allocation


def prefer_huge_pages() -> None:
    """Have PyTorch align CPU tensors of 2 MB and more to 2 MB and advise the kernel to back them
    with transparent huge pages. Only works if called before torch allocates anything, so the CLI
    calls it first; THP_MEM_ALLOC_ENABLE=0 in the environment turns it off (the user's value wins).
    """
    os.environ.setdefault(_THP_ENV, "1")


# a CPU run with checkpointing on has chosen memory over speed: large blocks go back to the system.
# 2 MB: the activations of long sequences (a 2048 x 896 fp32 one is 7 MB) are all above it and
# get huge pages too, while the many small tensors of short batches stay in glibc's fast heap.
# A GPU run's activations are on the device, so its host allocator is left alone.
CHECKPOINTED_THRESHOLD_KB = 2048


def mmap_threshold_kb(cfg, device_type: str) -> int:
    """The threshold a run uses: `malloc_mmap_threshold_kb` if set, else by device and checkpointing."""
    if cfg.malloc_mmap_threshold_kb is not None:
        return cfg.malloc_mmap_threshold_kb
    return CHECKPOINTED_THRESHOLD_KB if cfg.gradient_checkpointing and device_type == "cpu" else 0


def fix_mmap_threshold(kb: int) -> int | None:
    """Fix glibc's mmap threshold at `kb` KB for this process (and the workers it forks).

    Returns the threshold set, in bytes, or None where nothing was changed: kb == 0 (glibc's
    sliding threshold kept), the user set MALLOC_MMAP_THRESHOLD_ (theirs wins), or the C library
    is not glibc (macOS, musl: no such knob, nothing to do).
    """
    if kb == 0 or os.environ.get(_ENV):
        return None
    libc = _libc()
    if libc is None or not hasattr(libc, "gnu_get_libc_version"):  # only glibc has this knob
        return None
    threshold = kb * 1024
    if libc.mallopt(_M_MMAP_THRESHOLD, threshold) != 1:  # above 32 MB (the config refuses those)
        return None
    log.debug("glibc's mmap threshold fixed at %d KB", kb)
    return threshold


def _libc():
    try:
        return ctypes.CDLL(None)
    except OSError:  # pragma: no cover - a platform without a process-wide symbol table
        return None

