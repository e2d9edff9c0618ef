"""`template` unset and the tokenizer has a chat_template: LLaMA-Factory reads the slots out of
that chat_template (renders it around a "{{content}}" marker) and encodes with them slot by slot,
exactly as with a named template. ember does the same, so an unset template trains on the text the
model's own chat_template writes, split where LLaMA-Factory splits it."""
from __future__ import annotations

from .template import PLAIN, REASONING, Template

MARK = "{{content}}"


def _extra_chars(short: str, long: str) -> str:
    """The characters of `long` left over when `short` is matched through it in order."""
    i, out = 0, []
    for char in long:
        if i < len(short) and short[i] == char:
            i += 1
        else:
            out.append(char)
    return "".join(out)


def template_from_chat_template(tokenizer) -> Template:
    def render(messages, generation: bool) -> str:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=generation, tokenize=False)

    prefix = tokenizer.decode(tokenizer.encode(""))
    system = render([{"role": "system", "content": MARK}], False)[len(prefix):]
    user_after_empty_system = render([{"role": "system", "content": ""}, {"role": "user", "content": MARK}],
                                     True)[len(prefix):]
    user = render([{"role": "user", "content": MARK}], True)[len(prefix):]
    assistant = render([{"role": "user", "content": MARK}, {"role": "assistant", "content": MARK}],
                       False)[len(prefix) + len(user):]
    kind = REASONING if "<think>" in assistant else PLAIN
    assistant = assistant.replace("<think>", "").replace("</think>", "").lstrip("\n")
    default_system = ""
    if len(user) > len(user_after_empty_system):  # the chat_template writes a system prompt of its own
        default_system = _extra_chars(user_after_empty_system, user)
        user = user[len(system.replace(MARK, default_system, 1)):]
    return Template(name="the tokenizer's chat_template", user=(user,), assistant=(assistant,), system=(system,),
                    function=(assistant,), observation=(user,), prefix=(prefix,) if prefix else (),
                    default_system=default_system, kind=kind)
