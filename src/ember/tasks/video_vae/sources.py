"""Which files a video_path names: a folder (searched recursively) or a .csv / .json(l) list."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from ...config.errors import ConfigError
from .video_io import IMAGE_SUFFIXES, VIDEO_SUFFIXES

PATH_COLUMNS = ("path", "video", "video_path", "file", "filename")
INDEX_NAME = ".ember_video_index.json"


def _from_rows(rows: list, where: Path, root: str | None = None, column: str | None = None) -> list[str]:
    """The rows' paths; relative ones are relative to the list, or to `root` (mindone's data_file_path
    names files under video_path, in the column video_column)."""
    columns = (column.lower(),) if column else PATH_COLUMNS
    base = Path(root) if root else where.parent
    paths = []
    for row in rows:
        if isinstance(row, dict):
            row = {str(k).lower(): v for k, v in row.items()}
            key = next((k for k in columns if k in row), None)
            if key is None:
                raise ConfigError(f"{where}: each entry needs the column {' or '.join(columns)}")
            row = row[key]
        path = Path(str(row))
        paths.append(str(path if path.is_absolute() else base / path))
    return paths


def list_sources(spec: str, base: str | None = None, column: str | None = None) -> tuple[list[str], Path]:
    """(the files, where their frame-count index is cached); a list's relative paths are relative to
    `base` when given (else to the list), its paths in the column `column` when given."""
    root = Path(spec)
    if root.is_dir():
        suffixes = VIDEO_SUFFIXES + IMAGE_SUFFIXES
        files = sorted(str(p) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        return files, root / INDEX_NAME
    if not root.is_file():
        raise ConfigError(f"video_path {spec}: no such folder or list file")
    suffix = root.suffix.lower()
    try:
        rows = _read_list(root, suffix, spec, column)
    except UnicodeDecodeError as err:
        raise ConfigError(f"video_path {spec} is not UTF-8 text (byte at offset {err.start}); save it as UTF-8") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"video_path {spec} is not valid JSON: {err.msg} at line {err.lineno}") from None
    if not isinstance(rows, list):
        raise ConfigError(f"video_path {spec}: the list must be a JSON array of paths or of {{'path': ...}} objects")
    return _from_rows(rows, root, base, column), root.with_name(root.name + INDEX_NAME)


def _read_list(root: Path, suffix: str, spec: str, column: str | None = None) -> list:
    """The rows of a .csv, .json or .jsonl list of files."""
    if suffix == ".csv":
        with root.open(newline="", encoding="utf-8") as f:
            sample = f.readline()
            f.seek(0)
            header = [c.strip().lower() for c in sample.split(",")]
            if any(c in PATH_COLUMNS or c == (column or "").lower() for c in header):
                rows = [{k.strip().lower(): v for k, v in r.items()} for r in csv.DictReader(f)]
            else:
                rows = [r[0] for r in csv.reader(f) if r]
    elif suffix == ".json":
        rows = json.loads(root.read_text(encoding="utf-8"))
    elif suffix == ".jsonl":
        rows = [json.loads(line) for line in root.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        raise ConfigError(f"video_path {spec}: a folder, .csv, .json or .jsonl list is expected")
    return rows
