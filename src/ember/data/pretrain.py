"""Pretraining data: documents joined with EOS into one token stream, cut into cutoff_len blocks.

Nothing is thrown away: the tail shorter than a block becomes a last, shorter block (padding
carries no loss). The counts of documents, tokens read and tokens trained on are logged so a
user can see what the model actually saw.
"""
from __future__ import annotations

import logging

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
from torch.utils.data import Dataset

from ..config.errors import ConfigError
from .labels import IGNORE

log = logging.getLogger("ember")


def tokenize_documents(texts: datasets.Dataset, tokenizer, num_proc: int | None, overwrite_cache: bool) -> tuple[np.ndarray, int]:
    """All documents → one flat array of token ids, each document followed by EOS."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("the tokenizer has no eos_token; pretraining needs one to separate documents")

    def encode(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [x + [eos] for x, text in zip(ids, batch["text"]) if text and text.strip()]}

    tokenized = texts.map(encode, batched=True, num_proc=num_proc, remove_columns=texts.column_names,
                          load_from_cache_file=not overwrite_cache, desc="tokenising")
    if len(tokenized) == 0:
        raise ConfigError("every document is empty after reading; check the dataset's text column")
    flat = pc.list_flatten(tokenized.data.column("input_ids"))
    return np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.int64), len(tokenized)


class BlockDataset(Dataset):
    """Consecutive cutoff_len slices of one token stream; the last slice may be shorter."""

    def __init__(self, tokens: np.ndarray, block_len: int):
        self.tokens = torch.from_numpy(tokens)
        self.block_len = block_len

    def __len__(self) -> int:
        return -(-len(self.tokens) // self.block_len)

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.tokens[index * self.block_len:(index + 1) * self.block_len]


def build_blocks(texts: datasets.Dataset, tokenizer, cfg, label: str) -> BlockDataset:
    tokens, documents = tokenize_documents(texts, tokenizer, cfg.preprocessing_num_workers, cfg.overwrite_cache)
    blocks = BlockDataset(tokens, cfg.cutoff_len)
    tail = len(tokens) % cfg.cutoff_len
    log.info("%s: %d documents, %d tokens → %d blocks of %d tokens%s; nothing is dropped: every token but "
             "each block's first (%d) is a prediction target", label, documents, len(tokens), len(blocks),
             cfg.cutoff_len, f" (the last holds {tail})" if tail else "", len(tokens) - len(blocks))
    return blocks


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
