"""What the host allocator's settings cost and save: glibc's mmap threshold and huge pages.

glibc serves a request above its mmap threshold with a fresh mapping, returned to the kernel on
free; below it, from its heap, which it rarely gives back. The threshold starts at 128 KB and
slides up (to 32 MB) each time a larger mapped block is freed, so most later activations land in
the heap and the process keeps its peak. `malloc_mmap_threshold_kb` fixes it (opt-in), and ember
asks PyTorch for transparent huge pages by default (src/ember/engine/host_memory.py); this
measures both on the recipe of bench/vs_llamafactory.py (Qwen2-shaped 11M model, LoRA, batch 8,
cutoff_len 512) or, with --long N, on N layers of the 0.5B long-context recipe at cutoff_len
2048 (bench/memory_long_context.py). Each setting runs in a fresh process; rounds alternate
their order; gradient checkpointing off and/or on.

    python bench/malloc_threshold.py [--thresholds 0,64,1024] [--gc 0,1] [--thp 0,1] [--rounds 2]
                                     [--threads 2] [--quick | --long LAYERS]

Threshold 0 = glibc's sliding threshold; --thp 0,1 runs each setting with and without huge pages
(without: THP_MEM_ALLOC_ENABLE=0). Prints real tokens/s and peak RSS per setting and the median
ratio of each against the first threshold (without huge pages, if run) in the same round; writes
bench/out/malloc_threshold.json.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from harness import progress, save_json, summarise, workspace
from memory_long_context import QWEN2_05B, QWEN2_05B_VOCAB, write_long_rows
from vs_llamafactory import YAML, prepare, run, write_model
from workloads import load_tokenizer

OUT = Path(__file__).resolve().parent / "out" / "malloc_threshold.json"


def prepare_long(tmp: Path, layers: int, cutoff: int = 2048, steps: int = 5) -> tuple[Path, dict]:
    """The long-context recipe of bench/memory_long_context.py, on `layers` of the 0.5B model's 24."""
    shape = {**QWEN2_05B, "num_hidden_layers": layers}
    model = write_model(tmp / "model", shape, load_tokenizer(), vocab_size=QWEN2_05B_VOCAB)
    data = write_long_rows(tmp / "data", rows=4 * steps, words=cutoff * 2)
    yaml_path = tmp / "sft_lora_long.yaml"
    yaml_path.write_text(YAML.format(model=model, data=data, cutoff=cutoff, samples=4 * steps, out=tmp / "unused",
                                     batch=1, steps=steps))
    return yaml_path, {"batch": 1, "cutoff_len": cutoff, "steps": steps, "warmup": 1, "layers": layers}


def main(thresholds: list[int], rounds: int, threads: int, quick: bool, gcs=(False, True), thp=(True,),
         long_layers: int = 0) -> dict:
    settings = [(kb, gc, h) for gc in gcs for kb in thresholds for h in thp]
    rows: dict[str, list[dict]] = {}
    with workspace("malloc-threshold", False) as tmp:
        yaml_path, shape = prepare_long(tmp, long_layers) if long_layers else prepare(tmp, quick)
        for r in range(rounds):
            for kb, gc, h in (settings if r % 2 == 0 else list(reversed(settings))):
                name = f"{kb}kb-gc{int(gc)}" + ("-thp" if h else "")
                os.environ["THP_MEM_ALLOC_ENABLE"] = "1" if h else "0"  # ember's default is 1
                work = tmp / f"{name}-{r}"
                overrides = {"malloc_mmap_threshold_kb": kb, "gradient_checkpointing": str(gc).lower(),
                             "output_dir": str(work / "out")}
                spec = {"yaml": str(yaml_path), "overrides": overrides, "steps": shape["steps"], "threads": threads}
                row = summarise(run("ember", spec, work), shape["warmup"], aggregate=True, clock="wall")
                rows.setdefault(name, []).append(row)
                progress(f"round {r + 1}/{rounds} {name}: {row['tokens_per_s']:,.0f} tok/s, "
                         f"peak RSS {row['peak_rss_mb']:,.0f} MB")
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), "threads": threads, "quick": quick, **shape, "settings": {}}
    for kb, gc, h in settings:
        name = f"{kb}kb-gc{int(gc)}" + ("-thp" if h else "")
        base = f"{thresholds[0]}kb-gc{int(gc)}" + ("" if False in thp else "-thp")
        speed = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(rows[name], rows[base])]
        out["settings"][name] = {
            "tokens_per_s": [round(x["tokens_per_s"], 1) for x in rows[name]],
            "peak_rss_mb": [round(x["peak_rss_mb"]) for x in rows[name]],
            f"speed_vs_{thresholds[0]}kb": round(statistics.median(speed), 3)}
        progress(f"{name}: {out['settings'][name]}")
    save_json(OUT, out)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thresholds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 64, 1024])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    flags = lambda s: [bool(int(x)) for x in s.split(",")]  # noqa: E731
    parser.add_argument("--gc", type=flags, default=[False, True], help="gradient checkpointing: 0, 1 or 0,1")
    parser.add_argument("--thp", type=flags, default=[True], help="huge pages: 1 (ember's default), 0 or 0,1")
    parser.add_argument("--long", type=int, default=0, metavar="LAYERS",
                        help="the 0.5B long-context recipe (cutoff_len 2048) with this many layers instead")
    args = parser.parse_args()
    main(args.thresholds, args.rounds, args.threads, args.quick, args.gc, args.thp, args.long)
