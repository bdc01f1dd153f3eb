"""SimFC: function-calling conversations with simulated tools (OLMo 3's Dolci Instruct SFT, seed section 5.2.1).

    rows, acc = build_simfc(toolsets, assistant, simulator, SimFCCfg(patterns=["single", "parallel"]))

Trajectories with real tools need the tools to run (`flowlm post coldstart` with `teacher.tools`, MCP servers
included). SimFC has a model play the user and the environment instead, so any list of function definitions
seeds conversations: xLAM's, ToolACE's or BFCL's functions, an MCP server's tools, a user's own API.

A tool set is `{"id"?, "tools": [...]}`: OpenAI tools, bare functions, or xLAM's `{"name", "description",
"parameters": {"arg": {"type": "str", ...}}}` (a JSON string or a list; `normalise_tools`). Each tool set
seeds `per_toolset` conversations, their patterns taken in turn from `patterns` (`PATTERNS`: one call, parallel
calls, a call that needs an earlier call's result, follow-up requests, a request to decline). A conversation
is built in rounds; each round makes one batched call per role over every live conversation:

1. the simulator writes the user's request for the pattern (`query_prompt`), or a follow-up (`followup_prompt`);
2. the assistant answers, with the tool set listed in its chat template's own way (any `Teacher`; a model
   teacher writes calls in its template's format, `flowlm.tools.formats`). Each call is checked against its
   function: a known name, the required arguments, no unknown ones, the top-level types and enums;
3. the simulator writes each call's result as JSON (`result_prompt`), appended as a `tool` turn; back to 2, at
   most `max_steps` assistant turns per user request.

The finished conversation must show its pattern (`pattern_problem`); each assistant turn passes the response
filters that apply to it (`flowlm.post.filters.check_response`: format, repetition, language mixing) and the
user turns the decontamination. A kept conversation is an SFT row in OpenAI's schema (`messages` with
structured `tool_calls`, the tool set as `tools`, `pattern`), which SFT renders in any template's format.

Accounting (`flowlm.post.coldstart.Accounting`): step `toolsets` (kept: at least one conversation written) and
step `conversations`, every started conversation kept or dropped with the first reason it failed
(`SIMFC_REASONS`); tokens are whitespace words of the conversation so far.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field, field_validator

from flowlm.config import Strict
from flowlm.data.accounting import count_tokens
from flowlm.errors import FlowError
from flowlm.post.coldstart import Accounting, thinking_mode
from flowlm.post.filters import ResponseFilterCfg, check_response, contaminated
from flowlm.post.teachers import Message, Response, Teacher, ask
from flowlm.tools.formats import format_in
from flowlm.tools.messages import openai_calls

PATTERNS = ("single", "parallel", "multi_step", "multi_turn", "refusal")
"""SimFC's interaction kinds: one call; several calls in one turn; a call that needs an earlier one's result;
several user requests; a request the functions cannot serve, declined without a call."""

ASKS = {
    "single": "that the assistant can fulfil with exactly one call to one of these functions",
    "parallel": "that needs several calls made at once, independent of each other (one function with "
                "different arguments, or different functions)",
    "multi_step": "that needs one call first, then a second call that uses the first call's result",
    "multi_turn": "that needs one of these functions (the user will follow up with more requests later)",
    "refusal": "that none of these functions can fulfil, or that leaves out information a call would need, so "
               "that the right reply is to say so without calling any function",
}

SIMFC_REASONS = ("bad_query", "teacher_error", "malformed_markup", "truncated", "empty_answer", "malformed_call",
                 "unknown_function", "bad_arguments", "bad_result", "no_final_answer", "pattern_mismatch",
                 "repetition", "think_summary_mismatch", "language_mix", "contaminated", "duplicate")
"""Why a conversation was dropped, in the order the checks meet them."""


class SimFCCfg(Strict):
    """How SimFC builds conversations from tool sets."""

    patterns: list[str] = list(PATTERNS)
    """Interaction kinds, taken in turn (`PATTERNS`)."""
    per_toolset: int = Field(len(PATTERNS), ge=1)
    """Conversations started per tool set."""
    max_steps: int = Field(4, ge=1)
    """Assistant turns per user request at most; one still calling after that is dropped (`no_final_answer`)."""
    user_turns: int = Field(2, ge=2)
    """User requests of a `multi_turn` conversation (the others have one)."""
    no_think_fraction: float = Field(0.0, ge=0.0, le=1.0)
    """Share of conversations the assistant answers in non-thinking mode (`/no_think`, as `coldstart`)."""
    simulator_thinking: bool = False
    """Let a hybrid simulator think before it writes a request or a result (slower; its reasoning is dropped).
    A simulator whose template has no thinking switch is asked as it is, without `/no_think`."""
    max_query_words: int = Field(200, ge=1)
    """A simulated user request longer than this is dropped (`bad_query`)."""
    seed: int = 0
    """Seed of every model's sampling and of the mode choice."""
    chunk: int = Field(256, ge=1)
    """Conversations built together."""
    filters: ResponseFilterCfg = ResponseFilterCfg(min_score=None)
    """Response filters on each assistant turn (no answer check: nothing verifies a simulated conversation)."""

    @field_validator("patterns")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [p for p in v if p not in PATTERNS]
        if unknown or not v:
            raise ValueError(f"patterns must be among {', '.join(PATTERNS)}, got {v}")
        return v


