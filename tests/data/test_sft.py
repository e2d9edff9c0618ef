"""stage sft data: alpaca / sharegpt rows → messages → token ids with assistant-only labels.

Expected messages are written out by hand; expected supervised tokens are recomputed here
without ember's labelling: each assistant part of the rendered conversation is cut out of the
text and tokenized on its own with the `tokenizers` library straight from tokenizer.json.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from ember.config import ConfigError
from ember.data.packing import collate_sft
from ember.data.labels import IGNORE
from ember.data.registry import DatasetSpec
from ember.data.conversation import to_conversation
from ember.data.sft import encode_conversation, encode_sample, to_messages
from ember.data.templates import ensure_chat_template, get_template, load_template
from ember.models.hf import load_causal_lm, load_tokenizer
from ember.tasks import build_task

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "data"


# ---- helpers -------------------------------------------------------------------------------

@pytest.fixture
def tokenizer(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir), "model_name_or_path")
    assert not tok.chat_template, "the fixture tokenizer is meant to have no chat_template"
    ensure_chat_template(tok, "default")
    return tok


@pytest.fixture
def sft_config(make_config, tiny_model_dir):
    def make(**overrides):
        base = dict(model_config=None, model_name_or_path=str(tiny_model_dir), stage="sft", template="default",
                    dataset="pydoc_alpaca,pydoc_sharegpt", dataset_dir=str(DEMO), cutoff_len=1024)
        base.update(overrides)
        return make_config(**base)
    return make


def write_dataset(root: Path, entries: dict[str, tuple[dict, list]]) -> Path:
    """entries: name → (dataset_info entry without file_name, rows)."""
    root.mkdir(parents=True, exist_ok=True)
    info = {}
    for name, (entry, rows) in entries.items():
        (root / f"{name}.json").write_text(json.dumps(rows))
        info[name] = {"file_name": f"{name}.json", **entry}
    (root / "dataset_info.json").write_text(json.dumps(info))
    return root


def spec(formatting="alpaca", columns=None, tags=None) -> DatasetSpec:
    return DatasetSpec(name="t", path=Path("."), formatting=formatting, columns=columns or {}, tags=tags or {})


def assistant_parts(tok, messages: list[dict]) -> list[str]:
    """The text each assistant turn adds to the rendered conversation (content and its end marker)."""
    parts = []
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            before = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            upto = tok.apply_chat_template(messages[:i + 1], tokenize=False)
            assert upto.startswith(before)
            parts.append(upto[len(before):])
    return parts


def core_tokenizer(model_dir) -> Tokenizer:
    return Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))


def char_spans(tok, ids) -> list[tuple[int, int]]:
    """Where each token's text lies in the decoded sequence (from decoding growing prefixes)."""
    ends = [len(tok.decode(ids[:k + 1])) for k in range(len(ids))]
    return list(zip([0] + ends[:-1], ends))


def supervised_text(tok, ids, labels) -> str:
    """The labelled tokens decoded run by run (each run of consecutive supervised tokens)."""
    runs, current = [], []
    for t, l in zip(ids, labels):
        if l != IGNORE:
            assert l == t, "a supervised label must be the token itself"
            current.append(t)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tok.decode(r) for r in runs]


# ---- rows → messages ---------------------------------------------------------------------------

def test_alpaca_row_with_system_history_and_input():
    row = {"instruction": "Explain this.", "input": "while", "output": "A loop.", "sys": "Be brief.",
           "hist": [["Hi", "Hello!"], ["What is Python?", "A language."]]}
    messages = to_messages(row, spec(columns={"system": "sys", "history": "hist"}))
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is Python?"}, {"role": "assistant", "content": "A language."},
        {"role": "user", "content": "Explain this.\nwhile"}, {"role": "assistant", "content": "A loop."},
    ]


