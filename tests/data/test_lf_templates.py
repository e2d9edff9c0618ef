"""LLaMA-Factory 0.9.5's own encodings (tests/fixtures/llamafactory/lf_encodings.json, made by its
code) reproduced by ember's data path: the fixture's rows written as dataset files, read, converted,
encoded with the named template and truncated, then compared id for id and label for label."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from ember.config import ConfigError
from ember.config import build_config
from ember.data.pretrain import build_blocks
from ember.data.readers import read_dataset, text_column
from ember.data.registry import resolve_datasets
from ember.data.sft import encode_sft
from ember.data.templates import TEMPLATES, load_template
from ember.models.hf import load_tokenizer

LF = Path(__file__).resolve().parents[1] / "fixtures" / "llamafactory"
FIXTURE = json.loads((LF / "lf_encodings.json").read_text())
SHAREGPT_TAGS = {"user": "human", "assistant": "gpt", "function": "function_call", "observation": "observation"}


def rows_of(name: str) -> list[dict]:
    """The fixture's converter output turned back into the dataset's own row format."""
    out = []
    for row in FIXTURE["sources"][name]["rows"]:
        turns = row["_prompt"] + row["_response"]
        if FIXTURE["sources"][name]["formatting"] == "sharegpt":
            out.append({"conversations": [{"from": SHAREGPT_TAGS[t["role"]], "value": t["content"]} for t in turns],
                        "tools": row["_tools"]})
        elif name == "c4_demo":
            out.append({"text": turns[0]["content"]})
        else:
            out.append({"instruction": turns[0]["content"], "input": "", "output": turns[1]["content"]})
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lf_data")
    info = {}
    for name, source in FIXTURE["sources"].items():
        file = f"{name}.jsonl"
        (root / file).write_text("".join(json.dumps(r) + "\n" for r in rows_of(name)))
        info[name] = {"file_name": file}
        if source["formatting"] == "sharegpt":
            info[name].update(formatting="sharegpt", columns={"messages": "conversations", "tools": "tools"})
    (root / "dataset_info.json").write_text(json.dumps(info))
    return root


def config(data_dir, tmp_path, **keys):
    base = dict(stage="sft", model_name_or_path=str(LF / "tokenizer"), model_config=None, dataset="alpaca_en_demo",
                dataset_dir=str(data_dir), output_dir=str(tmp_path / "run"))
    return build_config({**base, **keys})


def ember_encoding(cfg, dataset: str) -> list[tuple[list[int], list[int]]]:
    tokenizer = load_tokenizer(str(LF / "tokenizer"), "model_name_or_path")  # fresh: templates change it
    # LLaMA-Factory writes today's date into llama3's tool prompt; the fixture froze it
    template = load_template(tokenizer, cfg).with_options(tool_date=FIXTURE["llama3_tool_prompt_date_frozen_to"])
    spec = resolve_datasets(dataset, cfg.dataset_dir)[0]
    encoded = encode_sft(read_dataset(spec), spec, template, tokenizer, cfg)
    return list(zip(encoded["input_ids"], encoded["labels"]))


def test_every_sft_case_of_llamafactory_is_reproduced(data_dir, tmp_path):
    groups = defaultdict(list)
    for case in FIXTURE["sft_cases"]:
        groups[tuple(case[k] for k in ("template", "cutoff_len", "train_on_prompt", "mask_history", "dataset"))].append(case)
    assert sum(map(len, groups.values())) == 512
    mismatches = []
    for (template, cutoff, on_prompt, history, dataset), cases in groups.items():
        cfg = config(data_dir, tmp_path, template=template, cutoff_len=cutoff, train_on_prompt=on_prompt,
                     mask_history=history, dataset=dataset)
        got = ember_encoding(cfg, dataset)
        for case in cases:
            if got[case["row_index"] if dataset != "glaive_toolcall_en_demo" else [0, 3, 7].index(case["row_index"])] \
                    != (case["input_ids"], case["labels"]):
                mismatches.append(f"{template} cutoff {cutoff} train_on_prompt {on_prompt} mask_history {history} "
                                  f"{dataset} row {case['row_index']}")
    assert not mismatches, f"{len(mismatches)} cases differ, first: {mismatches[0]}"


def test_templates_change_the_tokenizer_as_llamafactory(tmp_path, data_dir):
    for name, info in FIXTURE["template_info"].items():
        tokenizer = load_tokenizer(str(LF / "tokenizer"), "model_name_or_path")
        load_template(tokenizer, config(data_dir, tmp_path, template=name))
        after = info["tokenizer_after_fix"]
        assert (tokenizer.eos_token, tokenizer.eos_token_id, len(tokenizer)) == \
            (after["eos_token"], after["eos_token_id"], after["vocab_size_with_added"]), name
        assert tokenizer.get_added_vocab() == after["added_vocab"], name
        if "modified_tokenizer_dir" in info:  # the tokenizer LLaMA-Factory saved: its chat_template too
            saved = load_tokenizer(str(LF / info["modified_tokenizer_dir"]), "model_name_or_path")
            assert (tokenizer.chat_template, tokenizer.get_vocab()) == (saved.chat_template, saved.get_vocab()), name


@pytest.mark.parametrize("case", FIXTURE["pt_cases"], ids=lambda c: f"{c['template']}-packing_{c['packing']}")
def test_pretraining_blocks_are_llamafactorys(case, data_dir, tmp_path):
    cfg = config(data_dir, tmp_path, stage="pt", template=case["template"], cutoff_len=case["cutoff_len"],
                 dataset="c4_demo", **({} if case["packing"] else {"packing": False}))
    tokenizer = load_tokenizer(str(LF / "tokenizer"), "model_name_or_path")
    load_template(tokenizer, cfg)
    spec = resolve_datasets("c4_demo", cfg.dataset_dir)[0]
    blocks = build_blocks(text_column(read_dataset(spec), spec), tokenizer, cfg, "train", cfg.template)
    assert len(blocks) == case["n_blocks"]
    assert [blocks[i].tolist() for i in range(len(blocks))] == [b["input_ids"] for b in case["blocks"]]


def test_the_issues_families_are_declared():
    wanted = ["llama2", "llama3", "qwen", "qwen3", "qwen3_nothink", "mistral", "gemma", "gemma3", "deepseek3", "phi4",
              "glm4", "yi", "intern2", "baichuan2", "cohere", "chatml", "alpaca", "vicuna", "default", "empty"]
    assert not [name for name in wanted if name not in TEMPLATES]


def test_template_keys_are_checked_with_the_config(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'qwen3_nothink'"):
        config(data_dir, tmp_path, template="qwen3_nothnk")
    with pytest.raises(ConfigError, match="tool_format: unknown tool format 'hermes'"):
        config(data_dir, tmp_path, template="qwen", tool_format="hermes")
    with pytest.raises(ConfigError, match="train_on_prompt: template 'glm4'"):
        config(data_dir, tmp_path, template="glm4", train_on_prompt=True)


def test_chat_template_is_replaced_where_llamafactory_replaces_it(data_dir, tmp_path):
    original = load_tokenizer(str(LF / "tokenizer"), "model_name_or_path").chat_template
    for name, info in FIXTURE["template_info"].items():
        tokenizer = load_tokenizer(str(LF / "tokenizer"), "model_name_or_path")
        load_template(tokenizer, config(data_dir, tmp_path, template=name))
        assert (tokenizer.chat_template != original) == info["tokenizer_changes"]["chat_template_replaced"], name


def test_template_options_override_as_in_llamafactory(data_dir, tmp_path):
    """enable_thinking: false moves qwen3's empty thought into the prompt (same ids, no loss on it);
    default_system replaces the template's; tool_format rewrites the calls."""
    def first(**keys):
        return ember_encoding(config(data_dir, tmp_path, cutoff_len=1024, **keys), keys.get("dataset", "identity"))[0]
    (ids, labels), (ids_off, labels_off) = first(template="qwen3"), first(template="qwen3", enable_thinking=False)
    thought = [i for i, (a, b) in enumerate(zip(labels, labels_off)) if a != b]
    assert ids == ids_off and thought and all(labels_off[i] == -100 for i in thought)
    tokenizer = load_tokenizer(str(LF / "tokenizer"), "model_name_or_path")
    system_ids, _ = first(template="qwen", default_system="Be brief.")
    assert tokenizer.decode(system_ids).startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    tool_ids, _ = first(template="qwen3_nothink", tool_format="default", dataset="glaive_toolcall_en_demo")
    assert "Action: search_recipes\nAction Input: {" in tokenizer.decode(tool_ids)
