"""Supervised fine-tuning data: alpaca and sharegpt rows → chat messages → token ids and labels.

Labels cover assistant tokens only (prompt tokens are -100), every assistant turn of a
multi-turn conversation included. Column and role names follow LLaMA-Factory's
dataset_info.json `columns` and `tags`.
"""
from __future__ import annotations

import logging

import datasets

from ..config.errors import ConfigError
from .labels import IGNORE
from .registry import DatasetSpec

log = logging.getLogger("ember")
OK, TRUNCATED, DROPPED = 0, 1, 2

SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}


def _columns(spec: DatasetSpec) -> dict:
    if spec.formatting == "sharegpt":
        return {"messages": "conversations", "system": None, **spec.columns}
    return {"prompt": "instruction", "query": "input", "response": "output", "system": None, "history": None,
            **spec.columns}


def check_columns(ds: datasets.Dataset, spec: DatasetSpec) -> None:
    cols = _columns(spec)
    required = [cols["messages"]] if spec.formatting == "sharegpt" else [cols["prompt"], cols["response"]]
    named = [cols[k] for k in ("system", "history") if cols.get(k)]  # optional, but must exist when named
    for name in required + named:
        if name not in ds.column_names:
            raise ConfigError(f"dataset '{spec.name}' ({spec.formatting}) has no column '{name}' "
                              f"(it has: {', '.join(ds.column_names)}); map it with columns in dataset_info.json")
    if spec.formatting != "sharegpt":
        texts = [cols[k] for k in ("prompt", "query", "response", "system") if cols.get(k) in ds.column_names]
        for name in texts:
            _check_text_column(ds, spec, name)


def _check_text_column(ds: datasets.Dataset, spec: DatasetSpec, name: str) -> None:
    """An alpaca field is a string. A column of numbers or lists would be turned into text by
    str() and trained on as such ('[\'a\', \'b\']'), which is never what the file meant."""
    feature = ds.features[name]
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string", "null"):
        return
    kind = f"{feature.dtype} values" if isinstance(feature, datasets.Value) else "lists or objects"
    raise ConfigError(f"dataset '{spec.name}' ({spec.path}): column '{name}' holds {kind}, not text; "
                      f"each row's '{name}' must be a string")


def to_messages(row: dict, spec: DatasetSpec) -> list[dict] | None:
    """One row → [{'role', 'content'}...] ending with an assistant turn, or None if malformed."""
    cols = _columns(spec)
    messages = []
    if cols.get("system") and row.get(cols["system"]):
        messages.append({"role": "system", "content": row[cols["system"]]})
    if spec.formatting == "sharegpt":
        tags = {**SHAREGPT_TAGS, **spec.tags}
        roles = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant", tags["system_tag"]: "system",
                 tags["observation_tag"]: "user", tags["function_tag"]: "assistant"}
        for turn in row.get(cols["messages"]) or []:
            role = roles.get(turn.get(tags["role_tag"])) if isinstance(turn, dict) else None
            if role is None:
                return None
            messages.append({"role": role, "content": str(turn.get(tags["content_tag"]) or "")})
    else:
        history = row.get(cols["history"]) if cols.get("history") else None
        for pair in history or []:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                return None
            messages += [{"role": "user", "content": str(pair[0])}, {"role": "assistant", "content": str(pair[1])}]
        if row.get(cols["response"]) is None:
            return None  # no answer at all (null or missing), unlike an empty string, is a broken row
        prompt = str(row.get(cols["prompt"]) or "")
        if cols.get("query") and row.get(cols["query"]):
            prompt = f"{prompt}\n{row[cols['query']]}" if prompt else str(row[cols["query"]])
        messages += [{"role": "user", "content": prompt},
                     {"role": "assistant", "content": str(row.get(cols["response"]) or "")}]
    dialogue = [m for m in messages if m["role"] != "system"]
    if not dialogue or dialogue[0]["role"] != "user" or dialogue[-1]["role"] != "assistant":
        return None
    if messages[0]["role"] != "system" and any(m["role"] == "system" for m in messages):
        return None
    return messages


