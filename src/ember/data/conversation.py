"""A dataset row → a conversation, as LLaMA-Factory's alpaca, sharegpt and openai converters read it.

alpaca: history pairs, then prompt and query joined by a newline as the user turn, the response
(a string) as the answer; system and tools columns when mapped. sharegpt: turns alternate
user-side (human, observation) and assistant-side (gpt, function_call), an even count ending with
an assistant-side turn; a leading system turn is the system text; a `tools` column (JSON list of
function schemas) is described by the template's tool format. openai: sharegpt read with its tags,
where an assistant message's `tool_calls` become a function_call turn and consecutive tool results
one observation turn.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from .registry import DatasetSpec

SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}


CHAT_FORMATS = ("sharegpt", "openai")  # a list of messages per row, read with the tags


def columns_of(spec: DatasetSpec) -> dict:
    if spec.formatting in CHAT_FORMATS:
        return {"messages": "conversations", "system": None, **spec.columns}
    return {"prompt": "instruction", "query": "input", "response": "output", "system": None, "history": None,
            **spec.columns}


@dataclass
class Conversation:
    messages: list[dict]  # {"role": user|assistant|observation|function, "content": str}
    system: str = ""
    tools: str = ""  # JSON text of the tool schemas, "" for none


def _text(row: dict, column: str | None) -> str:
    value = row.get(column) if column else None
    return value if isinstance(value, str) else ""


def to_conversation(row: dict, spec: DatasetSpec) -> Conversation | None:
    """The row's conversation, or None for a row LLaMA-Factory would skip as malformed."""
    cols = columns_of(spec)
    messages = _alpaca_messages(row, cols) if spec.formatting not in CHAT_FORMATS else \
        _sharegpt_messages(row, spec, cols, openai=spec.formatting == "openai")
    if messages is None:
        return None
    messages, system = messages
    if len(messages) < 2 or len(messages) % 2:
        return None
    return Conversation(messages, system if system is not None else _text(row, cols.get("system")),
                        _text(row, cols.get("tools")))


def _alpaca_messages(row: dict, cols: dict):
    messages = []
    history = row.get(cols["history"]) if cols.get("history") else None
    for pair in history if isinstance(history, list) else []:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            return None
        messages += [{"role": "user", "content": str(pair[0])}, {"role": "assistant", "content": str(pair[1])}]
    query = [row[cols[k]] for k in ("prompt", "query") if cols.get(k) and row.get(cols[k])]
    response = row.get(cols["response"])
    if not isinstance(response, str):  # no answer: LLaMA-Factory's "unsupervised" row, skipped in sft
        return None
    return messages + [{"role": "user", "content": "\n".join(map(str, query))},
                       {"role": "assistant", "content": response}], None


def _openai_turns(turns: list[dict], tags: dict) -> list[dict]:
    """Tool calls written as function_call turns, consecutive tool results joined into one
    observation (results after the last other turn are left out, as LLaMA-Factory)."""
    out, results = [], []
    for turn in turns:
        role, content = turn.get(tags["role_tag"]), turn.get(tags["content_tag"])
        if role in (tags["assistant_tag"], tags["function_tag"]) and turn.get("tool_calls"):
            role = tags["function_tag"]
            content = json.dumps([call["function"] for call in turn["tool_calls"]], ensure_ascii=False)
        if role == tags["observation_tag"]:
            results.append(content)
            continue
        if results:
            out.append({tags["role_tag"]: tags["observation_tag"],
                        tags["content_tag"]: "\n</tool_response>\n<tool_response>\n".join(map(str, results))})
            results = []
        out.append({tags["role_tag"]: role, tags["content_tag"]: content})
    return out


def _sharegpt_messages(row: dict, spec: DatasetSpec, cols: dict, openai: bool = False):
    tags = {**SHAREGPT_TAGS, **spec.tags}
    roles = {tags["user_tag"]: "user", tags["observation_tag"]: "observation",
             tags["assistant_tag"]: "assistant", tags["function_tag"]: "function"}
    sides = ({tags["user_tag"], tags["observation_tag"]}, {tags["assistant_tag"], tags["function_tag"]})
    turns = row.get(cols["messages"]) or []
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        return None
    system = None
    if turns and turns[0].get(tags["role_tag"]) == tags["system_tag"]:
        system, turns = str(turns[0].get(tags["content_tag"]) or ""), turns[1:]
    if openai:
        turns = _openai_turns(turns, tags)
    messages = []
    for i, turn in enumerate(turns):
        role = turn.get(tags["role_tag"])
        if role not in sides[i % 2]:
            return None
        messages.append({"role": roles[role], "content": str(turn.get(tags["content_tag"]) or "")})
    return messages, system


def to_messages(row: dict, spec: DatasetSpec) -> list[dict] | None:
    """One row → [{'role', 'content'}...] ending with an assistant turn, or None if malformed: the
    view of a row that a chat_template renders (the VLM), with a system
    message first, function calls as assistant and tool results as user turns."""
    cols = columns_of(spec)
    messages = []
    if cols.get("system") and row.get(cols["system"]):
        messages.append({"role": "system", "content": row[cols["system"]]})
    if spec.formatting == "sharegpt":
        tags = {**SHAREGPT_TAGS, **spec.tags}
        roles = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant", tags["system_tag"]: "system",
                 tags["observation_tag"]: "user", tags["function_tag"]: "assistant"}
        for turn in row.get(cols["messages"]) or []:
            role = roles.get(turn.get(tags["role_tag"])) if isinstance(turn, dict) else None
            if role is None:
                return None
            messages.append({"role": role, "content": str(turn.get(tags["content_tag"]) or "")})
    else:
        history = row.get(cols["history"]) if cols.get("history") else None
        for pair in history or []:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                return None
            messages += [{"role": "user", "content": str(pair[0])}, {"role": "assistant", "content": str(pair[1])}]
        if row.get(cols["response"]) is None:
            return None  # no answer at all (null or missing), unlike an empty string, is a broken row
        prompt = str(row.get(cols["prompt"]) or "")
        if cols.get("query") and row.get(cols["query"]):
            prompt = f"{prompt}\n{row[cols['query']]}" if prompt else str(row[cols["query"]])
        messages += [{"role": "user", "content": prompt},
                     {"role": "assistant", "content": str(row.get(cols["response"]) or "")}]
    dialogue = [m for m in messages if m["role"] != "system"]
    if not dialogue or dialogue[0]["role"] != "user" or dialogue[-1]["role"] != "assistant":
        return None
    if messages[0]["role"] != "system" and any(m["role"] == "system" for m in messages):
        return None
    return messages