# --- tool sets ----------------------------------------------------------------------------------------------

_XLAM_TYPES = {"str": "string", "string": "string", "int": "integer", "integer": "integer", "float": "number",
               "number": "number", "bool": "boolean", "boolean": "boolean", "list": "array", "dict": "object"}


def _xlam_param(spec: Any) -> tuple[dict[str, Any], bool]:
    """One xLAM parameter (`{"type": "List[str], optional", "description", "default"}`) as a JSON-schema
    property, and whether it is required (no `optional` in its type and no default)."""
    spec = spec if isinstance(spec, dict) else {}
    raw = str(spec.get("type", "string"))
    base = raw.split(",")[0].strip()
    head = base.split("[")[0].strip().lower()
    prop = {"type": _XLAM_TYPES.get(head, "string")}
    for k in ("description", "enum", "default"):
        if k in spec:
            prop[k] = spec[k]
    return prop, "optional" not in raw.lower() and "default" not in spec


def normalise_tools(value: Any, where: str) -> list[dict[str, Any]]:
    """A tool set (JSON string or list; OpenAI tools, bare functions, or xLAM's parameter maps) as OpenAI tools
    with JSON-schema parameters; FlowError naming `where` for anything else."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise FlowError(f"{where}: tools is not JSON ({exc})") from None
    if not isinstance(value, list) or not value or not all(isinstance(t, dict) for t in value):
        raise FlowError(f"{where}: tools must be a non-empty list of function objects")
    out, seen = [], set()
    for i, tool in enumerate(value):
        fn = tool.get("function", tool)
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][\w.\-]*", name):
            raise FlowError(f"{where}: tools[{i}] needs a function name (letters, digits, _ . -)")
        if name in seen:
            raise FlowError(f"{where}: two functions named {name!r}")
        seen.add(name)
        params = {} if fn.get("parameters") is None else fn["parameters"]
        if not isinstance(params, dict):
            raise FlowError(f"{where}: tools[{i}].parameters must be an object")
        if params and "properties" not in params and "type" not in params:  # xLAM: {arg: {type, description}}
            props = {k: _xlam_param(v) for k, v in params.items()}
            params = {"type": "object", "properties": {k: p for k, (p, _) in props.items()},
                      "required": [k for k, (_, req) in props.items() if req]}
        out.append({"type": "function", "function": {"name": name, "description": str(fn.get("description") or ""),
                                                     "parameters": params}})
    return out


def toolset_rows(rows: Iterable[tuple[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """`(where, row)` pairs -> `{"id", "tools"}` tool sets; a row's functions are under `tools` (or BFCL's
    `function`, or `functions`); FlowError at `where` for a row without a usable tool set."""
    out = []
    for k, (where, row) in enumerate(rows):
        key = next((key for key in ("tools", "function", "functions") if key in row), None)
        if key is None:
            raise FlowError(f"{where}: a tool set row needs `tools` (a list of function definitions)")
        out.append({"id": str(row.get("id", f"toolset{k}")), "tools": normalise_tools(row[key], where)})
    return out


def tool_toolsets(specs: Sequence[str]) -> list[dict[str, Any]]:
    """One tool set per entry: a built-in tool, or every tool of an `mcp:SERVER` (its tools listed, none called)."""
    from flowlm.tools.builtin import select_tools

    return [{"id": spec, "tools": [t.schema for t in select_tools([spec]).values()]} for spec in specs]


# --- checking calls and conversations -------------------------------------------------------------------------


def call_problem(call: Mapping[str, Any], tools: Sequence[Mapping[str, Any]]) -> tuple[str, str] | None:
    """(reason, detail) when `call` does not fit its function's schema: `unknown_function`, or `bad_arguments`
    (a required argument missing, an unknown one, a value of the wrong top-level type or outside its enum)."""
    from flowlm.verify.tool_call import type_problem

    fns = {t["function"]["name"]: t["function"] for t in tools}
    fn = fns.get(call.get("name"))
    if fn is None:
        return "unknown_function", f"no function {call.get('name')!r}"
    params, args = fn.get("parameters") or {}, call.get("arguments") or {}
    props = params.get("properties") or {}
    missing = [k for k in params.get("required") or [] if k not in args]
    if missing:
        return "bad_arguments", f"{fn['name']}: missing argument {missing[0]!r}"
    extra = [k for k in args if k not in props]
    if extra and params.get("additionalProperties") is not True:
        return "bad_arguments", f"{fn['name']}: unknown argument {extra[0]!r}"
    for k, v in args.items():
        spec = props.get(k) if isinstance(props.get(k), dict) else {}
        if type_problem(v, spec.get("type")):
            return "bad_arguments", f"{fn['name']}: {k}={str(v)[:40]!r} is not of type {spec['type']}"
        if isinstance(spec.get("enum"), list) and v not in spec["enum"]:
            return "bad_arguments", f"{fn['name']}: {k}={str(v)[:40]!r} is not one of {spec['enum']}"
    return None


def pattern_problem(pattern: str, turns: Sequence[tuple[int, int]], *, finished: bool) -> str | None:
    """`pattern_mismatch` when the assistant turns so far (`(user request index, calls made)` each) cannot show
    `pattern` (any time), or do not show it (`finished`); else None. `multi_step` needs two turns that call
    within one request, `multi_turn` calls in two requests or more."""
    calls = [n for _, n in turns]
    total = sum(calls)
    if (pattern == "refusal" and total) or (pattern == "single" and (total > 1 or max(calls, default=0) > 1)):
        return "pattern_mismatch"
    if not finished:
        return None
    calling_turns: dict[int, int] = {}  # per user request: assistant turns that made calls
    for user, n in turns:
        if n:
            calling_turns[user] = calling_turns.get(user, 0) + 1
    shown = {"single": total == 1, "parallel": max(calls, default=0) >= 2, "refusal": total == 0,
             "multi_step": max(calling_turns.values(), default=0) >= 2, "multi_turn": len(calling_turns) >= 2}[pattern]
    return None if shown else "pattern_mismatch"


def parse_result(text: str) -> Any:
    """A simulated function result: JSON, optionally in a code fence; ValueError when it is not."""
    body = text.strip()
    fenced = re.fullmatch(r"```[\w-]*\s*\n?(.*?)\n?```", body, re.S)
    try:
        return json.loads(fenced.group(1) if fenced else body)
    except RecursionError:  # nested past the parser's limit: model output, not a result
        raise ValueError("nested too deeply") from None


# --- the simulator's prompts --------------------------------------------------------------------------------


def _functions(tools: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps([t["function"] for t in tools], ensure_ascii=False, indent=1)


def query_prompt(tools: Sequence[Mapping[str, Any]], pattern: str) -> list[Message]:
    """The simulator's prompt for a user's first request of `pattern`."""
    return [{"role": "user", "content": (
        f"Write a message from a user to an AI assistant that can call these functions:\n{_functions(tools)}\n\n"
        f"The message asks for something {ASKS[pattern]}. Give concrete values for what the request needs. "
        "Reply with the user's message only.")}]


def result_prompt(tools: Sequence[Mapping[str, Any]], call: Mapping[str, Any]) -> list[Message]:
    """The simulator's prompt for the result of `call`."""
    fn = next(t["function"] for t in tools if t["function"]["name"] == call["name"])
    return [{"role": "user", "content": (
        "You simulate a function for testing an AI assistant. The function:\n"
        f"{json.dumps(fn, ensure_ascii=False, indent=1)}\n\nIt was called with these arguments:\n"
        f"{json.dumps(call.get('arguments') or {}, ensure_ascii=False)}\n\n"
        "Reply with the function's result as JSON and nothing else: realistic, consistent with the arguments, "
        'and short. If the arguments are not valid for it, reply with {"error": "..."} saying why.')}]


