"""What a contender process records: when each optimizer step ended and how many real tokens
it trained on. Shared by the three contender scripts so they are measured the same way.

A step's duration is the time between two consecutive step ends, so it covers everything the
training loop does per step (data, forward, backward, clipping, optimizer, logging), wherever
in the loop each framework does it. Real tokens are counted where batches are built, before
any padding, so padding never counts as work.
"""
from __future__ import annotations

import json
import os
import sys
import time


def read_spec() -> dict:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    import torch
    torch.set_num_threads(spec["threads"])  # the same for every contender
    return spec


class StepLog:
    def __init__(self, spec: dict):
        self.spec = spec
        self.ends: list[float] = []
        self.cpu_ends: list[float] = []  # this thread's CPU time: steadier on a busy machine (1 thread)
        self.batch_tokens: list[int] = []  # per batch built, in the order the loop takes them
        self.threads = None

    def count(self, items: list) -> None:
        """Called with the samples of each batch before they are padded."""
        self.batch_tokens.append(sum(len(x["input_ids"]) if isinstance(x, dict) else len(x) for x in items))

    def step_end(self) -> None:
        self.ends.append(time.time())
        self.cpu_ends.append(time.thread_time())
        done = len(self.ends)
        if done == 1:  # what the training really used, whatever the framework did to the setting
            import torch
            self.threads = torch.get_num_threads()
        if done == 1 or done % 10 == 0:
            print(f"[bench] step {done}/{self.spec['steps']}", file=sys.stderr, flush=True)

    def write(self, **extra) -> None:
        result = {"ends": self.ends, "cpu_ends": self.cpu_ends, "tokens": self.batch_tokens[:len(self.ends)],
                  "threads": self.threads, **extra}
        tmp = self.spec["result"] + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f)
        os.replace(tmp, self.spec["result"])


def counting(collate, log: StepLog):
    """Wrap a collate function so each batch's real tokens are recorded."""
    def wrapped(items):
        log.count(items)
        return collate(items)
    return wrapped
