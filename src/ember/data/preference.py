"""Preference data (LLaMA-Factory's `ranking: true` datasets): a prompt with a chosen and a
rejected answer → two token sequences that share the prompt, labelled on the answer only, encoded
as LLaMA-Factory 0.9.5's PairwiseDatasetProcessor (and, for KTO, its FeedbackDatasetProcessor)
does: the row read into a conversation as for SFT (conversation.py), prompt + chosen and
prompt + rejected through the template's encode_oneturn (system, tools and history included;
history answers unlabelled), EOS appended to the answers for an efficient_eos template. The prompt
is never labelled (LLaMA-Factory's pairwise and feedback processors ignore train_on_prompt).

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
from .conversation import CHAT_FORMATS, Conversation, columns_of, to_conversation
from .sft import check_columns
from .truncation import infer_seqlen

log = logging.getLogger("ember")


def _answer_columns(spec: DatasetSpec) -> tuple[str, str]:
    return spec.columns.get("chosen", "chosen"), spec.columns.get("rejected", "rejected")


def check_pair_columns(ds: datasets.Dataset, spec: DatasetSpec) -> None:
    chosen, rejected = _answer_columns(spec)
    for name in (chosen, rejected):
        if name not in ds.column_names:
            raise ConfigError(f"dataset '{spec.name}' (ranking, {spec.formatting}) has no column '{name}' "
                              f"(it has: {', '.join(ds.column_names)}); map chosen/rejected with columns in "
                              "dataset_info.json")
    if spec.formatting in CHAT_FORMATS:
        check_columns(ds, spec)
    else:  # the answer columns stand in for SFT's response column
        check_columns(ds, dataclasses.replace(spec, columns={**spec.columns, "response": chosen}))


def pair_conversations(row: dict, spec: DatasetSpec) -> tuple[Conversation, Conversation] | None:
    """(prompt + chosen, prompt + rejected) as conversations, or None for a malformed row."""
    chosen_col, rejected_col = _answer_columns(spec)
    if spec.formatting in CHAT_FORMATS:
        messages_col = columns_of(spec)["messages"]
        turns = row.get(messages_col)
        answers = [row.get(chosen_col), row.get(rejected_col)]
        if not isinstance(turns, list) or not all(isinstance(a, dict) for a in answers):
            return None
        pair = [to_conversation({**row, messages_col: turns + [answer]}, spec) for answer in answers]
    else:
        pair = [to_conversation(row, dataclasses.replace(spec, columns={**spec.columns, "response": col}))
                for col in (chosen_col, rejected_col)]
    chosen, rejected = pair
    if chosen is None or rejected is None or (chosen.messages[:-1], chosen.system, chosen.tools) != \
            (rejected.messages[:-1], rejected.system, rejected.tools):
        return None
    return chosen, rejected


def _oneturn(template, tokenizer, conversation: Conversation) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) as LLaMA-Factory's encode_oneturn, the answer closed by EOS for an
    efficient_eos template."""
    prompt, answer = template.encode_oneturn(tokenizer, conversation.messages, conversation.system,
                                             conversation.tools)
    if template.efficient_eos:
        answer = answer + [tokenizer.eos_token_id]
    return prompt, answer


def encode_pair(prompt_ids: list[int], chosen_ids: list[int], rejected_ids: list[int], cutoff_len: int) -> dict:
    source_len, target_len = infer_seqlen(len(prompt_ids), max(len(chosen_ids), len(rejected_ids)), cutoff_len)
    prompt = prompt_ids[:source_len]
    out = {}
    for name, answer in (("chosen", chosen_ids[:target_len]), ("rejected", rejected_ids[:target_len])):
        out[f"{name}_input_ids"] = prompt + answer
        out[f"{name}_labels"] = [IGNORE] * len(prompt) + answer
    return out


def encode_pair_rows(rows: list[dict], spec: DatasetSpec, template, tokenizer, cutoff_len: int) -> list[dict | None]:
    out = []
    for row in rows:
        pair = pair_conversations(row, spec)
        encoded = None
        if pair is not None:
            (prompt, chosen), (_, rejected) = (_oneturn(template, tokenizer, c) for c in pair)
            encoded = encode_pair(prompt, chosen, rejected, cutoff_len)
        out.append(encoded)
    return out


