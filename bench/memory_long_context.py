"""Peak memory of LoRA SFT at long context: ember with its best settings against LLaMA-Factory's defaults.

A Qwen2-0.5B-shaped model from random init (its config: hidden 896, 24 layers, 14/2 heads, SwiGLU
4864, the 151,936-token vocabulary, tied embeddings: 494M parameters, fp32 here), saved as an HF
folder with the project's tokenizer (its ids use the first 4096 rows of the embedding). One
LLaMA-Factory-format YAML per cutoff_len (2048, 4096): LoRA on all linear layers, batch 1, no
packing, 2 steps, on rows whose answers are longer than cutoff_len, so every step trains on
exactly cutoff_len tokens in both. LLaMA-Factory runs the YAML as it is (its defaults: gradient
checkpointing on, full logits); ember runs it with `gradient_checkpointing=true` (its chunked loss
never holds the full logits). Each in a fresh process; the peak RSS of the process tree
(bench/process_tree.py). Besides, `load_only`: ember's imports plus the model loaded, no training,
which is the floor that the weights and the runtime set.

It is CPU-heavy (~1-3 minutes a step at 4k on 2 cores), so it is not part of `make bench`:

    python bench/memory_long_context.py [--cutoffs 2048,4096] [--steps 2] [--threads 2] [--reuse-lf]
                                                                          (make bench-memory)

mem_lora_<n>k_vs_lf = ember peak RSS / LLaMA-Factory's (lower is better), in bench/out/memory_long_context.json
and merged into bench/results.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from harness import load_json, progress, save_json, workspace
from process_tree import run_measured
from vs_llamafactory import YAML, run, write_model
from workloads import CORPUS, load_tokenizer

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out" / "memory_long_context.json"
RESULTS = BENCH / "results.json"
QWEN2_05B = dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
                 rope_theta=1000000.0, tie_word_embeddings=True, torch_dtype="float32")
QWEN2_05B_VOCAB = 151936
EMBER_BEST = {"gradient_checkpointing": "true"}
LOAD_ONLY = ("import sys, torch, ember.cli; from transformers import AutoModelForCausalLM; "
             "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32); "
             "print(sum(p.numel() for p in m.parameters()))")


def write_long_rows(folder: Path, rows: int, words: int) -> Path:
    """alpaca rows whose answer runs `words` words of the corpus: longer than any cutoff_len used,
    so LLaMA-Factory's truncation (and ember's, which follows it) fills every row to cutoff_len."""
    corpus = CORPUS.read_text(encoding="utf-8").split()
    data = [{"instruction": f"Continue the help text, part {i}.", "input": "",
             "output": " ".join(corpus[i * 997:i * 997 + words])} for i in range(rows)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "alpaca_en_demo.json").write_text(json.dumps(data), encoding="utf-8")
    (folder / "dataset_info.json").write_text(json.dumps({"alpaca_en_demo": {"file_name": "alpaca_en_demo.json"}}))
    return folder


def parameter_bytes(model_dir: Path) -> int:
    return sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))


def record(cutoff: int, rows: dict, out: dict) -> None:
    """Merge one length's ratio into bench/results.json (kept there across `make bench` runs)."""
    results = load_json(RESULTS)
    key = f"mem_lora_{cutoff // 1024}k_vs_lf"
    results[key] = rows["ratio"]
    results.setdefault("targets_met", {})[key] = rows["ratio"] <= 1.0
    detail = results.setdefault("memory_long_context", {})
    detail.update({k: v for k, v in out.items() if k != "cutoffs"})
    detail.setdefault("cutoffs", {})[str(cutoff)] = {**rows, "steps": out["steps"]}
    save_json(RESULTS, results)


def recorded_lf(cutoff: int, steps: int) -> dict | None:
    """LLaMA-Factory's row of an earlier run at this length and step count, from bench/results.json.
    Its peak depends on LLaMA-Factory, the model and the YAML only, none of which ember changes."""
    earlier = load_json(RESULTS).get("memory_long_context", {})
    row = earlier.get("cutoffs", {}).get(str(cutoff))
    if not row or row.get("steps") != steps or earlier.get("model") != {**QWEN2_05B, "vocab_size": QWEN2_05B_VOCAB}:
        return None
    return {**row["lf"], "reused": True}


