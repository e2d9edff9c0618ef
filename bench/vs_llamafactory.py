"""Comparison: LLaMA-Factory itself, on one SFT-LoRA YAML in its own format.

One YAML (`sft_lora.yaml`, written in LLaMA-Factory's format after its
examples/train_lora/*_lora_sft.yaml, with `use_cpu: true` because its bf16 check refuses CPUs)
is trained four ways, each in a fresh process:

  lf            `llamafactory-cli train sft_lora.yaml` in LLaMA-Factory's own venv
                (bench/llamafactory_venv.py; its defaults: padding to the longest of each
                batch, gradient checkpointing on)
  ember         `ember train sft_lora.yaml`: ember's reading of the same recipe (no packing,
                gradient checkpointing off: ember's defaults)
  ember_packed  `ember train sft_lora.yaml packing=true`
  ember_checkpointed  `ember train sft_lora.yaml gradient_checkpointing=true`: LLaMA-Factory's
                own memory setting, for the peak-RSS comparison at equal recomputation

on the same random-init Qwen2-shaped model (saved as an HF folder with the project's tokenizer)
and the same alpaca-shaped data (registered as alpaca_en_demo, LLaMA-Factory's demo set name).
Rounds alternate the order (lf, ember, ember_packed, then the reverse) so the machine's drift
falls on everyone. Per round: real tokens/s ratios and peak-RSS ratios (the whole process tree,
bench/process_tree.py); reported: the median round, and the spread over rounds.

    python bench/vs_llamafactory.py [--quick] [--rounds 3] [--threads 2] [--clock wall|cpu] [--keep]
    python bench/vs_llamafactory.py --dry-run   # writes model, data and YAML; checks ember accepts it
    python bench/vs_llamafactory.py --record [bench/out/vs_llamafactory.json]   # ratios into results.json

sft_lora_vs_lf = ember / lf real tokens/s; sft_packed_vs_lf = ember_packed / lf (higher is better);
rss ratios ember / lf (lower is better); rss_sft_lora_checkpointed_vs_lf is the memory target's.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

from harness import ContenderFailed, arguments, load_json, progress, save_json, summarise, workspace
from process_tree import run_measured
from workloads import load_tokenizer, write_sft_set

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out" / "vs_llamafactory.json"
RESULTS = BENCH / "results.json"
# Qwen2-shaped (grouped-query attention, SwiGLU, tied embeddings), 11.3M parameters with the 4096-token vocabulary
QWEN2_SMALL = dict(model_type="qwen2", hidden_size=384, intermediate_size=1024, num_hidden_layers=6,
                   num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6,
                   rope_theta=1000000.0, tie_word_embeddings=True)
# (batch, cutoff_len, steps after the first, of which warm-up, samples, rounds)
FULL = (8, 512, 16, 3, 1000, 3)
QUICK = (2, 128, 5, 1, 100, 1)
CONTENDERS = {"lf": ("lf", {}), "ember": ("ember", {}), "ember_packed": ("ember", {"packing": "true"}),
              "ember_checkpointed": ("ember", {"gradient_checkpointing": "true"})}

YAML = """\
### model
model_name_or_path: {model}
trust_remote_code: true

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all

### dataset
dataset: alpaca_en_demo
dataset_dir: {data}
template: default
cutoff_len: {cutoff}
max_samples: {samples}
overwrite_cache: true
preprocessing_num_workers: 1
dataloader_num_workers: 0

### output
output_dir: {out}
logging_steps: 10
save_steps: 10000
overwrite_output_dir: true
report_to: none

