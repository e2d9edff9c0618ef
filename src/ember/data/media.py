"""Datasets with images, videos or audio belong to the VLM task; the LM task refuses them rather
than training on the text alone with the pictures silently ignored."""
from __future__ import annotations

from ..config.errors import ConfigError
from .registry import DatasetSpec

MEDIA = ("images", "videos", "audios")


def refuse_media(ds, spec: DatasetSpec) -> None:
    for kind in MEDIA:
        column = spec.columns.get(kind) or (kind if kind in ds.column_names else None)
        if column:
            raise ConfigError(f"dataset '{spec.name}' has {kind} (column '{column}'), but the LM task trains on "
                              f"text only and would ignore them; train it with task: vlm")