def test_alpaca_row_without_input_system_or_history():
    messages = to_messages({"instruction": "Say hi.", "input": "", "output": "Hi."}, spec())
    assert messages == [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."}]


def test_alpaca_custom_column_names():
    row = {"q": "Question?", "a": "Answer."}
    assert to_messages(row, spec(columns={"prompt": "q", "response": "a", "query": "nothing"})) == [
        {"role": "user", "content": "Question?"}, {"role": "assistant", "content": "Answer."}]


def test_sharegpt_default_tags_from_value_human_gpt():
    row = {"conversations": [{"from": "system", "value": "S."}, {"from": "human", "value": "Q1"},
                             {"from": "gpt", "value": "A1"}, {"from": "human", "value": "Q2"},
                             {"from": "gpt", "value": "A2"}]}
    assert to_messages(row, spec("sharegpt")) == [
        {"role": "system", "content": "S."}, {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A2"}]


def test_sharegpt_custom_tags_openai_style():
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
            "system_tag": "system"}
    row = {"messages": [{"role": "system", "content": "S."}, {"role": "user", "content": "Q"},
                        {"role": "assistant", "content": "A"}], "sys": None}
    assert to_messages(row, spec("sharegpt", columns={"messages": "messages"}, tags=tags)) == [
        {"role": "system", "content": "S."}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    # with these tags, the default sharegpt values are not roles any more
    wrong = {"messages": [{"role": "human", "content": "Q"}, {"role": "gpt", "content": "A"}]}
    assert to_messages(wrong, spec("sharegpt", columns={"messages": "messages"}, tags=tags)) is None


def test_sharegpt_system_column():
    row = {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}], "sys": "S."}
    assert to_messages(row, spec("sharegpt", columns={"system": "sys"}))[0] == {"role": "system", "content": "S."}


@pytest.mark.parametrize("turns", [
    [{"from": "human", "value": "Q"}, {"from": "bot", "value": "A"}],                      # unknown role
    [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}, {"from": "human", "value": "Q2"}],  # ends on user
    [{"from": "gpt", "value": "A"}],                                                        # starts with assistant
    [],                                                                                     # empty
])
def test_malformed_sharegpt_rows_are_refused(turns):
    assert to_messages({"conversations": turns}, spec("sharegpt")) is None


def test_malformed_rows_are_dropped_and_counted(tmp_path, sft_config, caplog):
    good = [{"from": "human", "value": "What is while?"}, {"from": "gpt", "value": "The while loop repeats."}]
    rows = [{"conversations": good},
            {"conversations": [{"from": "human", "value": "Q"}, {"from": "robot", "value": "A"}]},
            {"conversations": good + [{"from": "human", "value": "And then?"}]},
            {"conversations": good}]
    root = write_dataset(tmp_path / "d", {"chats": ({"formatting": "sharegpt"}, rows)})
    cfg = sft_config(dataset="chats", dataset_dir=str(root))
    with caplog.at_level(logging.WARNING, logger="ember"):
        train, _, _ = build_task(cfg).build_data()
    assert len(train) == 2
    warnings = [r.getMessage() for r in caplog.records if r.name == "ember" and r.levelno >= logging.WARNING]
    assert any(re.search(r"\b2 dropped", m) and "chats" in m for m in warnings), warnings


def test_a_batch_is_tokenized_as_each_conversation_alone(tmp_path, sft_config, tokenizer):
    """encode_sft tokenizes all pieces of a batch in one call; the rows it keeps must be exactly
    what encoding each conversation on its own gives, malformed rows in between or not."""
    good = [{"from": "human", "value": "What is while?"}, {"from": "gpt", "value": "The while loop repeats."}]
    longer = good + [{"from": "human", "value": "And break?"}, {"from": "gpt", "value": "It leaves the loop."}]
    rows = [{"conversations": good}, {"conversations": [{"from": "human", "value": "Q"}]},
            {"conversations": longer}, {"conversations": [{"from": "system", "value": "Be brief."}] + good}]
    root = write_dataset(tmp_path / "d", {"chats": ({"formatting": "sharegpt"}, rows)})
    task = build_task(sft_config(dataset="chats", dataset_dir=str(root)))
    train, _, _ = task.build_data()
    conversations = [to_conversation(row, spec("sharegpt")) for row in rows]
    expected = [encode_sample(c, task.template, task.tokenizer, 1024)[:2] for c in conversations if c is not None]
    assert len(expected) == 3
    assert sorted((list(x["input_ids"]), list(x["labels"])) for x in train) == sorted(expected)


