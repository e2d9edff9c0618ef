"""Chat templates as LLaMA-Factory 0.9.5 defines and encodes them (declarations.py lists them).

`template: NAME` means what it means in LLaMA-Factory: that template's slots, tokenised piece by
piece, and the tokenizer changed as it changes it (eos replaced, stop words added, a chat_template
written). With `template` unset, the tokenizer's own chat_template is read into slots
(from_chat_template.py) and encoded the same way; a tokenizer without one gets `empty` (the text
of the turns back to back, EOS after each answer), as in LLaMA-Factory.
"""
from __future__ import annotations

import difflib
import logging

from ...config.errors import ConfigError
from ..chat_template import ensure_chat_template  # noqa: F401  (the VLM's path)
from .declarations import TEMPLATES
from .from_chat_template import template_from_chat_template
from .template import REASONING, Template, default_answer_slots
from .tokenizer_fix import fix_chat_template, fix_special_tokens
from .tools import check_tool_format

log = logging.getLogger("ember")


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        close = difflib.get_close_matches(name, list(TEMPLATES), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f"; known: {', '.join(sorted(TEMPLATES))}"
        raise ConfigError(f"template: '{name}' is not a template ember knows{hint}")
    return TEMPLATES[name]


def check_template_keys(cfg) -> None:
    """The template keys that can be checked without a tokenizer (called with the config checks)."""
    if cfg.template:
        template = get_template(cfg.template)
        if cfg.train_on_prompt and template.efficient_eos:
            raise ConfigError(f"train_on_prompt: template '{template.name}' puts EOS only at the end of a sample "
                              "(efficient_eos), so its prompts cannot be trained on, as in LLaMA-Factory")
    if cfg.tool_format:
        check_tool_format(cfg.tool_format, "tool_format")


def load_template(tokenizer, cfg) -> Template:
    """The config's template, with the config's template options, and the tokenizer fixed for it
    (changed in place). Options: tool_format, default_system, enable_thinking, preserve_thinking."""
    name = getattr(cfg, "template", None)
    if name:
        template = get_template(name)
    elif isinstance(getattr(tokenizer, "chat_template", None), str):
        log.info("template unset: using the slots of the tokenizer's own chat_template")
        template = template_from_chat_template(tokenizer)
    else:
        log.info("template unset and the tokenizer has no chat_template: template 'empty'")
        template = TEMPLATES["empty"]
    if getattr(cfg, "train_on_prompt", False) and template.efficient_eos:
        raise ConfigError(f"train_on_prompt: template '{template.name}' puts EOS only at the end of a sample "
                          "(efficient_eos), so its prompts cannot be trained on, as in LLaMA-Factory")
    changes = {}
    tool_format = getattr(cfg, "tool_format", None)
    if tool_format:
        check_tool_format(tool_format, "tool_format")
        # LLaMA-Factory's override: plain answer slots, the calls and tool list in that format
        changes.update(tool_format=tool_format, function_format=tool_format,
                       function=default_answer_slots(template.efficient_eos))
    if getattr(cfg, "default_system", None) is not None:
        changes["default_system"] = cfg.default_system
    if template.kind == REASONING:
        changes.update(enable_thinking=getattr(cfg, "enable_thinking", True),
                       preserve_thinking=getattr(cfg, "preserve_thinking", False))
    template = template.with_options(**changes) if changes else template
    fix_special_tokens(template, tokenizer)
    fix_chat_template(template, tokenizer)
    return template
