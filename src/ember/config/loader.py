"""defaults < YAML file < command-line overrides → one validated TrainConfig."""
from __future__ import annotations

import difflib
from typing import Any

from pydantic import ValidationError

from .aliases import ALIASES, expand_aliases
from .checks import check_consistency
from .errors import ConfigError
from .foreign import INSTEAD, NO_EFFECT, read_qlora_spelling, take_foreign_keys
from .parse import read_sources
from .schema import TrainConfig, field_names
from .suggest import closest_key


def load_config(args: list[str]) -> TrainConfig:
    """`[CONFIG.yaml] [key=value | --key value ...]` → a validated config, or ConfigError."""
    return build_config(*read_sources(args))


def build_config(*sources: dict[str, Any]) -> TrainConfig:
    """Merge raw sources (later wins), validate types and ranges, then cross-key rules."""
    merged: dict[str, Any] = {}
    for raw in sources:
        raw = take_foreign_keys(raw)
        _reject_unknown(raw)
        merged.update(expand_aliases(raw))
    merged = read_qlora_spelling(merged)
    try:
        config = TrainConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None
    check_consistency(config)
    return config


def _reject_unknown(raw: dict[str, Any]) -> None:
    known = set(field_names()) | set(ALIASES)
    for key in raw:
        if not isinstance(key, str) or key not in known:
            close = closest_key(str(key), sorted(known | set(NO_EFFECT) | set(INSTEAD)))
            hint = f" (did you mean '{close}'?)" if close else ""
            raise ConfigError(f"unknown key '{key}'{hint}; `ember train --help` lists every key")


def _describe(err: ValidationError) -> str:
    """The first validation problem as one sentence naming the key."""
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "config"
    value = first.get("input")
    kind = first["type"]
    if kind == "literal_error":
        choices = first["ctx"]["expected"]
        valid = [c.strip(" '") for c in choices.replace(" or ", ", ").split(",")]
        close = difflib.get_close_matches(str(value), valid, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{key}: {value!r} is not a valid choice{hint}; choose one of: {', '.join(valid)}"
    return f"{key}: {first['msg'].lower()}, got {value!r}"