def test_all_rows_malformed_is_a_config_error(tmp_path, sft_config):
    rows = [{"conversations": [{"from": "human", "value": "Q"}]}] * 3
    root = write_dataset(tmp_path / "d", {"chats": ({"formatting": "sharegpt"}, rows)})
    with pytest.raises(ConfigError, match="chats"):
        build_task(sft_config(dataset="chats", dataset_dir=str(root))).build_data()


@pytest.mark.parametrize("entry, missing", [
    ({"columns": {"response": "answer"}}, "answer"),
    ({"columns": {"system": "system_prompt"}}, "system_prompt"),
    ({"formatting": "sharegpt", "columns": {"messages": "dialogue"}}, "dialogue"),
])
def test_missing_mapped_column_names_it(tmp_path, sft_config, entry, missing):
    rows = [{"instruction": "Q", "input": "", "output": "A", "conversations": []}]
    root = write_dataset(tmp_path / "d", {"ds": (entry, rows)})
    with pytest.raises(ConfigError, match=re.escape(f"'{missing}'")):
        build_task(sft_config(dataset="ds", dataset_dir=str(root))).build_data()


# ---- labels: assistant tokens only --------------------------------------------------------

MULTI = [{"role": "system", "content": "You answer questions about Python."},
         {"role": "user", "content": "What is while?"},
         {"role": "assistant", "content": "The while statement repeats a block."},
         {"role": "user", "content": "And pass?"},
         {"role": "assistant", "content": "A null operation: nothing happens."}]


def test_only_assistant_tokens_carry_labels_multi_turn(tokenizer):
    ids, labels, _ = encode_conversation(MULTI, tokenizer, 1024)
    assert len(ids) == len(labels)
    assert supervised_text(tokenizer, ids, labels) == assistant_parts(tokenizer, MULTI)
    assert labels[0] == IGNORE


@pytest.mark.parametrize("name", ["default", "chatml"])
@pytest.mark.parametrize("answer", [
    "The while statement repeats a block.",
    "the while statement repeats a block.",   # starts with a word that merges with the space before it
    "is a statement.",
    '"pass" is a null operation.',
])
def test_every_answer_character_is_supervised(tiny_model_dir, name, answer):
    """Each character of an answer lies in a supervised token, whatever the answer starts with; no token
    that is only prompt is supervised."""
    tok = load_tokenizer(str(tiny_model_dir), "model_name_or_path")
    ensure_chat_template(tok, name)
    messages = [{"role": "user", "content": "Question?"}, {"role": "assistant", "content": answer}]
    ids, labels, _ = encode_conversation(messages, tok, 1024)
    text = tok.apply_chat_template(messages, tokenize=False)
    offsets = char_spans(tok, ids)
    assert tok.decode(ids) == text
    start = text.index(answer)
    covered = set()
    for (a, b), label in zip(offsets, labels):
        if label != IGNORE:
            covered.update(range(a, b))
    missing = [text[i] for i in range(start, start + len(answer)) if i not in covered]
    assert not missing, f"answer characters without a label: {missing!r}"
    for (a, b), label in zip(offsets, labels):
        if b <= text.index("Question?") + len("Question?"):
            assert label == IGNORE, "a token of the question is supervised"


