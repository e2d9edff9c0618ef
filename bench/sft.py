"""Comparison 2: supervised fine-tuning on variable-length samples (alpaca's length profile).

transformers' Trainer pads each batch of 8 samples to its longest, as users run it; ember
packs samples into 8 rows of cutoff_len (packing: true), eager and with `compile: true`, and
so does the hand-written loop (with transformers' own masked attention for packed rows).
tokens/s counts real tokens only (prompt and answer, never padding) and, because the tokens
per step vary, is the timed steps' real tokens over their total time.

    python bench/sft.py [--quick] [--threads 2] [--keep]
"""
from __future__ import annotations

from pathlib import Path

from harness import arguments, load_json, progress, run_contender, save_json, summarise, workspace
from peak import OUT as PEAK
from workloads import load_tokenizer, model_config, write_dataset_info, write_sft_set

OUT = Path(__file__).resolve().parent / "out" / "sft.json"
# (model, batch, cutoff_len, steps after the first, of which warm-up, samples generated)
FULL = ("10m", 8, 512, 20, 3, 2000)
QUICK = ("10m", 4, 256, 6, 2, 400)
# trainer_grouped: Trainer's own remedy for padding (group_by_length), shown beside the headline
CONTENDERS = [("trainer", {}), ("trainer_grouped", {"group_by_length": True}), ("bare", {}), ("ember", {}),
              ("ember_compile", {"compile": True})]


def main(quick: bool, threads: int, precision: str = "fp32", clock: str = "wall",
         contenders: list[str] | None = None, keep: bool = False) -> dict:
    size, batch, cutoff, steps, warmup, samples = QUICK if quick else FULL
    tokenizer = load_tokenizer()
    rows = {}
    with workspace(f"sft-{precision}", keep) as tmp:
        data = tmp / "data"
        data.mkdir()
        write_sft_set(data, samples)
        write_dataset_info(data)
        spec = {"workload": "sft", "model": model_config(size, tokenizer), "data_dir": str(data), "seq_len": cutoff,
                "batch_size": batch, "steps": steps + 1, "precision": precision, "threads": threads}
        for name, extra in [c for c in CONTENDERS if not contenders or c[0] in contenders]:
            progress(f"sft {size} ({precision}, batch {batch}, cutoff_len {cutoff}): {name} ...")
            raw = run_contender(name.split("_")[0], {**spec, **extra}, tmp / f"sft-{name}")
            row = summarise(raw, warmup, aggregate=True, clock=clock)
            row["ember_logged"] = raw.get("logged", [])
            rows[name] = row
            progress(f"  {row['tokens_per_s']:,.0f} real tok/s ({row['tokens_per_step']:,.0f} real tokens per step), "
                     f"peak RSS {row['peak_rss_mb']:,.0f} MB, first step after {row['first_step_s']:.1f} s")
    out = {"precision": precision, "threads": threads, "quick": quick, "clock": clock, "model": size,
           "batch": batch, "cutoff_len": cutoff, "samples": samples, "contenders": rows,
           "peak_flops": load_json(PEAK).get("peak_flops", {}).get(precision)}
    save_json(OUT, out)
    return out


if __name__ == "__main__":
    args = arguments(__doc__).parse_args()
    main(args.quick, args.threads, clock=args.clock, contenders=args.contenders, keep=args.keep)
