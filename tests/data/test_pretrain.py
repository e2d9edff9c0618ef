"""Pretraining blocks as LLaMA-Factory makes them: documents joined with EOS, cut into cutoff_len
blocks, the remainder dropped (per batch of 1000 documents); packing: false, one truncated
document per sample. (tests/data/test_lf_templates.py compares with LLaMA-Factory's own blocks.)

The expected token stream is rebuilt here independently of ember: the file is read with plain
Python and each document is encoded with the `tokenizers` library straight from tokenizer.json.
"""
from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import datasets
import pytest
import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader

from ember.config import ConfigError
from ember.data.labels import IGNORE
from ember.data.pretrain import BlockDataset, collate_blocks
from ember.tasks import build_task

# blank lines between documents, indentation, unicode and one document far longer than a block
DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "",
    "  Indented text keeps its leading spaces.",
    "Ünïcödé, emoji 🙂 and CJK 三 are bytes like any other.",
    "",
    "",
    " ".join(f"word{i}" for i in range(120)),
    "short",
    "The last document ends the file.",
]


def reference_stream(tokenizer_dir: Path, documents: list[str]) -> list[int]:
    """Every document's tokens, each followed by EOS (an empty one too, as LLaMA-Factory), without ember."""
    core = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    eos_text = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())["eos_token"]
    eos = core.token_to_id(eos_text if isinstance(eos_text, str) else eos_text["content"])
    assert eos is not None
    stream: list[int] = []
    for doc in documents:
        stream += core.encode(doc, add_special_tokens=False).ids + [eos]
    return stream


def flatten(blocks) -> list[int]:
    return [int(t) for i in range(len(blocks)) for t in blocks[i]]


@pytest.fixture
def doc_corpus(tmp_path) -> Path:
    path = tmp_path / "docs" / "corpus.txt"
    path.parent.mkdir()
    path.write_text("\n".join(DOCS) + "\n", encoding="utf-8")
    return path


def corpus_lines(corpus_dir: Path) -> list[str]:
    return (corpus_dir / "tiny.txt").read_text(encoding="utf-8").split("\n")[:-1]


def whole_blocks(stream: list[int], block: int) -> list[int]:
    return stream[:len(stream) // block * block]


# ---- the stream, cut as LLaMA-Factory cuts it ------------------------------------------------

@pytest.mark.parametrize("cutoff_len", [32, 64])
def test_blocks_are_the_corpus_with_eos_after_each_document(make_config, corpus_dir, tokenizer_dir, cutoff_len):
    train, val, _ = build_task(make_config(cutoff_len=cutoff_len)).build_data()
    expected = reference_stream(tokenizer_dir, corpus_lines(corpus_dir))
    assert val is None
    assert len(expected) % cutoff_len, "pick a corpus with a remainder to drop"
    assert flatten(train) == whole_blocks(expected, cutoff_len)
    assert all(len(train[i]) == cutoff_len for i in range(len(train)))


def test_blank_lines_unicode_and_long_documents_survive(make_config, doc_corpus, tokenizer_dir):
    cfg = make_config(dataset=str(doc_corpus), dataset_dir=str(doc_corpus.parent), cutoff_len=16)
    train, _, _ = build_task(cfg).build_data()
    assert flatten(train) == whole_blocks(reference_stream(tokenizer_dir, DOCS), 16)


def test_packing_false_is_one_truncated_document_per_sample(make_config, doc_corpus, tokenizer_dir):
    cfg = make_config(dataset=str(doc_corpus), dataset_dir=str(doc_corpus.parent), cutoff_len=16, packing=False)
    train, _, _ = build_task(cfg).build_data()
    assert [train[i].tolist() for i in range(len(train))] == \
        [reference_stream(tokenizer_dir, [doc])[:16] for doc in DOCS]


def test_parallel_tokenisation_cuts_each_shard_on_its_own(make_config, corpus_dir, tokenizer_dir):
    # overwrite_cache: a cache written by a single process must not stand in for the parallel run
    cfg = make_config(cutoff_len=64, preprocessing_num_workers=2, overwrite_cache=True)
    train, _, _ = build_task(cfg).build_data()
    lines = datasets.Dataset.from_dict({"text": corpus_lines(corpus_dir)})
    shards = [lines.shard(2, i, contiguous=True)["text"] for i in range(2)]  # one per process, as datasets splits
    assert flatten(train) == [t for shard in shards for t in whole_blocks(reference_stream(tokenizer_dir, shard), 64)]


def test_block_dataset_items_and_bounds():
    blocks = BlockDataset(datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [4]]}))
    assert len(blocks) == 2 and blocks[0].tolist() == [1, 2, 3] and blocks[1].tolist() == [4]
    with pytest.raises(IndexError):
        blocks[2]


