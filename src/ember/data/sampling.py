"""A shuffled, resumable stream of micro-batches that runs across epochs.

The position (epoch, batches already taken in it) is all the state there is, so a resumed
run sees exactly the batches the uninterrupted run would have seen, mid-epoch included.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config.errors import ConfigError


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch (or the natural order), starting at `skip` indices in."""

    def __init__(self, size: int, seed: int, shuffle: bool, rank: int = 0, world: int = 1):
        self.size, self.seed, self.shuffle, self.rank, self.world = size, seed, shuffle, rank, world
        self.epoch, self.skip = 0, 0

    def order(self) -> list[int]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            indices = torch.randperm(self.size, generator=gen).tolist()
        else:
            indices = list(range(self.size))
        if self.world > 1:
            # every rank gets the same number of samples (as DistributedSampler does), so all
            # ranks run the same steps; the first samples fill the gap
            indices += indices[:(-len(indices)) % self.world]
        return indices[self.rank::self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.skip:])

    def __len__(self) -> int:
        return len(self.order()) - self.skip


class BatchStream:
    """Endless micro-batches over epochs; `state()` / `load_state()` give exact resume."""

    def __init__(self, dataset: Dataset, batch_size: int, collate: Callable, *, seed: int, shuffle: bool = True,
                 num_workers: int = 0, pin_memory: bool = False, rank: int = 0, world: int = 1):
        self.sampler = EpochSampler(len(dataset), seed, shuffle, rank, world)
        self.batch_size = batch_size
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler, collate_fn=collate,
                                 num_workers=num_workers, pin_memory=pin_memory,
                                 persistent_workers=False, drop_last=False,
                                 # its own generator: starting an epoch must not draw from the global
                                 # RNG, or a resumed run's dropout masks would shift
                                 generator=torch.Generator().manual_seed(seed))
        self.taken = 0  # batches taken in the current epoch
        self._iter: Iterator | None = None

    def batches_per_epoch(self) -> int:
        return -(-len(self.sampler.order()) // self.batch_size)

    def __next__(self) -> Any:
        if self._iter is None:
            self.sampler.skip = self.taken * self.batch_size
            self._iter = iter(self.loader)
        try:
            batch = next(self._iter)
        except StopIteration:
            self.sampler.epoch += 1
            self.taken = 0
            self.sampler.skip = 0
            self._iter = iter(self.loader)
            batch = next(self._iter)
        self.taken += 1
        return batch

    def __iter__(self):
        return self

    @property
    def epoch(self) -> float:
        return self.sampler.epoch + self.taken / max(1, self.batches_per_epoch())

    def state_dict(self) -> dict[str, int]:
        """Position in samples consumed by all ranks together: rank r reads order[r::world], so
        after t batches the ranks have read exactly the first t × batch × world samples of the
        epoch's order, and a run may resume on another number of processes at the same place."""
        return {"epoch": self.sampler.epoch, "samples": self.taken * self.batch_size * self.sampler.world}

    def load_state_dict(self, state: dict[str, int]) -> None:
        per_batch = self.batch_size * self.sampler.world
        if state["samples"] % per_batch:
            raise ConfigError(f"the checkpoint stopped after {state['samples']} samples of an epoch, which is not a "
                             f"whole number of global batches of {per_batch}; keep the same global batch size")
        self.sampler.epoch, self.taken = state["epoch"], state["samples"] // per_batch
        self._iter = None