def transcript(messages: Sequence[Message]) -> str:
    """A conversation as plain text (calls as `name(arguments)`), for the simulator's follow-up prompt."""
    lines = []
    for m in messages:
        if m["role"] == "user":
            lines.append(f"User: {_SWITCH.sub('', m['content'])}")
        elif m["role"] == "assistant":
            calls = "; ".join(f"{c['function']['name']}({json.dumps(c['function']['arguments'], ensure_ascii=False)})"
                              for c in m.get("tool_calls") or [])
            lines.append(f"Assistant: {m.get('content') or ''}{' [calls ' + calls + ']' if calls else ''}".rstrip())
        else:
            lines.append(f"Result of {m.get('name', 'the call')}: {m['content']}")
    return "\n".join(lines)


_SWITCH = re.compile(r"\s*/(?:no_)?think\s*$")


def followup_prompt(tools: Sequence[Mapping[str, Any]], messages: Sequence[Message]) -> list[Message]:
    """The simulator's prompt for the user's next request in a multi-turn conversation."""
    return [{"role": "user", "content": (
        f"Here is a conversation between a user and an AI assistant that can call these functions:\n"
        f"{_functions(tools)}\n\n{transcript(messages)}\n\nWrite the user's next message: a follow-up request "
        "that needs these functions again. Reply with the user's message only.")}]


