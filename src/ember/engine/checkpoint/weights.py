"""Model weights from any of the formats users bring, never unpickling code.

load_from_checkpoint reads a checkpoint folder, an HF model folder, a .safetensors file or a
.ckpt/.pt/.bin/.pth state dict (torch.load with weights_only=True, which refuses pickles that
would run code).
"""
from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file

from ...config.errors import ConfigError, first_line

log = logging.getLogger("ember")
TORCH_SUFFIXES = (".ckpt", ".pt", ".bin", ".pth")


def unpickling_refusal(err: pickle.UnpicklingError) -> str:
    """Why torch.load(weights_only=True) refused a file, as one clause. torch's message opens with
    advice to retry with weights_only=False (exactly what must not be done with such a file);
    the line that names the refused object is the one worth showing."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    if "weights only" not in lines[0].lower():
        return f"it is not a readable torch file ({lines[0]})"  # garbage or truncated, not a refusal
    named = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), None)
    return ("it holds Python objects beyond tensors, which could run code"
            f"{f' ({named})' if named else ''}; convert it to safetensors or a plain state dict")


def load_torch_object(path: Path):
    """What a torch file holds, loaded with weights_only=True; a refusal or an unreadable file is
    one ConfigError line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ConfigError(f"refused to load {path}: {unpickling_refusal(err)}") from None
    except Exception as err:
        raise ConfigError(f"cannot read {path}: {first_line(err)}") from None


def _torch_file(path: Path) -> dict:
    obj = load_torch_object(path)
    for key in ("state_dict", "model", "module"):  # Lightning and trainer-style wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"{path} does not hold a state dict of tensors")
    return obj


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.is_dir():
        if (path / "model.safetensors").is_file():
            return load_file(str(path / "model.safetensors"))
        index = path / "model.safetensors.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return {k: v for shard in shards for k, v in load_file(str(path / shard)).items()}
        if (path / "pytorch_model.bin").is_file():
            return _torch_file(path / "pytorch_model.bin")
        raise ConfigError(f"{path} holds no model weights (model.safetensors, its index, or pytorch_model.bin)")
    if not path.is_file():
        raise ConfigError(f"load_from_checkpoint: no file or folder at {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as err:
            raise ConfigError(f"cannot read {path}: {err}") from None
    if path.suffix in TORCH_SUFFIXES:
        return _torch_file(path)
    raise ConfigError(f"load_from_checkpoint: unknown weights format '{path.suffix}' "
                      f"(use a folder, .safetensors or {', '.join(TORCH_SUFFIXES)})")


def load_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str,
                 ignore_mismatched_sizes: bool = False) -> None:
    """Copy tensors into model, refusing (or, when allowed, skipping) names and shapes that differ.

    Every trainable weight must be in the file; frozen weights may be absent (a LoRA or
    freeze checkpoint holds only what trains; the rest comes from the base model).
    """
    tensors = {k[len("module."):] if k.startswith("module.") else k: v for k, v in tensors.items()}
    own = model.state_dict()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in tensors]
    unexpected = [k for k in tensors if k not in own]
    wrong = [f"{k} {tuple(tensors[k].shape)} vs {tuple(own[k].shape)}" for k in tensors
             if k in own and tensors[k].shape != own[k].shape]
    problems = [(missing, "missing from the file"), (unexpected, "not in the model"), (wrong, "of another shape")]
    summary = "; ".join(f"{len(names)} {what}: {', '.join(names[:3])}{', …' if len(names) > 3 else ''}"
                        for names, what in problems if names)
    if summary and not ignore_mismatched_sizes:
        raise ConfigError(f"weights in {source} do not fit the model ({summary}); "
                          "set ignore_mismatched_sizes: true to load only what fits")
    if summary:
        log.warning("loading only the weights that fit from %s (%s)", source, summary)
    usable = {k: v for k, v in tensors.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(usable, strict=False)
