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
    choices = {"fp32": {}, "32": {}, "bf16": {"bf16": True}, "fp16": {"fp16": True}, "16": {"fp16": True}}
    key = str(value).lower()
    if key not in choices:
        raise ConfigError(f"precision must be one of fp32, bf16, fp16; got {value!r}")
    return choices[key]


def _clip_grad(value: Any) -> dict:
    from .parse import as_bool
    return {} if as_bool("clip_grad", value) else {"max_grad_norm": 0.0}


ALIASES: dict[str, Callable[[Any], dict]] = {
    "evaluation_strategy": _rename("eval_strategy"),
    "exp_name": _rename("run_name"),
    "batch_size": _rename("per_device_train_batch_size"),
    "start_learning_rate": _rename("learning_rate"),
    "lr": _rename("learning_rate"),
    "lr_scheduler": _rename("lr_scheduler_type"),
    "betas": _betas,
    "precision": _precision,
    "clip_grad": _clip_grad,
    "neat_packing": lambda value: {"packing": value},  # ember's packing is always neat (isolated)
}


def expand_aliases(raw: dict[str, Any]) -> dict[str, Any]:
    """Rewrite alias keys of one source into canonical keys (in the order they were given)."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        out.update(ALIASES[key](value) if key in ALIASES else {key: value})
    return out