def test_supervised_tokens_match_an_independent_count(tiny_model_dir, sft_config):
    """Every demo sample (alpaca with system prompt, and two-turn sharegpt): ember's supervised tokens
    equal the assistant parts of the rendered text tokenized on their own."""
    task = build_task(sft_config())
    train, _, _ = task.build_data()
    tok, core = task.tokenizer, core_tokenizer(tiny_model_dir)
    alpaca = json.loads((DEMO / "sft_alpaca.json").read_text())
    sharegpt = json.loads((DEMO / "sft_sharegpt.json").read_text())
    conversations = []
    for row in alpaca:
        user = row["instruction"] + ("\n" + row["input"] if row["input"] else "")
        conversations.append(([{"role": "system", "content": row["system"]}] if row.get("system") else [])
                             + [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}])
    for row in sharegpt:
        roles = {"human": "user", "gpt": "assistant"}
        conversations.append([{"role": roles[t["from"]], "content": t["value"]} for t in row["conversations"]])
    assert len(train) == len(conversations) == 154
    mismatched = []
    for i, messages in enumerate(conversations):
        text = tok.apply_chat_template(messages, tokenize=False)
        assert tok.decode(train.input_ids[i]) == text
        expected = sum(len(core.encode(part, add_special_tokens=False).ids) for part in assistant_parts(tok, messages))
        got = sum(label != IGNORE for label in train.labels[i])
        if got != expected:
            mismatched.append((i, got, expected, messages[-1]["content"][:30]))
    assert not mismatched, f"{len(mismatched)} samples differ (index, ember, independent, answer): {mismatched[:5]}"


def test_prompt_positions_carry_no_loss(tiny_model_dir, sft_config):
    """Perturbing the logits that predict prompt (or padding) tokens leaves training_step's loss bit-identical;
    perturbing one that predicts an answer token changes it."""
    task = build_task(sft_config(dataset="pydoc_sharegpt", max_samples=3))
    train, _, _ = task.build_data()
    batch = collate_sft(task.tokenizer.pad_token_id)([train[i] for i in range(3)])
    model = load_causal_lm(str(tiny_model_dir)).eval()

    class Perturbed(torch.nn.Module):
        def __init__(self, where):
            super().__init__()
            self.where = where

        def forward(self, **kwargs):
            out = model(**kwargs)
            noise = torch.randn(out.logits.shape, generator=torch.Generator().manual_seed(1)) * 10
            out.logits = out.logits + noise * self.where[..., None]
            return out

    # logits at position p predict the label at p + 1
    ignored = torch.zeros(batch["labels"].shape)
    ignored[:, :-1] = (batch["labels"][:, 1:] == IGNORE).float()
    assert 0 < ignored.sum() < ignored.numel()
    with torch.no_grad():
        clean = task.training_step(model, batch, 0)["model"]
        prompt_noise = task.training_step(Perturbed(ignored), batch, 0)["model"]
        answer = torch.zeros_like(ignored)
        row, col = (batch["labels"][:, 1:] != IGNORE).nonzero()[0]
        answer[row, col] = 1
        answer_noise = task.training_step(Perturbed(answer), batch, 0)["model"]
    assert torch.equal(clean.total, prompt_noise.total)
    assert int(clean.count) == int(prompt_noise.count) == int((batch["labels"][:, 1:] != IGNORE).sum())
    assert not torch.equal(clean.total, answer_noise.total)


def test_masked_loss_is_the_answer_part_of_the_full_loss(tokenizer, tiny_model_dir):
    """Relabelling the prompt positions (train_on_prompt) only adds their terms: the masked loss equals the
    full per-token loss summed over answer positions."""
    model = load_causal_lm(str(tiny_model_dir)).eval()
    ids, masked, _ = encode_conversation(MULTI, tokenizer, 1024)
    ids2, full, _ = encode_conversation(MULTI, tokenizer, 1024, train_on_prompt=True)
    assert ids == ids2 and full == ids
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
    per_token = torch.nn.functional.cross_entropy(logits, torch.tensor(full[1:]), reduction="none")
    answer = torch.tensor(masked[1:]) != IGNORE
    masked_loss = torch.nn.functional.cross_entropy(logits, torch.tensor(masked[1:]), ignore_index=IGNORE,
                                                    reduction="sum")
    torch.testing.assert_close(masked_loss, per_token[answer].sum())
    assert per_token[~answer].sum() > 0  # the prompt terms are real, and excluded