PAIR_COLUMNS = {"chosen_input_ids": [], "chosen_labels": [], "rejected_input_ids": [], "rejected_labels": []}
FEEDBACK_COLUMNS = {"input_ids": [], "labels": [], "kl_input_ids": [], "kl_labels": [], "kto_tag": False}


def _map_rows(ds: datasets.Dataset, spec: DatasetSpec, template, tokenizer, cfg, encode_rows, columns: dict,
              what: str) -> datasets.Dataset:
    """ds.map over batches of rows with encode_rows (a dict per row with `columns`, None to drop
    the row); a row whose answer cutoff_len cut away entirely is dropped too, and counted."""
    answer = next(name for name in columns if name.endswith("labels"))

    def encode(batch):
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        encoded = encode_rows(rows, spec, template, tokenizer, cfg.cutoff_len)
        out = {name: [e[name] if e else empty for e in encoded] for name, empty in columns.items()}
        out["ok"] = [e is not None and any(t != IGNORE for t in e[answer][1:]) for e in encoded]
        return out

    encoded = ds.map(encode, batched=True, num_proc=cfg.preprocessing_num_workers, remove_columns=ds.column_names,
                     load_from_cache_file=not cfg.overwrite_cache, desc=f"encoding {what} of {spec.name}")
    dropped = len(encoded) - sum(encoded["ok"])
    if dropped:
        log.warning("dataset '%s': %d of %d %s dropped (malformed, or no answer within cutoff_len %d)",
                    spec.name, dropped, len(encoded), what, cfg.cutoff_len)
    kept = encoded.filter(lambda ok: ok, input_columns="ok")
    if len(kept) == 0:
        raise ConfigError(f"dataset '{spec.name}': no usable {what} (all {len(encoded)} dropped)")
    return kept.remove_columns("ok")


def encode_preference(ds: datasets.Dataset, spec: DatasetSpec, template, tokenizer, cfg) -> datasets.Dataset:
    check_pair_columns(ds, spec)
    return _map_rows(ds, spec, template, tokenizer, cfg, encode_pair_rows, PAIR_COLUMNS, "preference pairs")


class PairDataset(Dataset):
    """Items: the encoded columns of one row, as lists (a pair's chosen and rejected ids and labels;
    a KTO sample's, its KL sample's and its kto_tag)."""

    def __init__(self, encoded):
        self.rows = {name: list(encoded[name]) for name in encoded.column_names}
        self.size = len(encoded)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        return {name: column[index] for name, column in self.rows.items()}

    def add_column(self, name: str, values: list) -> None:
        """A per-row value computed after encoding (precomputed reference log-probs)."""
        if len(values) != self.size:
            raise ValueError(f"column {name}: {len(values)} values for {self.size} rows")
        self.rows[name] = list(values)


def build_pair_dataset(parts: list, template, tokenizer, cfg, label: str) -> PairDataset:
    """Encoded pairs of every (spec, rows) part, with `template` (templates.load_template):
    ranking datasets, or for stage kto datasets with a kto_tag column (each row's answer beside the
    previous row's answer, its KL sample)."""
    for spec, _ in parts:
        if cfg.stage == "kto" and not _kto_tag_column(spec):
            raise ConfigError(f"stage kto needs a kto_tag: map dataset '{spec.name}''s tag column with "
                              "\"columns\": {\"kto_tag\": ...} in dataset_info.json")
        if cfg.stage != "kto" and not spec.ranking:
            raise ConfigError(f"stage {cfg.stage} trains on preference pairs: dataset '{spec.name}' must be "
                              "registered with \"ranking\": true and chosen/rejected columns in dataset_info.json")
    encoded = [encode_feedback(ds, spec, template, tokenizer, cfg) if cfg.stage == "kto" else
               encode_preference(ds, spec, template, tokenizer, cfg) for spec, ds in parts]
    joined = datasets.concatenate_datasets(encoded) if len(encoded) > 1 else encoded[0]
    log.info("%s: %d %s", label, len(joined), "KTO samples" if cfg.stage == "kto" else "preference pairs")
    return PairDataset(joined)


# ---- KTO: one answer per row, tagged desirable or not ------------------------------------------