def clean_query(text: str) -> str:
    """A simulated request without surrounding quotes or a `User:` label."""
    text = re.sub(r"^\s*(?:\*\*)?user(?:\*\*)?\s*:\s*", "", text.strip(), flags=re.I).strip()
    return text[1:-1].strip() if len(text) > 1 and text[0] == text[-1] and text[0] in "\"'" else text


# --- the builder ------------------------------------------------------------------------------------------------


@dataclass
class _Conv:
    toolset: Mapping[str, Any]
    pattern: str
    thinking: bool
    key: str
    messages: list[Message] = field(default_factory=list)
    turns: list[tuple[int, int]] = field(default_factory=list)  # per assistant turn: (user request, calls)
    steps: int = 0  # assistant turns since the last user request
    stage: str = "query"  # query -> assistant -> results -> assistant ... -> followup -> ... -> done
    pending: list[dict[str, Any]] = field(default_factory=list)
    drop: str | None = None

    @property
    def users(self) -> int:
        return sum(m["role"] == "user" for m in self.messages)

    def tokens(self) -> int:
        return sum(count_tokens(f"{m.get('reasoning_content') or ''} {m.get('content') or ''} "
                                f"{json.dumps(m.get('tool_calls') or '')}") for m in self.messages)


def build_simfc(toolsets: Sequence[Mapping[str, Any]], assistant: Teacher, simulator: Teacher | None = None,
                cfg: SimFCCfg | None = None, *, decontam: Any | None = None) -> tuple[list[dict[str, Any]], Accounting]:
    """SFT rows of simulated function-calling conversations over `toolsets` (`{"id", "tools"}`, the tools
    normalised), with the accounting. `simulator` plays the user and the functions (default: `assistant`)."""
    cfg = cfg or SimFCCfg()
    simulator = simulator or assistant
    acc = Accounting.of("toolsets", "conversations")
    keys = [(ts, k, f"{ts['id']}/{k}") for ts in toolsets for k in range(cfg.per_toolset)]
    convs = [_Conv(ts, cfg.patterns[k % len(cfg.patterns)],
                   thinking_mode([], cfg.no_think_fraction, cfg.seed, key), key) for ts, k, key in keys]
    for start in range(0, len(convs), cfg.chunk):
        _run(convs[start:start + cfg.chunk], assistant, simulator, cfg, decontam)
    rows, seen, kept_sets = [], set(), set()
    for c in convs:
        query = " ".join(c.messages[0]["content"].lower().split()) if c.messages else ""
        if c.drop is None and (c.toolset["id"], query) in seen:
            c.drop = "duplicate"
        st = acc["conversations"]
        st.record_in(c.tokens())
        if c.drop is not None:
            st.record_drop(c.drop, c.tokens())
            continue
        seen.add((c.toolset["id"], query))
        st.record_kept(c.tokens())
        kept_sets.add(c.toolset["id"])
        rows.append({"id": f"simfc-{c.key}", "messages": c.messages, "tools": c.toolset["tools"],
                     "pattern": c.pattern, "source": "simfc", "teacher": assistant.name, "simulator": simulator.name})
    for ts in toolsets:
        tokens = count_tokens(_functions(ts["tools"]))
        acc["toolsets"].record_in(tokens)
        if ts["id"] in kept_sets:
            acc["toolsets"].record_kept(tokens)
        else:
            acc["toolsets"].record_drop("no_conversation", tokens)
    acc.check()
    return rows, acc


