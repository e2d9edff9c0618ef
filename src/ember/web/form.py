"""ember's config schema as a form: one field per key, grouped as `ember train --help` groups them.

Everything here is plain data (no Gradio), so it is tested without a page: `FIELDS` describes the
form, `to_config` turns the form's values into the dict of keys that differ from their defaults,
`validate` runs the CLI's own checks on it, `to_values` fills the form from a YAML.
"""
from __future__ import annotations

import json
import re
import shlex
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from ember.config.errors import ConfigError
from ember.config.loader import build_config
from ember.config.schema import FAMILY_GROUPS, GROUPS

NONE = ""  # how a choice or text field shows "not set"


@dataclass(frozen=True)
class Field:
    key: str
    group: str
    kind: str  # "bool" (checkbox), "choice" (dropdown) or "text"
    choices: tuple = ()  # the literal values, for kind "choice" (None first when optional)
    default: object = None
    description: str = ""
    number: type | None = None  # int or float for numeric text fields

    @property
    def optional(self) -> bool:
        return None in self.choices or self.default is None

    def shown(self, value) -> object:
        """A config value as the form component holds it."""
        if self.kind == "bool":
            return bool(value)
        if value is None:
            return NONE
        if self.kind == "choice":
            return str(value).lower() if isinstance(value, bool) else str(value)
        return str(value)

    def parse(self, shown) -> object:
        """The component's value as a config value (text that is no number is passed on as typed,
        so the config's own check names the key)."""
        if self.kind == "bool":
            return bool(shown)
        text = "" if shown is None else str(shown).strip()
        if text == NONE:
            return None if self.optional else ("" if self.number is None else text)
        if self.kind == "choice":
            for choice in self.choices:
                if self.shown(choice) == text:
                    return choice
            return text
        if self.number is not None:
            for kind in (int, float):
                try:
                    value = kind(text)
                except ValueError:
                    continue
                return float(value) if self.number is float else value
        return text


def _field(key: str, group: str, info) -> Field:
    annotation, default = info.annotation, info.default
    args = typing.get_args(annotation)
    optional = type(None) in args
    inner = [a for a in args if a is not type(None)] if typing.get_origin(annotation) is not typing.Literal else []
    base = inner[0] if len(inner) == 1 else annotation
    description = info.description or ""
    if typing.get_origin(base) is typing.Literal:
        choices = ((None,) if optional else ()) + typing.get_args(base)
        return Field(key, group, "choice", choices, default, description)
    if base is bool and not optional:
        return Field(key, group, "bool", (), default, description)
    if base is bool:
        return Field(key, group, "choice", (None, True, False), default, description)
    number = base if base in (int, float) else None
    return Field(key, group, "text", (), default, description, number)


def _fields() -> list[Field]:
    out = []
    for group in GROUPS:
        title = (group.__doc__ or group.__name__).strip()
        for name, info in group.model_fields.items():
            out.append(_field(info.alias or name, title, info))
    return out


FIELDS: list[Field] = _fields()
BY_KEY = {f.key: f for f in FIELDS}
GROUP_TITLES: list[str] = list(dict.fromkeys(f.group for f in FIELDS))


_TASK_OF_TITLE = {(group.__doc__ or group.__name__).strip(): task for task, group in FAMILY_GROUPS.items()}


def group_task(title: str) -> str | None:
    """The task family a group of keys belongs to (the registry says); None = every task."""
    return _TASK_OF_TITLE.get(title)


def visible_groups(task: str) -> list[bool]:
    return [group_task(t) in (None, task) for t in GROUP_TITLES]


def defaults() -> list:
    return [f.shown(f.default) for f in FIELDS]


def to_config(values: list) -> dict:
    """Form values (in FIELDS order) → the keys that differ from their defaults."""
    config = {}
    for field, shown in zip(FIELDS, values):
        value = field.parse(shown)
        if value != field.default or type(value) is not type(field.default):
            if not (value is None and field.default is None):
                config[field.key] = value
    return config


def validate(config: dict) -> str:
    """'' when the CLI would accept the config, else its one-line error."""
    try:
        build_config(config)
    except ConfigError as err:
        return str(err)
    return ""


def error_key(message: str) -> str | None:
    """The key an error line names: 'learning_rate: ...', "unknown key 'x'", or the first key it quotes."""
    head = message.split(":", 1)[0].strip()
    if head in BY_KEY:
        return head
    for quoted in re.findall(r"'([A-Za-z_0-9]+)'|\b([a-z_]+[a-z0-9_]*)\b", message):
        name = quoted[0] or quoted[1]
        if name in BY_KEY:
            return name
    return None


def to_yaml(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False) if config else "{}\n"


def to_command(config: dict) -> str:
    parts = ["ember", "train"]
    for key, value in config.items():
        if value is True:
            parts.append(f"--{key}")
        else:
            parts += [f"--{key}", shlex.quote("null" if value is None else str(value).lower()
                                              if isinstance(value, bool) else str(value))]
    return " ".join(parts)


def to_values(text: str) -> tuple[list, str]:
    """A YAML (a user's or a run's config.yaml) → form values and '' or the error it has.
    A config the checks refuse still fills the form with the keys it names, so it can be fixed."""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        return defaults(), f"not YAML: {str(err).splitlines()[0]}"
    if not isinstance(raw, dict):
        return defaults(), "the YAML is not a mapping of keys to values"
    try:
        resolved, error = build_config(raw).to_dict(), ""
    except ConfigError as err:
        resolved, error = raw, str(err)
    values = [f.shown(resolved[f.key]) if f.key in resolved else f.shown(f.default) for f in FIELDS]
    return values, error


def dataset_names(dataset_dir: str) -> list[str]:
    try:
        info = json.loads((Path(dataset_dir) / "dataset_info.json").read_text())
    except (OSError, ValueError):
        return []
    return list(info) if isinstance(info, dict) else []


def preview(dataset_dir: str, name: str, rows: int = 5) -> list[dict]:
    """The first rows of a registered dataset file (json, jsonl, csv or text), long text cut short."""
    try:
        info = json.loads((Path(dataset_dir) / "dataset_info.json").read_text())[name]
        path = Path(dataset_dir) / info["file_name"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if not path.is_file():
        return []
    records: list = []
    with path.open(encoding="utf-8", errors="replace") as f:
        if path.suffix == ".jsonl":
            for line in f:
                if line.strip():
                    records.append(json.loads(line))
                if len(records) >= rows:
                    break
        elif path.suffix == ".json":
            data = json.load(f)
            records = data[:rows] if isinstance(data, list) else []
        elif path.suffix == ".csv":
            import csv
            records = [row for _, row in zip(range(rows), csv.DictReader(f))]
        else:
            records = [{"text": line.rstrip("\n")} for _, line in zip(range(rows), (ln for ln in f if ln.strip()))]
    cut = lambda v: (s if len(s := v if isinstance(v, str) else json.dumps(v)) <= 200 else s[:200] + "…")  # noqa: E731
    return [{k: cut(v) for k, v in r.items()} if isinstance(r, dict) else {"value": cut(r)} for r in records]
