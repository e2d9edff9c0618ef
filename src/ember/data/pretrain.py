"""Pretraining data, as LLaMA-Factory 0.9.5 builds it: each document + the EOS text, tokenised;
then, per batch of preprocessing_batch_size documents (1000), the tokens joined and cut into
cutoff_len blocks, the remainder shorter than a block dropped. With `packing: false` each document
is one sample instead, truncated to cutoff_len.

The EOS text is the tokenizer's eos_token after the template changed it (qwen3_nothink:
<|im_end|>); with template llama3 it is the literal "<|end_of_text|>", as in LLaMA-Factory, even
where that is not one token. The counts of documents, tokens and dropped tokens are logged.
"""
from __future__ import annotations

import logging

import datasets
import torch
from torch.utils.data import Dataset

from ..config.errors import ConfigError
from .labels import IGNORE

log = logging.getLogger("ember")
BATCH_DOCUMENTS = 1000  # LLaMA-Factory's preprocessing_batch_size: remainders are dropped per batch


def eos_text(tokenizer, template_name: str | None) -> str:
    if template_name == "llama3":
        return "<|end_of_text|>"
    if tokenizer.eos_token is None:
        raise ConfigError("the tokenizer has no eos_token; pretraining needs one to separate documents")
    return tokenizer.eos_token


def encode_documents(texts: datasets.Dataset, tokenizer, cfg, eos: str) -> datasets.Dataset:
    """Rows of input_ids: cutoff_len blocks (packing) or one truncated document each; plus how many
    tokens each batch read, for the log."""
    block = cfg.cutoff_len
    bos = tokenizer.bos_token if getattr(tokenizer, "add_bos_token", False) else None
    pack = cfg.packing is not False

    def encode(batch, processes):  # noqa: ARG001 (a cache key, see fn_kwargs)
        docs = [text + eos for text in batch["text"]]
        if not pack:
            docs = [bos + d for d in docs] if bos else docs
            ids = tokenizer(docs, add_special_tokens=False, truncation=True, max_length=block)["input_ids"]
            return {"input_ids": ids, "read": [len(i) for i in ids]}
        stream = [t for ids in tokenizer(docs, add_special_tokens=False)["input_ids"] for t in ids]
        blocks = [stream[i:i + block] for i in range(0, len(stream) // block * block, block)]
        if bos:  # LLaMA-Factory overwrites each block's first token with BOS
            blocks = [[tokenizer.bos_token_id] + b[1:] for b in blocks]
        if not blocks:  # an empty row carries the count of tokens read (removed before training)
            return {"input_ids": [[]], "read": [len(stream)]}
        return {"input_ids": blocks, "read": [len(stream)] + [0] * (len(blocks) - 1)}

    # each process cuts its own share of the documents, so the blocks depend on the process count:
    # passed as an argument, it is part of the datasets cache key (a 1-process cache is not reused)
    return texts.map(encode, batched=True, batch_size=BATCH_DOCUMENTS, num_proc=cfg.preprocessing_num_workers,
                     fn_kwargs={"processes": cfg.preprocessing_num_workers},
                     remove_columns=texts.column_names, load_from_cache_file=not cfg.overwrite_cache,
                     desc="tokenising")


class BlockDataset(Dataset):
    """The encoded samples (blocks or documents) as tensors."""

    def __init__(self, encoded: datasets.Dataset):
        self.rows = encoded.with_format("torch", columns=["input_ids"])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.rows[index]["input_ids"]


def build_blocks(texts: datasets.Dataset, tokenizer, cfg, label: str, template_name: str | None = None) -> BlockDataset:
    encoded = encode_documents(texts, tokenizer, cfg, eos_text(tokenizer, template_name))
    read = sum(encoded["read"])
    encoded = encoded.filter(lambda ids: len(ids) > 0, input_columns="input_ids",
                             load_from_cache_file=not cfg.overwrite_cache)
    if len(encoded) == 0:
        raise ConfigError(f"{label}: the documents hold fewer tokens than one block of cutoff_len {cfg.cutoff_len}")
    kept = sum(len(ids) for ids in encoded["input_ids"])
    if cfg.packing is False:
        log.info("%s: %d documents, each one sample of at most %d tokens (%d tokens)", label, len(texts),
                 cfg.cutoff_len, kept)
    else:
        log.info("%s: %d documents, %d tokens → %d blocks of %d tokens; %d tokens dropped (the remainder of each "
                 "batch of %d documents, as LLaMA-Factory)", label, len(texts), read, len(encoded), cfg.cutoff_len,
                 read - kept, BATCH_DOCUMENTS)
    return BlockDataset(encoded)


def collate_blocks(pad_id: int):
    """Pad a batch of blocks to its longest; padding is masked out of attention and loss."""
    def collate(blocks: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        width = max(len(b) for b in blocks)
        input_ids = torch.full((len(blocks), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(blocks), width), dtype=torch.long)
        for row, block in enumerate(blocks):
            input_ids[row, :len(block)] = block
            attention_mask[row, :len(block)] = 1
        labels = input_ids.masked_fill(attention_mask == 0, IGNORE)
        if width * len(blocks) == sum(len(b) for b in blocks):
            # no padding: leave the mask out so attention takes its fast causal path
            return {"input_ids": input_ids, "labels": labels}
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    return collate
