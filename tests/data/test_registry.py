"""The dataset registry: LLaMA-Factory's dataset_info.json, plain paths, and its refusals."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from ember.config import ConfigError
from ember.data.readers import read_dataset, text_column
from ember.data.registry import resolve_datasets


def _write_jsonl(path: Path, texts: list[str], key: str = "text") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({key: t}) + "\n" for t in texts), encoding="utf-8")


def _rows(specs) -> list[str]:
    return [row for spec in specs for row in text_column(read_dataset(spec), spec)["text"]]


@pytest.fixture
def registry_dir(tmp_path) -> Path:
    """A dataset_dir whose entries point at a nested file and at a folder, both relative to it."""
    root = tmp_path / "data"
    _write_jsonl(root / "nested" / "alpha.jsonl", ["a one", "a two", "a three"], key="body")
    _write_jsonl(root / "shards" / "part-0.jsonl", ["s one", "s two"])
    _write_jsonl(root / "shards" / "part-1.jsonl", ["s three"])
    (root / "dataset_info.json").write_text(json.dumps({
        "alpha": {"file_name": "nested/alpha.jsonl", "columns": {"prompt": "body"}},
        "sharded": {"file_name": "shards"},
    }, indent=2))
    return root


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test instead of reaching the network."""
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise AssertionError(f"network access attempted: {address}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def test_registered_file_resolves_relative_to_dataset_dir(registry_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a path relative to the working directory would not find it
    (spec,) = resolve_datasets("alpha", str(registry_dir))
    assert spec.path.resolve() == (registry_dir / "nested" / "alpha.jsonl").resolve()
    assert _rows([spec]) == ["a one", "a two", "a three"]


def test_registered_folder_reads_every_file_in_it(registry_dir):
    (spec,) = resolve_datasets("sharded", str(registry_dir))
    assert spec.path.resolve() == (registry_dir / "shards").resolve()
    assert sorted(_rows([spec])) == ["s one", "s three", "s two"]


def test_fixture_registry_names_resolve(corpus_dir):
    lines = (corpus_dir / "tiny.txt").read_text(encoding="utf-8").splitlines()
    assert _rows(resolve_datasets("tiny_text", str(corpus_dir))) == lines
    assert _rows(resolve_datasets("tiny_json", str(corpus_dir))) == lines


def test_comma_separated_names_mix_both_datasets(registry_dir):
    specs = resolve_datasets("alpha, sharded", str(registry_dir))
    assert [s.name for s in specs] == ["alpha", "sharded"]
    rows = _rows(specs)
    assert len(rows) == 3 + 3
    assert rows[:3] == ["a one", "a two", "a three"]


def test_mixed_datasets_feed_training_with_the_sum_of_their_rows(corpus_dir, make_config):
    """`dataset: a,b` through the task: the training samples are a's documents, then b's."""
    from ember.tasks import build_task

    def tokens(name):  # packing: false, one sample per document (packed blocks would straddle a and b)
        train, _, _ = build_task(make_config(dataset=name, cutoff_len=32, packing=False)).build_data()
        return [int(t) for i in range(len(train)) for t in train[i]]
    text, json_ = tokens("tiny_text"), tokens("tiny_json")
    mixed = tokens("tiny_text,tiny_json")
    assert len(mixed) == len(text) + len(json_)
    assert mixed == text + json_


def test_plain_path_works_without_a_registry(tmp_path):
    empty_dir = tmp_path / "no_registry"
    empty_dir.mkdir()
    data = tmp_path / "elsewhere" / "corpus.jsonl"
    _write_jsonl(data, ["first", "second"])
    (spec,) = resolve_datasets(str(data), str(empty_dir))
    assert _rows([spec]) == ["first", "second"]


def test_plain_name_is_also_looked_up_inside_dataset_dir(tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    (root / "corpus.txt").write_text("line one\nline two\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    (spec,) = resolve_datasets("corpus.txt", str(root))
    assert _rows([spec]) == ["line one", "line two"]


def test_unknown_name_is_refused_with_a_close_match(corpus_dir):
    with pytest.raises(ConfigError) as err:
        resolve_datasets("tiny_txet", str(corpus_dir))
    message = str(err.value)
    assert "'tiny_txet'" in message
    assert "did you mean 'tiny_text'" in message


def test_unknown_name_without_close_match_names_it(corpus_dir):
    with pytest.raises(ConfigError, match="'zzzz_qqqq'") as err:
        resolve_datasets("zzzz_qqqq", str(corpus_dir))
    assert "did you mean" not in str(err.value)


def test_unknown_name_among_several_is_the_one_named(corpus_dir):
    with pytest.raises(ConfigError, match="'tiny_jsno'"):
        resolve_datasets("tiny_text,tiny_jsno", str(corpus_dir))


def test_unknown_name_without_any_registry_says_so(tmp_path):
    with pytest.raises(ConfigError, match="'my_corpus'.*dataset_info.json"):
        resolve_datasets("my_corpus", str(tmp_path))


def test_registered_entry_whose_file_is_missing_names_the_file(tmp_path):
    (tmp_path / "dataset_info.json").write_text(json.dumps({"gone": {"file_name": "gone.jsonl"}}))
    with pytest.raises(ConfigError) as err:
        resolve_datasets("gone", str(tmp_path))
    assert "'gone'" in str(err.value) and str(tmp_path / "gone.jsonl") in str(err.value)


@pytest.mark.parametrize("hub_key", ["hf_hub_url", "ms_hub_url"])
def test_hub_only_entry_is_refused_with_a_sentence(tmp_path, hub_key, no_network):
    (tmp_path / "dataset_info.json").write_text(json.dumps({"c4_hub": {hub_key: "allenai/c4"}}))
    with pytest.raises(ConfigError) as err:
        resolve_datasets("c4_hub", str(tmp_path))
    message = str(err.value)
    assert "c4_hub" in message and hub_key in message
    assert "local" in message and "file_name" in message  # says what to do instead
    assert "\n" not in message
    assert no_network == []


def test_invalid_dataset_info_json_names_file_and_line(tmp_path):
    (tmp_path / "dataset_info.json").write_text(
        '{\n  "a": {"file_name": "a.jsonl"},\n  "b": {"file_name": "b.jsonl"}\n  "c": {"file_name": "c.jsonl"}\n}\n')
    with pytest.raises(ConfigError) as err:
        resolve_datasets("a", str(tmp_path))
    message = str(err.value)
    assert str(tmp_path / "dataset_info.json") in message
    assert "line 4" in message


def test_dataset_info_that_is_not_an_object_is_refused(tmp_path):
    (tmp_path / "dataset_info.json").write_text('["a", "b"]')
    with pytest.raises(ConfigError, match="dataset_info.json"):
        resolve_datasets("a", str(tmp_path))
