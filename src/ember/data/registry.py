"""LLaMA-Factory's dataset registry: `dataset_info.json` in dataset_dir names each dataset.

An entry looks like {"c4_demo": {"file_name": "c4_demo.jsonl", "columns": {"prompt": "text"}}};
file_name is relative to dataset_dir and may be a file or a folder. A name that is not in
the registry may also be a path to a file or folder.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from ..config.errors import ConfigError
from ..config.files import read_json_object

HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")


@dataclass
class DatasetSpec:
    name: str
    path: Path
    formatting: str = "alpaca"
    columns: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    split: str = "train"
    num_samples: int | None = None
    ranking: bool = False  # preference pairs (chosen/rejected answers), for stages rm and dpo


def read_registry(dataset_dir: str) -> dict:
    path = Path(dataset_dir) / "dataset_info.json"
    if not path.is_file():
        return {}
    return read_json_object(path, "dataset_dir")  # dataset names → their entries


def resolve_datasets(names: str, dataset_dir: str) -> list[DatasetSpec]:
    """'a,b' → one spec per dataset, each pointing at an existing local file or folder."""
    registry = read_registry(dataset_dir)
    specs = []
    for name in [n.strip() for n in names.split(",") if n.strip()]:
        if name in registry:
            specs.append(_from_entry(name, registry[name], dataset_dir))
            continue
        for candidate in (Path(name), Path(dataset_dir) / name):
            if candidate.exists():
                specs.append(DatasetSpec(name=name, path=candidate))
                break
        else:
            close = difflib.get_close_matches(name, list(registry), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            where = f"{dataset_dir}/dataset_info.json" if registry else f"{dataset_dir} (it has no dataset_info.json)"
            raise ConfigError(f"dataset '{name}' is neither registered in {where} nor an existing file{hint}")
    return specs


def _from_entry(name: str, entry: dict, dataset_dir: str) -> DatasetSpec:
    if not isinstance(entry, dict):
        raise ConfigError(f"dataset_info.json entry '{name}' must be an object with a file_name")
    if "file_name" not in entry:
        hub = next((k for k in HUB_KEYS if k in entry), None)
        if hub:
            raise ConfigError(f"dataset '{name}' comes from {hub}; ember reads local files only: "
                              "download it and set file_name")
        raise ConfigError(f"dataset_info.json entry '{name}' has no file_name")
    path = Path(dataset_dir) / entry["file_name"]
    if not path.exists():
        raise ConfigError(f"dataset '{name}': file not found: {path}")
    return DatasetSpec(name=name, path=path, formatting=entry.get("formatting", "alpaca"),
                       columns=entry.get("columns", {}), tags=entry.get("tags", {}),
                       split=entry.get("split", "train"), num_samples=entry.get("num_samples"),
                       ranking=bool(entry.get("ranking", False)))
