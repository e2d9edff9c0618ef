"""Train a byte-level BPE tokenizer on a dataset, for runs that start from random weights."""
from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .data.readers import read_dataset, text_column
from .data.registry import resolve_datasets

SPECIALS = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|pad|>"}


def train_tokenizer(dataset: str, dataset_dir: str, vocab_size: int, output_dir: str,
                    max_samples: int | None = None) -> PreTrainedTokenizerFast:
    texts = []
    for spec in resolve_datasets(dataset, dataset_dir):
        texts.extend(text_column(read_dataset(spec, max_samples), spec)["text"])
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator((t for t in texts if t), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, **SPECIALS)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(output_dir)
    return tokenizer
