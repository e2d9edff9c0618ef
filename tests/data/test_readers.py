"""Readers: every supported file kind becomes rows; bad files stop with the file (and line) named."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ember.config import ConfigError
from ember.data.readers import read_dataset, text_column
from ember.data.registry import DatasetSpec, resolve_datasets

DOCS = ["The first document.", "A second one, with a comma and \"quotes\".", "Ünïcödé third — 三"]


def _spec(path: Path, **kwargs) -> DatasetSpec:
    return DatasetSpec(name="corpus", path=path, **kwargs)


def _texts(path: Path, **kwargs) -> list[str]:
    spec = _spec(path, **kwargs)
    return list(text_column(read_dataset(spec), spec)["text"])


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# ---- every kind reads --------------------------------------------------------------------

def test_txt_is_one_document_per_line(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("\n".join(DOCS) + "\n", encoding="utf-8")
    assert _texts(path) == DOCS


def test_json_list_reads(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps([{"text": d, "id": i} for i, d in enumerate(DOCS)], indent=2), encoding="utf-8")
    assert _texts(path) == DOCS


def test_jsonl_reads(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [{"text": d} for d in DOCS])
    assert _texts(path) == DOCS


def test_parquet_reads(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": DOCS, "n": list(range(len(DOCS)))}), path)
    assert _texts(path) == DOCS


def test_csv_reads(tmp_path):
    path = tmp_path / "c.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        writer.writerows([i, d] for i, d in enumerate(DOCS))
    assert _texts(path) == DOCS


def test_folder_of_jsonl_files_reads_all_of_them(tmp_path):
    folder = tmp_path / "shards"
    _jsonl(folder / "a.jsonl", [{"text": DOCS[0]}, {"text": DOCS[1]}])
    _jsonl(folder / "sub" / "b.jsonl", [{"text": DOCS[2]}])
    assert sorted(_texts(folder)) == sorted(DOCS)


def test_registered_column_mapping_renames_the_text_column(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [{"content": d, "title": "t"} for d in DOCS])
    assert _texts(path, columns={"prompt": "content"}) == DOCS


# ---- malformed JSON names the file and the line ------------------------------------------

@pytest.mark.parametrize("bad_line", [1, 4, 7], ids=["first", "middle", "last"])
def test_malformed_jsonl_line_names_file_and_line(tmp_path, bad_line):
    lines = [json.dumps({"text": f"document {i}"}) for i in range(1, 8)]
    lines[bad_line - 1] = '{"text": "an unterminated string}'
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        read_dataset(_spec(path))
    message = str(err.value)
    assert str(path) in message
    assert f"line {bad_line}" in message
    for other in set(range(1, 8)) - {bad_line}:
        assert f"line {other}:" not in message and not message.rstrip().endswith(f"line {other}")


def test_malformed_line_in_a_folder_names_the_right_file(tmp_path):
    folder = tmp_path / "shards"
    _jsonl(folder / "a.jsonl", [{"text": "fine"}, {"text": "also fine"}])
    bad = folder / "b.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": "ok"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        read_dataset(_spec(folder))
    assert str(bad) in str(err.value) and "line 3" in str(err.value)


def test_malformed_json_list_names_file_and_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"text": "one"},\n  {"text": "two"},\n  {"text": "three" "four"},\n  {"text": "five"}\n]\n',
                    encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        read_dataset(_spec(path))
    assert str(path) in str(err.value) and "line 4" in str(err.value)


# ---- missing, empty, wrong column --------------------------------------------------------

def test_missing_registered_file_is_a_config_error(tmp_path):
    (tmp_path / "dataset_info.json").write_text(json.dumps({"corpus": {"file_name": "nope.jsonl"}}))
    with pytest.raises(ConfigError) as err:
        resolve_datasets("corpus", str(tmp_path))
    assert "not found" in str(err.value) and str(tmp_path / "nope.jsonl") in str(err.value)


def test_missing_plain_path_is_a_config_error(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(ConfigError, match="nope.jsonl"):
        resolve_datasets(str(missing), str(tmp_path))


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".json"])
def test_reader_given_a_missing_file_raises_config_error(tmp_path, suffix):
    """The reader itself names a missing file (not a bare FileNotFoundError from its error path)."""
    missing = tmp_path / f"vanished{suffix}"
    with pytest.raises(ConfigError) as err:
        read_dataset(_spec(missing))
    assert str(missing) in str(err.value)


@pytest.mark.parametrize("name,content", [
    ("data.txt", ""),
    ("data.jsonl", ""),
    ("data.json", "[]"),
    ("data.csv", "text,id\n"),
])
def test_empty_file_says_it_is_empty(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        read_dataset(_spec(path))
    message = str(err.value)
    assert "corpus" in message and str(path) in message
    # the word must be the reader's, not part of the path (tmp_path holds the test's name)
    assert "empty" in message.replace(str(path), "<path>"), message


def test_empty_folder_names_it(tmp_path):
    folder = tmp_path / "nothing_here"
    folder.mkdir()
    (folder / "README.md").write_text("not data")
    with pytest.raises(ConfigError, match="nothing_here.*no data files"):
        read_dataset(_spec(folder))


def test_missing_text_column_lists_the_columns_that_exist(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [{"body": "x", "title": "y"}])
    spec = _spec(path)
    with pytest.raises(ConfigError) as err:
        text_column(read_dataset(spec), spec)
    message = str(err.value)
    assert "corpus" in message and "text" in message
    assert "body" in message and "title" in message
    assert "columns" in message and "\n" not in message


def test_mapped_column_that_does_not_exist_is_named(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [{"text": "x", "title": "y"}])
    spec = _spec(path, columns={"prompt": "content"})
    with pytest.raises(ConfigError) as err:
        text_column(read_dataset(spec), spec)
    message = str(err.value)
    assert "'content'" in message and "text" in message and "title" in message


def test_missing_column_message_is_a_grammatical_sentence(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [{"body": "x"}])
    spec = _spec(path)
    with pytest.raises(ConfigError) as err:
        text_column(read_dataset(spec), spec)
    assert "has no a " not in str(err.value), str(err.value)


# ---- max_samples -------------------------------------------------------------------------

def test_max_samples_keeps_the_first_rows(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [{"text": f"doc {i}"} for i in range(10)])
    assert list(read_dataset(_spec(path), max_samples=3)["text"]) == ["doc 0", "doc 1", "doc 2"]
    assert len(read_dataset(_spec(path), max_samples=50)) == 10
    assert len(read_dataset(_spec(path))) == 10


def test_registry_num_samples_and_max_samples_take_the_smaller(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [{"text": f"doc {i}"} for i in range(10)])
    assert len(read_dataset(_spec(path, num_samples=4), max_samples=6)) == 4
    assert len(read_dataset(_spec(path, num_samples=8), max_samples=5)) == 5


def test_num_samples_draws_rows_as_llamafactory(tmp_path):
    """A seeded permutation cut to num_samples; beyond the row count every row once, then rows
    drawn again (LLaMA-Factory's numpy draws, here from the run's seed)."""
    import numpy as np
    path = _jsonl(tmp_path / "c.jsonl", [{"text": f"doc {i}"} for i in range(10)])
    rows = lambda n, seed: list(read_dataset(_spec(path, num_samples=n), seed=seed)["text"])  # noqa: E731
    rng = np.random.RandomState(7)
    assert rows(4, 7) == [f"doc {i}" for i in rng.permutation(10)[:4]]
    assert rows(4, 7) == rows(4, 7) != rows(4, 8)
    grown = rows(25, 7)
    assert len(grown) == 25 and sorted(set(grown[:10])) == sorted(f"doc {i}" for i in range(10))