def _kto_tag_column(spec: DatasetSpec) -> str | None:
    return spec.columns.get("kto_tag")


def feedback_conversation(row: dict, spec: DatasetSpec) -> tuple[Conversation, bool] | None:
    """A row of a KTO dataset (a conversation ending with the answer, and its kto_tag) →
    (conversation, desirable), or None for a malformed row. The tag may be a bool or its text."""
    conversation = to_conversation(row, spec)
    tag = row.get(_kto_tag_column(spec))
    if isinstance(tag, str) and tag.strip().lower() in ("true", "false"):
        tag = tag.strip().lower() == "true"
    if conversation is None or not isinstance(tag, bool):
        return None
    return conversation, tag


def encode_feedback_rows(rows: list[dict], spec: DatasetSpec, template, tokenizer,
                         cutoff_len: int) -> list[dict | None]:
    """LLaMA-Factory's feedback encoding: each row's prompt with its own answer, and with the answer
    of the previous row of the batch (the first row: the last row's), its KL sample for KTO's
    reference point; the two encoded and truncated each on its own."""
    parsed = [feedback_conversation(row, spec) for row in rows]
    answers = [p[0].messages[-1] if p is not None else None for p in parsed]
    out = []
    for parse, kl_answer in zip(parsed, answers[-1:] + answers[:-1]):
        if parse is None or kl_answer is None:
            out.append(None)
            continue
        conversation, tag = parse
        kl_conversation = dataclasses.replace(conversation, messages=conversation.messages[:-1] + [kl_answer])
        encoded = {}
        for side, c in (("", conversation), ("kl_", kl_conversation)):
            prompt_ids, answer_ids = _oneturn(template, tokenizer, c)
            source_len, target_len = infer_seqlen(len(prompt_ids), len(answer_ids), cutoff_len)
            prompt, answer = prompt_ids[:source_len], answer_ids[:target_len]
            encoded[f"{side}input_ids"] = prompt + answer
            encoded[f"{side}labels"] = [IGNORE] * len(prompt) + answer
        out.append({**encoded, "kto_tag": tag})
    return out


def encode_feedback(ds: datasets.Dataset, spec: DatasetSpec, template, tokenizer, cfg) -> datasets.Dataset:
    check_columns(ds, spec)
    if _kto_tag_column(spec) not in ds.column_names:
        raise ConfigError(f"dataset '{spec.name}' has no column '{_kto_tag_column(spec)}' (its kto_tag; it has: "
                          f"{', '.join(ds.column_names)})")
    return _map_rows(ds, spec, template, tokenizer, cfg, encode_feedback_rows, FEEDBACK_COLUMNS, "KTO samples")


def collate_pairs(pad_id: int, sides: tuple[str, str] = ("chosen_", "rejected_")):
    """The first side's rows (chosen; for KTO the samples), then the second side's rows in the
    same order (rejected; for KTO the KL samples), right-padded to one width: both go through one
    forward, and row i + B belongs with row i. KTO batches carry kto_tag ([B], bool); with
    precompute_ref_log_probs, ref_logps ([2B], the reference's log-prob of each row)."""
    def collate(items: list[dict]) -> dict[str, torch.Tensor]:
        rows = [(x[f"{side}input_ids"], x[f"{side}labels"]) for side in sides for x in items]
        width = max(len(ids) for ids, _ in rows)
        batch = {"input_ids": torch.full((len(rows), width), pad_id, dtype=torch.long),
                 "labels": torch.full((len(rows), width), IGNORE, dtype=torch.long),
                 "attention_mask": torch.zeros((len(rows), width), dtype=torch.long)}
        for row, (ids, labels) in enumerate(rows):
            batch["input_ids"][row, :len(ids)] = torch.tensor(ids)
            batch["labels"][row, :len(ids)] = torch.tensor(labels)
            batch["attention_mask"][row, :len(ids)] = 1
        if "kto_tag" in items[0]:
            batch["kto_tag"] = torch.tensor([bool(x["kto_tag"]) for x in items])
        if f"{sides[0]}ref_logps" in items[0]:  # precomputed reference log-probs, row for row
            batch["ref_logps"] = torch.tensor([x[f"{side}ref_logps"] for side in sides for x in items],
                                              dtype=torch.float32)
        return batch
    return collate
