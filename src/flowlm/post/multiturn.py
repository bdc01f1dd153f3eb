"""Multi-turn prompts for preference data (OLMo 3 Instruct DPO, seed section 5.3.1): self-talk and synthetic context.

    rows, acc = build_multiturn(prompt_rows, assistant, simulator, MultiTurnCfg(method="self_talk", turns=3))

OLMo 3 made multi-turn preference data from single-turn prompts in two ways, then built each preference on
the last turn only (`flowlm.post.delta` does: the prompt is every message before the answer):

- `self_talk`: the conversation goes on. The assistant answers the prompt, a simulator playing the user writes
  a follow-up (`followup_prompt`), and so on until the conversation has `turns` user turns. The last one is the
  follow-up, which the original row's ground truth does not answer, so the row's verifier routing is dropped:
  such rows make delta pairs filtered without an answer check, or judge pairs.
- `synthetic_context`: a conversation comes before the prompt. The simulator writes `turns - 1` earlier
  exchanges on a related subject as JSON (`context_prompt`), and the prompt follows them unchanged, so the
  row keeps its verifier routing (and a built-in row its worked solution, for the procedural teachers).

Each row is a prompt row whose `messages` end with a user turn, plus `source` (the method) and `origin`
(the row it grew from). Drops, counted in step `prompts`: `bad_prompt` (no chat prompt), `assistant_error` (an
answer cut off, empty or with chat markup), `bad_followup` / `bad_context` (a simulated turn that is empty,
too long, with markup, or context that is not alternating user / assistant JSON), `contaminated`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import Field

from flowlm.config import Strict
from flowlm.post.coldstart import META_KEYS, Accounting, chunks, prompt_tokens, row_id
from flowlm.post.filters import contaminated, format_problem
from flowlm.post.simfc import clean_query, has_switch, parse_result, transcript
from flowlm.post.teachers import Message, Teacher, ask, prompt_messages

_MARKUP = ("<think>", "</think>", "<|", "<tool_call>", "<function_calls>")


class MultiTurnCfg(Strict):
    """How single-turn prompts grow into multi-turn ones."""

    method: Literal["self_talk", "synthetic_context"] = "self_talk"
    """`self_talk`: follow-ups after the prompt; `synthetic_context`: earlier exchanges before it."""
    turns: int = Field(2, ge=2)
    """User turns in each resulting prompt."""
    thinking: bool = False
    """Self-talk: the assistant's mode (Instruct data: off)."""
    max_words: int = Field(300, ge=1)
    """A simulated user turn longer than this is dropped."""
    seed: int = 0
    """Seed of the models' sampling."""
    chunk: int = Field(256, ge=1)
    """Prompts grown together."""


def followup_prompt(messages: list[Message]) -> list[Message]:
    """The simulator's prompt for the user's next turn."""
    return [{"role": "user", "content": (
        f"Here is a conversation between a user and an AI assistant:\n\n{transcript(messages)}\n\nWrite the user's "
        "next message: a natural follow-up, such as a related question, a clarification, or a request to change or "
        "extend the answer. Reply with the user's message only.")}]


def context_prompt(text: str, exchanges: int) -> list[Message]:
    """The simulator's prompt for the `exchanges` user / assistant exchanges that come before `text`."""
    return [{"role": "user", "content": (
        f"Here is a message a user sends to an AI assistant:\n\n{text}\n\nWrite the conversation that came before "
        f"it: {exchanges} earlier exchange(s) between the same user and the assistant, on a related subject, that the "
        'message could follow. Reply with JSON only: a list of objects with "role" ("user" or "assistant") and '
        '"content", starting with the user and ending with the assistant.')}]


def parse_context(text: str, exchanges: int, max_words: int) -> list[Message] | None:
    """The earlier exchanges a simulator wrote, or None when they are not `exchanges` user / assistant pairs
    of non-empty text without chat markup (user turns at most `max_words` words)."""
    try:
        value = parse_result(text)
    except ValueError:
        return None
    if not isinstance(value, list) or len(value) != 2 * exchanges:
        return None
    out = []
    for k, m in enumerate(value):
        role = ("user", "assistant")[k % 2]
        content = m.get("content") if isinstance(m, dict) and m.get("role") == role else None
        if not isinstance(content, str) or not content.strip() or any(t in content for t in _MARKUP) \
                or (role == "user" and len(content.split()) > max_words):
            return None
        out.append({"role": role, "content": content.strip()})
    return out


