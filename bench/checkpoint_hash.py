"""What hashing a checkpoint costs: a 1 GiB safetensors file written and fsynced, then hashed
as a save does (xxh3-128 of every file for the COMPLETE marker) and verified as a resume does.

    .venv/bin/python bench/checkpoint_hash.py
"""
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from ember.engine.checkpoint import MARKER, manifest, verify


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="ember-hash-"))
    try:
        tensors = {f"w{i}": torch.randn(64, 1024, 1024) for i in range(4)}  # 4 × 256 MiB of fp32
        started = time.perf_counter()
        save_file(tensors, str(folder / "model.safetensors"))
        with open(folder / "model.safetensors", "rb") as f:
            os.fsync(f.fileno())
        write = time.perf_counter() - started
        started = time.perf_counter()
        files = manifest(folder)
        hashing = time.perf_counter() - started
        (folder / MARKER).write_text(json.dumps({"step": 1, "files": files}))
        started = time.perf_counter()
        verify(folder)
        verifying = time.perf_counter() - started
        size = (folder / "model.safetensors").stat().st_size / 2**30
        print(f"{size:.2f} GiB checkpoint: write + fsync {write:.2f} s; hashing at save {hashing:.2f} s "
              f"({hashing / write:.0%} of the write); verifying at resume {verifying:.2f} s")
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