def _run(convs: list[_Conv], assistant: Teacher, simulator: Teacher, cfg: SimFCCfg, decontam: Any | None) -> None:
    """Build `convs` in rounds until each is done or dropped."""
    # a simulator whose template has no thinking switch is asked plainly (not with a `/no_think` it cannot read)
    sim_thinking = cfg.simulator_thinking or not has_switch(simulator)
    rnd = 0
    while any(c.drop is None and c.stage != "done" for c in convs):
        seed = cfg.seed + 1_000_003 * rnd
        live = [c for c in convs if c.drop is None]
        asking = [c for c in live if c.stage in ("query", "followup")]
        if asking:
            prompts = [query_prompt(c.toolset["tools"], c.pattern) if c.stage == "query"
                       else followup_prompt(c.toolset["tools"], c.messages) for c in asking]
            for c, [resp] in zip(asking, ask(simulator, prompts, 1, thinking=sim_thinking, seed=seed)):
                _user_turn(c, resp, cfg, decontam)
        answering = [c for c in live if c.drop is None and c.stage == "assistant"]
        if answering:
            for thinking in (True, False):  # (a batch is sampled in one mode)
                group = [c for c in answering if c.thinking == thinking]
                if group:
                    got = ask(assistant, [c.messages for c in group], 1, thinking=thinking, seed=seed + 1,
                              functions=[c.toolset["tools"] for c in group])
                    for c, [resp] in zip(group, got):
                        _assistant_turn(c, resp, cfg, decontam)
        calling = [c for c in live if c.drop is None and c.stage == "results"]
        if calling:
            prompts = [result_prompt(c.toolset["tools"], call) for c in calling for call in c.pending]
            got = iter(ask(simulator, prompts, 1, thinking=sim_thinking, seed=seed + 2))
            for c in calling:
                _results(c, [next(got)[0] for _ in c.pending])
        rnd += 1


def has_switch(teacher: Teacher) -> bool:
    """Does a model teacher's chat template read `enable_thinking`? (Other teachers: assumed so.)"""
    from flowlm.model.tokenizer import has_thinking_switch

    tok = getattr(teacher, "tokenizer", None)
    return tok is None or has_thinking_switch(tok)


def _user_turn(c: _Conv, resp: Response, cfg: SimFCCfg, decontam: Any | None) -> None:
    text = clean_query(str(resp.get("content") or ""))
    if resp.get("finish_reason") != "stop" or not text or len(text.split()) > cfg.max_query_words \
            or any(tag in text for tag in ("<tool_call>", "<function_calls>", "<think>", "<|")):
        c.drop = "bad_query"
        return
    if contaminated(text, decontam):
        c.drop = "contaminated"
        return
    if not c.thinking:
        text = f"{text} /no_think"
    c.messages.append({"role": "user", "content": text})
    c.stage, c.steps = "assistant", 0


def _assistant_turn(c: _Conv, resp: Response, cfg: SimFCCfg, decontam: Any | None) -> None:
    row = {"messages": c.messages, "tools": c.toolset["tools"]}  # (tools: a one-step task for `guess`)
    reason = check_response(row, resp, cfg.filters, thinking=c.thinking, decontam=decontam, check_answer=False)
    if reason is not None:
        c.drop = reason
        return
    content = str(resp.get("content") or "")
    fmt = format_in(content)
    calls, problems = fmt.parse(content, c.toolset["tools"])
    if problems:
        c.drop = "malformed_call"
        return
    bad = next((p for call in calls if (p := call_problem(call, c.toolset["tools"]))), None)
    if bad is not None:
        c.drop = bad[0]
        return
    c.steps += 1
    c.turns.append((c.users, len(calls)))
    c.drop = pattern_problem(c.pattern, c.turns, finished=False)
    if c.drop:
        return
    msg: Message = {"role": "assistant", "content": fmt.text_before_calls(content) if calls else content.strip(),
                    "reasoning_content": str(resp.get("reasoning") or "")}
    c.messages.append(msg)
    if calls:
        if c.steps >= cfg.max_steps:
            c.drop = "no_final_answer"
            return
        msg["tool_calls"] = openai_calls(calls)
        c.pending, c.stage = calls, "results"
    elif c.pattern == "multi_turn" and c.users < cfg.user_turns:
        c.stage = "followup"
    else:
        c.drop = pattern_problem(c.pattern, c.turns, finished=True)
        c.stage = "done"


def _results(c: _Conv, responses: list[Response]) -> None:
    answers = []
    for call, resp in zip(c.pending, responses):
        try:
            if resp.get("finish_reason") != "stop":
                raise ValueError(resp.get("error") or "cut off")
            value = parse_result(str(resp.get("content") or ""))
        except ValueError:
            c.drop = "bad_result"
            return
        answers.append({"role": "tool", "name": call["name"], "content": json.dumps(value, ensure_ascii=False),
                        **({"tool_call_id": call["id"]} if call.get("id") else {})})
    c.messages += answers
    c.pending, c.stage = [], "assistant"