def test_mask_history_supervises_only_the_last_turn(tokenizer):
    ids, labels, _ = encode_conversation(MULTI, tokenizer, 1024, mask_history=True)
    assert supervised_text(tokenizer, ids, labels) == assistant_parts(tokenizer, MULTI)[-1:]
    _, all_turns, _ = encode_conversation(MULTI, tokenizer, 1024)
    assert sum(l != IGNORE for l in labels) < sum(l != IGNORE for l in all_turns)


def test_train_on_prompt_supervises_every_token(tokenizer):
    ids, labels, _ = encode_conversation(MULTI, tokenizer, 1024, train_on_prompt=True)
    assert labels == ids


def test_mask_history_and_train_on_prompt_reach_the_dataset(sft_config):
    counts = {}
    for name, extra in {"plain": {}, "history": {"mask_history": True}, "prompt": {"train_on_prompt": True}}.items():
        train, _, _ = build_task(sft_config(dataset="pydoc_sharegpt", max_samples=4, **extra)).build_data()
        counts[name] = sum(sum(l != IGNORE for l in row) for row in train.labels)
        total = sum(len(row) for row in train.input_ids)
    assert counts["history"] < counts["plain"] < counts["prompt"] == total


# ---- cutoff_len ------------------------------------------------------------------------------

def _lengths(task, rows):
    """Untruncated (source, target) lengths of one-turn alpaca rows."""
    pairs = [task.template.encode_multiturn(task.tokenizer, to_conversation(r, spec()).messages)[0] for r in rows]
    return [(len(s), len(t)) for s, t in pairs]


def test_truncated_answer_is_kept_and_counted(tmp_path, sft_config, caplog):
    short = {"instruction": "Q?", "input": "", "output": "Yes."}
    long = {"instruction": "Q?", "input": "", "output": "A very long answer " * 20}
    (s1, t1), (s2, t2) = _lengths(build_task(sft_config()), [short, long])
    cutoff = (s1 + t1 + s2 + t2) // 2
    assert s1 + t1 < cutoff < s2 + t2
    root = write_dataset(tmp_path / "d", {"qa": ({}, [short, long])})
    with caplog.at_level(logging.WARNING, logger="ember"):
        train, _, _ = build_task(sft_config(dataset="qa", dataset_dir=str(root), cutoff_len=cutoff)).build_data()
    # LLaMA-Factory's infer_seqlen: the short prompt is kept whole, the answer gives way
    assert [len(x) for x in train.input_ids] == [s1 + t1, cutoff]
    assert train.labels[1][s2 - 1] == IGNORE and train.labels[1][s2] != IGNORE
    messages = [r.getMessage() for r in caplog.records if r.name == "ember"]
    report = [m for m in messages if re.search(rf"\b1 cut to cutoff_len {cutoff}\b", m)]
    assert report, f"the truncated sample should be counted in a warning: {messages}"
    assert "dropped" not in report[0]


def test_long_prompt_gives_way_to_a_short_answer(tmp_path, sft_config, caplog):
    """LLaMA-Factory keeps a short answer whole and the head of a long prompt; overlong: drop
    leaves such a sample out instead, and counts it."""
    short = {"instruction": "Q?", "input": "", "output": "Yes."}
    long_prompt = {"instruction": "Tell me " * 40, "input": "", "output": "Yes."}
    task = build_task(sft_config())
    (s1, t1), (s2, t2) = _lengths(task, [short, long_prompt])
    cutoff = s1 + t1 + 4
    assert t2 * 2 < cutoff < s2
    root = write_dataset(tmp_path / "d", {"qa": ({}, [long_prompt, short, short])})
    train, _, _ = build_task(sft_config(dataset="qa", dataset_dir=str(root), cutoff_len=cutoff)).build_data()
    full = encode_sample(to_conversation(long_prompt, spec()), task.template, task.tokenizer, 10**6)
    assert list(train.input_ids[0]) == full[0][:cutoff - t2] + full[0][s2:]
    assert [len(x) for x in train.input_ids] == [cutoff, s1 + t1, s1 + t1]
    with caplog.at_level(logging.WARNING, logger="ember"):
        train, _, _ = build_task(sft_config(dataset="qa", dataset_dir=str(root), cutoff_len=cutoff,
                                            overlong="drop")).build_data()
    assert len(train) == 2 and all(len(x) == s1 + t1 for x in train.input_ids)
    warnings = [r.getMessage() for r in caplog.records if r.name == "ember" and r.levelno == logging.WARNING]
    assert any(re.search(r"\b1 dropped \(1 longer than cutoff_len", m) and "qa" in m for m in warnings), warnings