### train
per_device_train_batch_size: {batch}
gradient_accumulation_steps: 1
learning_rate: 1.0e-4
max_steps: {steps}
lr_scheduler_type: cosine
warmup_ratio: 0.1
use_cpu: true
seed: 0
"""


def write_model(folder: Path, shape: dict, tokenizer, vocab_size: int | None = None) -> Path:
    """A random-init causal LM saved as an HF folder (config, safetensors, tokenizer): what both read."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.for_model(**{**shape, "vocab_size": vocab_size or len(tokenizer),
                                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                                     "pad_token_id": tokenizer.pad_token_id})
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_data(folder: Path, samples: int) -> Path:
    """alpaca-shaped rows registered under LLaMA-Factory's demo name, in its default alpaca columns."""
    folder.mkdir(parents=True, exist_ok=True)
    write_sft_set(folder, samples)
    os.replace(folder / "sft.json", folder / "alpaca_en_demo.json")
    (folder / "dataset_info.json").write_text(json.dumps({"alpaca_en_demo": {"file_name": "alpaca_en_demo.json"}}))
    return folder


def prepare(tmp: Path, quick: bool) -> tuple[Path, dict]:
    batch, cutoff, steps, warmup, samples, _ = QUICK if quick else FULL
    model = write_model(tmp / "model", QWEN2_SMALL, load_tokenizer())
    data = write_data(tmp / "data", samples)
    yaml_path = tmp / "sft_lora.yaml"
    yaml_path.write_text(YAML.format(model=model, data=data, cutoff=cutoff, samples=samples, out=tmp / "unused",
                                     batch=batch, steps=steps + 1))
    return yaml_path, {"batch": batch, "cutoff_len": cutoff, "steps": steps + 1, "warmup": warmup}


