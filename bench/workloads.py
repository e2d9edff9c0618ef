"""What every contender trains on: the models, the hyperparameters and the data.

Everything here is shared, so a difference in tokens/s can only come from how a contender
trains, never from what it trains. The data is made by the project itself: the pretraining
corpus is CPython's help text (examples/data/pydoc.txt, repeated as needed), the SFT set is
alpaca-shaped rows (instruction, optional input, output) whose lengths follow alpaca's skewed
distribution, with words drawn from the same corpus.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "examples" / "data" / "pydoc.txt"
TOKENIZER = REPO / "examples" / "data" / "tokenizer"  # BPE, 4096 tokens, trained on the corpus

# Llama-style decoders from random init; vocab_size and special ids follow the tokenizer.
# Non-embedding parameters: 10.6M and 49.6M.
MODELS = {
    "10m": dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6,
                num_key_value_heads=6),
    "50m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=7, num_attention_heads=12,
                num_key_value_heads=12),
}
COMMON_MODEL = dict(model_type="llama", max_position_embeddings=2048, rms_norm_eps=1e-6, rope_theta=10000.0,
                    tie_word_embeddings=True, vocab_size=4096)

# the same optimisation for everyone: AdamW (no decay on 1-D weights), linear warmup then
# cosine decay to 0, global-norm clipping
HYPER = dict(learning_rate=3e-4, weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8,
             max_grad_norm=1.0, warmup_steps=5, seed=0)


def model_config(name: str, tokenizer) -> dict:
    return {**COMMON_MODEL, **MODELS[name], "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}


def load_tokenizer():
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# ---- data ------------------------------------------------------------------------------
def write_pretrain_corpus(folder: Path, min_tokens: int) -> Path:
    """corpus.txt: the help-text paragraphs (one document a line), repeated until it holds at
    least min_tokens tokens, so no contender reaches the end of an epoch while being timed."""
    paragraphs = CORPUS.read_text(encoding="utf-8").splitlines()
    tokens_per_pass = 97_000  # the corpus is ~97k tokens with the project's tokenizer
    passes = max(1, math.ceil(min_tokens * 1.1 / tokens_per_pass))
    path = folder / "corpus.txt"
    path.write_text("\n".join(paragraphs * passes) + "\n", encoding="utf-8")
    return path


def write_sft_set(folder: Path, samples: int, seed: int = 0) -> Path:
    """sft.json: alpaca rows with alpaca's length profile (in words: instruction median ~12,
    an input on 40% of rows, median ~15, output median ~40 with a long tail to several
    hundred), so batches padded to their longest row are mostly padding, as in real SFT."""
    rng = random.Random(seed)
    words = CORPUS.read_text(encoding="utf-8").split()

    def text(median: float, sigma: float, cap: int) -> str:
        n = max(1, min(cap, round(rng.lognormvariate(math.log(median), sigma))))
        start = rng.randrange(len(words) - n)
        return " ".join(words[start:start + n])

    rows = [{"instruction": text(12, 0.5, 60),
             "input": text(15, 0.8, 120) if rng.random() < 0.4 else "",
             "output": text(40, 1.0, 280)} for _ in range(samples)]
    path = folder / "sft.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def write_dataset_info(folder: Path) -> None:
    """The registry ember reads its datasets by name from (dataset_dir)."""
    info = {"corpus": {"file_name": "corpus.txt", "columns": {"prompt": "text"}},
            "sft": {"file_name": "sft.json",
                    "columns": {"prompt": "instruction", "query": "input", "response": "output"}}}
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=1), encoding="utf-8")


# The SFT text format, written out for the contenders that do not use ember: exactly what
# ember's "default" template renders, prompt and answer tokenised separately, loss on the
# answer only (ember's own encoding is checked against this in tests/bench).
def sft_pieces(row: dict, eos: str) -> tuple[str, str]:
    prompt = row["instruction"] + (f"\n{row['input']}" if row["input"] else "")
    return f"Human: {prompt}\nAssistant: ", f"{row['output']}{eos}\n"


def encode_sft_row(row: dict, tokenizer, cutoff_len: int) -> tuple[list[int], list[int]]:
    prompt, answer = sft_pieces(row, tokenizer.eos_token)
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a = tokenizer(answer, add_special_tokens=False)["input_ids"]
    ids, labels = (p + a)[:cutoff_len], ([-100] * len(p) + a)[:cutoff_len]
    return ids, labels