def main(cutoffs: list[int], steps: int, threads: int, keep: bool, reuse_lf: bool = False) -> dict:
    out: dict = {"threads": threads, "steps": steps, "model": {**QWEN2_05B, "vocab_size": QWEN2_05B_VOCAB},
                 "ember_settings": EMBER_BEST, "cutoffs": {}}
    with workspace("memory-long-context", keep) as tmp:
        progress("writing the 0.5B model (random init) ...")
        model = write_model(tmp / "model", QWEN2_05B, load_tokenizer(), vocab_size=QWEN2_05B_VOCAB)
        out["weights_mb"] = parameter_bytes(model) / 2**20
        data = write_long_rows(tmp / "data", rows=4 * steps, words=max(cutoffs) * 2)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
        loaded = run_measured([sys.executable, "-c", LOAD_ONLY, str(model)], tmp / "load_only.log", env=env)
        out["load_only_peak_rss_mb"] = loaded["tree_peak_rss_mb"]
        progress(f"  load only: {loaded['tree_peak_rss_mb']:,.0f} MB (weights {out['weights_mb']:,.0f} MB)")
        for cutoff in cutoffs:
            yaml_path = tmp / f"sft_lora_{cutoff}.yaml"
            yaml_path.write_text(YAML.format(model=model, data=data, cutoff=cutoff, samples=4 * steps,
                                             out=tmp / "unused", batch=1, steps=steps))
            rows = {}
            for name, overrides in (("lf", {}), ("ember", EMBER_BEST)):
                if name == "lf" and reuse_lf and (reused := recorded_lf(cutoff, steps)):
                    rows["lf"] = reused
                    progress(f"LoRA SFT, 0.5B, cutoff_len {cutoff}: lf reused ({reused['peak_rss_mb']:,.0f} MB)")
                    continue
                progress(f"LoRA SFT, 0.5B, cutoff_len {cutoff}: {name} ...")
                work = tmp / f"{name}-{cutoff}"
                spec = {"yaml": str(yaml_path), "overrides": {**overrides, "output_dir": str(work / "out")},
                        "steps": steps, "threads": threads}
                raw = run(name, spec, work)
                ends = raw["ends"]
                rows[name] = {"peak_rss_mb": raw["tree_peak_rss_mb"], "tokens": raw["tokens"],
                              "largest_process_peak_rss_mb": raw["largest_process_peak_rss_mb"],
                              "step_s": [b - a for a, b in zip([raw["launched"], *ends], ends)],
                              "wall_s": raw["wall_s"], "measured": time.strftime("%Y-%m-%d %H:%M")}
                steps_s = [round(s) for s in rows[name]["step_s"]]
                progress(f"  peak RSS {raw['tree_peak_rss_mb']:,.0f} MB, steps {steps_s} s, "
                         f"tokens per step {raw['tokens']}")
            rows["ratio"] = rows["ember"]["peak_rss_mb"] / rows["lf"]["peak_rss_mb"]
            out["cutoffs"][cutoff] = rows
            progress(f"  ember / LLaMA-Factory peak RSS at {cutoff}: {rows['ratio']:.2f}")
            save_json(OUT, out)
            if cutoff >= 1024:  # a plumbing check (--cutoffs 128) leaves results.json alone
                record(cutoff, rows, out)  # each length as it is done: a later one may not finish
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cutoffs", type=lambda s: [int(x) for x in s.split(",")], default=[2048, 4096])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--reuse-lf", action="store_true",
                        help="take LLaMA-Factory's rows from bench/results.json where a run of the same length, "
                             "steps and model is there (they take 8-15 minutes a length)")
    args = parser.parse_args()
    main(args.cutoffs, args.steps, args.threads, args.keep, args.reuse_lf)
