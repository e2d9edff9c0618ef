"""One chat template and how it turns a conversation into token ids, as LLaMA-Factory 0.9.5's
Template, Llama2Template and ReasoningTemplate do.

A conversation is `messages` (roles user, assistant, observation, function; user-side and
assistant-side turns alternate, starting user-side), a system text and a tools JSON text. Encoding
gives one (source ids, target ids) pair per user/assistant exchange; the first source also holds
the prefix and the system message (and the tool descriptions).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from .slots import EOS, Slots, fill, to_ids
from .tools import describe_tools, format_function_call

PLAIN, FUSED_SYSTEM, REASONING = "plain", "fused_system", "reasoning"


@dataclass
class Template:
    name: str
    user: Slots
    assistant: Slots
    system: Slots
    function: Slots  # a function_call turn: its calls rewritten in function_format, then these slots
    observation: Slots
    prefix: Slots = ()
    tool_format: str = "default"  # how the tools column is described in the system message
    function_format: str = "default"  # how function calls are written
    default_system: str = ""
    stop_words: tuple[str, ...] = ()
    thought_words: tuple[str, str] = ("<think>\n", "\n</think>\n\n")
    tool_call_words: tuple[str, str] = ("<tool_call>", "</tool_call>")
    efficient_eos: bool = False  # EOS once at the end of the sample, not after every answer
    replace_eos: bool = False  # the first stop word becomes the tokenizer's eos_token
    replace_jinja_template: bool = False  # set the tokenizer's chat_template even when it has one
    kind: str = PLAIN  # FUSED_SYSTEM: the system text goes inside the first user turn (Llama 2)
    enable_thinking: bool | None = True  # REASONING only: empty thoughts added to answers, with loss
    preserve_thinking: bool = False  # REASONING only: keep thoughts of earlier turns under mask_history
    tool_date: str | None = None  # llama3 tool prompt's date (None: today, as LLaMA-Factory)

    def with_options(self, **changes) -> "Template":
        return dataclasses.replace(self, **changes)

    # ---- encoding -------------------------------------------------------------------------
    def _turn_pieces(self, i: int, message: dict, system: str, tools: str | None) -> list:
        pieces, system_text = [], ""
        if i == 0:
            pieces += list(self.prefix)
            if system or tools:
                tool_text = describe_tools(tools, self.tool_format, self.tool_date) if tools else ""
                if self.kind == FUSED_SYSTEM:  # only the system slot's first piece, as LLaMA-Factory
                    system_text = fill(self.system, content=system + tool_text)[0]
                else:
                    pieces += fill(self.system, content=system + tool_text)
        role, content = message["role"], message["content"]
        if role == "user":
            if self.kind == FUSED_SYSTEM:
                return pieces + fill(self.user, content=system_text + content)
            return pieces + fill(self.user, content=content, idx=str(i // 2))
        if role == "assistant":
            return pieces + fill(self.assistant, content=content)
        if role == "observation":
            return pieces + fill(self.observation, content=content)
        if role == "function":
            words = (None, None) if self.kind == FUSED_SYSTEM else (self.thought_words, self.tool_call_words)
            return pieces + fill(self.function, content=format_function_call(content, self.function_format, *words))
        raise ValueError(f"unexpected role {role!r}")

    def encode_messages(self, tokenizer, messages: list[dict], system: str | None = None,
                        tools: str | None = None) -> list[list[int]]:
        system = system or self.default_system
        return [to_ids(tokenizer, self._turn_pieces(i, m, system, tools)) for i, m in enumerate(messages)]

    def encode_multiturn(self, tokenizer, messages: list[dict], system: str | None = None, tools: str | None = None,
                         mask_history: bool = False) -> list[tuple[list[int], list[int]]]:
        """(source, target) ids per exchange."""
        if self.kind == REASONING:
            return self._encode_reasoning(tokenizer, messages, system, tools, mask_history)
        ids = self.encode_messages(tokenizer, messages, system, tools)
        return [(ids[i], ids[i + 1]) for i in range(0, len(ids), 2)]

    def encode_oneturn(self, tokenizer, messages: list[dict], system: str | None = None,
                       tools: str | None = None) -> tuple[list[int], list[int]]:
        """(everything before the last answer, the last answer): the preference stages' split."""
        if self.kind != REASONING:
            ids = self.encode_messages(tokenizer, messages, system, tools)
            return [t for turn in ids[:-1] for t in turn], ids[-1]
        messages = [dict(m) for m in messages]
        if not self.preserve_thinking:
            for i in range(1, len(messages) - 2, 2):
                messages[i]["content"] = self.remove_thought(messages[i]["content"])
        if self.enable_thinking is False:
            messages[-1]["content"] = self.remove_thought(messages[-1]["content"])
        ids = self.encode_messages(tokenizer, messages, system, tools)
        prompt, answer = [t for turn in ids[:-1] for t in turn], ids[-1]
        if not self._has_thought(messages[-1]["content"]):
            if self.enable_thinking:
                answer = self._empty_thought_ids(tokenizer) + answer
            else:
                prompt = prompt + self._empty_thought_ids(tokenizer)
        return prompt, answer

    # ---- reasoning templates (Qwen3 and the like) -------------------------------------------
    def remove_thought(self, content: str) -> str:
        pattern = f"{re.escape(self.thought_words[0])}(.*?){re.escape(self.thought_words[1])}"
        return re.sub(pattern, "", content, flags=re.DOTALL).lstrip("\n")

    def _has_thought(self, content: str) -> bool:
        return self.thought_words[0].strip() in content or self.thought_words[1].strip() in content

    def _empty_thought_ids(self, tokenizer) -> list[int]:
        return tokenizer.encode(self.thought_words[0] + self.thought_words[1], add_special_tokens=False)

    def _encode_reasoning(self, tokenizer, messages, system, tools, mask_history):
        """An answer without a thought gets an empty one (<think>\\n\\n</think>\\n\\n), trained on
        when thinking is enabled, else part of the prompt; with mask_history earlier thoughts go."""
        messages = [dict(m) for m in messages]
        discard_history = mask_history and not self.preserve_thinking
        if self.enable_thinking is False:
            for i in range(1, len(messages), 2):
                messages[i]["content"] = self.remove_thought(messages[i]["content"])
        if discard_history:
            for i in range(1, len(messages) - 2, 2):
                messages[i]["content"] = self.remove_thought(messages[i]["content"])
        ids = self.encode_messages(tokenizer, messages, system, tools)
        for i in ([len(messages) - 2] if discard_history else range(0, len(messages), 2)):
            if not self._has_thought(messages[i + 1]["content"]):
                if self.enable_thinking:
                    ids[i + 1] = self._empty_thought_ids(tokenizer) + ids[i + 1]
                else:
                    ids[i] = ids[i] + self._empty_thought_ids(tokenizer)
        return [(ids[i], ids[i + 1]) for i in range(0, len(ids), 2)]


def default_answer_slots(efficient_eos: bool) -> Slots:
    return ("{{content}}",) if efficient_eos else ("{{content}}", EOS)