def test_no_warning_when_nothing_is_cut(sft_config, caplog):
    with caplog.at_level(logging.WARNING, logger="ember"):
        build_task(sft_config(dataset="pydoc_alpaca", max_samples=8)).build_data()
    assert not [r for r in caplog.records if r.name == "ember" and r.levelno >= logging.WARNING]


# ---- templates -------------------------------------------------------------------------------

CHAT = [{"from": "system", "value": "S."}, {"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]


def encoded_text(task, turns=CHAT) -> tuple[str, list[str]]:
    """The sample's text and its supervised runs, as the task encodes a sharegpt row."""
    conversation = to_conversation({"conversations": turns}, spec("sharegpt"))
    ids, labels, _ = encode_sample(conversation, task.template, task.tokenizer, 1024)
    return task.tokenizer.decode(ids), supervised_text(task.tokenizer, ids, labels)


def test_default_template_is_llamafactorys(sft_config):
    task = build_task(sft_config(template="default"))
    eos = task.tokenizer.eos_token
    assert encoded_text(task) == (f"System: S.{eos}\nHuman: Q?{eos}\nAssistant:A.{eos}\n", [f"A.{eos}\n"])
    # the tokenizer carries the same format as a chat_template, for generation after training
    assert task.tokenizer.apply_chat_template([{"role": "system", "content": "S."}, {"role": "user", "content": "Q?"}],
                                              tokenize=False) == f"System: S.{eos}\nHuman: Q?{eos}\nAssistant:"


def test_chatml_template(sft_config):
    task = build_task(sft_config(template="chatml"))
    assert task.tokenizer.eos_token == "<|im_end|>"  # LLaMA-Factory's replace_eos
    assert encoded_text(task) == ("<|im_start|>system\nS.<|im_end|>\n<|im_start|>user\nQ?<|im_end|>\n"
                                  "<|im_start|>assistant\nA.<|im_end|>\n", ["A.<|im_end|>\n"])


def test_no_template_and_no_chat_template_means_empty(sft_config):
    task = build_task(sft_config(template=None))
    assert task.template.name == "empty"
    assert encoded_text(task) == ("S.Q?A.", ["A."])


def test_unknown_template_lists_the_valid_ones(sft_config):
    with pytest.raises(ConfigError) as err:
        build_task(sft_config(template="no_such_template"))
    message = str(err.value)
    assert "no_such_template" in message
    for name in ("default", "chatml", "empty"):
        assert name in message


def test_unset_template_reads_the_tokenizers_chat_template(tmp_path, tiny_model_dir, sft_config):
    """template unset: the tokenizer's own chat_template, read into slots (LLaMA-Factory's
    parse_template); a named template encodes with its own slots whatever the tokenizer has."""
    own = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% if m['role'] == 'assistant' %}"
           "{{ eos_token }}{% endif %}{{ '|' }}{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}")
    tok = load_tokenizer(str(tiny_model_dir), "model_name_or_path")
    tok.chat_template = own
    tok.save_pretrained(tmp_path / "tok")
    task = build_task(sft_config(tokenizer_name_or_path=str(tmp_path / "tok"), template=None))
    eos = tok.eos_token
    assert encoded_text(task) == (f"[system] S.|[user] Q?|[assistant] A.{eos}|", [f"A.{eos}|"])
    task = build_task(sft_config(tokenizer_name_or_path=str(tmp_path / "tok"), template="llama3"))
    assert task.tokenizer.chat_template == own  # llama3 does not replace a chat_template (LLaMA-Factory)
    assert encoded_text(task)[0].startswith(f"{tok.bos_token}<|start_header_id|>system<|end_header_id|>\n\nS.<|eot_id|>")