def encode_conversation(messages: list[dict], tokenizer, cutoff_len: int, train_on_prompt: bool = False,
                        mask_history: bool = False) -> tuple[list[int], list[int], int]:
    """Token ids and labels of one conversation (answers labelled), truncated to cutoff_len."""
    pieces = conversation_pieces(messages, tokenizer, mask_history)
    return label_pieces(pieces, _tokenize([text for text, _ in pieces], tokenizer), cutoff_len, train_on_prompt)


def conversation_pieces(messages: list[dict], tokenizer, mask_history: bool = False) -> list[tuple[str, bool]]:
    """The text rendered with the chat template, cut at each assistant turn's edges into
    (text, is_supervised_answer) pieces, so prompt and answer are tokenized separately and no
    token straddles an edge."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    supervised = set(turns[-1:] if mask_history else turns)
    pieces, cursor = [], 0
    for i in turns:
        prefix = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        upto = text if i + 1 == len(messages) else tokenizer.apply_chat_template(messages[:i + 1], tokenize=False)
        if not text.startswith(upto) or not upto.startswith(prefix) or len(prefix) < cursor:
            raise ConfigError("the chat template does not render conversations turn by turn, so assistant "
                              "tokens cannot be located; choose another template")
        pieces += [(text[cursor:len(prefix)], False), (text[len(prefix):len(upto)], i in supervised)]
        cursor = len(upto)
    pieces.append((text[cursor:], False))
    return [(piece, is_answer) for piece, is_answer in pieces if piece]


def _tokenize(texts: list[str], tokenizer) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def label_pieces(pieces: list[tuple[str, bool]], piece_ids: list[list[int]], cutoff_len: int,
                 train_on_prompt: bool = False) -> tuple[list[int], list[int], int]:
    """Join the tokenized pieces, label the answers (everything with train_on_prompt), truncate."""
    ids: list[int] = []
    labels: list[int] = []
    for (_, is_answer), part in zip(pieces, piece_ids):
        ids += part
        labels += part if (is_answer or train_on_prompt) else [IGNORE] * len(part)
    status = OK
    if len(ids) > cutoff_len:
        ids, labels = ids[:cutoff_len], labels[:cutoff_len]
        status = TRUNCATED
    if all(label == IGNORE for label in labels[1:]):  # the first token is never predicted
        status = DROPPED
    return ids, labels, status


def encode_sft(ds: datasets.Dataset, spec: DatasetSpec, tokenizer, cfg) -> datasets.Dataset:
    check_columns(ds, spec)

    def encode(batch):
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        conversations = [to_messages(row, spec) for row in rows]
        pieces = [conversation_pieces(m, tokenizer, cfg.mask_history) if m is not None else None
                  for m in conversations]
        # one tokenizer call for every piece of the batch: the fast tokenizer's batch path
        # runs in Rust, where one call per piece would pay Python's overhead each time
        flat = _tokenize([text for row in pieces if row is not None for text, _ in row], tokenizer)
        out = {"input_ids": [], "labels": [], "status": []}
        start = 0
        for row in pieces:
            if row is None:  # malformed
                ids, labels, status = [], [], DROPPED
            else:
                ids, labels, status = label_pieces(row, flat[start:start + len(row)], cfg.cutoff_len,
                                                   cfg.train_on_prompt)
                start += len(row)
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["status"].append(status)
        return out

    encoded = ds.map(encode, batched=True, num_proc=cfg.preprocessing_num_workers, remove_columns=ds.column_names,
                     load_from_cache_file=not cfg.overwrite_cache, desc=f"encoding {spec.name}")
    status = encoded["status"]
    truncated, dropped = sum(s == TRUNCATED for s in status), sum(s == DROPPED for s in status)
    if truncated or dropped:
        log.warning("dataset '%s': %d of %d samples cut at cutoff_len %d; %d dropped (malformed, or nothing of "
                    "the answer left within cutoff_len)", spec.name, truncated, len(status), cfg.cutoff_len, dropped)
    kept = encoded.filter(lambda s: [x != DROPPED for x in s], input_columns="status", batched=True)
    if len(kept) == 0:
        raise ConfigError(f"dataset '{spec.name}': no usable samples (all {len(status)} dropped: malformed rows, "
                          f"e.g. a null answer, or no answer left within cutoff_len {cfg.cutoff_len})")
    return kept.remove_columns("status")
