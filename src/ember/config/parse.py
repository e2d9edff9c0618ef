"""argv and YAML → one raw dict per source (no validation here beyond syntax)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

class _Loader(yaml.SafeLoader):
    """YAML where only true/false are booleans: `eval_strategy: no` stays the string 'no'.

    A key written twice in one mapping is refused: PyYAML would keep the last one silently, so
    `max_steps: 2` near the top and `max_steps: 5` further down would run 5 steps without a word.
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *defaults` then overriding a key is how YAML means it
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first_seen.setdefault(key, key_node.start_mark)
                except TypeError:
                    continue  # an unhashable key: the base constructor names it
                if earlier is not key_node.start_mark:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key '{key}' is written twice (first at line {earlier.line + 1}); keep one",
                        key_node.start_mark)
        return super().construct_mapping(node, deep)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))

_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}


def as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{key} takes true or false; got {value!r}")


def parse_scalar(text: str) -> Any:
    """'3e-4' → 0.0003, 'true' → True, '[1, 2]' → [1, 2]; anything else stays a string."""
    try:
        value = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return text if value is None and text.strip() not in ("null", "~", "None") else value


def read_yaml(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.load(_utf8_text(file), Loader=_Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping of key: value lines, not a {type(data).__name__}")
    return data


def _utf8_text(file: Path) -> str:
    """The file's text, or one line saying where it stops being UTF-8 (YAML is UTF-8 by definition)."""
    data = file.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise ConfigError(f"{file} is not UTF-8 text (byte 0x{data[err.start]:02x} at line {line}); "
                          "save it as UTF-8") from None


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """`key=value`, `--key value`, `--key=value`, `--flag` and `--betas 0.9 0.999` → dict."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        token = args[i]
        if token.startswith("--"):
            key, eq, inline = token[2:].partition("=")
            if eq:
                out[key] = parse_scalar(inline)
                i += 1
                continue
            values = []
            i += 1
            while i < len(args) and not args[i].startswith("--") and "=" not in args[i]:
                values.append(parse_scalar(args[i]))
                i += 1
            out[key] = True if not values else values[0] if len(values) == 1 else values
        elif "=" in token:
            key, _, value = token.partition("=")
            out[key] = parse_scalar(value)
            i += 1
        else:
            raise ConfigError(f"unexpected argument {token!r}: write key=value or --key value")
        if key.startswith("no_") and out.get(key) is True:
            # --no_plot_loss style negation of a boolean flag
            del out[key]
            out[key[3:]] = False
    return out


def read_sources(args: list[str]) -> list[dict[str, Any]]:
    """`[CONFIG.yaml] [key=value | --key value ...]` → the YAML's keys, then the overrides."""
    sources: list[dict[str, Any]] = []
    if args and not args[0].startswith("-") and "=" not in args[0]:
        sources.append(read_yaml(args[0]))
        args = args[1:]
    sources.append(parse_overrides(args))
    return sources
