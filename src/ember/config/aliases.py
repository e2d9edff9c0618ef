"""The seeds' other spellings of ember's keys.

Each alias maps one user-written key and value to canonical keys, so `--precision bf16`,
`--betas 0.9 0.999` and `--clip_grad False` mean exactly what the canonical keys mean.
"""
from __future__ import annotations

from typing import Any, Callable

from .errors import ConfigError


def _rename(target: str) -> Callable[[Any], dict]:
    return lambda value: {target: value}


def _betas(value: Any) -> dict:
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"betas takes two numbers, e.g. 'betas: [0.9, 0.999]'; got {value!r}")
    return {"adam_beta1": value[0], "adam_beta2": value[1]}


def _precision(value: Any) -> dict:
    chosen = {"fp32": None, "32": None, "bf16": "bf16", "fp16": "fp16", "16": "fp16"}
    key = str(value).lower()
    if key not in chosen:
        raise ConfigError(f"precision must be one of fp32, bf16, fp16; got {value!r}")
    # set every precision flag, so a later source's precision replaces an earlier one whole
    return {flag: flag == chosen[key] for flag in ("fp16", "bf16", "pure_bf16")}


def _use_cpu(value: Any) -> dict:
    from .parse import as_bool
    # transformers' TrainingArguments flag, which LLaMA-Factory's YAMLs carry to train on a CPU
    return {"device": "cpu"} if as_bool("use_cpu", value) else {}


def _log_wandb(value: Any) -> dict:
    from .parse import as_bool
    # nanoVLM's --log_wandb / --no_log_wandb: wandb, or no tracker besides metrics.jsonl
    return {"report_to": "wandb" if as_bool("log_wandb", value) else "none"}


def _clip_grad(value: Any) -> dict:
    from .parse import as_bool
    return {"max_grad_norm": 1.0 if as_bool("clip_grad", value) else 0.0}


def _disable_checkpointing(value: Any) -> dict:
    from .parse import as_bool
    # LLaMA-Factory's spelling, inverted: its default (false) means checkpointing on
    return {"gradient_checkpointing": not as_bool("disable_gradient_checkpointing", value)}


ALIASES: dict[str, Callable[[Any], dict]] = {
    "evaluation_strategy": _rename("eval_strategy"),
    # mindone's experiment name: the run's name, and for video_vae also its folder (tasks/video_vae/keys.py)
    "exp_name": lambda value: {"run_name": value, "exp_name": value},
    "batch_size": _rename("per_device_train_batch_size"),
    "start_learning_rate": _rename("learning_rate"),
    "lr": _rename("learning_rate"),
    "lr_scheduler": _rename("lr_scheduler_type"),
    "betas": _betas,
    "precision": _precision,
    "clip_grad": _clip_grad,
    "disable_gradient_checkpointing": _disable_checkpointing,
    "use_cpu": _use_cpu,
    "log_wandb": _log_wandb,
    "train_dataset_path": _rename("dataset"),
    # nanoVLM's train.py spellings
    "max_training_steps": _rename("max_steps"),
    "eval_interval": _rename("eval_steps"),
    "stats_log_interval": _rename("logging_steps"),
    "neat_packing": lambda value: {"packing": value},  # ember's packing is always neat (isolated)
}


def expand_aliases(raw: dict[str, Any]) -> dict[str, Any]:
    """Rewrite alias keys of one source into canonical keys. Canonical keys written in the same
    source win over what an alias implies (`clip_grad: true` with `max_grad_norm: 0.5` keeps 0.5)."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ALIASES:
            out.update(ALIASES[key](value))
    out.update({key: value for key, value in raw.items() if key not in ALIASES})
    return out