def run(name: str, spec: dict, workdir: Path) -> dict:
    """One contender in a fresh process: its step log, plus the peak RSS of its process tree."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec = {**spec, "workdir": str(workdir), "result": str(workdir / "result.json")}
    (workdir / "spec.json").write_text(json.dumps(spec, indent=1))
    kind = CONTENDERS[name][0]
    if kind == "lf":
        from llamafactory_venv import ensure
        python = str(ensure(progress))
    else:
        python = sys.executable
    threads = str(spec["threads"])
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(workdir / "datasets_cache"), "PYTHONPATH": str(BENCH),
           "DISABLE_VERSION_CHECK": "1"}
    measured = run_measured([python, str(BENCH / f"contender_{kind}.py"), str(workdir / "spec.json")],
                            workdir / "log.txt", env=env, cwd=str(workdir))
    if measured["returncode"] != 0 or not (workdir / "result.json").exists():
        tail = (workdir / "log.txt").read_text(errors="replace").splitlines()[-25:]
        raise ContenderFailed(f"contender {name} failed (exit {measured['returncode']}); the end of its log "
                              f"({workdir}/log.txt, kept with --keep):\n" + "\n".join(tail))
    result = json.loads((workdir / "result.json").read_text())
    return {**result, **measured, "peak_rss_mb": measured["tree_peak_rss_mb"]}


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "rounds": [round(v, 4) for v in values]}


def main(quick: bool, threads: int, clock: str = "wall", rounds: int | None = None, keep: bool = False) -> dict:
    rounds = rounds or (QUICK if quick else FULL)[-1]
    per_round: list[dict] = []
    with workspace("vs-llamafactory", keep) as tmp:
        yaml_path, shape = prepare(tmp, quick)
        for r in range(rounds):
            order = list(CONTENDERS) if r % 2 == 0 else list(reversed(CONTENDERS))
            rows = {}
            for name in order:
                progress(f"vs LLaMA-Factory, round {r + 1}/{rounds}: {name} ...")
                work = tmp / f"{name}-{r}"
                spec = {"yaml": str(yaml_path), "overrides": {**CONTENDERS[name][1], "output_dir": str(work / "out")},
                        "steps": shape["steps"], "threads": threads}
                raw = run(name, spec, work)
                row = summarise(raw, shape["warmup"], aggregate=True, clock=clock)
                largest = raw["largest_process_peak_rss_mb"]
                row.update(largest_process_peak_rss_mb=largest, process_wall_s=raw["wall_s"])
                rows[name] = row
                progress(f"  {row['tokens_per_s']:,.0f} real tok/s ({row['tokens_per_step']:,.0f} per step), "
                         f"peak RSS {row['peak_rss_mb']:,.0f} MB (tree), {largest:,.0f} MB (largest process)")
            per_round.append(rows)
    ratio = lambda a, b, key: [rows[a][key] / rows[b][key] for rows in per_round]  # noqa: E731
    out = {"threads": threads, "clock": clock, "quick": quick, **shape, "model": QWEN2_SMALL, "rounds": per_round,
           "sft_lora_vs_lf": spread(ratio("ember", "lf", "tokens_per_s")),
           "sft_packed_vs_lf": spread(ratio("ember_packed", "lf", "tokens_per_s")),
           "rss_sft_lora_vs_lf": spread(ratio("ember", "lf", "peak_rss_mb")),
           "rss_sft_packed_vs_lf": spread(ratio("ember_packed", "lf", "peak_rss_mb")),
           "rss_sft_lora_checkpointed_vs_lf": spread(ratio("ember_checkpointed", "lf", "peak_rss_mb")),
           "sft_lora_checkpointed_vs_lf": spread(ratio("ember_checkpointed", "lf", "tokens_per_s"))}
    out["date"] = time.strftime("%Y-%m-%d %H:%M")
    save_json(OUT, out)
    progress("vs LLaMA-Factory: " + ", ".join(f"{k} {out[k]['median']:.2f} ({out[k]['min']:.2f}-{out[k]['max']:.2f})"
                                            for k in out if k.endswith("_vs_lf")))
    return out


def record(out: dict) -> None:
    """Put this run's ratios into bench/results.json without a whole `make bench` (which
    replaces them with its own run); `vs_llamafactory` there says when, how and with what spread."""
    results = load_json(RESULTS)
    targets = {"sft_lora_vs_lf": lambda r: r >= 1.2, "sft_packed_vs_lf": lambda r: r >= 2,
               "rss_sft_lora_checkpointed_vs_lf": lambda r: r <= 1}  # memory at LF's own recomputation
    for key, met in targets.items():
        if key in out:  # runs recorded before the checkpointed contender lack its ratio
            results[key] = out[key]["median"]
            results.setdefault("targets_met", {})[key] = met(out[key]["median"])
    results["vs_llamafactory"] = out
    save_json(RESULTS, results)


def dry_run(folder: Path) -> dict:
    """Everything but training and LLaMA-Factory's venv: the model, the data, the YAML, and
    ember's check of that YAML (the same validation `ember train` does before any work)."""
    from ember.config.loader import load_config
    yaml_path, shape = prepare(folder, quick=True)
    cfg = load_config([str(yaml_path)])
    return {"yaml": str(yaml_path), "device": cfg.device, "stage": cfg.stage, "finetuning_type": cfg.finetuning_type,
            "cutoff_len": cfg.cutoff_len, **shape}


if __name__ == "__main__":
    parser = arguments(__doc__)
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 3; 1 with --quick)")
    parser.add_argument("--dry-run", action="store_true", help="write model, data and YAML and check them; no training")
    parser.add_argument("--record", help="merge this comparison's ratios into bench/results.json (or, given the "
                        "path of an earlier run's bench/out/vs_llamafactory.json, that run's)", nargs="?", const="")
    args = parser.parse_args()
    if args.dry_run:
        with workspace("vs-llamafactory-dry", args.keep) as tmp:
            print(json.dumps(dry_run(tmp)))
    else:
        try:
            if args.record:
                record(load_json(Path(args.record)))
            else:
                out = main(args.quick, args.threads, args.clock, args.rounds, args.keep)
                if args.record == "" and not args.quick:
                    record(out)
        except ContenderFailed as failure:
            raise SystemExit(f"bench: error: {failure}")
