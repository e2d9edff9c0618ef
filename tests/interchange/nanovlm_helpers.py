"""Shared by the nanoVLM interchange tests: the fixture's paths and a stand-in base tokenizer."""
from __future__ import annotations

from pathlib import Path

FIXTURE = Path(__file__).parents[1] / "fixtures" / "nanovlm"
CHECKPOINT = FIXTURE / "nanovlm_checkpoint"


def stand_in_tokenizer(folder: Path) -> str:
    """A 100-token base vocabulary like the fixture's stand-in (README: 1 = <|im_start|>, 2 = eos = pad,
    10 = newline, 11 = user, 12 = assistant, 20..99 = text), so nanoVLM's 66 extra tokens get ids 100..165."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    named = {"<|im_start|>": 1, "<|im_end|>": 2, "\n": 10, "user": 11, "assistant": 12}
    vocab = {f"<unused{i}>": i for i in range(20) if i not in named.values()} | named
    vocab |= {f"w{i}": i for i in range(20, 100)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unused0>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(" ", behavior="removed"),
                                                  pre_tokenizers.Split("\n", behavior="isolated")])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", unk_token="<unused0>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    assert len(tokenizer) == 100
    tokenizer.save_pretrained(folder)
    return str(folder)