@pytest.mark.parametrize("entry, row", [
    ({"formatting": "sharegpt", "columns": {"messages": "conversations", "images": "pictures"}},
     {"conversations": [{"from": "human", "value": "<image>What is it?"}, {"from": "gpt", "value": "A cat."}],
      "pictures": ["cat.png"]}),
    ({}, {"instruction": "<image>Describe.", "input": "", "output": "A dog.", "images": ["dog.png"]}),
])
def test_a_dataset_with_images_is_refused_under_the_lm_task(tmp_path, sft_config, entry, row):
    root = write_dataset(tmp_path / "d", {"pics": (entry, [row])})
    with pytest.raises(ConfigError, match=r"dataset 'pics' has images .*task: vlm"):
        build_task(sft_config(dataset="pics", dataset_dir=str(root))).build_data()


def test_tool_calls_and_results_are_formatted_and_only_answers_trained(sft_config):
    """A function_call turn is written in the template's tool format and trained on; an observation
    is prompt; the tools column is described in the system message."""
    task = build_task(sft_config(template="qwen3_nothink"))
    tools = json.dumps([{"name": "add", "description": "Adds.", "parameters": {
        "type": "object", "properties": {"a": {"type": "number"}}, "required": ["a"]}}])
    turns = [{"from": "human", "value": "1+1?"}, {"from": "function_call", "value": '{"name": "add", "arguments": {"a": 1}}'},
             {"from": "observation", "value": "2"}, {"from": "gpt", "value": "Two."}]
    conversation = to_conversation({"conversations": turns, "tools": tools},
                                   spec("sharegpt", columns={"tools": "tools"}))
    ids, labels, _ = encode_sample(conversation, task.template, task.tokenizer, 4096)
    text = task.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\n\n\n# Tools\n\nYou may call one or more functions")
    assert '{"type": "function", "function": {"name": "add"' in text
    assert supervised_text(task.tokenizer, ids, labels) == [
        '<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call><|im_end|>\n', "Two.<|im_end|>\n"]


def test_openai_rows_read_like_the_same_sharegpt_rows():
    """LLaMA-Factory's openai form: tool_calls become a function_call turn, consecutive tool results
    one observation (joined by its </tool_response><tool_response> marker)."""
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
            "observation_tag": "tool", "function_tag": "function_call", "system_tag": "system"}
    call = {"type": "function", "function": {"name": "add", "arguments": {"a": 1}}}
    openai = {"messages": [{"role": "system", "content": "S."}, {"role": "user", "content": "1+1? 2+2?"},
                           {"role": "assistant", "content": "", "tool_calls": [call, call]},
                           {"role": "tool", "content": "2"}, {"role": "tool", "content": "4"},
                           {"role": "assistant", "content": "2 and 4."}]}
    share = {"conversations": [
        {"from": "system", "value": "S."}, {"from": "human", "value": "1+1? 2+2?"},
        {"from": "function_call", "value": json.dumps([call["function"], call["function"]])},
        {"from": "observation", "value": "2\n</tool_response>\n<tool_response>\n4"}, {"from": "gpt", "value": "2 and 4."}]}
    got = to_conversation(openai, spec("openai", columns={"messages": "messages"}, tags=tags))
    assert got == to_conversation(share, spec("sharegpt")) and got.system == "S." and len(got.messages) == 4


def test_an_unknown_formatting_is_named(tmp_path, sft_config):
    root = write_dataset(tmp_path / "d", {"odd": ({"formatting": "chatml"}, [{"text": "x"}])})
    with pytest.raises(ConfigError, match="dataset 'odd': formatting 'chatml' is not one of alpaca, sharegpt, openai"):
        build_task(sft_config(dataset="odd", dataset_dir=str(root))).build_data()
