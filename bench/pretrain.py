"""Comparison 1: pretraining on fixed-length blocks (every token real, no padding anywhere).

ember, transformers' Trainer and a hand-written loop train the same ~10M and ~50M Llama
models from the same random init on the same corpus, in fp32, with the same hyperparameters
and thread count; ember also runs with `compile: true`. Reported per contender: tokens/s
(median over the timed steps), MFU against the measured fp32 matmul peak, peak RSS, time
from launch to the end of the first step.

    python bench/pretrain.py [--quick] [--threads 2] [--precision fp32|bf16] [--keep]
"""
from __future__ import annotations

from pathlib import Path

from harness import arguments, flops_per_token, progress, run_contender, save_json, summarise, workspace
from peak import matmul_peak
from workloads import load_tokenizer, model_config, write_dataset_info, write_pretrain_corpus

OUT = Path(__file__).resolve().parent / "out"  # pretrain-<precision>.json
# (model, batch, seq_len, steps after the first, of which warm-up); sized so the whole of
# `make bench` stays under 20 minutes on 2 cores
FULL = [("10m", 8, 256, 30, 3), ("50m", 4, 256, 24, 3)]  # 50m: 21 timed steps, so a burst of noise moves the median less
QUICK = [("10m", 4, 128, 6, 2), ("50m", 2, 128, 6, 2)]
CONTENDERS = [("trainer", {}), ("bare", {}), ("ember", {}), ("ember_compile", {"compile": True})]


def main(quick: bool, threads: int, precision: str = "fp32", clock: str = "wall", models: list[str] | None = None,
         contenders: list[str] | None = None, keep: bool = False) -> dict:
    import torch
    torch.set_num_threads(threads)  # the probes below run here, with the contenders' thread count
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    # this machine's speed drifts by ±10% over minutes (clocks, neighbours): the matmul peak is
    # probed before and after every contender, and its MFU divides by the higher of the two
    # probes around its own run, so it is measured against the machine as it was then and is
    # never flattered by a probe from a slow moment
    probe = matmul_peak(dtype, clock)
    peak = probe  # the highest of the comparison, reported with the machine
    tokenizer = load_tokenizer()
    results = {}
    with workspace(f"pt-{precision}", keep) as tmp:
        data = tmp / "data"
        data.mkdir()
        settings = [s for s in (QUICK if quick else FULL) if not models or s[0] in models]
        write_pretrain_corpus(data, max(b * t * (s + 1) for _, b, t, s, _ in settings))
        write_dataset_info(data)
        for size, batch, seq_len, steps, warmup in settings:
            model = model_config(size, tokenizer)
            spec = {"workload": "pretrain", "model": model, "data_dir": str(data), "seq_len": seq_len,
                    "batch_size": batch, "steps": steps + 1, "precision": precision, "threads": threads}
            rows = {}
            for name, extra in [c for c in CONTENDERS if not contenders or c[0] in contenders]:
                progress(f"pretrain {size} ({precision}, {batch}x{seq_len}): {name} ...")
                raw = run_contender(name.split("_")[0], {**spec, **extra}, tmp / f"{size}-{name}")
                row = summarise(raw, warmup, aggregate=False, clock=clock)
                before, probe = probe, matmul_peak(dtype, clock)
                peak = max(peak, probe)
                row["peak_flops"] = max(before, probe)
                row["mfu"] = flops_per_token(model, seq_len) * row["tokens_per_s"] / row["peak_flops"]
                row["ember_logged"] = raw.get("logged", [])
                rows[name] = row
                progress(f"  {row['tokens_per_s']:,.0f} tok/s, MFU {row['mfu']:.1%} (peak "
                         f"{row['peak_flops'] / 1e9:,.0f} GFLOP/s), peak RSS {row['peak_rss_mb']:,.0f} MB, "
                         f"first step after {row['first_step_s']:.1f} s")
            results[size] = {"batch": batch, "seq_len": seq_len, "contenders": rows}
    out = {"precision": precision, "threads": threads, "quick": quick, "clock": clock, "peak_flops": peak,
           "models": results}
    save_json(OUT / f"pretrain-{precision}.json", out)
    return out


if __name__ == "__main__":
    parser = arguments(__doc__)
    parser.add_argument("--models", type=lambda s: s.split(","), help="comma-separated subset, e.g. 10m")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    main(args.quick, args.threads, args.precision, clock=args.clock, models=args.models, contenders=args.contenders,
         keep=args.keep)