def build_multiturn(rows: Iterable[Mapping[str, Any]], assistant: Teacher | None, simulator: Teacher,
                    cfg: MultiTurnCfg | None = None, *,
                    decontam: Any | None = None) -> tuple[list[dict[str, Any]], Accounting]:
    """Multi-turn prompt rows grown from `rows` by `cfg.method`; `assistant` answers the turns of self-talk
    (synthetic context needs none), `simulator` plays the user."""
    cfg = cfg or MultiTurnCfg()
    if cfg.method == "self_talk" and assistant is None:
        raise ValueError("self_talk needs an assistant to answer the turns")
    acc = Accounting.of("prompts")
    out: list[dict[str, Any]] = []
    rows = list(rows)
    for start, part in chunks(rows, cfg.chunk):
        live: list[tuple[int, Mapping[str, Any], list[Message]]] = []
        for i, row in enumerate(part, start):
            try:
                msgs = prompt_messages(row)
            except ValueError:
                acc["prompts"].record_in(0)
                acc["prompts"].record_drop("bad_prompt", 0)
                continue
            acc["prompts"].record_in(prompt_tokens(msgs))
            live.append((i, row, msgs))
        grow = _self_talk if cfg.method == "self_talk" else _synthetic_context
        for (i, row, msgs), (grown, reason) in zip(live, grow(live, assistant, simulator, cfg)):
            if reason is None and any(contaminated(m["content"], decontam) for m in grown if m["role"] == "user"):
                reason = "contaminated"
            if reason is not None:
                acc["prompts"].record_drop(reason, prompt_tokens(msgs))
                continue
            acc["prompts"].record_kept(prompt_tokens(msgs))
            kept = {"id": f"{row_id(row, i)}#{cfg.method}", "messages": grown, "source": cfg.method,
                    "origin": row_id(row, i)}
            if cfg.method == "synthetic_context":  # the last turn is the row's own: its answer still holds
                kept.update({k: row[k] for k in (*META_KEYS, "answer", "solution") if k in row})
            out.append(kept)
    acc.check()
    return out, acc


def _sim_thinking(simulator: Teacher) -> bool:
    return not has_switch(simulator)  # (a simulator that can switch thinking off writes its turns without it)


def _self_talk(live: list[tuple[int, Mapping[str, Any], list[Message]]], assistant: Teacher, simulator: Teacher,
               cfg: MultiTurnCfg) -> list[tuple[list[Message], str | None]]:
    convs: list[list[Message]] = [list(msgs) for _, _, msgs in live]
    reasons: list[str | None] = [None] * len(convs)
    for turn in range(cfg.turns - 1):
        seed = cfg.seed + 1_000_003 * turn
        todo = [j for j, r in enumerate(reasons) if r is None]
        got = ask(assistant, [convs[j] for j in todo], 1, thinking=cfg.thinking, seed=seed) if todo else []
        for j, [resp] in zip(todo, got):
            if format_problem(resp) or any(t in str(resp.get("content")) for t in _MARKUP):
                reasons[j] = "assistant_error"
            else:
                convs[j].append({"role": "assistant", "content": str(resp["content"]).strip()})
        todo = [j for j, r in enumerate(reasons) if r is None]
        got = ask(simulator, [followup_prompt(convs[j]) for j in todo], 1, thinking=_sim_thinking(simulator),
                  seed=seed + 1) if todo else []
        for j, [resp] in zip(todo, got):
            text = clean_query(str(resp.get("content") or ""))
            if resp.get("finish_reason") != "stop" or not text or len(text.split()) > cfg.max_words \
                    or any(t in text for t in _MARKUP):
                reasons[j] = "bad_followup"
            else:
                convs[j].append({"role": "user", "content": text})
    return list(zip(convs, reasons))


def _synthetic_context(live: list[tuple[int, Mapping[str, Any], list[Message]]], assistant: Teacher | None,
                       simulator: Teacher, cfg: MultiTurnCfg) -> list[tuple[list[Message], str | None]]:
    prompts = [context_prompt(str(msgs[-1].get("content") or ""), cfg.turns - 1) for _, _, msgs in live]
    got = ask(simulator, prompts, 1, thinking=_sim_thinking(simulator), seed=cfg.seed) if prompts else []
    out: list[tuple[list[Message], str | None]] = []
    for (_, _, msgs), [resp] in zip(live, got):
        before = parse_context(str(resp.get("content") or ""), cfg.turns - 1, cfg.max_words) \
            if resp.get("finish_reason") == "stop" else None
        if before is None:
            out.append((msgs, "bad_context"))
            continue
        system = [m for m in msgs if m.get("role") == "system"]  # a system turn stays first
        out.append((system + before + [m for m in msgs if m.get("role") != "system"], None))
    return out

