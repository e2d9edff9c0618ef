"""What choosing a template changes in the tokenizer, as LLaMA-Factory's
get_template_and_fix_tokenizer: the EOS token (replace_eos: the first stop word), a pad token,
the other stop words added as special tokens, and a chat_template (jinja) written from the slots
when the tokenizer has none or the template asks to replace it. The tokenizer saved with the model
therefore generates in the format it was trained on."""
from __future__ import annotations

import logging

from .slots import Special, Token, text_of
from .template import FUSED_SYSTEM, Template

log = logging.getLogger("ember")


def _set_eos(tokenizer, eos: str) -> None:
    if tokenizer.eos_token == eos:
        return
    added = tokenizer.add_special_tokens({"eos_token": eos})
    log.info("template: eos_token is now %s%s", eos, " (a new token: the embeddings grow)" if added else "")


def fix_special_tokens(template: Template, tokenizer) -> None:
    stop_words = list(template.stop_words)
    if template.replace_eos:
        _set_eos(tokenizer, stop_words.pop(0))
    if tokenizer.eos_token_id is None:
        _set_eos(tokenizer, "<|endoftext|>")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if stop_words:
        try:
            tokenizer.add_special_tokens({"additional_special_tokens": stop_words},
                                         replace_additional_special_tokens=False)
        except TypeError:  # tokenizers without that argument
            tokenizer.add_special_tokens({"additional_special_tokens": stop_words})


def _quote(text: str) -> str:
    return "'" + text.replace("'", r"\'") + "'"


def _jinja_expression(pieces, tokenizer, placeholder: str = "content") -> str | None:
    """The slots as a jinja expression ('<a>' + content + '</a>'); None when a named-token piece
    makes it impossible (LLaMA-Factory then leaves the chat_template alone)."""
    items = []
    for piece in pieces:
        if isinstance(piece, Token):
            return None
        if isinstance(piece, Special):
            text = text_of([piece], tokenizer)  # the token's text now, not {{ eos_token }}: it may change
            if text:
                items.append(_quote(text))
            continue
        before, *after = piece.split("{{content}}")
        if before:
            items.append(_quote(before))
        if after:
            items.append(placeholder)
            if after[0]:
                items.append(_quote(after[0]))
    return " + ".join(items)


def jinja_template(template: Template, tokenizer) -> str | None:
    parts = {name: _jinja_expression(getattr(template, name), tokenizer, "system_message" if name == "system" else
                                     "content") for name in ("prefix", "system", "user", "assistant")}
    if None in parts.values():
        return None
    out = "{{ " + parts["prefix"] + " }}" if parts["prefix"] else ""
    if template.default_system:
        out += "{% set system_message = " + _quote(template.default_system) + " %}"
    out += ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
            "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% endif %}")
    if template.kind == FUSED_SYSTEM:
        out += ("{% for message in loop_messages %}{% if loop.index0 == 0 and system_message is defined %}"
                "{% set content = " + parts["system"] + " + message['content'] %}"
                "{% else %}{% set content = message['content'] %}{% endif %}")
    else:
        out += ("{% if system_message is defined %}{{ " + parts["system"] + " }}{% endif %}"
                "{% for message in loop_messages %}{% set content = message['content'] %}")
    out += ("{% if message['role'] == 'user' %}{{ " + parts["user"] + " }}"
            "{% elif message['role'] == 'assistant' %}{{ " + parts["assistant"] + " }}{% endif %}{% endfor %}")
    return out


def fix_chat_template(template: Template, tokenizer) -> None:
    if getattr(tokenizer, "chat_template", None) is None or template.replace_jinja_template:
        written = jinja_template(template, tokenizer)
        if written is not None:
            tokenizer.chat_template = written
