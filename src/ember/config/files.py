"""Reading the small JSON files users hand ember (dataset_info.json, config.json, adapter configs)."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import ConfigError


def read_json_object(path: Path, key: str) -> dict:
    """A JSON object from a file, or one line naming the key, the file and what is wrong with it."""
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{key}: {path} is not UTF-8 text (byte at offset {err.start}); JSON files are UTF-8") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{key}: {path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{key}: {path} must hold a JSON object {{...}}, not {json.dumps(data)[:40]}")
    return data
