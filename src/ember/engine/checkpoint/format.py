"""The checkpoint-<step>/ folder: what is in it, how it is written, how it is read back.

A checkpoint is written into .tmp-checkpoint-<step>/, every file is flushed to disk, then a
COMPLETE marker listing each file's size and content hash (xxh3-128) is written and the folder
is renamed into place. A folder without the marker, or whose files do not match the marker's
sizes (a truncated copy), is never resumed from; `verify` also re-hashes every file, so a
file whose bytes changed after it was written (a flipped bit, a bad copy) is caught too.
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import xxhash
from safetensors.torch import load_file

from ...config.errors import first_line
from .weights import unpickling_refusal

MARKER = "COMPLETE"
LOW_DISK_BYTES = 16 << 20  # below this, a failed write is put down to a full disk
PREFIX = "checkpoint-"
TMP_PREFIX = f".tmp-{PREFIX}"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the path and the cause."""


def step_of(path: Path) -> int:
    return int(path.name[len(PREFIX):])


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def file_digest(path: Path) -> str:
    """xxh3-128 of a file's bytes: ~20 GB/s on one core, so hashing costs about as much as
    reading the file (sha256 runs at ~0.9 GB/s here). It guards against corruption, not forgery:
    whoever can rewrite a file can rewrite the marker, which is why nothing ember reads from a
    checkpoint can run code either way."""
    digest = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 23):
            digest.update(chunk)
    return digest.hexdigest()


def manifest(folder: Path) -> dict:
    """The marker's contents for a folder as it is now: every file's size and hash."""
    return {str(p.relative_to(folder)): {"size": p.stat().st_size, "xxh3_128": file_digest(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MARKER}


def _recorded(path: Path) -> dict[str, dict]:
    """The marker's file list; markers written before hashes were recorded hold sizes only."""
    files = json.loads((path / MARKER).read_text())["files"]
    return {name: entry if isinstance(entry, dict) else {"size": entry} for name, entry in files.items()}


def is_complete(path: Path) -> bool:
    """Marker present and every listed file present with exactly the recorded size (cheap: no reads)."""
    try:
        return all((path / name).stat().st_size == entry["size"] for name, entry in _recorded(path).items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def verify(path: Path) -> None:
    """Raise CheckpointError unless every file is there with the size and hash the marker recorded."""
    if not is_complete(path):
        raise CheckpointError(f"checkpoint {path} is incomplete (no {MARKER} marker, or a file is missing or truncated)")
    for name, entry in _recorded(path).items():
        expected = entry.get("xxh3_128")
        if expected is not None and file_digest(path / name) != expected:
            raise CheckpointError(f"checkpoint {path} is corrupt: {name} does not match the hash recorded when it "
                                  "was written (its bytes changed since)")


def checkpoint_folders(output_dir: str | Path) -> list[Path]:
    """Every checkpoint-<step> folder (complete or not), oldest step first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.glob(f"{PREFIX}*") if p.is_dir() and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=step_of)


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    return [p for p in checkpoint_folders(output_dir) if is_complete(p)]


def checkpoint_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint must hold to restore the model: every weight when all of them train;
    otherwise only the trainable ones (adapters, unfrozen layers) and the persistent buffers,
    since the frozen rest is rebuilt identically from the base model."""
    params = dict(model.named_parameters())  # tied weights appear once
    if all(p.requires_grad for p in params.values()):
        keep = set(params) | {n for n, _ in model.named_buffers()}
    else:
        keep = {n for n, p in params.items() if p.requires_grad} | {n for n, _ in model.named_buffers()}
    state = model.state_dict()
    return {name: state[name].detach().contiguous() for name in state if name in keep}


def write_checkpoint(root: Path, step: int, world, write_parts: Callable[[Path], None], state: dict) -> Path:
    """Write checkpoint-<step> atomically, on every rank at once.

    Each rank writes its RNG state and its share of the weights (write_parts); only when
    every rank succeeded does rank 0 write the state, the size manifest and rename the folder.
    """
    final, tmp = root / f"{PREFIX}{step}", root / f"{TMP_PREFIX}{step}"
    if world.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    world.barrier()
    failure = None
    try:
        torch.save(rng_state(), tmp / f"rng_state_{world.rank}.pt")
        write_parts(tmp)
        world.barrier()
        if world.is_main:
            _seal(tmp, final, root, step, state)
    except Exception as err:  # noqa: BLE001 - safetensors and torch.save wrap OS errors in their own types
        failure = err
    if world.any(failure is not None):
        cause = _cause(failure, root)  # before the partial folder goes and frees the space it took
        if world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write checkpoint {final}: {cause}; the earlier checkpoints "
                              f"are intact. Once fixed, resume with: ember train {root}/config.yaml "
                              "resume_from_checkpoint=true")
    return final


def _cause(failure: Exception | None, root: Path) -> str:
    """Why a save failed, in the OS's words where it gave them. torch.save reports a full disk as
    'file write failed' with no errno, so a nearly empty disk is named as the cause itself."""
    if failure is None:
        return "another rank failed to write its part"
    if getattr(failure, "errno", None) == errno.ENOSPC:
        return f"No space left on device in {root}"
    cause = getattr(failure, "strerror", None) or first_line(failure)
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        return cause
    if free < LOW_DISK_BYTES and "No space left" not in cause:
        return f"No space left on device in {root} ({free // 1024} KiB free; {cause})"
    return cause


def _seal(tmp: Path, final: Path, root: Path, step: int, state: dict) -> None:
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
    files = manifest(tmp)
    for name in files:
        _fsync(tmp / name)
    (tmp / MARKER).write_text(json.dumps({"step": step, "files": files}))
    _fsync(tmp / MARKER)
    _fsync(tmp)
    old = root / f".old-{PREFIX}{step}"
    if final.exists():  # a re-save of the same step: the old copy goes only after the new one is in place
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync(root)
    shutil.rmtree(old, ignore_errors=True)


def read_checkpoint(path: Path, rank: int = 0) -> dict:
    """A checkpoint's contents in memory (raises CheckpointError if unreadable). Sharded (DCP)
    weights stay on disk: they are read straight into the sharded model."""
    try:
        bundle = {"path": path, "state": json.loads((path / "trainer_state.json").read_text())}
        sharded = (path / "dcp").is_dir()
        if sharded:  # read now through the safe unpickler, so a crafted file is refused before any loading
            from .safe_dcp import read_metadata
            read_metadata(path / "dcp" / ".metadata")
        bundle["weights"] = None if sharded else load_file(str(path / "model.safetensors"))
        optimizer_file = path / "optimizer.pt"
        bundle["optimizers"] = (_load_plain_values(optimizer_file) if optimizer_file.exists()
                                else "dcp" if sharded and not bundle["state"].get("save_only_model") else None)
        rng_file = path / f"rng_state_{rank}.pt"
        bundle["rng"] = _load_plain_values(rng_file) if rng_file.exists() else None
    except CheckpointError:
        raise
    except Exception as err:  # safetensors and json each raise their own types
        raise CheckpointError(f"checkpoint {path} is unreadable: {first_line(err)}") from None
    return bundle


def _load_plain_values(file: Path):
    try:
        return torch.load(file, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"refused to read {file}: {unpickling_refusal(err)}") from None
