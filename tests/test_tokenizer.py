"""`ember tokenizer`: a BPE tokenizer that transformers loads, for runs from random weights."""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from ember.cli import main


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # main() sets it with setdefault; keep the process clean


@pytest.mark.parametrize("dataset,vocab_size", [("tiny_text", 320), ("tiny_json", 400)])
def test_cli_writes_a_tokenizer_transformers_loads(corpus_dir, tmp_path, capsys, dataset, vocab_size):
    out = tmp_path / "tok"
    code = main(["tokenizer", "--dataset", dataset, "--dataset_dir", str(corpus_dir),
                 "--vocab_size", str(vocab_size), "--output_dir", str(out)])
    assert code == 0
    assert str(out) in capsys.readouterr().out

    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == vocab_size
    specials = {}
    for name in ("eos_token", "pad_token", "bos_token"):
        token, token_id = getattr(tok, name), getattr(tok, f"{name}_id")
        assert token is not None and token_id is not None, name
        assert 0 <= token_id < vocab_size
        assert tok.convert_ids_to_tokens(token_id) == token
        assert tok(token, add_special_tokens=False)["input_ids"] == [token_id], f"{name} must be one token"
        specials[name] = token_id
    assert len(set(specials.values())) == 3, specials

    text = (corpus_dir / "tiny.txt").read_text(encoding="utf-8").splitlines()[7]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert max(ids) < vocab_size
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode("utf-8")), "BPE merges should make text shorter than its bytes"
    assert tok.decode(ids + [specials["eos_token"]], skip_special_tokens=True) == text


def test_byte_level_tokenizer_round_trips_text_it_never_saw(corpus_dir, tmp_path):
    out = tmp_path / "tok"
    assert main(["tokenizer", "--dataset", "tiny_text", "--dataset_dir", str(corpus_dir),
                 "--vocab_size", "300", "--output_dir", str(out)]) == 0
    tok = AutoTokenizer.from_pretrained(out)
    text = "Ünïcödé 三 🙂\ttabs  and  double spaces"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_max_samples_limits_the_training_text(corpus_dir, tmp_path):
    """A tokenizer trained on 2 documents cannot learn the merges of the full corpus."""
    small, full = tmp_path / "small", tmp_path / "full"
    for out, extra in ((small, ["--max_samples", "2"]), (full, [])):
        assert main(["tokenizer", "--dataset", "tiny_text", "--dataset_dir", str(corpus_dir),
                     "--vocab_size", "600", "--output_dir", str(out), *extra]) == 0
    assert len(AutoTokenizer.from_pretrained(small)) < len(AutoTokenizer.from_pretrained(full)) == 600


def test_unknown_dataset_exits_2_with_one_line(corpus_dir, tmp_path, capsys):
    code = main(["tokenizer", "--dataset", "tiny_txet", "--dataset_dir", str(corpus_dir),
                 "--output_dir", str(tmp_path / "tok")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "tiny_txet" in err[0] and "tiny_text" in err[0], err
    assert not (tmp_path / "tok").exists()
