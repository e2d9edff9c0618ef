"""Contender: the minimal training loop a competent user writes by hand (nanoGPT-style).

The model's own loss (`labels=`), fused AdamW with no decay on 1-D weights, warmup + cosine
via LambdaLR, clip_grad_norm_. SFT samples are packed into rows of seq_len (first-fit
decreasing) with position_ids restarting per sample, isolated by transformers' own masked
attention: the same tokens and rows as ember's packing, so the gap between the two is what
ember's engine costs or saves (on SFT that includes ember's per-sample attention, which skips
the masked blocks this loop still computes).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from steps import StepLog, read_spec
from workloads import HYPER, encode_sft_row, load_tokenizer


def pretrain_rows(spec: dict, tokenizer) -> list[dict]:
    lines = [t for t in (Path(spec["data_dir"]) / "corpus.txt").read_text(encoding="utf-8").splitlines() if t.strip()]
    eos = tokenizer.eos_token_id
    stream = [t for ids in tokenizer(lines, add_special_tokens=False)["input_ids"] for t in ids + [eos]]
    size = spec["seq_len"]
    return [{"input_ids": stream[i:i + size]} for i in range(0, len(stream) - size + 1, size)]


def sft_rows(spec: dict, tokenizer) -> list[dict]:
    import json
    samples = [encode_sft_row(row, tokenizer, spec["seq_len"])
               for row in json.loads((Path(spec["data_dir"]) / "sft.json").read_text())]
    rows: list[dict] = []
    for ids, labels in sorted(samples, key=lambda s: -len(s[0])):
        row = next((r for r in rows if len(r["input_ids"]) + len(ids) <= spec["seq_len"]), None)
        if row is None:
            row = {"input_ids": [], "labels": [], "position_ids": []}
            rows.append(row)
        row["input_ids"] += ids
        row["labels"] += [-100] + labels[1:]  # no loss across the boundary with the previous sample
        row["position_ids"] += range(len(ids))
    return rows


def collate(rows: list[dict], pad_id: int) -> dict:
    width = max(len(r["input_ids"]) for r in rows)
    batch = {"input_ids": torch.full((len(rows), width), pad_id),
             "labels": torch.full((len(rows), width), -100)}
    if "position_ids" in rows[0]:
        batch["position_ids"] = torch.arange(width).repeat(len(rows), 1)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        batch["input_ids"][i, :n] = torch.tensor(r["input_ids"])
        batch["labels"][i, :n] = torch.tensor(r.get("labels", r["input_ids"]))
        if "position_ids" in r:
            batch["position_ids"][i, :n] = torch.tensor(r["position_ids"])
            batch["position_ids"][i, n:] = torch.arange(width - n)  # padding: its own isolated run
    return batch


def main() -> None:
    spec = read_spec()
    log = StepLog(spec)
    tokenizer = load_tokenizer()
    rows = pretrain_rows(spec, tokenizer) if spec["workload"] == "pretrain" else sft_rows(spec, tokenizer)
    torch.manual_seed(HYPER["seed"])
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**spec["model"]), dtype=torch.float32)
    if spec.get("compile"):
        for layer in model.model.layers:
            layer.compile(dynamic=False)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": HYPER["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=HYPER["learning_rate"],
                                  betas=(HYPER["adam_beta1"], HYPER["adam_beta2"]), eps=HYPER["adam_epsilon"],
                                  fused=True)
    warmup, steps = HYPER["warmup_steps"], spec["steps"]
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (s + 1) / warmup if s < warmup else
                                                 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup))))
    order = torch.randperm(len(rows)).tolist()
    bf16 = spec["precision"] == "bf16"
    model.train()
    try:
        for step in range(steps):
            start = step * spec["batch_size"] % len(order)
            picked = [rows[i] for i in order[start:start + spec["batch_size"]]]
            log.count(picked)
            batch = collate(picked, tokenizer.pad_token_id)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(**batch, use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), HYPER["max_grad_norm"])
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            log.step_end()
        model.save_pretrained(Path(spec["workdir"]) / "out")
    finally:
        log.write()


if __name__ == "__main__":
    main()
