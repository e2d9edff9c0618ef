"""Preference pairs (ranking datasets): LLaMA-Factory's alpaca and sharegpt forms, its template
encoding (encode_oneturn, as its pairwise and feedback processors), its truncation."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ember.config.errors import ConfigError
from ember.data.labels import IGNORE
from ember.data.preference import (build_pair_dataset, collate_pairs, encode_pair, infer_seqlen)
from ember.data.readers import read_dataset
from ember.data.registry import resolve_datasets
from ember.data.conversation import Conversation
from ember.data.sft import encode_sample
from ember.data.templates import load_template
from ember.models.hf import load_tokenizer

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "data"
LF = REPO / "tests" / "fixtures" / "llamafactory" / "infer_seqlen_table.json"  # copied from LLaMA-Factory's own output
LF_TOKENIZER = REPO / "tests" / "fixtures" / "llamafactory" / "tokenizer"


@pytest.fixture
def tokenizer(tiny_model_dir):
    return load_tokenizer(str(tiny_model_dir), "model_name_or_path")


@pytest.fixture
def pair_config(make_config, tiny_model_dir):
    def make(**overrides):
        base = dict(model_config=None, model_name_or_path=str(tiny_model_dir), stage="dpo", template="default",
                    dataset="pydoc_pref_alpaca", dataset_dir=str(DEMO), cutoff_len=1024)
        base.update(overrides)
        return make_config(**base)
    return make


def pairs(cfg, tokenizer, names=None):
    specs = resolve_datasets(names or cfg.dataset, cfg.dataset_dir)
    template = load_template(tokenizer, cfg)
    return build_pair_dataset([(s, read_dataset(s, cfg.max_samples)) for s in specs], template, tokenizer, cfg,
                              "train")


def answer_text(tok, ids, labels) -> str:
    return tok.decode([i for i, label in zip(ids, labels) if label != IGNORE])


def test_infer_seqlen_matches_llamafactory_table():
    table = json.loads(LF.read_text())["infer_seqlen_table"]
    assert table
    for row in table:
        assert infer_seqlen(row["source_len"], row["target_len"], row["cutoff_len"]) == \
            (row["new_source_len"], row["new_target_len"]), row


def test_alpaca_pair_shares_the_prompt_and_labels_only_the_answers(pair_config, tokenizer):
    cfg = pair_config()
    data = pairs(cfg, tokenizer)
    row = json.loads((DEMO / "pref_alpaca.json").read_text())[0]
    item = data[0]
    chosen_prompt = [i for i, label in zip(item["chosen_input_ids"], item["chosen_labels"]) if label == IGNORE]
    rejected_prompt = [i for i, label in zip(item["rejected_input_ids"], item["rejected_labels"]) if label == IGNORE]
    assert chosen_prompt == rejected_prompt
    assert row["input"] in tokenizer.decode(chosen_prompt)
    assert answer_text(tokenizer, item["chosen_input_ids"], item["chosen_labels"]).strip() == \
        row["chosen"] + tokenizer.eos_token
    assert answer_text(tokenizer, item["rejected_input_ids"], item["rejected_labels"]).strip() == \
        row["rejected"] + tokenizer.eos_token
    # the whole chosen sequence is exactly what SFT would train on for the same conversation
    messages = [{"role": "user", "content": f"{row['instruction']}\n{row['input']}"},
                {"role": "assistant", "content": row["chosen"]}]
    ids, labels, _ = encode_sample(Conversation(messages), load_template(tokenizer, cfg), tokenizer, 1024)
    assert (ids, labels) == (item["chosen_input_ids"], item["chosen_labels"])


def test_sharegpt_pairs_encode_like_the_same_alpaca_pairs(tmp_path, pair_config, tokenizer):
    rows = [{"instruction": "What is 'if'?", "input": "", "chosen": "A statement.", "rejected": "A fish."},
            {"instruction": "And 'for'?", "input": "", "chosen": "A loop.", "rejected": "A colour."}]
    share = [{"conversations": [{"from": "human", "value": r["instruction"]}],
              "chosen": {"from": "gpt", "value": r["chosen"]}, "rejected": {"from": "gpt", "value": r["rejected"]}}
             for r in rows]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "s.json").write_text(json.dumps(share))
    (tmp_path / "dataset_info.json").write_text(json.dumps({
        "a": {"file_name": "a.json", "ranking": True},
        "s": {"file_name": "s.json", "formatting": "sharegpt", "ranking": True,
              "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}}}))
    cfg = pair_config(dataset_dir=str(tmp_path), dataset="a")
    a, s = pairs(cfg, tokenizer, "a"), pairs(cfg, tokenizer, "s")
    assert [a[i] for i in range(2)] == [s[i] for i in range(2)]


def test_truncation_keeps_one_prompt_and_cuts_both_answers_alike():
    out = encode_pair(list(range(100)), list(range(200, 260)), list(range(300, 330)), cutoff_len=64)
    prompt_c = [t for t, label in zip(out["chosen_input_ids"], out["chosen_labels"]) if label == IGNORE]
    prompt_r = [t for t, label in zip(out["rejected_input_ids"], out["rejected_labels"]) if label == IGNORE]
    source, target = infer_seqlen(100, 60, 64)
    assert prompt_c == prompt_r == list(range(source))
    assert out["chosen_labels"][source:] == list(range(200, 200 + target))
    assert out["rejected_labels"][source:] == list(range(300, 300 + min(target, 30)))


def test_collate_puts_every_chosen_row_before_every_rejected_row(pair_config, tokenizer):
    data = pairs(pair_config(), tokenizer)
    batch = collate_pairs(tokenizer.pad_token_id)([data[0], data[1]])
    assert batch["input_ids"].shape[0] == 4
    for row, (index, side) in enumerate([(0, "chosen"), (1, "chosen"), (0, "rejected"), (1, "rejected")]):
        ids = data[index][f"{side}_input_ids"]
        assert batch["input_ids"][row, :len(ids)].tolist() == ids
        assert int(batch["attention_mask"][row].sum()) == len(ids)


def test_a_dataset_without_ranking_is_refused_for_pair_stages(pair_config, tokenizer):
    cfg = pair_config(dataset="pydoc_alpaca")
    with pytest.raises(ConfigError, match="ranking"):
        pairs(cfg, tokenizer)


def test_missing_answer_column_names_it(tmp_path, pair_config, tokenizer):
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "q", "chosen": "x", "worse": "y"}]))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"a": {"file_name": "a.json", "ranking": True}}))
    with pytest.raises(ConfigError, match="'rejected'"):
        pairs(pair_config(dataset_dir=str(tmp_path), dataset="a"), tokenizer)


def test_kto_rows_pair_each_prompt_with_the_previous_rows_answer_for_the_kl_sample(pair_config, tokenizer):
    """LLaMA-Factory's feedback processor: the KL answer of row i is row i - 1's (row 0: the last's)."""
    cfg = pair_config(stage="kto", dataset="pydoc_kto", max_samples=4)
    data = pairs(cfg, tokenizer)
    rows = json.loads((DEMO / "kto_sharegpt.json").read_text())[:4]
    assert [data[i]["kto_tag"] for i in range(4)] == [r["label"] for r in rows]
    for i, row in enumerate(rows):
        item, previous = data[i], rows[i - 1]
        prompt = [t for t, label in zip(item["input_ids"], item["labels"]) if label == IGNORE]
        kl_prompt = [t for t, label in zip(item["kl_input_ids"], item["kl_labels"]) if label == IGNORE]
        assert prompt == kl_prompt and row["messages"][0]["content"] in tokenizer.decode(prompt)
        assert answer_text(tokenizer, item["input_ids"], item["labels"]).strip() == \
            row["messages"][1]["content"] + tokenizer.eos_token
        assert answer_text(tokenizer, item["kl_input_ids"], item["kl_labels"]).strip() == \
            previous["messages"][1]["content"] + tokenizer.eos_token
    batch = collate_pairs(tokenizer.pad_token_id, ("", "kl_"))([data[0], data[1]])
    assert batch["input_ids"].shape[0] == 4 and batch["kto_tag"].tolist() == [rows[0]["label"], rows[1]["label"]]


def test_kto_needs_a_kto_tag(pair_config, tokenizer):
    with pytest.raises(ConfigError, match="kto_tag"):
        pairs(pair_config(stage="kto", dataset="pydoc_sharegpt"), tokenizer)


# ---- the template encoding, checked against the SFT path's own (LLaMA-Factory-checked) encoding ----

PAIR_ROW = {"system": "You answer briefly.",
            "conversations": [{"from": "human", "value": "What is 'if'?"}, {"from": "gpt", "value": "A statement."},
                              {"from": "human", "value": "And 'for'? Say it in a few words, please."}],
            "chosen": {"from": "gpt", "value": "A loop over the items of an iterable, one at a time."},
            "rejected": {"from": "gpt", "value": "A colour."}}


def lf_pair(tmp_path, make_config, template: str, cutoff_len: int = 1024, row: dict = PAIR_ROW, **keys):
    """(the encoded pair, the fresh tokenizer, the loaded template) of one sharegpt ranking row."""
    (tmp_path / "p.json").write_text(json.dumps([row]))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"p": {
        "file_name": "p.json", "formatting": "sharegpt", "ranking": True,
        "columns": {"messages": "conversations", "system": "system", "chosen": "chosen", "rejected": "rejected"}}}))
    cfg = make_config(model_config=None, model_name_or_path=str(LF_TOKENIZER), stage="dpo", template=template,
                      dataset="p", dataset_dir=str(tmp_path), cutoff_len=cutoff_len, **keys)
    tokenizer = load_tokenizer(str(LF_TOKENIZER), "model_name_or_path")  # fresh: a template changes it
    template = load_template(tokenizer, cfg)
    spec = resolve_datasets("p", str(tmp_path))[0]
    return build_pair_dataset([(spec, read_dataset(spec))], template, tokenizer, cfg, "train")[0], tokenizer, template


