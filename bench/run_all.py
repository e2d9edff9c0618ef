"""`make bench`: every comparison in turn, then bench/results.json with the headline ratios.

    python bench/run_all.py [--quick] [--threads 2] [--clock wall|cpu]

Headline numbers (all from this one invocation, on this machine):
  fixed_vs_trainer  ember tokens/s / Trainer's, fixed-length pretraining (the lower of 10m and 50m)
  sft_vs_trainer    ember real tokens/s / Trainer's, variable-length SFT (packing vs padding)
  vs_bare_loop      ember tokens/s / the hand-written loop's, both eager (the lowest over workloads)
  rss_vs_trainer    ember peak RSS / Trainer's (the highest over workloads)
  mfu_50m           ember's MFU on the 50m model against the measured fp32 matmul peak
  fixed_vs_trainer_bf16  fixed_vs_trainer with bf16 autocast for all (CPUs with bf16 instructions; no target)
  sft_lora_vs_lf    ember / LLaMA-Factory real tokens/s on one LF-format SFT-LoRA YAML (median of alternating rounds)
  sft_packed_vs_lf  the same with ember's packing: true against LLaMA-Factory's default
  rss_sft_lora_checkpointed_vs_lf  ember / LLaMA-Factory peak RSS on that YAML, both with gradient checkpointing
  mem_lora_2k_vs_lf, mem_lora_4k_vs_lf  ember / LLaMA-Factory peak RSS, LoRA SFT of a 0.5B model at long
                    context: measured by `make bench-memory` (bench/memory_long_context.py), not here;
                    carried over from the previous results.json
ember runs eager and with `compile: true`; per workload the headline takes the one that
measured faster in this run (compile is kept only where it pays; `ember_config` says which).
A full wall-clock run also rewrites the results section of docs/benchmarks.md.
"""
from __future__ import annotations

import platform
import time
from pathlib import Path

import torch

import peak
import pretrain
import sft
import vs_llamafactory
from ember.engine.runtime import cpu_has_bf16
from harness import ContenderFailed, arguments, load_json, progress, save_json
from report import update_doc

RESULTS = Path(__file__).resolve().parent / "results.json"
QUICK_RESULTS = Path(__file__).resolve().parent / "out" / "results-quick.json"  # never overwrites a real run
MAX_MINUTES = 25  # `make bench` must finish within this on a 2-core machine
BF16_BUDGET_S = 11 * 60  # the bf16 comparison takes ~4 min here (twice that on a slow machine): start it only with margin
TARGETS = {"fixed_vs_trainer": lambda v: v >= 1.15, "sft_vs_trainer": lambda v: v >= 2,
           "vs_bare_loop": lambda v: v >= 0.97, "rss_vs_trainer": lambda v: v <= 1.0, "mfu_50m": lambda v: v >= 0.70,
           "sft_lora_vs_lf": lambda v: v >= 1.2, "sft_packed_vs_lf": lambda v: v >= 2,
           "rss_sft_lora_checkpointed_vs_lf": lambda v: v <= 1.0,
           "mem_lora_2k_vs_lf": lambda v: v <= 1.0, "mem_lora_4k_vs_lf": lambda v: v <= 1.0}
CARRIED = ("mem_lora_2k_vs_lf", "mem_lora_4k_vs_lf", "memory_long_context")  # from `make bench-memory`


def best_ember(rows: dict) -> str:
    return max(("ember", "ember_compile"), key=lambda name: rows[name]["tokens_per_s"] if name in rows else 0)


def compare(workloads: dict[str, dict]) -> dict:
    """Per workload: ember's best configuration against Trainer, and eager ember against the bare loop."""
    out: dict = {"ember_config": {}, "vs_trainer": {}, "vs_bare_loop": {}, "rss_vs_trainer": {}, "mfu": {}}
    for name, rows in workloads.items():
        best = best_ember(rows)
        out["ember_config"][name] = "compile: true" if best == "ember_compile" else "eager"
        out["vs_trainer"][name] = rows[best]["tokens_per_s"] / rows["trainer"]["tokens_per_s"]
        out["vs_bare_loop"][name] = rows["ember"]["tokens_per_s"] / rows["bare"]["tokens_per_s"]
        out["rss_vs_trainer"][name] = rows[best]["peak_rss_mb"] / rows["trainer"]["peak_rss_mb"]
        if "mfu" in rows[best]:
            out["mfu"][name] = rows[best]["mfu"]
    return out


