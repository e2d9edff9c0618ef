"""streaming: true — the training files are read lazily (datasets' streaming reader), a chunk of rows at a
time, each chunk encoded exactly as a whole dataset would be (the same template, truncation, packing
and, for pretraining, LLaMA-Factory's 1000-document grouping), so memory holds one chunk, not the data.

Order is the files' order (no shuffle buffer); an epoch is one pass over every file. Resuming skips the
samples the checkpoint had consumed, re-reading them without training on them: the run continues at
the very next sample, and the state is BatchStream's ({epoch, samples}), so checkpoints look alike.
"""
from __future__ import annotations

import logging
from itertools import islice
from typing import Any, Callable, Iterator

import datasets

from ..config.errors import ConfigError
from .readers import data_files

log = logging.getLogger("ember")
CHUNK_ROWS = 1000  # LLaMA-Factory's preprocessing batch: pretraining blocks come out the same


class StreamedSamples:
    """The encoded training samples of some datasets, produced chunk by chunk on each iteration.
    `prepare(parts, label)` is the task's own encoding of [(spec, rows)] into a map-style set."""

    def __init__(self, specs: list, prepare: Callable[[list, str], Any], max_samples: int | None = None):
        self.specs, self.prepare, self.max_samples = specs, prepare, max_samples

    def __iter__(self) -> Iterator[Any]:
        for spec in self.specs:
            builder, files = data_files(spec.path)
            rows = datasets.load_dataset(builder, data_files=files, split="train", streaming=True)
            limit = min((n for n in (self.max_samples, spec.num_samples) if n is not None), default=None)
            rows = iter(rows if limit is None else rows.take(limit))
            first = True
            while chunk := list(islice(rows, CHUNK_ROWS)):
                prepared = self._prepare_chunk(spec, chunk, first)
                first = False
                for i in range(len(prepared)):
                    yield prepared[i]

    def _prepare_chunk(self, spec, chunk: list[dict], first: bool) -> Any:
        try:
            return self.prepare([(spec, datasets.Dataset.from_list(chunk))], "stream")
        except ConfigError as err:
            if not first and "fewer tokens than one block" in str(err):
                return []  # a short last chunk of pretraining text: its tail is dropped, as LLaMA-Factory's
            raise


class StreamBatches:
    """Endless micro-batches from a StreamedSamples, resumable like data/sampling.py's BatchStream:
    rank r of `world` takes every world-th sample of each global batch of batch_size × world."""

    def __init__(self, samples: StreamedSamples, batch_size: int, collate: Callable, rank: int = 0, world: int = 1):
        self.samples, self.batch_size, self.collate = samples, batch_size, collate
        self.rank, self.world = rank, world
        self.epoch_index, self.taken = 0, 0
        self._iter: Iterator | None = None

    def _global_batches(self) -> Iterator[list]:
        it = iter(self.samples)
        size = self.batch_size * self.world
        while window := list(islice(it, size)):
            if len(window) < size:  # every rank must run the same steps: fill from the window's start
                window += (window * size)[:size - len(window)]
            yield window

    def _batches(self, skip: int) -> Iterator[Any]:
        for window in islice(self._global_batches(), skip, None):
            yield self.collate(window[self.rank::self.world])

    def __next__(self) -> Any:
        if self._iter is None:
            self._iter = self._batches(self.taken)
        try:
            batch = next(self._iter)
        except StopIteration:
            if self.taken == 0:
                raise ConfigError("streaming: the training datasets hold no samples") from None
            self.epoch_index, self.taken = self.epoch_index + 1, 0
            self._iter = self._batches(0)
            batch = next(self._iter)
        self.taken += 1
        return batch

    def __iter__(self):
        return self

    def batches_per_epoch(self) -> int:
        return 0  # unknown without reading everything; streaming runs are bounded by max_steps

    @property
    def epoch(self) -> float:
        return float(self.epoch_index)  # completed passes (the fraction of a stream is unknown)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch_index, "samples": self.taken * self.batch_size * self.world}

    def load_state_dict(self, state: dict[str, int]) -> None:
        per_batch = self.batch_size * self.world
        if state["samples"] % per_batch:
            raise ConfigError(f"the checkpoint stopped after {state['samples']} streamed samples, which is not a "
                              f"whole number of global batches of {per_batch}; keep the same global batch size")
        self.epoch_index, self.taken = state["epoch"], state["samples"] // per_batch
        self._iter = None
        log.info("streaming: resuming after %d samples of pass %d (re-read, not trained on)", state["samples"],
                 self.epoch_index + 1)
