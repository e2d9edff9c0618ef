"""Knapsack packing of VLM samples: nanoVLM's ConstantLengthDataset as a map-style dataset.

nanoVLM packs a streaming buffer on the fly; here the packs are computed once, from every
sample's length and image count, so the set of sequences is the same on every rank and every
resume, and the engine's sampler can shuffle and shard it like any other dataset. A pack holds
at most seq_length tokens and max_images_per_knapsack images. Each sample in a pack restarts
its position_ids at 0: the decoder keeps packed samples apart by their positions. Pixels are
loaded in __getitem__, so DataLoader workers decode images in parallel.
"""
from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from ...data.labels import IGNORE
from .images import BadImage, ImageProcessor, open_image

log = logging.getLogger("ember")


@dataclass
class VLMSamples:
    """Encoded samples: ids and labels (image tokens expanded), and per image its source
    (path or bytes, with a name for messages) and its number of views."""
    input_ids: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    images: list[list[tuple]] = field(default_factory=list)
    views: list[list[int]] = field(default_factory=list)

    def add(self, ids, labels, images, views) -> None:
        self.input_ids.append(np.asarray(ids, dtype=np.int64))
        self.labels.append(np.asarray(labels, dtype=np.int64))
        self.images.append(list(images))
        self.views.append(list(views))

    def extend(self, other: "VLMSamples") -> None:
        for name in ("input_ids", "labels", "images", "views"):
            getattr(self, name).extend(getattr(other, name))

    def __len__(self) -> int:
        return len(self.input_ids)


def knapsack(lengths: list[int], images: list[int], capacity: int, max_images: int, seed: int = 0) -> list[list[int]]:
    """Best fit under two limits: each sample into the fullest pack that still has room for
    both its tokens and its images. Samples come in a seeded random order, not longest first:
    sorting fills each pack with look-alike samples (on shapes_vqa, one question kind per pack),
    while random order mixes them at the same utilisation (measured within a point or two)."""
    order = np.random.default_rng(seed).permutation(len(lengths)).tolist()
    # open packs as sorted (tokens of room left, pack id); packs at the image limit wait apart,
    # for text-only samples, so image samples never scan past them
    with_room: list[tuple[int, int]] = []
    image_full: list[tuple[int, int]] = []
    packs: list[list[int]] = []
    pack_images: list[int] = []
    for i in order:
        best = None
        for candidates in (with_room, image_full) if images[i] == 0 else (with_room,):
            at = bisect.bisect_left(candidates, (lengths[i], -1))
            while at < len(candidates) and pack_images[candidates[at][1]] + images[i] > max_images:
                at += 1  # room for the tokens but not the images: the next-fullest pack
            if at < len(candidates) and (best is None or candidates[at] < best[0][best[1]]):
                best = (candidates, at)
        if best is not None:
            room, p = best[0].pop(best[1])
        else:
            room, p = capacity, len(packs)
            packs.append([])
            pack_images.append(0)
        packs[p].append(i)
        pack_images[p] += images[i]
        bisect.insort(image_full if pack_images[p] >= max_images else with_room, (room - lengths[i], p))
    return packs


class PackedVLMDataset(Dataset):
    """Items: input_ids, labels, position_ids (1-D) and pixel_values (views, 3, H, W)."""

    def __init__(self, samples: VLMSamples, packs: list[list[int]], processor: ImageProcessor):
        self.samples, self.packs, self.processor = samples, packs, processor

    def __len__(self) -> int:
        return len(self.packs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids, labels, positions, pixels = [], [], [], []
        for i in self.packs[index]:
            sample_labels = self.samples.labels[i].copy()
            sample_labels[0] = IGNORE  # predicted from the previous sample's last token: no loss across the seam
            ids.append(self.samples.input_ids[i])
            labels.append(sample_labels)
            positions.append(np.arange(len(sample_labels)))
            for (source, name), expected in zip(self.samples.images[i], self.samples.views[i]):
                views = self.processor(open_image(source, name))
                if len(views) != expected:
                    raise BadImage(f"image {name} changed on disk after the dataset was read "
                                   f"({len(views)} views instead of {expected})")
                pixels.append(views)
        size = self.processor.image_size
        return {"input_ids": torch.from_numpy(np.concatenate(ids)),
                "labels": torch.from_numpy(np.concatenate(labels)),
                "position_ids": torch.from_numpy(np.concatenate(positions)),
                "pixel_values": torch.cat(pixels) if pixels else torch.zeros(0, 3, size, size)}


def build_packed(samples: VLMSamples, seq_length: int, max_images_per_knapsack: int,
                 processor: ImageProcessor, label: str, seed: int = 0) -> PackedVLMDataset:
    lengths = [len(x) for x in samples.input_ids]
    images = [len(x) for x in samples.images]
    # the encoder already dropped samples over max_sample_length (≤ seq_length); these limits
    # are the packer's own, so it enforces them rather than trusting its caller
    fits = [i for i in range(len(samples)) if lengths[i] <= seq_length and images[i] <= max_images_per_knapsack]
    if len(fits) < len(samples):
        log.warning("%s: %d samples dropped: longer than seq_length %d or with more than max_images_per_knapsack "
                    "%d images", label, len(samples) - len(fits), seq_length, max_images_per_knapsack)
    packs = [[fits[j] for j in pack] for pack in
             knapsack([lengths[i] for i in fits], [images[i] for i in fits], seq_length, max_images_per_knapsack, seed)]
    tokens = sum(lengths[i] for i in fits)
    pack_images = [sum(images[i] for i in pack) for pack in packs]
    views = sum(sum(samples.views[i]) for i in fits)
    log.info("%s: %d samples (%d images, %d views) packed into %d sequences of %d; utilisation %.1f%% (tokens / "
             "seq_length), %.2f images per pack (max %d, limit %d)", label, len(fits), sum(images[i] for i in fits),
             views, len(packs), seq_length, 100 * tokens / max(1, len(packs) * seq_length),
             sum(pack_images) / max(1, len(packs)), max(pack_images, default=0), max_images_per_knapsack)
    return PackedVLMDataset(samples, packs, processor)


def collate_vlm(pad_id: int, image_size: int):
    """Right-pad packs to the longest; padding is IGNORE and runs its own positions from 0.
    pixel_values holds every view of the batch in the order its image tokens appear
    (row by row, then along the sequence)."""
    def collate(items: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(x["input_ids"]) for x in items)
        batch = {"input_ids": torch.full((len(items), width), pad_id, dtype=torch.long),
                 "labels": torch.full((len(items), width), IGNORE, dtype=torch.long),
                 "position_ids": torch.arange(width).repeat(len(items), 1)}
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            batch["input_ids"][row, :n] = item["input_ids"]
            batch["labels"][row, :n] = item["labels"]
            batch["position_ids"][row, :n] = item["position_ids"]
            batch["position_ids"][row, n:] = torch.arange(width - n)
        pixels = [x["pixel_values"] for x in items]
        batch["pixel_values"] = torch.cat(pixels).float() if pixels else torch.zeros(0, 3, image_size, image_size)
        return batch
    return collate