def headline(pt: dict, ft: dict, bf16: dict | None) -> dict:
    """The five ratios with their targets, from the comparison scripts' outputs."""
    workloads = {f"pretrain_{size}": entry["contenders"] for size, entry in pt["models"].items()}
    details = compare({**workloads, "sft": ft["contenders"]})
    if bf16:
        details["bf16"] = compare({f"pretrain_{size}": entry["contenders"] for size, entry in bf16["models"].items()})
    results = {"fixed_vs_trainer": min(details["vs_trainer"][w] for w in workloads),
               "sft_vs_trainer": details["vs_trainer"]["sft"],
               "vs_bare_loop": min(details["vs_bare_loop"].values()),
               "rss_vs_trainer": max(details["rss_vs_trainer"].values()),
               "mfu_50m": details["mfu"].get("pretrain_50m")}
    if bf16:  # no target: the same comparison in the precision this CPU is fastest at
        results["fixed_vs_trainer_bf16"] = min(details["bf16"]["vs_trainer"].values())
    results["targets_met"] = {k: results[k] is not None and ok(results[k]) for k, ok in TARGETS.items() if k in results}
    return {**results, "details": details}


def main(quick: bool, threads: int, clock: str = "wall") -> dict:
    start = time.time()
    progress(f"ember bench ({'quick' if quick else 'full'}, {threads} thread(s), {clock} clock)")
    machine = peak.main(threads, clock)
    pt = pretrain.main(quick, threads, clock=clock)
    ft = sft.main(quick, threads, clock=clock)
    # bf16 autocast, where the CPU has bf16 instructions (elsewhere it is emulated: not worth timing);
    # it is extra, so it is left out when a slow machine has used up most of the time budget
    bf16 = None
    if not cpu_has_bf16():
        progress("bf16: skipped (this CPU has no bf16 instructions)")
    elif time.time() - start > BF16_BUDGET_S:
        progress(f"bf16: skipped to stay within {MAX_MINUTES} minutes ({(time.time() - start) / 60:.0f} spent)")
    else:
        bf16 = pretrain.main(quick, threads, "bf16", clock)
    lf = vs_llamafactory.main(quick, threads, clock)  # LLaMA-Factory's venv is made on first use (~2 min)

    results = headline(pt, ft, bf16)
    results.update({key: lf[key]["median"]
                    for key in ("sft_lora_vs_lf", "sft_packed_vs_lf", "rss_sft_lora_checkpointed_vs_lf")})
    results.update({key: value for key, value in load_json(RESULTS).items() if key in CARRIED})
    results["targets_met"] = {k: results.get(k) is not None and ok(results[k]) for k, ok in TARGETS.items()}
    peaks = {**machine["peak_flops"], "fp32": pt["peak_flops"], **({"bf16": bf16["peak_flops"]} if bf16 else {})}
    results.update(quick=quick, clock=clock, runtime_s=round(time.time() - start),
                   date=time.strftime("%Y-%m-%d %H:%M"), pretrain=pt, sft=ft, pretrain_bf16=bf16, vs_llamafactory=lf,
                   machine={"cpu": machine["cpu"], "threads": threads, "peak_flops": peaks,  # the highest probed
                            "torch": torch.__version__, "python": platform.python_version()})

    path = QUICK_RESULTS if quick or clock != "wall" else RESULTS
    save_json(path, results)
    if path == RESULTS:
        update_doc(results)  # docs/benchmarks.md shows the last full run
    progress("results: " + ", ".join(f"{k} {results[k]:.3g}" for k in TARGETS if results.get(k) is not None))
    progress("targets: " + ", ".join(f"{k} {'met' if ok else 'NOT met'}" for k, ok in results["targets_met"].items()))
    progress(f"wrote {path} after {results['runtime_s'] / 60:.1f} min")
    return results


if __name__ == "__main__":
    parser = arguments(__doc__, workload=False)
    parser.add_argument("--quick", action="store_true", help="tiny batches and few steps: checks the plumbing")
    args = parser.parse_args()
    try:
        main(args.quick, args.threads, args.clock)
    except ContenderFailed as failure:  # the comparisons finished before it are in bench/out/
        raise SystemExit(f"bench: error: {failure}")
