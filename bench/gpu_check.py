"""ember's MFU on one GPU: a ~1B Llama from random init, bf16, compile, seq 2048, a fixed number of
steps with gradient_checkpointing off and on, through `ember train` itself; prints one JSON line.

    python bench/gpu_check.py          # on a CUDA machine (bench/gpu_check.sh runs the tests first)
    python bench/gpu_check.py --dry    # anywhere: a tiny model on the CPU, few steps, checks its own JSON

MFU is ember's own logged `mfu` (the task's training FLOPs over time, against the peak given here:
989 TFLOP/s dense bf16 for H100/H200 SXM), the median over the logged steps after compilation.
The dry mode runs the same path on a tiny model so this script cannot rot without a GPU to run on.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from workloads import load_tokenizer, write_dataset_info, write_pretrain_corpus  # noqa: E402

# ~1.0B parameters (TinyLlama's shape): 22 layers of hidden 2048, GQA 32/4 heads, SwiGLU 5632
GPU_MODEL = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, tie_word_embeddings=False)
DRY_MODEL = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True)
# (model, seq, batch, steps, of which warm-up (compilation), precision and compile keys, peak FLOP/s)
GPU = (GPU_MODEL, 2048, 8, 30, 10, {"bf16": True, "compile": True, "device": "cuda"}, 989e12)
DRY = (DRY_MODEL, 128, 2, 4, 1, {"device": "cpu"}, 1e11)
KEYS = {"device", "model_params", "seq_len", "batch_size", "steps", "runs"}
RUN_KEYS = {"gradient_checkpointing", "mfu", "tokens_per_sec", "peak_memory_gb", "final_loss", "wall_s"}


def model_config(shape: dict, tokenizer) -> dict:
    return {"model_type": "llama", "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            **shape, "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}


def train(work: Path, setting: tuple, checkpointing: bool) -> dict:
    """One run of ember's Trainer, in this process so the GPU's peak memory can be read after it."""
    import torch
    from ember.config import build_config
    from ember.engine.trainer import Trainer
    from ember.tasks import build_task
    shape, seq, batch, steps, warmup, keys, peak = setting
    out = work / f"run-{'ckpt' if checkpointing else 'plain'}"
    cfg = build_config(dict(
        model_config=str(work / "model.json"), tokenizer_name_or_path=str(BENCH.parent / "examples" / "data" / "tokenizer"),
        dataset="corpus", dataset_dir=str(work), cutoff_len=seq, per_device_train_batch_size=batch, max_steps=steps,
        logging_steps=1, save_steps=0, learning_rate=3e-4, warmup_steps=2, disable_tqdm=True, seed=0,
        output_dir=str(out), mfu_peak_flops=peak, gradient_checkpointing=checkpointing, **keys))
    cuda = keys["device"] == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    Trainer(cfg, build_task(cfg)).fit()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    timed = [r for r in records if "mfu" in r and r["step"] > warmup]
    return {"gradient_checkpointing": checkpointing,
            "mfu": statistics.median(r["mfu"] for r in timed),
            "tokens_per_sec": statistics.median(r["tokens_per_sec"] for r in timed),
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "final_loss": [r["loss"] for r in records if "loss" in r][-1],
            "wall_s": round(time.perf_counter() - started, 1)}


def check(result: dict, dry: bool) -> None:
    """The JSON line is what a reader of docs/benchmarks.md relies on: every field, sane values;
    checkpointing recomputes the same numbers, so in fp32 (dry) both runs end on the same loss."""
    assert KEYS <= result.keys(), KEYS - result.keys()
    assert [r["gradient_checkpointing"] for r in result["runs"]] == [False, True]
    for run in result["runs"]:
        assert RUN_KEYS <= run.keys(), RUN_KEYS - run.keys()
        assert 0 < run["mfu"] < 1 and run["tokens_per_sec"] > 0, run
    if dry:
        assert result["runs"][0]["final_loss"] == result["runs"][1]["final_loss"], result["runs"]


def main(dry: bool) -> dict:
    setting = DRY if dry else GPU
    shape, seq, batch, steps = setting[:4]
    tokenizer = load_tokenizer()
    with tempfile.TemporaryDirectory(prefix="ember-gpu-check-") as tmp:
        work = Path(tmp)
        (work / "model.json").write_text(json.dumps(model_config(shape, tokenizer)))
        write_pretrain_corpus(work, seq * batch * (steps + 2))
        write_dataset_info(work)
        runs = [train(work, setting, on) for on in (False, True)]
    from transformers import AutoConfig, AutoModelForCausalLM
    import torch
    with torch.device("meta"):  # counts parameters without allocating them
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(
            AutoConfig.for_model(**model_config(shape, tokenizer))).parameters())
    device = torch.cuda.get_device_name() if not dry else "cpu (dry mode)"
    result = {"device": device, "model_params": params, "seq_len": seq, "batch_size": batch, "steps": steps,
              "dry": dry, "runs": runs}
    check(result, dry)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="tiny model on the CPU; checks the script itself")
    print(json.dumps(main(parser.parse_args().dry)))
