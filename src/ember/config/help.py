"""`ember train --help`: every key with its type, default and meaning, grouped by topic."""
from __future__ import annotations

import typing

from .aliases import ALIASES
from .schema import GROUPS

RETENTION_RULE = ("Checkpoints: every save_steps a checkpoint-<step>/ folder is written aside and renamed into place "
                  "when complete; only then are older ones deleted. save_total_limit keeps the N newest complete "
                  "ones, and the best one (by metric_for_best_model) besides: it is never deleted. Folders ember "
                  "did not write are never touched.")


def _type_name(annotation) -> str:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return "|".join(str(a) for a in args)
    if args:
        names = [_type_name(a) for a in args if a is not type(None)]
        return "|".join(names) + ("?" if type(None) in args else "")
    return getattr(annotation, "__name__", str(annotation))


def render_help() -> str:
    lines = ["usage: ember train [CONFIG.yaml] [key=value ...] [--key value ...]", "",
             "Later sources win: defaults < CONFIG.yaml < arguments. Booleans: --flag, --flag true, flag=false.", ""]
    for group in GROUPS:
        lines.append(f"{group.__doc__.strip()}:")
        for name, field in group.model_fields.items():
            key = field.alias or name
            default = field.default
            lines.append(f"  {key:<30} {_type_name(field.annotation):<22} default {default!s:<10} {field.description}")
        lines.append("")
    lines.append("Other spellings accepted (from the seed commands): " + ", ".join(sorted(ALIASES)))
    lines.append("")
    lines.append(RETENTION_RULE)
    return "\n".join(lines)
