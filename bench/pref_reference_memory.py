"""Peak RSS of LoRA-DPO with the reference taken as the policy with its adapters disabled (ember's
default: no second copy) against a reference loaded as a second model (`ref_model` = the same
folder), and with precompute_ref_log_probs (one reference pass before training, no reference
forward in the steps): the memory the adapter-disabled reference saves. README, "Preference and
reward training".

A Qwen2-0.5B-shaped model (hidden 896, SwiGLU 4864, the project's 4096-token vocabulary) with
`--layers` blocks from random init, LoRA on every linear layer, batch 2 pairs from the shipped demo
preference data, fp32, a few steps. Each setting runs in its own process, whose peak RSS the OS reports.

    python bench/pref_reference_memory.py [--layers 12] [--steps 2]   (--layers 2: ~33M parameters)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "examples" / "data"
SHAPE = dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_attention_heads=14,
             num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
             tie_word_embeddings=True)

RUN = """
import resource, sys
from ember.config import build_config
from ember.engine.trainer import Trainer
from ember.tasks import build_task
cfg = build_config(dict(model_name_or_path=sys.argv[1], stage="dpo", finetuning_type="lora", template="default",
                        dataset="pydoc_pref_alpaca", dataset_dir=sys.argv[2], cutoff_len=256, max_samples=16,
                        per_device_train_batch_size=2, max_steps=int(sys.argv[3]), logging_steps=1, save_steps=0,
                        output_dir=sys.argv[4], overwrite_output_dir=True, disable_tqdm=True,
                        **({"ref_model": sys.argv[1]} if sys.argv[5] == "copy" else
                           {"precompute_ref_log_probs": True} if sys.argv[5] == "precomputed" else {})))
Trainer(cfg, build_task(cfg)).fit()
print("PEAK_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def make_model(folder: Path, layers: int) -> int:
    import torch
    from ember.models.hf import load_tokenizer, new_causal_lm
    config = folder / "config.json"
    folder.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps({**SHAPE, "num_hidden_layers": layers}))
    tokenizer = load_tokenizer(str(DEMO / "tokenizer"), "tokenizer")
    torch.manual_seed(0)
    model = new_causal_lm(str(config), tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        params = make_model(model, args.layers)
        result = {"params": params, "layers": args.layers}
        for reference in ("adapters_disabled", "copy", "precomputed"):
            out = subprocess.run([sys.executable, "-c", RUN, str(model), str(DEMO), str(args.steps),
                                  str(Path(tmp) / reference), reference], capture_output=True, text=True, check=True)
            peak = next(line for line in out.stdout.splitlines() if line.startswith("PEAK_KB"))
            result[f"peak_rss_mib_{reference}"] = round(int(peak.split()[1]) / 1024)
        result["saved_mib"] = result["peak_rss_mib_copy"] - result["peak_rss_mib_adapters_disabled"]
        result["model_fp32_mib"] = round(params * 4 / 2**20)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
