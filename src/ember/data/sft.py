"""Supervised fine-tuning data, as LLaMA-Factory 0.9.5 builds it: alpaca and sharegpt rows → a
conversation (messages, system, tools) → the template's (source, target) ids per exchange →
truncated to cutoff_len → input_ids and labels.

Labels cover the answers (assistant and function_call turns; every turn's, or only the last one's
with mask_history; the prompts too with train_on_prompt). Truncation is LLaMA-Factory's: exchange
by exchange, infer_seqlen splits what is left of cutoff_len between source and target, each
keeping its head; `overlong: drop` drops a sample that does not fit instead. Column and role names
follow dataset_info.json `columns` and `tags`.
"""
from __future__ import annotations

import logging

import datasets

from ..config.errors import ConfigError
from .chat_template import DROPPED, OK, TRUNCATED, _tokenize, conversation_pieces, encode_conversation  # noqa: F401
from .conversation import CHAT_FORMATS, Conversation, columns_of, to_conversation, to_messages  # noqa: F401  (to_messages: see chat_template)
from .labels import IGNORE
from .registry import DatasetSpec
from .truncation import infer_seqlen

log = logging.getLogger("ember")
TOO_LONG, NO_ANSWER = 3, 4  # dropped: longer than cutoff_len (overlong: drop); no answer token left


def check_columns(ds: datasets.Dataset, spec: DatasetSpec) -> None:
    if spec.formatting not in ("alpaca", *CHAT_FORMATS):
        raise ConfigError(f"dataset '{spec.name}': formatting '{spec.formatting}' is not one of alpaca, sharegpt, openai")
    cols = columns_of(spec)
    required = [cols["messages"]] if spec.formatting in CHAT_FORMATS else [cols["prompt"], cols["response"]]
    named = [cols[k] for k in ("system", "history") if cols.get(k)]  # optional, but must exist when named
    for name in required + named:
        if name not in ds.column_names:
            raise ConfigError(f"dataset '{spec.name}' ({spec.formatting}) has no column '{name}' "
                              f"(it has: {', '.join(ds.column_names)}); map it with columns in dataset_info.json")
    if spec.formatting not in CHAT_FORMATS:
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


def encode_sample(conversation: Conversation, template, tokenizer, cutoff_len: int, train_on_prompt: bool = False,
                  mask_history: bool = False, overlong: str = "truncate") -> tuple[list[int], list[int], int]:
    """(input_ids, labels, status) of one conversation, as LLaMA-Factory's supervised processor."""
    pairs = template.encode_multiturn(tokenizer, conversation.messages, conversation.system, conversation.tools,
                                      mask_history)
    eos = tokenizer.eos_token_id
    closing = 1 if template.efficient_eos else 0  # efficient_eos: one EOS ends the sample
    if overlong == "drop" and closing + sum(len(s) + len(t) for s, t in pairs) > cutoff_len:
        return [], [], TOO_LONG
    if mask_history:
        pairs = pairs[::-1]  # the last exchange is kept first, the earlier ones as room allows
    ids: list[int] = []
    labels: list[int] = []
    total, status = closing, OK
    for turn, (source, target) in enumerate(pairs):
        if total >= cutoff_len:
            status = TRUNCATED
            break
        source_len, target_len = infer_seqlen(len(source), len(target), cutoff_len - total)
        if (source_len, target_len) != (len(source), len(target)):
            status = TRUNCATED
        source, target = source[:source_len], target[:target_len]
        total += source_len + target_len
        if train_on_prompt:
            source_labels = source
        elif template.efficient_eos and turn != 0:  # the previous answer's EOS, written as this source's head
            source_labels = [eos] + [IGNORE] * (source_len - 1)
        else:
            source_labels = [IGNORE] * source_len
        target_labels = [IGNORE] * target_len if mask_history and turn != 0 else target
        if mask_history:
            ids, labels = source + target + ids, source_labels + target_labels + labels
        else:
            ids, labels = ids + source + target, labels + source_labels + target_labels
    if template.efficient_eos:
        ids, labels = ids + [eos], labels + [eos]
    if all(label == IGNORE for label in labels[1:]):  # nothing to learn from: the first token is never predicted
        status = NO_ANSWER
    return ids, labels, status


def encode_sft(ds: datasets.Dataset, spec: DatasetSpec, template, tokenizer, cfg) -> datasets.Dataset:
    """Encoded rows (input_ids, labels) in dataset order; the dropped and cut ones counted in the log."""
    check_columns(ds, spec)
    overlong = getattr(cfg, "overlong", "truncate")

    def encode(batch):
        out = {"input_ids": [], "labels": [], "status": []}
        for values in zip(*batch.values()):
            conversation = to_conversation(dict(zip(batch, values)), spec)
            ids, labels, status = ([], [], DROPPED) if conversation is None else encode_sample(
                conversation, template, tokenizer, cfg.cutoff_len, cfg.train_on_prompt, cfg.mask_history, overlong)
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["status"].append(status)
        return out

    encoded = ds.map(encode, batched=True, num_proc=cfg.preprocessing_num_workers, remove_columns=ds.column_names,
                     load_from_cache_file=not cfg.overwrite_cache, desc=f"encoding {spec.name}")
    log_counts(spec.name, encoded["status"], cfg.cutoff_len, overlong)
    kept = encoded.filter(lambda s: [x in (OK, TRUNCATED) for x in s], input_columns="status", batched=True)
    if len(kept) == 0:
        raise ConfigError(f"dataset '{spec.name}': no usable samples (all {len(encoded)} dropped: malformed rows, "
                          f"e.g. a null answer, or no answer left within cutoff_len {cfg.cutoff_len})")
    return kept.remove_columns("status")


def log_counts(name: str, status: list[int], cutoff_len: int, overlong: str) -> None:
    """One line: how many samples were kept whole, cut, and dropped (and why)."""
    count = {s: status.count(s) for s in (OK, TRUNCATED, DROPPED, TOO_LONG, NO_ANSWER)}
    line = f"dataset '{name}': {len(status)} rows, {count[OK]} kept whole, {count[TRUNCATED]} cut to cutoff_len {cutoff_len}"
    dropped = count[DROPPED] + count[TOO_LONG] + count[NO_ANSWER]
    if dropped:
        reasons = [f"{count[DROPPED]} malformed", f"{count[TOO_LONG]} longer than cutoff_len (overlong: drop)",
                   f"{count[NO_ANSWER]} with no answer token left"]
        line += f", {dropped} dropped ({', '.join(r for r in reasons if not r.startswith('0 '))})"
    (log.warning if dropped or count[TRUNCATED] else log.info)("%s", line)
