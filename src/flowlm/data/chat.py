"""Chat data for post-training: read HF / TRL chat datasets, fuse Qwen3 thinking modes, render with loss masks.

`read_chat_rows(path)` streams a `.jsonl` (`.gz`, `.zst`) or `.parquet` file of chat rows; `chat_row` /
`to_messages` normalise each row into OpenAI-style `messages` (plus `tools` when the row has them). The
schemas, first match wins:

- `messages`: OpenAI / TRL conversational, `{role, content}` dicts (content may be a list of text parts);
- `conversations`: ShareGPT, `{from, value}` with roles human / gpt / system / tool (or `{role, content}`);
- `prompt` + `completion`: TRL prompt-completion; strings (standard: a user turn and an assistant turn)
  or lists of messages (conversational);
- `prompt` + `response`: the same, under the other common column name.

Roles are system, user, assistant, tool. OLMo 3's schema (its Dolci SFT data) is read too: `environment` is
the tool role, an assistant turn's `function_calls` (Python call lines) become its `tool_calls`, and the
system (or a user) turn's `functions` the row's `tools`; both are also kept as written, so OLMo 3's template renders
them verbatim (`flowlm.tools.formats`). An assistant turn's reasoning is `reasoning_content` or an inline
`<think>…</think>` prefix of its content (or `thinking`, gpt-oss's field, or `reasoning`); all become
`reasoning_content` (every normalised assistant turn
has one, possibly empty) so downstream code sees one form. Tool calls are normalised to
`{type: function, function: {name, arguments}}`; an optional `tools` column (a list or its JSON string) is
kept for rendering. A malformed row is a one-line `FlowError` naming `file:line` (for parquet the line is
the 1-based row number, as in `flowlm.data.docs.read_parquet`) and the problem.

Preference rows (`chosen` + `rejected`, TRL's format) are normalised by `pair_row`: `prompt` as messages
(TRL's implicit-prompt form, without `prompt`, splits the turns both sides share), each side as assistant
turns; `read_chat_rows` picks the normaliser from a file's first row.

`apply_mode_flags` is Qwen3's soft switch, `render_chat_example` the SFT rendering: token ids and a 0/1
mask over the assistant tokens of every turn (`assistant_loss="all"`) or of the final one (`"last"`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn

from flowlm.errors import FlowError
from flowlm.jsonlines import iter_json_objects, iter_lines, parse_object
from flowlm.model.tokenizer import last_turn_mask, render_chat  # noqa: F401  # last_turn_mask: re-exported
from flowlm.tools.formats import parse_pythonic
from flowlm.tools.messages import functions_as_tools

AssistantLoss = Literal["all", "last"]
ROLES = ("system", "user", "assistant", "tool")
ALIASES = {"environment": "tool"}  # OLMo 3's (Dolci's) name for the tool role
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "tool": "tool"}
# Columns a schema consumes; other scalar columns (id, source, ...) are carried along unchanged.
_SCHEMA_COLUMNS = frozenset({"messages", "conversations", "prompt", "completion", "response", "tools"})
_SCALARS = (str, int, float, bool, type(None))
# `/think` or `/no_think` as a word of its own: not `a/think`, `//think` or `/thinking`.
_FLAG = re.compile(r"(?<![\w/])/(no_think|think)\b")


def _fail(where: str, problem: str) -> NoReturn:
    raise FlowError(f"{where}: {problem}")


# -- schemas -----------------------------------------------------------------------------------------
def is_pair_row(row: Mapping[str, Any] | Collection[str]) -> bool:
    """Whether a row (or a file's column names) is a TRL preference row (`chosen` and `rejected`)."""
    return "chosen" in row and "rejected" in row


def is_chat_row(row: Mapping[str, Any] | Collection[str]) -> bool:
    """Whether a row (or a file's column names) holds a chat example rather than a `text` document."""
    if is_pair_row(row):
        return False
    if "messages" in row:
        return True
    pair = "prompt" in row and ("completion" in row or "response" in row)
    return "text" not in row and ("conversations" in row or pair)


def _listed(value: Any, name: str, role: str | None, where: str) -> list[tuple[str, Any]]:
    """`(label, raw message)` pairs of a column: a list of messages, or (when `role` is given) a string
    standing for one `role` turn."""
    if isinstance(value, str) and role is not None:
        return [(name, {"role": role, "content": value})]
    if isinstance(value, list):
        return [(f"{name}[{i}]", m) for i, m in enumerate(value)]
    what = "a string or a list of messages" if role is not None else "a list of messages"
    _fail(where, f"{name} must be {what}, got {type(value).__name__}")


def _sharegpt(turns: Any, where: str) -> list[tuple[str, Any]]:
    out = []
    for label, turn in _listed(turns, "conversations", None, where):
        if isinstance(turn, Mapping) and "from" in turn:
            role = SHAREGPT_ROLES.get(turn["from"]) if isinstance(turn["from"], str) else None
            if role is None:
                _fail(where, f"{label}: unknown ShareGPT role {turn['from']!r} (expected human, gpt, system or tool)")
            rest = {k: v for k, v in turn.items() if k not in ("from", "value")}
            turn = {**rest, "role": role, "content": turn.get("value")}
        out.append((label, turn))
    return out


def _raw_turns(row: Mapping[str, Any], where: str) -> list[tuple[str, Any]]:
    if row.get("messages") is not None:
        return _listed(row["messages"], "messages", None, where)
    if row.get("conversations") is not None:
        return _sharegpt(row["conversations"], where)
    answer = "completion" if row.get("completion") is not None else "response"
    if row.get("prompt") is not None and row.get(answer) is not None:
        return _listed(row["prompt"], "prompt", "user", where) + _listed(row[answer], answer, "assistant", where)
    _fail(where, "no chat columns (expected messages, conversations, prompt+completion or prompt+response); "
                 f"found {', '.join(sorted(map(str, row))) or 'none'}")


def to_messages(row: Mapping[str, Any], *, where: str = "chat row") -> list[dict[str, Any]]:
    """The normalised OpenAI-style messages of a row in any accepted schema (see the module docstring)."""
    if not isinstance(row, Mapping):
        _fail(where, f"expected an object, got {type(row).__name__}")
    messages = [_message(m, where, label) for label, m in _raw_turns(row, where)]
    if not any(m["role"] == "assistant" for m in messages):
        _fail(where, "no assistant turn (nothing to train on)")
    return messages


def _tools(row: Mapping[str, Any], where: str) -> list[dict[str, Any]] | None:
    tools = row.get("tools")
    if isinstance(tools, str):  # parquet / HF datasets often store the tool list as a JSON string
        try:
            tools = json.loads(tools)
        except (json.JSONDecodeError, RecursionError) as e:
            _fail(where, f"tools is not valid JSON ({getattr(e, 'msg', 'nested too deeply')})")
    if tools is None:
        return None
    if not isinstance(tools, list) or not all(isinstance(t, Mapping) for t in tools):
        _fail(where, "tools must be a list of objects")
    return [dict(t) for t in tools] or None


def chat_row(row: Mapping[str, Any], *, where: str = "chat row") -> dict[str, Any]:
    """`{messages, tools?}` plus the row's other scalar columns (`id`, `source`, ...), validated."""
    if not isinstance(row, Mapping):
        _fail(where, f"expected an object, got {type(row).__name__}")
    out = {k: v for k, v in row.items() if k not in _SCHEMA_COLUMNS and isinstance(v, _SCALARS)}
    out["messages"] = to_messages(row, where=where)
    tools = _tools(row, where)
    listed = next((m["functions"] for m in out["messages"] if "functions" in m), None)
    if not tools and listed is not None:  # OLMo 3's schema lists them in the system (or a user) turn
        tools = functions_as_tools(listed, "functions") or None
    if tools:
        out["tools"] = tools
    return out


def pair_row(row: Mapping[str, Any], *, where: str = "pair row") -> dict[str, Any]:
    """A TRL preference row normalised: `{prompt: messages, chosen: [assistant...], rejected: [...]}` plus
    the row's scalar columns. `prompt` is a string (one user turn) or messages; `chosen` / `rejected` are
    strings or assistant messages (a trajectory: assistant turns with tool answers between them). Without
    `prompt` (TRL's implicit-prompt form) both sides are whole conversations and their shared leading turns
    are the prompt."""
    if not isinstance(row, Mapping):
        _fail(where, f"expected an object, got {type(row).__name__}")
    out = {k: v for k, v in row.items() if k not in ("prompt", "chosen", "rejected") and isinstance(v, _SCALARS)}
    sides = {}
    for side in ("chosen", "rejected"):
        if row.get(side) is None:
            _fail(where, f"preference row has no {side}")
        sides[side] = [_message(m, where, label) for label, m in _listed(row[side], side, "assistant", where)]
    if row.get("prompt") is not None:
        prompt = [_message(m, where, label) for label, m in _listed(row["prompt"], "prompt", "user", where)]
    else:
        n = 0
        while n < min(map(len, sides.values())) - 1 and sides["chosen"][n] == sides["rejected"][n]:
            n += 1
        prompt, sides = sides["chosen"][:n], {k: v[n:] for k, v in sides.items()}
    if not prompt or prompt[-1]["role"] == "assistant":
        _fail(where, "preference row: the prompt must end with a user (or tool) turn")
    for side, msgs in sides.items():  # (a side from a model with tools: its calls, their answers, its reply)
        if not msgs or msgs[0]["role"] != "assistant" or msgs[-1]["role"] != "assistant" \
                or any(m["role"] not in ("assistant", "tool", "environment") for m in msgs):
            _fail(where, f"{side} must be assistant turns after the prompt (tool answers may come between them)")
    tools = _tools(row, where)
    return {**out, "prompt": prompt, **sides, **({"tools": tools} if tools else {})}


# -- one message -------------------------------------------------------------------------------------
def _text(value: Any, where: str, label: str) -> str:
    """Content as a string; a list of OpenAI text parts is joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, Mapping) for p in value):
        kinds = sorted({str(p.get("type", "text")) for p in value} - {"text"})
        if kinds:
            _fail(where, f"{label}: content parts of type {', '.join(kinds)} are not supported (text only)")
        if all(isinstance(p.get("text"), str) for p in value):
            return "".join(p["text"] for p in value)
    _fail(where, f"{label}: content must be a string or a list of text parts, got {type(value).__name__}")


def split_think(content: str) -> tuple[str | None, str]:
    """`(reasoning, answer)` of content with an inline `<think>…</think>` prefix, read as the chat template
    reads it (reasoning = text before `</think>` after any `<think>`); `(None, content)` without one."""
    if "</think>" not in content:
        return None, content
    head, _, answer = content.rpartition("</think>")
    return head.split("<think>")[-1].strip("\n"), answer.lstrip("\n")


REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")
"""Where an assistant turn's reasoning may be: vLLM's and Qwen3's `reasoning_content`, gpt-oss's `thinking`
(its chat template's, and TRL's harmony datasets'), or `reasoning`."""


def _message(m: Any, where: str, label: str) -> dict[str, Any]:
    if not isinstance(m, Mapping):
        _fail(where, f"{label}: expected a message object, got {type(m).__name__}")
    role = m.get("role")
    role = ALIASES.get(role, role) if isinstance(role, str) else role
    if role not in ROLES:
        _fail(where, f"{label}: unknown role {role!r} (expected system, user, assistant, tool or environment)")
    if role == "assistant":
        return _assistant(m, where, label)
    if m.get("content") is None:
        _fail(where, f"{label}: {role} turn has no content")
    out = {"role": role, "content": _text(m["content"], where, label)}
    if role == "tool":
        out.update({k: m[k] for k in ("name", "tool_call_id") if isinstance(m.get(k), str)})
    if role in ("system", "user") and m.get("functions") is not None:  # OLMo 3's schema: as written
        try:
            functions_as_tools(m["functions"], label)
        except FlowError as e:
            _fail(where, str(e))
        out["functions"] = m["functions"]
    return out


def _assistant(m: Mapping[str, Any], where: str, label: str) -> dict[str, Any]:
    calls = m.get("tool_calls") or []
    if not isinstance(calls, list):
        _fail(where, f"{label}: tool_calls must be a list")
    written = m.get("function_calls")  # OLMo 3's schema: the calls as Python call lines
    if written is not None and not isinstance(written, str):
        _fail(where, f"{label}: function_calls must be a string of Python calls")
    if written and written.strip() and not calls:
        parsed, problems = parse_pythonic(written)
        if problems:
            _fail(where, f"{label}.function_calls: {problems[0]}")
        calls = [{"type": "function", "function": c} for c in parsed]
    if m.get("content") is None and not calls:
        _fail(where, f"{label}: assistant turn has no content, tool_calls or function_calls")
    content = "" if m.get("content") is None else _text(m["content"], where, label)
    given = {k: m[k] for k in REASONING_KEYS if m.get(k) is not None}
    for key, value in given.items():
        if not isinstance(value, str):
            _fail(where, f"{label}: {key} must be a string")
    if len({v.strip() for v in given.values()}) > 1:
        _fail(where, f"{label}: {' and '.join(given)} differ (one reasoning per turn)")
    reasoning = next(iter(given.values()), None)
    if content.count("</think>") > 1 or content.count("<think>") > content.count("</think>"):
        _fail(where, f"{label}: malformed inline think block (want one <think>...</think> prefix)")
    inline, content = split_think(content)
    if inline is not None:
        if reasoning and reasoning.strip("\n") != inline:
            _fail(where, f"{label}: both {next(iter(given))} and a different inline <think> block")
        reasoning = inline
    out: dict[str, Any] = {"role": "assistant", "content": content, "reasoning_content": (reasoning or "").strip("\n")}
    if calls:
        out["tool_calls"] = [_tool_call(c, where, f"{label}.tool_calls[{j}]") for j, c in enumerate(calls)]
    if written and written.strip():
        out["function_calls"] = written  # kept as written, for OLMo 3's template (`fit_to_template`)
    return out


def _tool_call(call: Any, where: str, label: str) -> dict[str, Any]:
    fn = (call.get("function") or call) if isinstance(call, Mapping) else None
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
        _fail(where, f"{label}: a tool call needs a function name")
    args = {} if fn.get("arguments") is None else fn["arguments"]
    if not isinstance(args, (str, Mapping)):
        _fail(where, f"{label}: arguments must be an object or a JSON string")
    out: dict[str, Any] = {"type": "function", "function": {"name": fn["name"],
                                                            "arguments": args if isinstance(args, str) else dict(args)}}
    if isinstance(call.get("id"), str):
        out["id"] = call["id"]
    return out


# -- reading files -----------------------------------------------------------------------------------
def _parquet_file(path: Path) -> Any:
    """`pyarrow.parquet.ParquetFile(path)`, or a one-line FlowError (no pyarrow, no file, not parquet)."""
    try:
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise FlowError(f"{path}: reading parquet needs the 'pyarrow' package (a flowlm dependency): "
                        "pip install 'pyarrow>=14'") from None
    if not path.exists():
        raise FlowError(f"{path}: file not found")
    try:
        return pq.ParquetFile(path)
    except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError
        reason = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        raise FlowError(f"{path}: not a readable parquet file ({reason})") from None


def _parquet_rows(path: Path, batch_size: int) -> Iterator[tuple[int, Any]]:
    n = 0
    for batch in _parquet_file(path).iter_batches(batch_size=batch_size):
        for row in batch.to_pylist():
            n += 1
            yield n, row


def read_chat_rows(path: str | Path, *, batch_size: int = 1024) -> Iterator[dict[str, Any]]:
    """Stream the normalised rows of a chat `.jsonl` / `.jsonl.gz` / `.jsonl.zst` / `.parquet` file:
    `chat_row` for chat examples, `pair_row` for preference rows (the first row decides the file's kind)."""
    p = Path(path)
    rows = _parquet_rows(p, batch_size) if p.name.endswith(".parquet") else iter_json_objects(p)
    normalise = None
    for line, row in rows:
        if normalise is None:
            normalise = pair_row if isinstance(row, Mapping) and is_pair_row(row) else chat_row
        yield normalise(row, where=f"{p}:{line}")


def is_chat_file(path: str | Path) -> bool:
    """Whether a corpus file holds chat or preference rows (by its parquet columns or its first jsonl object)."""
    p = Path(path)
    if not p.exists():
        return False  # the reader that gets it reports the missing file
    if p.is_dir():
        raise FlowError(f"{p}: is a directory, not a data file (name the jsonl / parquet files in it)")
    if p.name.endswith(".parquet"):
        cols = set(_parquet_file(p).schema_arrow.names)
        return is_chat_row(cols) or is_pair_row(cols)
    first = next(iter_lines(p), None)
    try:
        row = parse_object(first[1]) if first is not None else None
    except ValueError:
        return False  # not JSON: the text reader names the bad line
    return row is not None and (is_chat_row(row) or is_pair_row(row))


# -- Qwen3 modes and rendering -----------------------------------------------------------------------
def mode_flag(text: str) -> bool | None:
    """The last soft switch in `text`: True for `/think`, False for `/no_think`, None when there is none."""
    found = _FLAG.findall(text)
    return None if not found else found[-1] == "think"


def apply_mode_flags(messages: Sequence[Mapping[str, Any]], *,
                     default: bool = True) -> tuple[list[dict[str, Any]], bool]:
    """Qwen3 mode fusion: `(messages, thinking)` where the last `/think` / `/no_think` of any user or system
    turn decides the mode (`default` when there is none; Qwen3 defaults to thinking).

    In non-thinking mode the assistant turns after the last user turn get an empty reasoning (the template
    renders `<think>\\n\\n</think>\\n\\n`), inline think blocks included. Flags stay in the text, as in
    Qwen3's data; earlier assistant turns are untouched (the template drops their reasoning anyway).
    """
    thinking = default
    for m in messages:
        if m.get("role") in ("user", "system") and isinstance(m.get("content"), str):
            flag = mode_flag(m["content"])
            thinking = thinking if flag is None else flag
    out = [dict(m) for m in messages]
    if not thinking:
        last_user = max((i for i, m in enumerate(out) if m.get("role") == "user"), default=-1)
        for m in out[last_user + 1:]:
            if m.get("role") == "assistant":
                if isinstance(m.get("content"), str):
                    m["content"] = split_think(m["content"])[1]
                m["reasoning_content"] = ""
    return out, thinking


def render_chat_example(
    tokenizer: Any,
    row_or_messages: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    assistant_loss: AssistantLoss = "all",
    tools: list[dict[str, Any]] | None = None,
    enable_thinking: bool = True,
    where: str = "chat row",
) -> tuple[list[int], list[int]]:
    """Token ids and 0/1 loss mask of one chat example (a row in any accepted schema, or a message list).

    The row is normalised (`chat_row`), its mode fused (`apply_mode_flags`, `enable_thinking` being the
    mode without flags) and rendered with the chat template (`render_chat`). The mask covers the
    assistant turns' think blocks, content, tool calls and `<|im_end|>` (never tool outputs or headers):
    of every assistant turn (`"all"`) or of the last assistant message only (`"last"`; with Qwen3's
    template only turns after the last user turn carry their reasoning, so `"last"` avoids training on
    history answers rendered without it). `tools` overrides the row's own `tools` column.
    """
    if assistant_loss not in ("all", "last"):
        raise FlowError(f"assistant_loss must be 'all' or 'last', got {assistant_loss!r}")
    src = row_or_messages if isinstance(row_or_messages, Mapping) else {"messages": list(row_or_messages)}
    row = chat_row(src, where=where)
    messages, thinking = apply_mode_flags(row["messages"], default=enable_thinking)
    try:
        ids, mask = render_chat(tokenizer, messages, enable_thinking=thinking,
                                tools=tools if tools is not None else row.get("tools"), last_only=assistant_loss == "last")
    except FlowError as exc:
        raise FlowError(f"{where}: {exc}") from None
    if not any(mask):
        raise FlowError(f"{where}: the chat template gave no assistant tokens to train on "
                        f"(tokenizer {getattr(tokenizer, 'name_or_path', '?')})")
    return ids, mask