def sft_side(row: dict, answer: str, template, tokenizer, cutoff_len: int = 1024):
    """The SFT encoding of the pair's prompt + one answer, earlier answers unlabelled (mask_history)."""
    turns = row["conversations"] + [row[answer]]
    roles = {"human": "user", "gpt": "assistant"}
    messages = [{"role": roles[t["from"]], "content": t["value"]} for t in turns]
    ids, labels, _ = encode_sample(Conversation(messages, row.get("system", "")), template, tokenizer, cutoff_len,
                                   mask_history=True)
    return ids, labels


@pytest.mark.parametrize("name", ["qwen", "llama3", "default", "llama2", "gemma2"])
def test_pair_sides_are_the_sft_encoding_of_prompt_plus_answer(tmp_path, make_config, name):
    row = PAIR_ROW  # efficient_eos (gemma2): one turn, as SFT labels the EOS that closes an earlier answer
    if name == "gemma2":
        row = {**PAIR_ROW, "conversations": PAIR_ROW["conversations"][2:]}
    item, tokenizer, template = lf_pair(tmp_path, make_config, name, row=row)
    for side in ("chosen", "rejected"):
        assert (item[f"{side}_input_ids"], item[f"{side}_labels"]) == sft_side(row, side, template, tokenizer), side
    prompt = [t for t, label in zip(item["chosen_input_ids"], item["chosen_labels"]) if label == IGNORE]
    assert item["rejected_input_ids"][:len(prompt)] == prompt
    if template.efficient_eos:  # the answer closed by EOS, as LLaMA-Factory appends it
        assert item["chosen_labels"][-1] == item["rejected_labels"][-1] == tokenizer.eos_token_id


