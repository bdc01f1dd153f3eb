"""Generation with tool calls executed in the loop: the model calls, the tool answers, the model goes on.

`run_with_tools(engine, conversations, tools, params)` (one `SamplingParams` per conversation) drives many conversations through one rollout
engine at once, with continuous batching across them. Each conversation is rendered with the chat
template, its tools listed in the system turn, and generated until the reply ends its turn. A reply that
holds `<tool_call>` blocks in its answer part (after `</think>`; parsed by
`flowlm.verify.tool_call.parse_tool_calls`) gets two things appended:
- the assistant message with its `tool_calls` (and `reasoning_content`);
- one `tool` message per call, the tool's answer (`flowlm.tools.builtin`; a call to a tool not offered,
  or a malformed call, is answered with `error: ...`).

The conversation is then submitted again. It ends when a reply makes no call, when `max_calls` calls
have been made or `max_calls` tool turns taken (the last reply is kept as the answer), when a reply is cut by `max_new_tokens`, or
when the conversation no longer fits the model's context (`error`). Each turn is a fresh request, so
the prefix is prefilled again; the tokens are those of the template, the same ones SFT on the
trajectory would train on.

A conversation's result: `messages` (what came after the input: assistant turns with their calls, and
tool answers), `answer` (the text of the last reply's answer part), `tool_calls` (how many were run),
`turns`, `finish_reason` (`stop`, `length` or `max_calls`), `tokens` (generated over all turns) and
`error` (None, or why it stopped early).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from flowlm.post.teachers import split_reasoning
from flowlm.tools.builtin import Tool
from flowlm.verify.tool_call import CALL, parse_tool_calls


@dataclass
class Conversation:
    messages: list[dict[str, Any]]
    added: list[dict[str, Any]] = field(default_factory=list)
    calls: int = 0
    turns: int = 0
    tokens: int = 0
    answer: str = ""
    finish_reason: str = ""
    error: str | None = None

    def result(self) -> dict[str, Any]:
        return {"messages": self.added, "answer": self.answer, "tool_calls": self.calls, "turns": self.turns,
                "finish_reason": self.finish_reason, "tokens": self.tokens, "error": self.error}


def tool_answers(calls: list[dict[str, Any]], problems: list[str], tools: dict[str, Tool]) -> list[tuple[str, str]]:
    """(tool name, its answer) per call, then one `error:` answer per malformed call."""
    out = []
    for call in calls:
        tool = tools.get(call["name"])
        out.append((call["name"], tool.run(call["arguments"]) if tool else
                    f"error: no tool named {call['name']!r} (tools: {', '.join(tools)})"))
    return out + [("error", f"error: {p}") for p in problems]


def run_with_tools(engine: Any, conversations: list[list[dict[str, Any]]], tools: dict[str, Tool],
                   params: list[Any], *, max_calls: int = 5, enable_thinking: bool = True) -> list[dict[str, Any]]:
    """Run every conversation to its end (see the module docstring); results in input order."""
    from flowlm.model.tokenizer import render_ids, turn_end_ids

    tok = engine.tokenizer
    schemas = [t.schema for t in tools.values()]
    params = [replace(p, n=1, stop_token_ids=tuple(dict.fromkeys((*p.stop_token_ids, *turn_end_ids(tok)))))
              for p in params]
    ends = {tok.convert_ids_to_tokens(t) for t in turn_end_ids(tok)} | {tok.eos_token or ""}
    convs = [Conversation(list(m)) for m in conversations]

    def submit(i: int) -> bool:
        ids = render_ids(tok, convs[i].messages, add_generation_prompt=True, enable_thinking=enable_thinking,
                         tools=schemas)
        ids, problem = engine.prepare(ids, params[i])
        if problem:
            convs[i].error, convs[i].finish_reason = problem, "length" if "context" in problem else "error"
            return False
        engine.submit(ids, params[i], tag=i)
        return True

    for i in range(len(convs)):
        submit(i)
    while engine.has_unfinished():
        for res in engine.step():
            conv = convs[res.tag]
            conv.turns += 1
            if res.error is not None:
                conv.error, conv.finish_reason = res.error, "error"
                continue
            comp = res.completions[0]
            conv.tokens += len(comp.tokens)
            raw = tok.decode(comp.tokens, skip_special_tokens=False)
            for end in ends:
                if end and raw.endswith(end):
                    raw = raw[: -len(end)]
            reply = split_reasoning(raw, comp.finish_reason)
            reasoning, answer = reply["reasoning"], reply["content"]
            calls, problems = parse_tool_calls(answer)
            said = CALL.split(answer)[0].strip() if (calls or problems) else answer
            # at most `max_calls` calls, and as many tool turns (malformed calls run nothing but take a turn)
            if (calls or problems) and comp.finish_reason == "stop" and conv.calls < max_calls \
                    and conv.turns <= max_calls:
                conv.calls += len(calls)
                msg = {"role": "assistant", "content": said, "reasoning_content": reasoning,
                       "tool_calls": [{"type": "function", "function": c} for c in calls]}
                replies = [{"role": "tool", "name": name, "content": text}
                           for name, text in tool_answers(calls, problems, tools)]
                conv.messages += [msg, *replies]
                conv.added += [msg, *replies]
                if not submit(res.tag):
                    continue
            else:
                conv.answer = answer
                conv.finish_reason = "max_calls" if (calls or problems) and comp.finish_reason == "stop" \
                    else comp.finish_reason
                msg = {"role": "assistant", "content": answer, "reasoning_content": reasoning}
                conv.messages.append(msg)
                conv.added.append(msg)
    return [c.result() for c in convs]
