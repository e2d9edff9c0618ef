"""streaming: true — samples come from the files chunk by chunk, encoded as the whole dataset would be,
without reading the files whole, and a resumed run continues at the very next sample."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import read_metrics
from ember.config import ConfigError, build_config
from ember.data import streaming
from ember.tasks import build_task

DEMO = Path(__file__).resolve().parents[2] / "examples" / "data"


def as_lists(item):
    return {k: v.tolist() for k, v in item.items()} if isinstance(item, dict) else item.tolist()


@pytest.fixture
def sft_keys(tiny_model_dir, tmp_path):
    return dict(model_name_or_path=str(tiny_model_dir), stage="sft", template="default", dataset="pydoc_alpaca,pydoc_sharegpt",
                dataset_dir=str(DEMO), max_samples=30, cutoff_len=64, max_steps=4, output_dir=str(tmp_path / "out"))


def test_streamed_sft_samples_equal_the_whole_dataset_across_chunks(sft_keys, monkeypatch):
    whole, _, _ = build_task(build_config(sft_keys)).build_data()
    monkeypatch.setattr(streaming, "CHUNK_ROWS", 7)  # several chunks per dataset, one cut mid-dataset
    streamed, _, _ = build_task(build_config(dict(sft_keys, streaming=True))).build_data()
    assert isinstance(streamed, streaming.StreamedSamples)
    assert [as_lists(s) for s in streamed] == [as_lists(whole[i]) for i in range(len(whole))]


def test_streamed_pretraining_blocks_equal_the_whole_dataset(tiny_model_dir, corpus_dir, tmp_path):
    keys = dict(model_name_or_path=str(tiny_model_dir), dataset="tiny_text", dataset_dir=str(corpus_dir), cutoff_len=32,
                max_steps=3, output_dir=str(tmp_path / "out"))
    whole, _, _ = build_task(build_config(keys)).build_data()
    streamed, _, _ = build_task(build_config(dict(keys, streaming=True))).build_data()
    assert [as_lists(s) for s in streamed] == [as_lists(whole[i]) for i in range(len(whole))]


def test_the_files_are_not_read_whole(tiny_model_dir, tmp_path):
    """The last line is broken: a whole read stops at once, a stream trains on what comes before it."""
    root = tmp_path / "data"
    root.mkdir()
    # bigger than the reader's 10 MB block, so the broken line lies beyond what the first batches need
    rows = [json.dumps({"text": f"line {i} of a long file about streaming text " * 4}) for i in range(80000)]
    (root / "big.jsonl").write_text("\n".join(rows) + "\n{broken\n")
    (root / "dataset_info.json").write_text(json.dumps({"big": {"file_name": "big.jsonl", "columns": {"prompt": "text"}}}))
    keys = dict(model_name_or_path=str(tiny_model_dir), dataset="big", dataset_dir=str(root), cutoff_len=32,
                max_steps=2, per_device_train_batch_size=4, output_dir=str(tmp_path / "out"))
    with pytest.raises(ConfigError):
        build_task(build_config(keys)).build_data()
    task = build_task(build_config(dict(keys, streaming=True)))
    samples, _, collate = task.build_data()
    batches = streaming.StreamBatches(samples, 4, collate)
    first = next(batches)
    assert first["input_ids"].shape == (4, 32)


def test_resumed_streaming_run_continues_at_the_next_sample(sft_keys, train, tmp_path):
    keys = dict(sft_keys, streaming=True, per_device_train_batch_size=4, logging_steps=1, save_steps=2, max_samples=10,
                lr_scheduler_type="constant", learning_rate=1e-3, disable_tqdm=True)
    train(build_config(dict(keys, output_dir=str(tmp_path / "whole"), max_steps=9)))  # 9 × 4 > 2 × 10 samples: a second pass
    train(build_config(dict(keys, output_dir=str(tmp_path / "half"), max_steps=4)))
    train(build_config(dict(keys, output_dir=str(tmp_path / "half"), max_steps=9, resume_from_checkpoint="true")))
    whole, half = ([(r["step"], r["loss"]) for r in read_metrics(tmp_path / run) if "loss" in r] for run in ("whole", "half"))
    assert whole == half and len(whole) == 9
    # the resumed part crossed the end of the stream into a second pass, as the uninterrupted one did
    epochs = [r["epoch"] for r in read_metrics(tmp_path / "half") if "loss" in r]
    assert epochs[0] == 0 and epochs[-1] == 1


@pytest.mark.parametrize("extra, message", [(dict(max_steps=-1), "needs max_steps"),
                                            (dict(val_size=0.1), "eval_dataset"),
                                            (dict(tokenized_path="x"), "tokenized_path"),
                                            (dict(stage="dpo"), "stages pt and sft")])
def test_streaming_refusals(sft_keys, extra, message):
    with pytest.raises(ConfigError, match=message):
        build_config(dict(sft_keys, streaming=True, **extra))
