"""Peak RSS and step time of `ember train` LoRA SFT on a Qwen2-shaped model at cutoff_len 2048,
gradient_checkpointing off and on: the measurement behind its default (README, "Memory").

Qwen2-0.5B's block shape (hidden 896, 14/2 heads, SwiGLU 4864) from random init, with the
project's 4096-token vocabulary and `--layers` of its 24 blocks (12 by default: a step of the full
depth takes ~30 s on 2 CPU cores); batch 1, packed rows, fp32, a few steps. Each setting runs in
its own process, whose peak RSS the OS reports.

    python bench/checkpointing_memory.py [--layers 12] [--cutoff 2048] [--steps 3]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from workloads import TOKENIZER, load_tokenizer, write_dataset_info, write_sft_set  # noqa: E402

QWEN2_05B_BLOCK = dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_attention_heads=14,
                       num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
                       rope_theta=1000000.0, tie_word_embeddings=True)


def run(work: Path, name: str, cutoff: int, steps: int, extra: list[str]) -> dict:
    out = work / name
    argv = [sys.executable, "-m", "ember", "train", "--model_config", str(work / "model.json"),
            "--tokenizer_name_or_path", str(TOKENIZER), "--stage", "sft", "--template", "default",
            "--dataset", "sft", "--dataset_dir", str(work), "--packing", "true", "--cutoff_len", str(cutoff),
            "--finetuning_type", "lora", "--lora_target", "all", "--per_device_train_batch_size", "1",
            "--max_steps", str(steps), "--logging_steps", "1", "--save_steps", "0", "--disable_tqdm", "true",
            "--output_dir", str(out), *extra]
    started = time.perf_counter()
    with open(work / f"{name}.log", "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak, not the max over all children
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit((work / f"{name}.log").read_text()[-3000:])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    timed = [r["tokens_per_sec"] for r in records if "tokens_per_sec" in r][1:]  # the first step warms up
    return {"peak_rss_mb": round(usage.ru_maxrss / 1024), "tokens_per_sec": round(sum(timed) / len(timed), 1),
            "wall_s": round(time.perf_counter() - started, 1)}


def main(layers: int, cutoff: int, steps: int) -> dict:
    tokenizer = load_tokenizer()
    with tempfile.TemporaryDirectory(prefix="ember-ckpt-mem-") as tmp:
        work = Path(tmp)
        config = {**QWEN2_05B_BLOCK, "num_hidden_layers": layers, "vocab_size": len(tokenizer),
                  "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                  "pad_token_id": tokenizer.pad_token_id}
        (work / "model.json").write_text(json.dumps(config))
        write_sft_set(work, 40 * steps * cutoff // 256)
        write_dataset_info(work)
        result = {"layers": layers, "cutoff_len": cutoff, "steps": steps}
        for name, on in (("off", "false"), ("on", "true")):
            result[name] = run(work, name, cutoff, steps, ["--gradient_checkpointing", on])
    result["rss_on_over_off"] = round(result["on"]["peak_rss_mb"] / result["off"]["peak_rss_mb"], 3)
    result["speed_on_over_off"] = round(result["on"]["tokens_per_sec"] / result["off"]["tokens_per_sec"], 3)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--cutoff", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(main(args.layers, args.cutoff, args.steps)))
