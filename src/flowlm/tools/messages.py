"""Tool use in chat messages: OpenAI's schema, which everything in flowlm keeps, and what chat templates need.

- `openai_calls(calls)`: parsed calls (`flowlm.tools.formats`) as an assistant turn's `tool_calls`.
- Mistral's call ids: `call_id(n)` and `with_call_ids(messages)` (its templates refuse a call without an id
  of 9 letters and digits, and an answer without its call's id).
- OLMo 3's schema (its Dolci data, its template): `to_olmo3_messages` / `to_openai_messages`, `pythonic(calls)`
  (calls as its Python call lines), `functions_as_tools`, and `OLMO3_SYSTEM`, its function-calling prompt.

`flowlm.model.tokenizer.fit_to_template` picks the schema a template gets.
"""

from __future__ import annotations

import json
from typing import Any

from flowlm.errors import FlowError
from flowlm.tools.formats import Calls, parse_pythonic

# OLMo 3's function-calling system prompt (what its tool-use SFT data opens with), used when tools are
# listed and the conversation has no system turn of its own.
OLMO3_SYSTEM = ("You are a helpful function-calling AI assistant. You are provided with function signatures within "
                "<functions></functions> XML tags. You may call one or more functions to assist with the user query. "
                "Output any function calls within <function_calls></function_calls> XML tags. Do not make "
                "assumptions about what values to plug into functions.")


def openai_calls(calls: Calls) -> list[dict[str, Any]]:
    """Parsed calls as an assistant message's OpenAI `tool_calls` (a call's `id`, where the model wrote one,
    at the top level as OpenAI has it)."""
    out = []
    for c in calls:
        item: dict[str, Any] = {"type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
        if c.get("id"):
            item = {"id": c["id"], **item}
        out.append(item)
    return out


def call_id(n: int) -> str:
    """The `n`th id given to a call that has none: 9 letters and digits (`call00003`), as Mistral's templates
    require."""
    return f"call{n % 100000:05d}"


def with_call_ids(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages whose every assistant call has an `id` and every tool answer a `tool_call_id` (Mistral's
    templates refuse a conversation without them): a call without one gets `call_id(n)`, n counting the
    conversation's calls; the answers after a calling turn take its calls' ids in order (answers beyond them
    get fresh ones). Ids already there are kept, and converting twice changes nothing."""
    out, n, pending = [], 0, []
    for m in messages:
        m = dict(m)
        if m.get("role") == "assistant" and m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                c = dict(c)
                if not c.get("id"):
                    c["id"] = call_id(n)
                n += 1
                calls.append(c)
            m["tool_calls"], pending = calls, [c["id"] for c in calls]
        elif m.get("role") == "tool":
            if not m.get("tool_call_id") and pending:
                m["tool_call_id"] = pending.pop(0)
            elif not m.get("tool_call_id"):
                m["tool_call_id"], n = call_id(n), n + 1
            elif m["tool_call_id"] in pending:
                pending.remove(m["tool_call_id"])
        else:
            pending = []
        out.append(m)
    return out


def _value(v: Any) -> str:
    """A call argument as OLMo 3 writes it: JSON literals (strings double-quoted, `true`, `null`)."""
    return json.dumps(v, ensure_ascii=False)


def pythonic(calls: list[dict[str, Any]]) -> str:
    """`calls` (`{name, arguments}`, or OpenAI's `{type, function: {...}}`) as OLMo 3's call lines."""
    lines = []
    for c in calls:
        fn = c.get("function", c)
        args = fn.get("arguments") or {}
        try:
            args = json.loads(args) if isinstance(args, str) and args.strip() else (args or {})
        except ValueError:
            raise FlowError(f"call {fn['name']}: its arguments are a string that is not JSON") from None
        if not isinstance(args, dict):
            raise FlowError(f"call {fn['name']}: its arguments are not an object")
        lines.append(f"{fn['name']}({', '.join(f'{k}={_value(v)}' for k, v in args.items())})")
    return "\n".join(lines)


def functions_as_tools(value: Any, where: str) -> list[dict[str, Any]]:
    """A `functions` field (a JSON string or a list) as OpenAI tools."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except ValueError as exc:
            raise FlowError(f"{where}.functions is not JSON ({exc})") from None
    if not isinstance(value, list) or not all(isinstance(f, dict) for f in value):
        raise FlowError(f"{where}.functions must be a list of function objects")
    return [f if f.get("type") == "function" and "function" in f else {"type": "function", "function": f}
            for f in value]


def to_olmo3_messages(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """OpenAI-schema messages (and the tools to list) in OLMo 3's schema: tools as the system turn's
    `functions` (a system turn with OLMo 3's function-calling prompt is added when there is none), calls as
    `function_calls` text, answers as `environment` turns. A turn already in OLMo 3's schema (a row read from
    its data: raw `function_calls`, a system or user turn's own `functions`) is kept as written."""
    out = [dict(m) for m in messages]
    if tools and not any(m.get("functions") is not None for m in out):  # (a row in this schema lists its own)
        listed = json.dumps(tools, ensure_ascii=False)
        if out and out[0].get("role") == "system":
            out[0].setdefault("functions", listed)
        else:
            out.insert(0, {"role": "system", "content": OLMO3_SYSTEM, "functions": listed})
    for m in out:
        if m.get("role") == "tool":
            m["role"] = "environment"
            m.pop("name", None), m.pop("tool_call_id", None)
        elif m.get("role") == "assistant" and m.get("tool_calls"):
            calls = m.pop("tool_calls")
            if not isinstance(m.get("function_calls"), str):
                m["function_calls"] = pythonic(calls)
        if isinstance(m.get("functions"), list):
            m["functions"] = json.dumps(m["functions"], ensure_ascii=False)
    return out


def to_openai_messages(messages: list[dict[str, Any]],
                       tools: list[dict[str, Any]] | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Messages in OLMo 3's schema (any of its fields) as OpenAI's, and the tools to list: `environment`
    turns become `tool` turns, `function_calls` text structured `tool_calls`, a system turn's `functions`
    the tools (when none are given). FlowError naming the message when its calls do not parse."""
    out = []
    for i, m in enumerate(messages):
        m = dict(m)
        if m.get("role") == "environment":
            m["role"] = "tool"
        if "function_calls" in m:
            text = m.pop("function_calls")
            if m.get("role") == "assistant" and isinstance(text, str) and text.strip() and not m.get("tool_calls"):
                calls, problems = parse_pythonic(text)
                if problems:
                    raise FlowError(f"messages[{i}].function_calls: {problems[0]}")
                m["tool_calls"] = [{"type": "function", "function": c} for c in calls]
        if "functions" in m:
            listed = m.pop("functions")
            if listed is not None and not tools:
                tools = functions_as_tools(listed, f"messages[{i}]") or None
        out.append(m)
    return out, tools
