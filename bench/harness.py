"""Running contenders and turning their step logs into the reported numbers.

Each contender runs in a process of its own, started fresh, so its peak RSS (from wait4, the
kernel's own account of that process) and its time to the first step include everything it
imports and builds. Every child gets the same thread count and a cold datasets/inductor cache.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
PYTHON = sys.executable


class ContenderFailed(RuntimeError):
    pass


def run_contender(name: str, spec: dict, workdir: Path) -> dict:
    """Run bench/contender_<name>.py on `spec`; the raw step log plus peak RSS and start time."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec = {**spec, "workdir": str(workdir), "result": str(workdir / "result.json")}
    (workdir / "spec.json").write_text(json.dumps(spec, indent=1))
    threads = str(spec["threads"])
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(workdir / "datasets_cache"),
           "TORCHINDUCTOR_CACHE_DIR": str(workdir / "inductor_cache"), "PYTHONPATH": str(BENCH)}
    with open(workdir / "log.txt", "w") as out:
        launched = time.time()
        proc = subprocess.Popen([PYTHON, str(BENCH / f"contender_{name}.py"), str(workdir / "spec.json")],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(workdir))
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not the max over all children
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not (workdir / "result.json").exists():
        tail = (workdir / "log.txt").read_text(errors="replace").splitlines()[-25:]
        raise ContenderFailed(f"contender {name} failed (exit {proc.returncode}); the end of its log ({workdir}/log.txt, "
                              "kept with --keep):\n" + "\n".join(tail))
    result = json.loads((workdir / "result.json").read_text())
    if result.get("threads") != spec["threads"]:
        raise ContenderFailed(f"contender {name} trained with {result.get('threads')} threads, not {spec['threads']}")
    return {**result, "launched": launched, "peak_rss_mb": usage.ru_maxrss / 1024,
            "wall_s": time.time() - launched}


def summarise(raw: dict, warmup: int, aggregate: bool, clock: str = "wall") -> dict:
    """tokens/s over the steps after `warmup`, peak RSS, time to the first step.

    A step's time is the gap between its end and the previous step's end. With `aggregate`
    (variable-length batches, whose token counts differ step to step) tokens/s is all real
    tokens of the timed steps over their total time; otherwise the median of per-step rates.
    clock "cpu" times steps by the main thread's CPU time instead of the wall clock: with one
    thread that is the step's own work, less affected by other processes on a shared machine.
    """
    ends, tokens = raw["cpu_ends" if clock == "cpu" else "ends"], raw["tokens"]
    timed = range(1 + warmup, len(ends))
    if len(timed) < 3:
        raise RuntimeError(f"only {len(timed)} timed steps; run more steps than warmup + 3")
    seconds = [ends[i] - ends[i - 1] for i in timed]
    counts = [tokens[i] for i in timed]
    rates = [n / s for n, s in zip(counts, seconds)]
    tokens_per_s = sum(counts) / sum(seconds) if aggregate else statistics.median(rates)
    return {"tokens_per_s": tokens_per_s, "median_rate": statistics.median(rates),
            "step_s_median": statistics.median(seconds), "timed_steps": len(seconds),
            "peak_rss_mb": raw["peak_rss_mb"], "first_step_s": raw["ends"][0] - raw["launched"],
            "wall_s": raw["wall_s"], "tokens_per_step": statistics.mean(counts),
            "step_s": [round(x, 4) for x in seconds]}


def flops_per_token(model: dict, seq_len: int) -> float:
    """PaLM's appendix B: 6·N + 12·L·H·Q·T, N the matmul weights (input embedding excluded,
    the tied output head included: it is a matmul over the vocabulary)."""
    h, i, layers = model["hidden_size"], model["intermediate_size"], model["num_hidden_layers"]
    heads, kv = model["num_attention_heads"], model["num_key_value_heads"]
    head_dim = h // heads
    per_layer = h * heads * head_dim * 2 + h * kv * head_dim * 2 + 3 * h * i  # q, o, k, v; gate, up, down
    n = layers * per_layer + model["vocab_size"] * h
    return 6 * n + 12 * layers * heads * head_dim * seq_len


@contextlib.contextmanager
def workspace(name: str, keep: bool):
    """A scratch folder for data and runs: deleted afterwards, or kept in bench/out/work/<name>
    (logs, generated YAML, metrics) with keep."""
    if not keep:
        with tempfile.TemporaryDirectory(prefix=f"ember-bench-{name}-") as tmp:
            yield Path(tmp)
        return
    path = BENCH / "out" / "work" / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    yield path


def arguments(doc: str, workload: bool = True) -> argparse.ArgumentParser:
    """The options every bench script takes (a workload script also --quick, --keep, --contenders)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: time steps by CPU time (with --threads 1, for a machine other jobs share)")
    if workload:
        parser.add_argument("--quick", action="store_true", help="tiny batches and few steps: checks the plumbing")
        parser.add_argument("--keep", action="store_true", help="keep data, logs and runs in bench/out/work")
        parser.add_argument("--contenders", type=lambda s: s.split(","),
                            help="comma-separated subset, e.g. ember,trainer")
    return parser


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def load_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def save_json(path: Path, data: dict) -> None:
    write_atomically(path, json.dumps(data, indent=1) + "\n")


def write_atomically(path: Path, text: str) -> None:
    """Whole or not at all: an interrupted bench never leaves a truncated result or doc behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
