"""bench/results.json → the tables of docs/benchmarks.md (between its results markers).

run_all.py calls this after a full wall-clock run, so the documented numbers are always those
of the last `make bench`; `python bench/report.py` re-renders them from bench/results.json.
"""
from __future__ import annotations

import json
from pathlib import Path

from harness import write_atomically

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
NAMES = {"ember": "ember", "ember_compile": "ember, `compile: true`", "trainer": "Trainer", "bare": "bare loop",
         "trainer_grouped": "Trainer, `train_sampling_strategy: group_by_length`"}
TARGETS = [("fixed_vs_trainer", "ember / Trainer tokens/s, fixed-length, fp32 (lower of 10m, 50m)", "≥ 1.15"),
           ("sft_vs_trainer", "ember / Trainer real tokens/s, variable-length SFT", "≥ 2"),
           ("vs_bare_loop", "ember / bare loop tokens/s, both eager (lowest workload)", "≥ 0.97"),
           ("rss_vs_trainer", "ember / Trainer peak RSS (highest workload)", "≤ 1"),
           ("mfu_50m", "ember MFU, 50m, against the measured fp32 peak", "≥ 70%"),
           ("sft_lora_vs_lf", "ember / LLaMA-Factory real tokens/s, same SFT-LoRA YAML (median round)", "≥ 1.2"),
           ("sft_packed_vs_lf", "ember `packing: true` / LLaMA-Factory default, real tokens/s (median round)", "≥ 2"),
           ("rss_sft_lora_checkpointed_vs_lf", "ember / LLaMA-Factory peak RSS, same YAML, both checkpointing", "≤ 1"),
           ("mem_lora_2k_vs_lf", "ember / LLaMA-Factory peak RSS, LoRA 0.5B, cutoff_len 2048 (bench-memory)", "≤ 1"),
           ("mem_lora_4k_vs_lf", "ember / LLaMA-Factory peak RSS, LoRA 0.5B, cutoff_len 4096 (bench-memory)", "≤ 1")]


def table(title: str, rows: dict, mfu: bool) -> list[str]:
    head = "| contender | tokens/s | " + ("MFU | " if mfu else "") + "peak RSS | first step |"
    lines = [f"**{title}**", "", head, "|" + "---|" * (head.count("|") - 1)]
    for name, row in rows.items():
        cells = [NAMES.get(name, name), f"{row['tokens_per_s']:,.0f}"]
        if mfu:
            cells.append(f"{row['mfu']:.1%}" if "mfu" in row else "–")
        cells += [f"{row['peak_rss_mb']:,.0f} MB", f"{row['first_step_s']:.1f} s"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def llamafactory_table(lf: dict) -> list[str]:
    """Each contender's median over the alternating rounds, and the ratios' spread."""
    import statistics
    names = {"lf": "LLaMA-Factory (`llamafactory-cli train`)", "ember": "ember (same YAML)",
             "ember_packed": "ember, `packing=true`", "ember_checkpointed": "ember, `gradient_checkpointing=true`"}
    lines = [f"**LLaMA-Factory, Qwen2-shaped 11M, LoRA, fp32, batch {lf['batch']}, cutoff_len {lf['cutoff_len']}, "
             f"{len(lf['rounds'])} alternating rounds (medians; real tokens/s)**", "",
             "| contender | tokens/s | peak RSS (process tree) |", "|---|---|---|"]
    for name, label in ((n, label) for n, label in names.items() if n in lf["rounds"][0]):  # older runs lack some
        rate = statistics.median(r[name]["tokens_per_s"] for r in lf["rounds"])
        rss = statistics.median(r[name]["peak_rss_mb"] for r in lf["rounds"])
        lines.append(f"| {label} | {rate:,.0f} | {rss:,.0f} MB |")
    spreads = ", ".join(f"{k} {lf[k]['min']:.2f}–{lf[k]['max']:.2f}" for k in lf if k.endswith("_vs_lf"))
    return lines + ["", f"Spread over the rounds: {spreads}.", ""]


def render(results: dict) -> str:
    machine = results["machine"]
    peaks = ", ".join(f"{k} {v / 1e9:,.0f} GFLOP/s" for k, v in machine["peak_flops"].items())
    clock = " (steps timed by CPU time)" if results.get("clock") == "cpu" else ""
    out = [f"Run of {results['date']}: {machine['cpu']}, {machine['threads']} thread(s){clock}, torch "
           f"{machine['torch']}; measured matmul peak {peaks}; {results['runtime_s'] / 60:.1f} minutes in all.", "",
           "| headline | value | target | met |", "|---|---|---|---|"]
    for key, what, target in TARGETS:
        value = results.get(key)
        shown = "–" if value is None else (f"{value:.1%}" if key == "mfu_50m" else f"{value:.2f}")
        out.append(f"| {what} | {shown} | {target} | {'yes' if results['targets_met'].get(key) else 'no'} |")
    if results.get("fixed_vs_trainer_bf16") is not None:
        out.append(f"| ember / Trainer tokens/s, fixed-length, bf16 autocast (lower of 10m, 50m) | "
                   f"{results['fixed_vs_trainer_bf16']:.2f} | – | – |")
    if results.get("clock") == "cpu":
        out += ["", "*Steps timed by CPU time on one thread of a machine other jobs were using: ratios between "
                    "contenders hold to about ±5–10%; a quiet `make bench` replaces these numbers.*"]
    out += ["", "ember's configuration per workload: " +
            ", ".join(f"{k} {v}" for k, v in results["details"]["ember_config"].items()) + ".", ""]
    for size, entry in results["pretrain"]["models"].items():
        title = f"Pretraining, {size}, fp32, batch {entry['batch']} x {entry['seq_len']}"
        out += table(title, entry["contenders"], True)
    sft = results["sft"]
    out += table(f"SFT, {sft['model']}, fp32, batch {sft['batch']}, cutoff_len {sft['cutoff_len']} (real tokens/s)",
                 sft["contenders"], False)
    if results.get("vs_llamafactory"):
        out += llamafactory_table(results["vs_llamafactory"])
    if results.get("pretrain_bf16"):
        for size, entry in results["pretrain_bf16"]["models"].items():
            out += table(f"Pretraining, {size}, bf16 autocast, batch {entry['batch']} x {entry['seq_len']} "
                         "(MFU against the bf16 peak)", entry["contenders"], True)
    return "\n".join(out).rstrip() + "\n"


def update_doc(results: dict) -> None:
    text = DOC.read_text()
    if START not in text or END not in text:
        return
    head, rest = text.split(START, 1)
    write_atomically(DOC, head + START + "\n" + render(results) + END + rest.split(END, 1)[1])


if __name__ == "__main__":
    update_doc(json.loads((Path(__file__).resolve().parent / "results.json").read_text()))