def test_every_empty_document_is_refused(make_config, tmp_path):
    path = tmp_path / "blank.txt"
    path.write_text("\n\n\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="empty"):
        build_task(make_config(dataset=str(path), dataset_dir=str(tmp_path))).build_data()


# ---- collate: padding carries no loss and no attention -----------------------------------

def test_short_last_block_is_padded_with_no_loss_and_no_attention(make_config, tokenizer_dir):
    task = build_task(make_config(cutoff_len=32, packing=False))
    train, _, collate = task.build_data()
    pad = task.tokenizer.pad_token_id
    last = min(range(len(train)), key=lambda i: len(train[i]))
    short = len(train[last])
    assert short < 32, "the fixture corpus should hold a short document"

    first = max(range(len(train)), key=lambda i: len(train[i]))
    assert len(train[first]) == 32
    batch = collate([train[first], train[last]])
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == (2, 32)
    assert torch.equal(batch["input_ids"][0], train[first])
    assert torch.equal(batch["input_ids"][1, :short], train[last])
    assert torch.equal(batch["labels"][1, :short], train[last])
    assert (batch["input_ids"][1, short:] == pad).all()
    assert (batch["labels"][1, short:] == IGNORE).all()
    assert (batch["attention_mask"][1, short:] == 0).all()
    assert (batch["attention_mask"][1, :short] == 1).all()
    assert (batch["attention_mask"][0] == 1).all()
    assert torch.equal(batch["labels"][0], train[first])


def test_full_batches_carry_no_attention_mask(make_config):
    task = build_task(make_config(cutoff_len=32))
    train, _, collate = task.build_data()
    loader = DataLoader(train, batch_size=4, collate_fn=collate)
    batches = list(loader)
    lengths = [len(train[i]) for i in range(len(train))]
    for n, batch in enumerate(batches):
        rows = lengths[4 * n:4 * n + 4]
        padded = len(set(rows)) > 1
        assert ("attention_mask" in batch) == padded, (n, rows)
        if not padded:
            assert torch.equal(batch["labels"], batch["input_ids"])
    # the loader saw every token exactly once
    seen = [int(t) for b in batches for row, mask in zip(b["input_ids"], b["labels"] != IGNORE) for t in row[mask]]
    assert seen == flatten(train)


def test_collate_pads_to_the_longest_in_the_batch():
    collate = collate_blocks(pad_id=7)
    batch = collate([torch.tensor([1, 2, 3]), torch.tensor([4])])
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 7, 7]]
    assert batch["labels"].tolist() == [[1, 2, 3], [4, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    full = collate([torch.tensor([1, 2]), torch.tensor([3, 4])])
    assert "attention_mask" not in full and full["labels"].tolist() == [[1, 2], [3, 4]]


# ---- what the user is told ---------------------------------------------------------------

def test_log_reports_documents_and_tokens(make_config, corpus_dir, tokenizer_dir, caplog):
    caplog.set_level(logging.INFO, logger="ember")
    build_task(make_config(cutoff_len=64)).build_data()
    lines = corpus_lines(corpus_dir)
    tokens = len(reference_stream(tokenizer_dir, lines))
    report = [r.getMessage() for r in caplog.records if r.name == "ember" and "documents" in r.getMessage()]
    assert len(report) == 1, report
    assert re.search(rf"\b{len(lines)} documents\b", report[0]), report[0]
    assert re.search(rf"\b{tokens} tokens\b", report[0]), report[0]
    assert re.search(rf"\b{tokens // 64} blocks\b", report[0]), report[0]
    assert re.search(rf"\b{tokens % 64} tokens dropped\b", report[0]), report[0]


def test_validation_split_is_reported_separately(make_config, caplog):
    caplog.set_level(logging.INFO, logger="ember")
    build_task(make_config(cutoff_len=64, val_size=30)).build_data()
    messages = [r.getMessage() for r in caplog.records if r.name == "ember" and "documents" in r.getMessage()]
    counts = {m.split(":")[0]: int(re.search(r"(\d+) documents", m).group(1)) for m in messages}
    assert counts == {"train": 270, "validation": 30}, messages


# ---- the tokenisation cache --------------------------------------------------------------

def _cache_files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.rglob("cache-*.arrow")}


def test_overwrite_cache_rebuilds_the_tokenised_cache(make_config, tmp_path, monkeypatch):
    cache = tmp_path / "hf_datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)  # this test's cache only

    first, _, _ = build_task(make_config(cutoff_len=32)).build_data()
    written = _cache_files(cache)
    assert written, "tokenising a file-backed dataset should leave a cache file"

    again, _, _ = build_task(make_config(cutoff_len=32)).build_data()
    assert _cache_files(cache) == written, "without overwrite_cache the cache is reused, not rewritten"

    rebuilt, _, _ = build_task(make_config(cutoff_len=32, overwrite_cache=True)).build_data()
    after = _cache_files(cache)
    assert set(after) == set(written)
    assert all(after[name] != written[name] for name in written), "overwrite_cache should rewrite the cache"
    assert flatten(first) == flatten(again) == flatten(rebuilt)
