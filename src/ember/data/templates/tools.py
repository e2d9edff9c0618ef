"""Tool formats: how a template writes the tool list into the system message, and how it writes an
assistant's function call. Each is LLaMA-Factory 0.9.5's format of the same name, character for
character, since a model fine-tuned on one wording is asked in that wording at inference.

A sharegpt `tools` column holds a JSON list of function schemas; a `function_call` turn holds a
JSON call ({"name": ..., "arguments": {...}}) or a list of them.
"""
from __future__ import annotations

import json
import re
from datetime import datetime

from ...config.errors import ConfigError


def _dumps(value, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _bare(tool: dict) -> dict:
    """The schema itself, whether or not it comes wrapped as {"type": "function", "function": ...}."""
    return tool.get("function", "") if tool.get("type") == "function" else tool


def _wrapped(tool: dict) -> dict:
    return tool if tool.get("type") == "function" else {"type": "function", "function": tool}


# ---- the system-message text describing the tools --------------------------------------------

def _describe_default(tools: list[dict], today: str | None) -> str:
    text, names = "", []
    for tool in map(_bare, tools):
        args = ""
        for name, param in tool["parameters"]["properties"].items():
            required = ", required" if name in tool["parameters"].get("required", []) else ""
            enum = f", should be one of [{', '.join(param['enum'])}]" if param.get("enum") else ""
            items = f", where each item should be {param['items'].get('type', '')}" if param.get("items") else ""
            args += f"  - {name} ({param.get('type', '')}{required}): {param.get('description', '')}{enum}{items}\n"
        text += f"> Tool Name: {tool['name']}\nTool Description: {tool.get('description', '')}\nTool Args:\n{args}\n"
        names.append(tool["name"])
    return (f"You have access to the following tools:\n{text}Use the following format if using a tool:\n```\n"
            f"Action: tool name (one of [{', '.join(names)}])\nAction Input: the input to the tool, in a JSON "
            'format representing the kwargs (e.g. ```{"input": "hello world", "num_beams": 5}```)\n```\n')


def _describe_qwen(tools: list[dict], today: str | None) -> str:
    listed = "".join("\n" + _dumps(_wrapped(tool)) for tool in tools)
    return ("\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            f"You are provided with function signatures within <tools></tools> XML tags:\n<tools>{listed}"
            "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
            '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, '
            '"arguments": <args-json-object>}\n</tool_call>')


def _describe_llama3(tools: list[dict], today: str | None) -> str:
    # LLaMA-Factory writes the current date here; `today` pins it (reproducible data, tests)
    date = today or datetime.now().strftime("%d %b %Y")
    listed = "".join(_dumps(_wrapped(tool), indent=4) + "\n\n" for tool in tools)
    return (f"Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n"
            "You have access to the following functions. To call a function, please respond with JSON for a "
            'function call. Respond in the format {"name": function name, "parameters": dictionary of argument '
            f"name and its value}}. Do not use variables.\n\n{listed}")


def _describe_mistral(tools: list[dict], today: str | None) -> str:
    return "[AVAILABLE_TOOLS] " + _dumps([_wrapped(tool) for tool in tools]) + "[/AVAILABLE_TOOLS]"


def _describe_glm4(tools: list[dict], today: str | None) -> str:
    listed = "".join(f"\n\n## {tool['name']}\n\n{_dumps(tool, indent=4)}\n在调用上述函数时，请使用 Json 格式表示调用的参数。"
                     for tool in map(_bare, tools))
    return ("你是一个名为 ChatGLM 的人工智能助手。你是基于智谱 AI 公司训练的语言模型 GLM-4 模型开发的，"
            f"你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具{listed}")


# ---- an assistant's function calls, each (name, arguments as JSON text) ----------------------

def _call_default(calls: list[tuple[str, str]]) -> str:
    return "\n".join(f"Action: {name}\nAction Input: {arguments}" for name, arguments in calls)


def _call_qwen(calls: list[tuple[str, str]]) -> str:
    return "\n".join(f"<tool_call>\n{_dumps({'name': name, 'arguments': json.loads(arguments)})}\n</tool_call>"
                     for name, arguments in calls)


def _call_llama3(calls: list[tuple[str, str]]) -> str:
    objects = [{"name": name, "parameters": json.loads(arguments)} for name, arguments in calls]
    return _dumps(objects[0] if len(objects) == 1 else objects)


def _call_mistral(calls: list[tuple[str, str]]) -> str:
    return _dumps([{"name": name, "arguments": json.loads(arguments)} for name, arguments in calls])


def _call_glm4(calls: list[tuple[str, str]]) -> str:
    if len(calls) > 1:
        raise ConfigError("tool format glm4 cannot write parallel function calls (a function_call turn with a list)")
    return f"{calls[0][0]}\n{calls[0][1]}"


TOOL_FORMATS = {
    "default": (_describe_default, _call_default),
    "qwen": (_describe_qwen, _call_qwen),
    "llama3": (_describe_llama3, _call_llama3),
    "mistral": (_describe_mistral, _call_mistral),
    "glm4": (_describe_glm4, _call_glm4),
}


def check_tool_format(name: str, where: str) -> None:
    if name not in TOOL_FORMATS:
        raise ConfigError(f"{where}: unknown tool format '{name}'; ember knows {', '.join(sorted(TOOL_FORMATS))}")


def describe_tools(tools_json: str, tool_format: str, today: str | None = None) -> str:
    """The text a template appends to the system message for a row's `tools` column."""
    try:
        tools = json.loads(tools_json)
    except json.JSONDecodeError:
        raise ConfigError(f"a row's tools column is not JSON: {tools_json[:80]!r}") from None
    return TOOL_FORMATS[tool_format][0](tools, today) if len(tools) else ""


def _parse_calls(text: str) -> list[tuple[str, str]]:
    try:
        calls = json.loads(text)
        calls = calls if isinstance(calls, list) else [calls]
        return [(call["name"], _dumps(call["arguments"])) for call in calls]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ConfigError(f"a function_call turn is not a JSON call with name and arguments: {text[:80]!r}") from None


def format_function_call(content: str, tool_format: str, thought_words: tuple[str, str] | None,
                         tool_call_words: tuple[str, str] | None) -> str:
    """A function_call turn's text: a thought (<think>...</think>) or any text around a
    <tool_call>...</tool_call> block is kept in front, the calls rewritten in the tool format.
    Templates that fuse the system prompt into the first user turn pass no words (as LLaMA-Factory)."""
    write = TOOL_FORMATS[tool_format][1]
    wrapped = None
    if tool_call_words:
        wrapped = re.search(f"{re.escape(tool_call_words[0])}(.*?){re.escape(tool_call_words[1])}", content, re.DOTALL)
    if wrapped is not None:
        return content.replace(wrapped.group(0), "") + write(_parse_calls(wrapped.group(1)))
    thought = None
    if thought_words:
        thought = re.search(f"{re.escape(thought_words[0])}(.*?){re.escape(thought_words[1])}", content, re.DOTALL)
    if thought is None:
        return write(_parse_calls(content))
    return thought.group(0) + write(_parse_calls(content.replace(thought.group(0), "")))
