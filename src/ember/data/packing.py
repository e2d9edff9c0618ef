"""SFT batches: one sample per row (padded), or several per row packed by a greedy knapsack.

Packed samples restart position_ids at 0; with use_cache=False the decoder isolates them by
position_ids (no attention across samples), as LLaMA-Factory's neat_packing does.
"""
from __future__ import annotations

import bisect
import logging

import torch
from torch.utils.data import Dataset

from .labels import IGNORE

log = logging.getLogger("ember")


def knapsack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: longest first, each into the fullest bin it still fits."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    free: list[tuple[int, int]] = []  # (room left, bin id), sorted
    bins: list[list[int]] = []
    for i in order:
        at = bisect.bisect_left(free, (lengths[i], -1))
        if at < len(free):
            room, b = free.pop(at)
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        bisect.insort(free, (room - lengths[i], b))
    return bins


class SFTDataset(Dataset):
    """Items are dicts of input_ids, labels and (when packed) position_ids, as tensors."""

    def __init__(self, input_ids: list[list[int]], labels: list[list[int]], packs: list[list[int]] | None = None):
        self.input_ids, self.labels = input_ids, labels
        self.packs = packs

    def __len__(self) -> int:
        return len(self.packs) if self.packs is not None else len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self.packs is None:
            return {"input_ids": torch.tensor(self.input_ids[index]), "labels": torch.tensor(self.labels[index])}
        ids, labels, positions = [], [], []
        for i in self.packs[index]:
            ids += self.input_ids[i]
            # the first token of a sample is never predicted: no loss across the sample boundary
            labels += [IGNORE] + self.labels[i][1:]
            positions += range(len(self.input_ids[i]))
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "position_ids": torch.tensor(positions)}


def build_sft_dataset(encoded, cutoff_len: int, packing: bool, label: str) -> SFTDataset:
    input_ids, labels = encoded["input_ids"], encoded["labels"]
    input_ids, labels = list(input_ids), list(labels)
    supervised = sum(sum(t != IGNORE for t in row[1:]) for row in labels)
    if not packing:
        log.info("%s: %d samples, %d supervised tokens", label, len(input_ids), supervised)
        return SFTDataset(input_ids, labels)
    packs = knapsack([len(x) for x in input_ids], cutoff_len)
    tokens = sum(len(x) for x in input_ids)
    log.info("%s: %d samples packed into %d sequences of %d; packing efficiency %.1f%% (real tokens / slots)",
             label, len(input_ids), len(packs), cutoff_len, 100 * tokens / (len(packs) * cutoff_len))
    return SFTDataset(input_ids, labels, packs)


def collate_sft(pad_id: int, packed_width: int | None = None):
    """Right-pad to the longest row (packed rows: to packed_width when given, so every batch
    has one shape, which a compiled model needs). Packed rows carry position_ids (padding
    forms its own isolated run); unpacked rows carry an attention_mask when padded."""
    def collate(items: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(x["input_ids"]) for x in items)
        if packed_width and "position_ids" in items[0]:
            width = max(width, packed_width)
        batch = {"input_ids": torch.full((len(items), width), pad_id, dtype=torch.long),
                 "labels": torch.full((len(items), width), IGNORE, dtype=torch.long)}
        packed = "position_ids" in items[0]
        if packed:
            batch["position_ids"] = torch.arange(width).repeat(len(items), 1)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            batch["input_ids"][row, :n] = item["input_ids"]
            batch["labels"][row, :n] = item["labels"]
            mask[row, :n] = 1
            if packed:
                batch["position_ids"][row, :n] = item["position_ids"]
                batch["position_ids"][row, n:] = torch.arange(width - n)
        if not packed and int(mask.sum()) < mask.numel():
            batch["attention_mask"] = mask
        return batch
    return collate
