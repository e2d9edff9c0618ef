"""tokenized_path (LLaMA-Factory's key): the first run saves its tokenised training and validation
sets there; later runs load them instead of reading and tokenising the data again, and say so.

As in LLaMA-Factory, a saved folder wins over the data keys (dataset, template, cutoff_len, ...):
delete it after changing them. Stored as Arrow (datasets' save_to_disk, memory-mapped when read
back), never pickled; `ember_tokenized.json` records what kind of set it is and for which stage, so
a folder made for another stage is refused rather than misread.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Callable

import datasets

from ..config.errors import ConfigError
from .packing import SFTDataset, build_sft_dataset
from .preference import PairDataset
from .pretrain import BlockDataset

log = logging.getLogger("ember")
MANIFEST = "ember_tokenized.json"
SPLITS = ("train", "validation")


def tokenized_sets(cfg, build: Callable[[], tuple]) -> tuple:
    """(train, validation) from cfg.tokenized_path when it holds them, else from `build()`, saved there."""
    path = cfg.tokenized_path
    if not path:
        return build()
    folder = Path(path)
    if (folder / MANIFEST).is_file():
        log.warning("tokenized_path: loading the tokenised dataset from %s; the data keys (dataset, template, "
                    "cutoff_len, ...) are not read again — delete the folder after changing them", folder)
        return _load(folder, cfg)
    if (folder / "dataset_dict.json").is_file():  # LLaMA-Factory saved it: same tokens, its column names
        log.warning("tokenized_path: loading LLaMA-Factory's tokenised dataset from %s; the data keys are not read "
                    "again", folder)
        return _load_llamafactory(folder, cfg)
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"tokenized_path {path} is a folder that holds no tokenised dataset of ember's or "
                          "LLaMA-Factory's; choose an empty or new folder")
    train, val = build()
    if int(os.environ.get("RANK", "0")) == 0:  # every rank tokenises; one writes
        _save(folder, cfg, train, val)
        log.info("tokenized_path: the tokenised dataset is saved at %s; later runs with tokenized_path: %s reuse it",
                 folder, path)
    return train, val


def _columns(dataset) -> tuple[str, dict]:
    """(kind, columns) of one prepared set."""
    if isinstance(dataset, SFTDataset):
        columns = {"input_ids": dataset.input_ids, "labels": dataset.labels}
        return ("sft_packed" if dataset.packs is not None else "sft"), columns
    if isinstance(dataset, BlockDataset):
        return "blocks", dataset.rows.with_format(None).to_dict()
    if isinstance(dataset, PairDataset):
        return "pairs", dataset.rows
    raise ConfigError(f"tokenized_path cannot save a {type(dataset).__name__}")


def _save(folder: Path, cfg, train, val) -> None:
    partial = folder.with_name(folder.name + ".partial")  # renamed into place once whole
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    manifest = {"stage": cfg.stage, "packing": bool(cfg.packing), "cutoff_len": cfg.cutoff_len, "splits": {}}
    for split, dataset in zip(SPLITS, (train, val)):
        if dataset is None:
            continue
        kind, columns = _columns(dataset)
        datasets.Dataset.from_dict(columns).save_to_disk(str(partial / split))
        if kind == "sft_packed":
            datasets.Dataset.from_dict({"pack": dataset.packs}).save_to_disk(str(partial / f"{split}_packs"))
        manifest["splits"][split] = kind
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=1))
    if folder.exists():
        folder.rmdir()  # an empty folder (checked above)
    partial.rename(folder)


def _load(folder: Path, cfg) -> tuple:
    manifest = json.loads((folder / MANIFEST).read_text())
    if manifest["stage"] != cfg.stage and not {manifest["stage"], cfg.stage} <= {"dpo", "orpo", "simpo", "rm"}:
        raise ConfigError(f"tokenized_path {folder} holds a stage {manifest['stage']} dataset, but this run is "
                          f"stage {cfg.stage}; delete it or choose another tokenized_path")
    sets = []
    for split in SPLITS:
        kind = manifest["splits"].get(split)
        if kind is None:
            sets.append(None)
            continue
        rows = datasets.load_from_disk(str(folder / split))
        if kind == "blocks":
            sets.append(BlockDataset(rows))
        elif kind == "pairs":
            sets.append(PairDataset(rows))
        else:
            packs = list(datasets.load_from_disk(str(folder / f"{split}_packs"))["pack"]) if kind == "sft_packed" else None
            sets.append(SFTDataset(list(rows["input_ids"]), list(rows["labels"]), packs))
        log.info("%s: %d samples from %s", split, len(sets[-1]), folder)
    return tuple(sets)


def _load_llamafactory(folder: Path, cfg) -> tuple:
    """A DatasetDict LLaMA-Factory's tokenized_path holds (splits train and validation): its columns are
    ember's plus attention masks, which ember rebuilds from the lengths; kto_tags is ember's kto_tag."""
    from .preference import FEEDBACK_COLUMNS, PAIR_COLUMNS
    saved = datasets.load_from_disk(str(folder))
    sets = []
    for split in SPLITS:
        if split not in saved:
            sets.append(None)
            continue
        rows = saved[split]
        if cfg.stage == "pt":
            sets.append(BlockDataset(rows))
        elif cfg.stage == "sft":
            if "attention_mask" in rows.column_names and len(rows) and max(rows[0]["attention_mask"]) > 1:
                raise ConfigError(f"tokenized_path {folder} holds LLaMA-Factory's neat-packed rows; save it again "
                                  "without packing (ember packs after loading, with packing: true)")
            sets.append(build_sft_dataset(rows, cfg.cutoff_len, cfg.packing, split))  # packed here if asked
        else:
            if "kto_tags" in rows.column_names:
                rows = rows.rename_column("kto_tags", "kto_tag")
            wanted = FEEDBACK_COLUMNS if cfg.stage == "kto" else PAIR_COLUMNS
            missing = [c for c in wanted if c not in rows.column_names]
            if missing:
                raise ConfigError(f"tokenized_path {folder} has no {', '.join(missing)}: it was not saved for "
                                  f"stage {cfg.stage}")
            sets.append(PairDataset(rows.select_columns(list(wanted))))
        log.info("%s: %d samples from %s", split, len(sets[-1]), folder)
    return tuple(sets)
