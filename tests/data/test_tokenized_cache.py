"""tokenized_path: the first run saves the tokenised sets, a later run reuses them (and says so) without
reading the data again, and trains on exactly the same samples."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from conftest import read_metrics
from ember.config import ConfigError, build_config
from ember.engine.trainer import Trainer
from ember.tasks import build_task

DEMO = Path(__file__).resolve().parents[2] / "examples" / "data"


def items(dataset) -> list:
    out = []
    for i in range(len(dataset)):
        item = dataset[i]
        out.append({k: (v.tolist() if torch.is_tensor(v) else v) for k, v in item.items()} if isinstance(item, dict)
                   else item.tolist())
    return out


@pytest.fixture
def sft_data(tmp_path) -> Path:
    """A copy of the demo SFT data, so the test can delete it between runs."""
    root = tmp_path / "data"
    root.mkdir()
    for name in ("dataset_info.json", "sft_alpaca.json", "sft_sharegpt.json"):
        shutil.copy(DEMO / name, root / name)
    return root


@pytest.mark.parametrize("stage, packing", [("sft", False), ("sft", True), ("pt", None)])
def test_second_run_reuses_the_saved_sets_without_the_data(stage, packing, sft_data, tiny_model_dir, corpus_dir,
                                                           tmp_path, caplog):
    cache = tmp_path / "tokenized"
    data = dict(dataset="pydoc_alpaca,pydoc_sharegpt", dataset_dir=str(sft_data), template="default") \
        if stage == "sft" else dict(dataset="tiny_text", dataset_dir=str(corpus_dir))
    cfg = build_config(dict(model_name_or_path=str(tiny_model_dir), stage=stage, max_samples=20, cutoff_len=64,
                            val_size=0.2, tokenized_path=str(cache), output_dir=str(tmp_path / "out"),
                            **({"packing": packing} if packing is not None else {}), **data))
    with caplog.at_level(logging.INFO, logger="ember"):
        train, val, _ = build_task(cfg).build_data()
    assert "saved at" in caplog.text and (cache / "ember_tokenized.json").is_file()
    first = (items(train), items(val))
    caplog.clear()
    # the data is gone and the dataset names point nowhere: only the saved sets can give the samples
    shutil.rmtree(sft_data) if stage == "sft" else None
    again = build_config(dict(cfg.to_dict(), dataset="no_such_dataset"))
    with caplog.at_level(logging.INFO, logger="ember"):
        train2, val2, _ = build_task(again).build_data()
    assert "loading the tokenised dataset from" in caplog.text
    assert (items(train2), items(val2)) == first
    assert type(train2) is type(train)


def test_a_folder_of_another_stage_is_refused(tiny_model_dir, corpus_dir, tmp_path):
    cache = tmp_path / "tokenized"
    base = dict(model_name_or_path=str(tiny_model_dir), dataset="tiny_text", dataset_dir=str(corpus_dir),
                max_samples=10, cutoff_len=32, tokenized_path=str(cache))
    build_task(build_config(base)).build_data()
    assert json.loads((cache / "ember_tokenized.json").read_text())["stage"] == "pt"
    with pytest.raises(ConfigError, match="stage pt dataset.*stage sft"):
        build_task(build_config(dict(base, stage="sft", template="default"))).build_data()


def test_a_folder_holding_other_files_is_refused(tiny_model_dir, corpus_dir, tmp_path):
    cache = tmp_path / "tokenized"
    cache.mkdir()
    (cache / "notes.txt").write_text("mine")
    cfg = build_config(dict(model_name_or_path=str(tiny_model_dir), dataset="tiny_text", dataset_dir=str(corpus_dir),
                            max_samples=10, cutoff_len=32, tokenized_path=str(cache)))
    with pytest.raises(ConfigError, match="no tokenised dataset"):
        build_task(cfg).build_data()
    assert (cache / "notes.txt").read_text() == "mine"


def test_runs_with_a_reused_folder_train_the_same(tiny_model_dir, corpus_dir, tmp_path):
    losses = []
    for run in ("first", "second"):
        cfg = build_config(dict(model_name_or_path=str(tiny_model_dir), dataset="tiny_text", dataset_dir=str(corpus_dir),
                                max_samples=40, cutoff_len=32, per_device_train_batch_size=4, max_steps=3,
                                logging_steps=1, save_steps=0, tokenized_path=str(tmp_path / "tok"),
                                output_dir=str(tmp_path / run), disable_tqdm=True))
        Trainer(cfg, build_task(cfg)).fit()
        losses.append([r["loss"] for r in read_metrics(tmp_path / run) if "loss" in r])
    assert losses[0] == losses[1] and len(losses[0]) == 3


@pytest.mark.parametrize("stage", ["sft", "pt"])
def test_a_folder_llamafactory_saved_is_read(stage, tiny_model_dir, corpus_dir, tmp_path):
    """LLaMA-Factory's tokenized_path holds a DatasetDict (train, validation) of its columns: the same ids
    and labels as ember's plus attention masks. A folder in that layout trains on those very rows."""
    import datasets
    data = dict(dataset="pydoc_alpaca", dataset_dir=str(DEMO), template="default") if stage == "sft" else \
        dict(dataset="tiny_text", dataset_dir=str(corpus_dir))
    keys = dict(model_name_or_path=str(tiny_model_dir), stage=stage, max_samples=12, cutoff_len=64, **data)
    train, _, _ = build_task(build_config(keys)).build_data()
    rows = items(train)
    columns = {"input_ids": [r["input_ids"] if stage == "sft" else r for r in rows]}
    columns["attention_mask"] = [[1] * len(ids) for ids in columns["input_ids"]]
    if stage == "sft":
        columns["labels"] = [r["labels"] for r in rows]
    folder = tmp_path / "lf_tokenized"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(columns)}).save_to_disk(str(folder))
    loaded, val, _ = build_task(build_config(dict(keys, dataset="gone", tokenized_path=str(folder)))).build_data()
    assert items(loaded) == rows and val is None
