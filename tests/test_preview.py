"""`ember preview`: the first training samples as training builds them, from a folder that holds
only a tokenizer; --json lines equal LLaMA-Factory's own encoding of the same rows."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ember.cli import main
from ember.models.hf import load_tokenizer

LF = Path(__file__).resolve().parent / "fixtures" / "llamafactory"
FIXTURE = json.loads((LF / "lf_encodings.json").read_text())


def lf_case(template: str, dataset: str, cutoff: int, row: int) -> dict:
    return next(c for c in FIXTURE["sft_cases"] if (c["template"], c["dataset"], c["cutoff_len"], c["row_index"],
                                                     c["train_on_prompt"], c["mask_history"])
                == (template, dataset, cutoff, row, False, False))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("preview_data")
    rows = [{"instruction": r["_prompt"][0]["content"], "input": "", "output": r["_response"][0]["content"]}
            for r in FIXTURE["sources"]["alpaca_en_demo"]["rows"]]
    (root / "alpaca.json").write_text(json.dumps(rows))
    docs = [{"text": r["_prompt"][0]["content"]} for r in FIXTURE["sources"]["c4_demo"]["rows"]]
    (root / "c4.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    pairs = [{"instruction": "Capital of France?", "input": "", "chosen": "Paris.", "rejected": "Rome."}]
    (root / "pairs.json").write_text(json.dumps(pairs))
    (root / "dataset_info.json").write_text(json.dumps({"alpaca": {"file_name": "alpaca.json"},
                                                        "c4": {"file_name": "c4.jsonl", "columns": {"prompt": "text"}},
                                                        "pairs": {"file_name": "pairs.json", "ranking": True}}))
    return root


def preview(capsys, data_dir, *extra: str) -> str:
    config = [f"model_name_or_path={LF / 'tokenizer'}", f"dataset_dir={data_dir}", "output_dir=unused"]
    assert main(["preview", *config, *extra]) == 0
    return capsys.readouterr().out


def test_json_lines_are_llamafactorys_samples(capsys, data_dir):
    out = preview(capsys, data_dir, "stage=sft", "dataset=alpaca", "template=qwen3", "cutoff_len=96", "--n", "2",
                  "--json")
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines == [{k: lf_case("qwen3", "alpaca_en_demo", 96, row)[k] for k in ("input_ids", "labels")}
                     for row in (0, 1)]


def test_text_marks_what_carries_no_loss(capsys, data_dir):
    out = preview(capsys, data_dir, "--stage", "sft", "--dataset", "alpaca", "--template", "llama2", "--n", "1",
                  "max_samples=1", "cutoff_len=4096")
    question = FIXTURE["sources"]["alpaca_en_demo"]["rows"][0]["_prompt"][0]["content"]
    answer = FIXTURE["sources"]["alpaca_en_demo"]["rows"][0]["_response"][0]["content"]
    assert f"«<s>[INST] {question} [/INST]»{answer}</s>" in out
    assert out.count("--- sample") == 1


def test_pretraining_blocks(capsys, data_dir):
    out = preview(capsys, data_dir, "stage=pt", "dataset=c4", "cutoff_len=64", "--n", "3", "--json")
    case = next(c for c in FIXTURE["pt_cases"] if c["template"] == "default" and c["packing"])
    assert [json.loads(line)["input_ids"] for line in out.splitlines()] == [b["input_ids"] for b in case["blocks"][:3]]


def test_preference_pairs_show_both_answers(capsys, data_dir):
    out = preview(capsys, data_dir, "stage=dpo", "dataset=pairs", "template=default", "--n", "1", "--json")
    (pair,) = [json.loads(line) for line in out.splitlines()]
    tokenizer = load_tokenizer(str(LF / "tokenizer"), "model_name_or_path")
    for side, answer in (("chosen", "Paris."), ("rejected", "Rome.")):
        ids, labels = pair[f"{side}_input_ids"], pair[f"{side}_labels"]
        trained = tokenizer.decode([i for i, label in zip(ids, labels) if label != -100])
        assert trained.startswith(answer) and "Capital of France?" in tokenizer.decode(ids)
    text = preview(capsys, data_dir, "stage=dpo", "dataset=pairs", "template=default", "--n", "1")
    assert "--- sample 1 chosen:" in text and "--- sample 1 rejected:" in text
