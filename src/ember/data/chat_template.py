"""Chat formats as Jinja chat templates, set on the tokenizer when it has none of its own.

Keeping every format a chat_template means one code path renders conversations, and the
exported tokenizer carries the format the model was trained with.
"""
from __future__ import annotations

import logging

from ..config.errors import ConfigError

log = logging.getLogger("ember")

TEMPLATES = {
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
    if key not in TEMPLATES:
        raise ConfigError(f"template '{name}' is not known and the tokenizer has no chat_template; "
                          f"choose one of: {', '.join(sorted(TEMPLATES))}")
    tokenizer.chat_template = TEMPLATES[key]
    return f"template '{key}'"
