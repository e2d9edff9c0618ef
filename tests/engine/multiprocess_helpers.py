"""Helpers shared by the tests that train on two gloo CPU processes (test_distributed.py,
test_fsdp.py): the run settings and data they both use, starting a launcher in a clean
environment, and comparing a run's metrics and exported weights with another run's.

Not a test module: the tests import it as `from multiprocess_helpers import ...` (pytest puts
each test file's folder on sys.path). It is not called `multiprocess`, which would shadow the
package of that name that `datasets` imports. tests/conftest.py registers it for pytest's
assertion rewriting, so its assertions report as they did inside the test files.
"""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ember.config import build_config
from ember.tasks import build_task

from conftest import curve, read_metrics  # noqa: F401 (curve re-exported: the distributed tests import it from here)

CUTOFF = 48
GLOBAL_BATCH = 8
STEPS = 8
REL = 1e-5  # per-step metrics, relative
WEIGHT_TOL = 1e-5  # final weights, absolute
TIMEOUT = 300
LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "MASTER_ADDR",
               "MASTER_PORT", "NPROC_PER_NODE", "NNODES", "NODE_RANK", "TORCHELASTIC_RESTART_COUNT")


# ---- configuration and data -------------------------------------------------------------
def base_config(corpus_dir, tokenizer_dir) -> dict:
    # packing: false makes each document one sample, so the data can end in a short one (packed
    # pretraining drops the remainder shorter than a block, as LLaMA-Factory does)
    return dict(packing=False, model_config="llama-tiny", tokenizer_name_or_path=str(tokenizer_dir), dataset="tiny_text",
                dataset_dir=str(corpus_dir), cutoff_len=CUTOFF, val_size=3, logging_steps=1, eval_steps=4,
                save_steps=4, max_steps=STEPS, seed=7, optim="sgd", momentum=0.9, learning_rate=0.5,
                disable_tqdm=True, plot_loss=True)


def choose_data(base: dict, probe_dir: Path) -> dict:
    """max_samples giving an even number of train blocks that the global batch 8 does not divide,
    more than 4 and fewer than 8 batches' worth (checkpoint-4 lands mid-epoch, the run crosses an
    epoch end), with samples shorter than cutoff_len (padding); and an odd number of validation blocks."""
    for max_samples in range(20, 60):
        cfg = build_config({**base, "max_samples": max_samples, "output_dir": str(probe_dir)})
        train, val, _ = build_task(cfg).build_data()
        n, v = len(train), len(val) if val is not None else 0
        shortest = min(len(train[i]) for i in range(n))
        if n % 2 == 0 and n % GLOBAL_BATCH and 4 * GLOBAL_BATCH < n < GLOBAL_BATCH * STEPS \
                and shortest < CUTOFF and v % 2 and v >= 3:
            return {"max_samples": max_samples, "blocks": n, "val_blocks": v, "shortest": shortest}
    raise AssertionError("no max_samples gives the uneven data these tests need")


def uneven_base(corpus_dir, tokenizer_dir, probe_dir: Path) -> tuple[dict, dict]:
    """base_config with the max_samples that choose_data picks, and what choose_data returned."""
    base = base_config(corpus_dir, tokenizer_dir)
    data = choose_data(base, probe_dir)
    return {**base, "max_samples": data["max_samples"]}, data


def as_args(cfg: dict) -> list[str]:
    return [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in cfg.items()]


# ---- launching --------------------------------------------------------------------------
def clean_env(hook: Path | None = None, **extra) -> dict:
    """This environment without launch variables; `hook` (a folder with a sitecustomize
    module) goes first on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith("EMBER_TEST")}
    env["HF_HUB_OFFLINE"] = "1"
    if hook is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(hook), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def run_logged(command: list[str], log: Path, env: dict, timeout: float = TIMEOUT) -> tuple[int | None, str]:
    """Run to the end, killing the whole process group on a hang (exit code None)."""
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    return rc, log.read_text()


def assert_ran(rc: int | None, log: str) -> None:
    assert rc == 0, f"{'hung' if rc is None else f'exit code {rc}'}; log tail:\n{log[-4000:]}"


# ---- comparing runs ---------------------------------------------------------------------
def assert_same_curve(got_dir, want_dir, *, want_name: str = "", rel: float = REL,
                      rel_for: dict[str, float] | None = None) -> None:
    """Every logged step holds the same keys and values within `rel` (or rel_for[key]); `want_name`
    names the wanted run in the failure message ("... vs single-process 2.31")."""
    vs = f"vs {want_name} " if want_name else "vs "
    got, want = curve(got_dir), curve(want_dir)
    assert [r["step"] for r in got] == [r["step"] for r in want], "logged steps differ"
    for g, w in zip(got, want):
        assert g.keys() == w.keys(), f"step {w['step']}: keys {sorted(g)} != {sorted(w)}"
        for key in w:
            assert g[key] == pytest.approx(w[key], rel=(rel_for or {}).get(key, rel), abs=1e-9), \
                f"step {w['step']} {key}: {g[key]!r} {vs}{w[key]!r}"


def weights(output_dir) -> dict[str, torch.Tensor]:
    return load_file(str(Path(output_dir) / "model.safetensors"))


def assert_same_weights(got_dir, want_dir, *, same_names: bool = True) -> None:
    """Every tensor both exports hold is equal within WEIGHT_TOL. With `same_names` both hold
    the same tensor names; without, one export's tensors need only be a subset of the other's
    (whether tied weights are stored twice is then checked on its own)."""
    got, want = weights(got_dir), weights(want_dir)
    if same_names:
        assert got.keys() == want.keys()
        gaps = {k: (got[k] - want[k]).abs().max().item() for k in want}
    else:
        common = set(got) & set(want)
        assert common in (set(got), set(want)), f"exports differ: {sorted(set(got) ^ set(want))}"
        gaps = {k: (got[k].float() - want[k].float()).abs().max().item() for k in common}
    worst = max(gaps, key=gaps.get)
    assert gaps[worst] < WEIGHT_TOL, f"{worst} differs by {gaps[worst]:.2e}"


def assert_same_logged_run(one_dir: Path, two_dir: Path, keys, weights_file: str, steps: list[int]) -> None:
    """The two-process run logged `keys` of every step as the one-process run did (within
    float32 noise of other batch shapes), it learned, and it saved the same `weights_file`."""
    one, two = read_metrics(one_dir), read_metrics(two_dir)
    assert [r["step"] for r in one] == [r["step"] for r in two] == steps
    for a, b in zip(one, two):
        for key in keys:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-5), (a["step"], key)
    assert one[-1]["loss"] != one[0]["loss"]
    got, want = load_file(str(two_dir / weights_file)), load_file(str(one_dir / weights_file))
    assert got.keys() == want.keys()
    for key in want:
        assert torch.allclose(got[key], want[key], atol=1e-5), key

