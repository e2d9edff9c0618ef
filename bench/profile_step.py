"""Where one training step's time goes, and the fastest step any framework could reach.

Profiles the bench's Llama on fixed-length blocks (the model's own loss, fused AdamW, global
clipping: what every contender does) and splits the CPU time of a step into matmuls,
attention, optimizer and the rest. The matmuls are counted work (6·N per token) that no
framework can skip, and the attention kernel is the same for everyone, so
    ceiling = step time / (matmul time + attention time)
is how much faster than this step a framework could be if everything else took no time at all.

    python bench/profile_step.py [--model 50m] [--threads 2] [--compile]
"""
from __future__ import annotations

import argparse
import time

import torch

from workloads import HYPER, load_tokenizer, model_config

GROUPS = {"matmul": ("aten::mm", "aten::addmm", "aten::bmm"), "attention": ("scaled_dot_product",),
          "optimizer": ("_fused_adamw",)}


def group_of(name: str) -> str:
    return next((group for group, keys in GROUPS.items() if any(key in name for key in keys)), "rest")


def main(model_name: str, threads: int, compile_blocks: bool, batch: int = 4, seq_len: int = 256) -> dict:
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoConfig, AutoModelForCausalLM
    torch.set_num_threads(threads)
    torch.manual_seed(HYPER["seed"])
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**model_config(model_name, load_tokenizer())))
    if compile_blocks:
        for layer in model.model.layers:
            layer.compile()
    optimizer = torch.optim.AdamW(model.parameters(), lr=HYPER["learning_rate"], fused=True)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq_len))

    def step():
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), HYPER["max_grad_norm"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(5):  # warm-up (and compilation)
        step()
    steps = 3
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    wall = (time.perf_counter() - start) / steps
    split = dict.fromkeys([*GROUPS, "rest"], 0.0)
    for event in prof.key_averages():
        split[group_of(event.key)] += event.self_cpu_time_total / 1e6 / steps
    total = sum(split.values())
    # every matrix takes part in a matmul once (the tied embedding as the output head; the
    # input lookup is no matmul): 6 FLOPs per weight per token, forward and backward
    matmul_flops = 6 * sum(p.numel() for p in model.parameters() if p.ndim >= 2) * batch * seq_len
    print(f"{model_name}, {threads} thread(s), {'compiled blocks' if compile_blocks else 'eager'}: "
          f"{wall:.3f} s a step ({batch * seq_len / wall:,.0f} tokens/s)")
    for group, seconds in split.items():
        print(f"  {group:<10} {seconds:.3f} s  {seconds / total:6.1%}")
    print(f"  matmuls run at {matmul_flops / split['matmul'] / 1e9:,.0f} GFLOP/s")
    ceiling = total / (split["matmul"] + split["attention"])
    print(f"  ceiling: a framework that spent nothing outside matmuls and attention would be {ceiling:.2f}x faster")
    return {"step_s": wall, "split": split, "ceiling": ceiling}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="50m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="torch.compile each decoder block, as compile: true")
    args = parser.parse_args()
    main(args.model, args.threads, args.compile)
