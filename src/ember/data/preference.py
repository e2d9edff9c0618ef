"""Preference data (LLaMA-Factory's `ranking: true` datasets): a prompt with a chosen and a
rejected answer → two token sequences that share the prompt, labelled on the answer only.

alpaca form: prompt/query/system/history columns as in SFT, the answers in `chosen` and
`rejected` (strings). sharegpt form: the conversation up to the last user turn in `messages`,
the answers in `chosen` and `rejected` (one message each, e.g. {"from": "gpt", "value": ...}).
Truncation is LLaMA-Factory's (infer_seqlen): prompt and answers each keep their head, the
answers cut to one common length, so both sequences of a pair hold the same prompt.
"""
from __future__ import annotations

import dataclasses
import logging

import datasets
import torch
from torch.utils.data import Dataset

from ..config.errors import ConfigError
from .labels import IGNORE
from .registry import DatasetSpec
from .sft import _tokenize, check_columns, conversation_pieces, to_messages

log = logging.getLogger("ember")


def infer_seqlen(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    """LLaMA-Factory's split of cutoff_len between prompt (source) and answer (target)."""
    if target_len * 2 < cutoff_len:  # a short answer is kept whole; the prompt gives way
        max_target_len = cutoff_len
    elif source_len * 2 < cutoff_len:  # a short prompt is kept whole; the answer gives way
        max_target_len = cutoff_len - source_len
    else:  # both long: shares in proportion to their lengths
        max_target_len = int(cutoff_len * (target_len / (source_len + target_len)))
    new_target_len = min(max_target_len, target_len)
    new_source_len = min(max(cutoff_len - new_target_len, 0), source_len)
    return new_source_len, new_target_len


def _answer_columns(spec: DatasetSpec) -> tuple[str, str]:
    return spec.columns.get("chosen", "chosen"), spec.columns.get("rejected", "rejected")


def check_pair_columns(ds: datasets.Dataset, spec: DatasetSpec) -> None:
    chosen, rejected = _answer_columns(spec)
    for name in (chosen, rejected):
        if name not in ds.column_names:
            raise ConfigError(f"dataset '{spec.name}' (ranking, {spec.formatting}) has no column '{name}' "
                              f"(it has: {', '.join(ds.column_names)}); map chosen/rejected with columns in "
                              "dataset_info.json")
    if spec.formatting == "sharegpt":
        check_columns(ds, spec)
    else:  # the answer columns stand in for SFT's response column
        check_columns(ds, dataclasses.replace(spec, columns={**spec.columns, "response": chosen}))


def pair_messages(row: dict, spec: DatasetSpec) -> tuple[list[dict], list[dict]] | None:
    """(prompt + chosen, prompt + rejected) as chat messages, or None for a malformed row."""
    chosen_col, rejected_col = _answer_columns(spec)
    if spec.formatting == "sharegpt":
        messages_col = spec.columns.get("messages", "conversations")
        turns = list(row.get(messages_col) or [])
        answers = [row.get(chosen_col), row.get(rejected_col)]
        if not all(isinstance(a, dict) for a in answers):
            return None
        pair = [to_messages({**row, messages_col: turns + [answer]}, spec) for answer in answers]
    else:
        pair = [to_messages(row, dataclasses.replace(spec, columns={**spec.columns, "response": col}))
                for col in (chosen_col, rejected_col)]
    if pair[0] is None or pair[1] is None or pair[0][:-1] != pair[1][:-1]:
        return None
    return pair[0], pair[1]


def _prompt_and_answer(messages: list[dict], tokenizer) -> tuple[str, str]:
    """The rendered text before the last answer (earlier answers unlabelled, as LLaMA-Factory's
    encode_oneturn) and the last answer with whatever the template puts after it."""
    pieces = conversation_pieces(messages, tokenizer, mask_history=True)
    last = max(i for i, (_, is_answer) in enumerate(pieces) if is_answer)
    return "".join(t for t, _ in pieces[:last]), "".join(t for t, _ in pieces[last:])


def encode_pair(prompt_ids: list[int], chosen_ids: list[int], rejected_ids: list[int], cutoff_len: int) -> dict:
    source_len, target_len = infer_seqlen(len(prompt_ids), max(len(chosen_ids), len(rejected_ids)), cutoff_len)
    prompt = prompt_ids[:source_len]
    out = {}
    for name, answer in (("chosen", chosen_ids[:target_len]), ("rejected", rejected_ids[:target_len])):
        out[f"{name}_input_ids"] = prompt + answer
        out[f"{name}_labels"] = [IGNORE] * len(prompt) + answer
    return out


def encode_preference(ds: datasets.Dataset, spec: DatasetSpec, tokenizer, cfg) -> datasets.Dataset:
    check_pair_columns(ds, spec)
    names = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")

    def encode(batch):
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        out = {name: [] for name in (*names, "ok")}
        for row in rows:
            pair = pair_messages(row, spec)
            encoded = None
            if pair is not None:
                (prompt, chosen), (_, rejected) = (_prompt_and_answer(m, tokenizer) for m in pair)
                ids = _tokenize([prompt, chosen, rejected], tokenizer)
                encoded = encode_pair(*ids, cfg.cutoff_len)
                if not any(t != IGNORE for t in encoded["chosen_labels"][1:]):
                    encoded = None  # no answer left within cutoff_len
            for name in names:
                out[name].append(encoded[name] if encoded else [])
            out["ok"].append(encoded is not None)
        return out

    encoded = ds.map(encode, batched=True, num_proc=cfg.preprocessing_num_workers, remove_columns=ds.column_names,
                     load_from_cache_file=not cfg.overwrite_cache, desc=f"encoding pairs of {spec.name}")
    dropped = len(encoded) - sum(encoded["ok"])
    if dropped:
        log.warning("dataset '%s': %d of %d pairs dropped (malformed, or no answer within cutoff_len %d)",
                    spec.name, dropped, len(encoded), cfg.cutoff_len)
    kept = encoded.filter(lambda ok: ok, input_columns="ok")
    if len(kept) == 0:
        raise ConfigError(f"dataset '{spec.name}': no usable preference pairs (all {len(encoded)} dropped)")
    return kept.remove_columns("ok")


class PairDataset(Dataset):
    """Items: the pair's chosen and rejected input_ids and labels, as lists."""

    def __init__(self, encoded):
        self.rows = {name: list(encoded[name]) for name in encoded.column_names}

    def __len__(self) -> int:
        return len(self.rows["chosen_input_ids"])

    def __getitem__(self, index: int) -> dict:
        return {name: column[index] for name, column in self.rows.items()}


def collate_pairs(pad_id: int):
    """Chosen rows first, then the rejected rows in the same order, right-padded to one width:
    both answers of every pair go through one forward, and row i + B is row i's rival."""
    def collate(items: list[dict]) -> dict[str, torch.Tensor]:
        rows = [(x["chosen_input_ids"], x["chosen_labels"]) for x in items]
        rows += [(x["rejected_input_ids"], x["rejected_labels"]) for x in items]
        width = max(len(ids) for ids, _ in rows)
        batch = {"input_ids": torch.full((len(rows), width), pad_id, dtype=torch.long),
                 "labels": torch.full((len(rows), width), IGNORE, dtype=torch.long),
                 "attention_mask": torch.zeros((len(rows), width), dtype=torch.long)}
        for row, (ids, labels) in enumerate(rows):
            batch["input_ids"][row, :len(ids)] = torch.tensor(ids)
            batch["labels"][row, :len(ids)] = torch.tensor(labels)
            batch["attention_mask"][row, :len(ids)] = 1
        return batch
    return collate


def build_pair_dataset(parts: list, tokenizer, cfg, label: str) -> PairDataset:
    """Encoded pairs of every (spec, rows) part; only ranking datasets hold pairs."""
    for spec, _ in parts:
        if not spec.ranking:
            raise ConfigError(f"stage {cfg.stage} trains on preference pairs: dataset '{spec.name}' must be "
                              "registered with \"ranking\": true and chosen/rejected columns in dataset_info.json")
    encoded = [encode_preference(ds, spec, tokenizer, cfg) for spec, ds in parts]
    joined = datasets.concatenate_datasets(encoded) if len(encoded) > 1 else encoded[0]
    log.info("%s: %d preference pairs", label, len(joined))
    return PairDataset(joined)
