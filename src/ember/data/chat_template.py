"""Conversations rendered by the tokenizer's chat_template (jinja) and cut at the answers.

Used where a format is the model's own chat_template rather than a LLaMA-Factory template: the
VLM family (nanoVLM's format). LM SFT, the preference stages and pretraining encode with
data/templates/ (LLaMA-Factory's slot-by-slot encoding) instead.
"""
from __future__ import annotations

import logging

from ..config.errors import ConfigError
from .labels import IGNORE

log = logging.getLogger("ember")
OK, TRUNCATED, DROPPED = 0, 1, 2

JINJA_FORMATS = {
    # LLaMA-Factory's "default": plain role prefixes, EOS ends each answer
    "default": (
        "{% for m in messages %}"
        "{% if m['role'] == 'system' %}System: {{ m['content'] }}\n"
        "{% elif m['role'] == 'user' %}Human: {{ m['content'] }}\n"
        "{% elif m['role'] == 'assistant' %}Assistant: {{ m['content'] }}{{ eos_token }}\n{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}Assistant: {% endif %}"
    ),
    "chatml": (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>"
        "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    # no markup at all: prompt and answer back to back
    "empty": (
        "{% for m in messages %}{{ m['content'] }}{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
        "{% endfor %}"
    ),
}
ALIASES = {"qwen": "chatml", "chatml_de": "chatml", "alpaca": "default", "vicuna": "default"}


def ensure_chat_template(tokenizer, name: str | None) -> str:
    """Give the tokenizer a chat_template; returns a description of the one in use."""
    if getattr(tokenizer, "chat_template", None):
        if name:
            log.info("note: the tokenizer has its own chat_template; it is used instead of template '%s'", name)
        return "the tokenizer's own chat_template"
    key = ALIASES.get(name or "default", name or "default")
    if key not in JINJA_FORMATS:
        raise ConfigError(f"template '{name}' is not known and the tokenizer has no chat_template; "
                          f"choose one of: {', '.join(sorted(JINJA_FORMATS))}")
    tokenizer.chat_template = JINJA_FORMATS[key]
    return f"template '{key}'"


def encode_conversation(messages: list[dict], tokenizer, cutoff_len: int, train_on_prompt: bool = False,
                        mask_history: bool = False) -> tuple[list[int], list[int], int]:
    """Token ids and labels of one conversation (answers labelled), truncated to cutoff_len."""
    pieces = conversation_pieces(messages, tokenizer, mask_history)
    return label_pieces(pieces, _tokenize([text for text, _ in pieces], tokenizer), cutoff_len, train_on_prompt)


def conversation_pieces(messages: list[dict], tokenizer, mask_history: bool = False) -> list[tuple[str, bool]]:
    """The text rendered with the chat template, cut at each assistant turn's edges into
    (text, is_supervised_answer) pieces, so prompt and answer are tokenized separately and no
    token straddles an edge."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    supervised = set(turns[-1:] if mask_history else turns)
    pieces, cursor = [], 0
    for i in turns:
        prefix = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        upto = text if i + 1 == len(messages) else tokenizer.apply_chat_template(messages[:i + 1], tokenize=False)
        if not text.startswith(upto) or not upto.startswith(prefix) or len(prefix) < cursor:
            raise ConfigError("the chat template does not render conversations turn by turn, so assistant "
                              "tokens cannot be located; choose another template")
        pieces += [(text[cursor:len(prefix)], False), (text[len(prefix):len(upto)], i in supervised)]
        cursor = len(upto)
    pieces.append((text[cursor:], False))
    return [(piece, is_answer) for piece, is_answer in pieces if piece]


def _tokenize(texts: list[str], tokenizer) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def label_pieces(pieces: list[tuple[str, bool]], piece_ids: list[list[int]], cutoff_len: int,
                 train_on_prompt: bool = False) -> tuple[list[int], list[int], int]:
    """Join the tokenized pieces, label the answers (everything with train_on_prompt), truncate."""
    ids: list[int] = []
    labels: list[int] = []
    for (_, is_answer), part in zip(pieces, piece_ids):
        ids += part
        labels += part if (is_answer or train_on_prompt) else [IGNORE] * len(part)
    status = OK
    if len(ids) > cutoff_len:
        ids, labels = ids[:cutoff_len], labels[:cutoff_len]
        status = TRUNCATED
    if all(label == IGNORE for label in labels[1:]):  # the first token is never predicted
        status = DROPPED
    return ids, labels, status
