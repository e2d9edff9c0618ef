"""Contender: transformers' Trainer, set up the way its examples and most users do.

Pretraining follows run_clm.py: tokenise with datasets.map, concatenate, cut into blocks,
default_data_collator. SFT follows the usual recipe: prompt and answer tokenised separately,
loss on the answer, DataCollatorForSeq2Seq padding each batch to its longest sample (with
`group_by_length` in the spec, Trainer's `train_sampling_strategy: group_by_length` batches samples of
similar length, so it pads less). The
optimizer is Trainer's default (fused AdamW); its weight decay skips biases and norms.
"""
from __future__ import annotations

from pathlib import Path

import datasets
import torch
from transformers import (AutoConfig, AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainerCallback,
                          TrainingArguments, default_data_collator)

from steps import StepLog, counting, read_spec
from workloads import HYPER, encode_sft_row, load_tokenizer


class StepClock(TrainerCallback):
    def __init__(self, log: StepLog):
        self.log = log

    def on_step_end(self, args, state, control, **kwargs):
        self.log.step_end()


def pretrain_data(spec: dict, tokenizer) -> datasets.Dataset:
    raw = datasets.load_dataset("text", data_files=str(Path(spec["data_dir"]) / "corpus.txt"), split="train")
    eos = tokenizer.eos_token_id

    def tokenize(batch):
        return {"input_ids": [ids + [eos] for ids in tokenizer(batch["text"], add_special_tokens=False)["input_ids"]]}

    def group(batch):  # run_clm's group_texts: one stream, cut into seq_len blocks, tail dropped
        stream = [t for ids in batch["input_ids"] for t in ids]
        size = spec["seq_len"]
        blocks = [stream[i:i + size] for i in range(0, len(stream) - size + 1, size)]
        return {"input_ids": blocks, "labels": [b[:] for b in blocks], "attention_mask": [[1] * size for _ in blocks]}

    tokens = raw.filter(lambda t: bool(t.strip()), input_columns="text").map(
        tokenize, batched=True, remove_columns=["text"])
    return tokens.map(group, batched=True, batch_size=1000)


def sft_data(spec: dict, tokenizer) -> datasets.Dataset:
    raw = datasets.load_dataset("json", data_files=str(Path(spec["data_dir"]) / "sft.json"), split="train")

    def encode(row):
        ids, labels = encode_sft_row(row, tokenizer, spec["seq_len"])
        return {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}

    return raw.map(encode, remove_columns=raw.column_names)


def main() -> None:
    spec = read_spec()
    log = StepLog(spec)
    tokenizer = load_tokenizer()
    train = pretrain_data(spec, tokenizer) if spec["workload"] == "pretrain" else sft_data(spec, tokenizer)
    collate = (default_data_collator if spec["workload"] == "pretrain"
               else DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100))
    torch.manual_seed(HYPER["seed"])
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**spec["model"]), dtype=torch.float32)
    args = TrainingArguments(
        output_dir=str(Path(spec["workdir"]) / "out"), use_cpu=True, per_device_train_batch_size=spec["batch_size"],
        max_steps=spec["steps"], learning_rate=HYPER["learning_rate"], weight_decay=HYPER["weight_decay"],
        adam_beta1=HYPER["adam_beta1"], adam_beta2=HYPER["adam_beta2"], adam_epsilon=HYPER["adam_epsilon"],
        max_grad_norm=HYPER["max_grad_norm"], warmup_steps=HYPER["warmup_steps"], lr_scheduler_type="cosine",
        seed=HYPER["seed"], bf16=spec["precision"] == "bf16", logging_steps=10, save_strategy="no", report_to=[],
        disable_tqdm=True, dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if spec.get("group_by_length") else "random")
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=counting(collate, log),
                      callbacks=[StepClock(log)])
    try:
        trainer.train()
        trainer.save_model()  # as run_clm.py does: the trained model is the point of training
    finally:
        log.write()


if __name__ == "__main__":
    main()