@pytest.mark.parametrize("name", ["qwen", "llama3"])
def test_truncated_pair_keeps_infer_seqlens_lengths(tmp_path, make_config, name):
    whole, tokenizer, template = lf_pair(tmp_path, make_config, name)
    prompt_len = sum(label == IGNORE for label in whole["chosen_labels"])
    chosen_len = len(whole["chosen_input_ids"]) - prompt_len
    rejected_len = len(whole["rejected_input_ids"]) - prompt_len
    cutoff = min(prompt_len, chosen_len) * 3 // 2  # both parts over half of it: both cut
    item, _, _ = lf_pair(tmp_path, make_config, name, cutoff_len=cutoff)
    source, target = infer_seqlen(prompt_len, max(chosen_len, rejected_len), cutoff)
    assert source < prompt_len and target < chosen_len
    for side, length in (("chosen", chosen_len), ("rejected", rejected_len)):
        answer = slice(prompt_len, prompt_len + min(target, length))
        assert item[f"{side}_input_ids"] == whole[f"{side}_input_ids"][:source] + whole[f"{side}_input_ids"][answer]
        assert item[f"{side}_labels"] == [IGNORE] * source + whole[f"{side}_labels"][answer]


def test_kto_sample_and_kl_sample_are_sft_encodings_with_the_template(tmp_path, make_config):
    """Each sample: its prompt + its answer; its KL sample: its prompt + the previous row's answer
    (LLaMA-Factory's feedback processor), both encoded as SFT encodes that conversation."""
    questions, answers = ["What is 'if'?", "And 'for'?", "And 'while'?"], ["A statement.", "A loop.", "A fish."]
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "label": i != 2}
            for i, (q, a) in enumerate(zip(questions, answers))]
    (tmp_path / "k.json").write_text(json.dumps(rows))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"k": {
        "file_name": "k.json", "formatting": "sharegpt", "columns": {"messages": "messages", "kto_tag": "label"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}))
    cfg = make_config(model_config=None, model_name_or_path=str(LF_TOKENIZER), stage="kto", template="qwen",
                      dataset="k", dataset_dir=str(tmp_path), cutoff_len=1024)
    tokenizer = load_tokenizer(str(LF_TOKENIZER), "model_name_or_path")
    template = load_template(tokenizer, cfg)
    spec = resolve_datasets("k", str(tmp_path))[0]
    data = build_pair_dataset([(spec, read_dataset(spec))], template, tokenizer, cfg, "train")

    def sft(question, answer):
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        ids, labels, _ = encode_sample(Conversation(messages), template, tokenizer, 1024)
        return ids, labels

    for i in range(3):
        assert (data[i]["input_ids"], data[i]["labels"]) == sft(questions[i], answers[i])
        assert (data[i]["kl_input_ids"], data[i]["kl_labels"]) == sft(questions[i], answers[i - 1])
        assert data[i]["kto_tag"] == (i != 2)
