"""One row of VLM data: its form, its turns' ratings and its images (paths or embedded bytes).

Used by vlm_data.py; kept apart so the encoder reads top to bottom.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import datasets

from ...config.errors import ConfigError
from ...data.registry import DatasetSpec

MARKER = "<image>"  # LLaMA-Factory's image placeholder
RATINGS = {"relevance_ratings": "relevance_min_rating",
           "image_correspondence_ratings": "image_correspondence_min_rating",
           "visual_dependency_ratings": "visual_dependency_min_rating",
           "formatting_ratings": "formatting_min_rating"}
ROLE_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
             "system_tag": "system"}


def rating(value, index: int, column: str, where: str) -> float:
    """A turn's rating; a missing one never filters (nanoVLM skips absent ratings too)."""
    if isinstance(value, list):
        value = value[index] if index < len(value) else None
    if value is None:
        return float("inf")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {column} holds {value!r}, not a number") from None


def detect_form(ds: datasets.Dataset, spec: DatasetSpec) -> tuple[str, DatasetSpec]:
    """(form, spec completed for that form): formatting if given, else guessed from the columns."""
    columns = ds.column_names
    if spec.formatting not in ("alpaca", "sharegpt", "cauldron"):
        raise ConfigError(f"dataset '{spec.name}': formatting '{spec.formatting}' is not one of "
                          "alpaca, sharegpt, cauldron")
    form = spec.formatting
    if form == "alpaca" and spec.columns.get("prompt", "instruction") not in columns:
        if spec.columns.get("texts", "texts") in columns:
            form = "cauldron"
        elif "messages" in columns or "conversations" in columns:
            form = "sharegpt"
            if "messages" not in spec.columns:
                spec = dataclasses.replace(spec, columns={
                    **spec.columns, "messages": "messages" if "messages" in columns else "conversations"})
    if form == "sharegpt" and not spec.tags:
        head = ds.select(range(min(len(ds), 20)))[spec.columns.get("messages", "conversations")]
        first = next((turns[0] for turns in head if turns), None)
        if isinstance(first, dict) and "role" in first and "from" not in first:
            spec = dataclasses.replace(spec, tags=dict(ROLE_TAGS))
    return form, dataclasses.replace(spec, formatting=form)


def undecoded_images(ds: datasets.Dataset, column: str | None) -> datasets.Dataset:
    """Parquet with embedded images (the_cauldron's own files) decodes them on access; keep the
    bytes instead, so each image is decoded once per use, in the loader's workers."""
    feature = ds.features.get(column) if column else None
    inner = getattr(feature, "feature", None)
    if isinstance(inner, datasets.Image) and inner.decode:
        return ds.cast_column(column, datasets.List(datasets.Image(decode=False)))
    if isinstance(feature, datasets.Image) and feature.decode:
        return ds.cast_column(column, datasets.Image(decode=False))
    return ds


def image_refs(value, spec: DatasetSpec, dataset_dir: str, where: str) -> list[tuple[str | bytes, str]]:
    """A row's images as (path or bytes, name for messages)."""
    if value is None:
        return []
    if not isinstance(value, list):
        value = [value]
    refs = []
    for i, item in enumerate(value):
        if isinstance(item, dict) and item.get("bytes"):
            refs.append((item["bytes"], f"{i + 1} of {where} (embedded)"))
            continue
        path = item.get("path") if isinstance(item, dict) else item
        if not isinstance(path, str) or not path:
            raise ConfigError(f"{where}: images must be a list of file paths, got {item!r}")
        refs.append((_resolve(path, spec, dataset_dir),) * 2)
    return refs


def _resolve(path: str, spec: DatasetSpec, dataset_dir: str) -> str:
    """Relative paths are relative to dataset_dir (LLaMA-Factory's rule); a dataset given as a
    path outside dataset_dir may also keep its images beside its file."""
    if Path(path).is_absolute():
        return path
    candidate = Path(dataset_dir) / path
    if not candidate.exists():
        beside = (spec.path if spec.path.is_dir() else spec.path.parent) / path
        if beside.exists():
            return str(beside)
    return str(candidate)
