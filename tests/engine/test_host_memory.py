"""The fixed mmap threshold gives freed activations back to the system; glibc's sliding one keeps them.

Each case runs in a fresh interpreter: a threshold set in the test process would stay for the
rest of the suite, and glibc's sliding state depends on everything allocated before.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ember.config.loader import load_config
from ember.engine.host_memory import CHECKPOINTED_THRESHOLD_KB, fix_mmap_threshold, mmap_threshold_kb

# A 16 MB tensor freed (which slides glibc's threshold up to 16 MB), then 150 one-MB tensors
# touched and all freed but the newest, which sits on top of the heap when they come from it.
PROGRAM = """
import json, os, sys, torch
from ember.engine.host_memory import fix_mmap_threshold
set_to = fix_mmap_threshold(int(sys.argv[1]))
page = os.sysconf("SC_PAGE_SIZE")
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page / 2**20
big = torch.ones(4 * 2**20); del big
before = rss()
blocks = [torch.ones(2**18) for _ in range(150)]
newest = blocks[-1]; del blocks
print(json.dumps({"set_to": set_to, "kept_mb": rss() - before}))
"""


def run_program(kb: int, env_threshold: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    if env_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = env_threshold
    done = subprocess.run([sys.executable, "-c", PROGRAM, str(kb)], env=env, capture_output=True, text=True,
                          check=True, timeout=120)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_fixed_threshold_returns_freed_blocks_where_the_sliding_one_keeps_them():
    sliding, fixed = run_program(0), run_program(64)
    assert sliding["set_to"] is None and fixed["set_to"] == 64 * 1024
    assert sliding["kept_mb"] > 100  # 149 freed MB held below the newest block
    assert fixed["kept_mb"] < 20     # each block was its own mapping, unmapped on free


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_users_own_malloc_setting_wins():
    assert run_program(64, env_threshold="131072")["set_to"] is None


def test_zero_keeps_glibcs_threshold():
    assert fix_mmap_threshold(0) is None


def test_the_threshold_follows_checkpointing_on_cpus_unless_given(tmp_path):
    def threshold(*overrides: str, device: str = "cpu") -> int:
        argv = ["model_config=llama-tiny", "dataset=tiny_text", f"output_dir={tmp_path}", *overrides]
        return mmap_threshold_kb(load_config(argv), device)
    assert threshold() == 0  # glibc's own: no page-fault cost on runs that did not ask for memory
    assert threshold("gradient_checkpointing=true") == CHECKPOINTED_THRESHOLD_KB
    assert threshold("gradient_checkpointing=true", device="cuda") == 0  # activations on the GPU
    assert threshold("gradient_checkpointing=true", "malloc_mmap_threshold_kb=0") == 0
    assert threshold("malloc_mmap_threshold_kb=64") == 64


# `ember train --help` goes through the CLI's start-up (transformers, datasets, torch), then a
# 64 MB tensor: huge pages back it only if the CLI asked PyTorch for them before its first allocation.
CLI_PROGRAM = """
import contextlib, io, json, torch
from ember.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    main(["train", "--help"])
x = torch.ones(2**24)
print(json.dumps(sum(int(l.split()[1]) for l in open("/proc/self/smaps") if l.startswith("AnonHugePages:"))))
"""


def thp_mode() -> str:
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return "absent"
    return text[text.index("[") + 1:text.index("]")]


@pytest.mark.skipif(thp_mode() != "madvise", reason="huge pages only differ when the kernel waits to be advised")
def test_the_cli_asks_for_huge_pages_before_torch_allocates_and_a_users_zero_wins():
    def huge_kb(env_value: str | None) -> int:
        env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
        if env_value is not None:
            env["THP_MEM_ALLOC_ENABLE"] = env_value
        done = subprocess.run([sys.executable, "-c", CLI_PROGRAM], env=env, capture_output=True, text=True,
                              check=True, timeout=300)
        return json.loads(done.stdout.strip().splitlines()[-1])
    # other libraries may advise a few huge pages of their own (pyarrow's pool: 2 MB here)
    assert huge_kb(None) >= huge_kb("0") + 32 * 1024  # most of the 64 MB tensor
