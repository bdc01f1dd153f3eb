"""Prompt rows and verification for RL: a row's chat prompt and domain, and verdicts that never raise.

Shared by the rollout source (`flowlm.rl.source`), the async actor (`flowlm.rl.actor`) and `flowlm rl
filter` (`flowlm.rl.cli`). A row holds `messages` (or a `prompt` string) and the verifier routing of
`flowlm.verify.rows`, and may hold `tools`: function schemas (OpenAI's format) the chat template lists in
the system turn for that row, whose calls are checked by a verifier (`tool_call`), never run. A verifier
that raises or times out gives a score-0 verdict that `is_verifier_error` recognises, so it can be counted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from flowlm.errors import FlowError


def is_verifier_error(verdict: Any) -> bool:
    """Whether a verdict reports a failed verification (raised, timed out, crashed, bad ground truth)
    rather than a judgement of the completion; such verdicts score 0 and are counted."""
    reasons = [verdict.reason] + [p.get("reason", "") for p in verdict.meta.get("parts", [])]
    return any(r.startswith(("error:", "timeout:", "not run")) or _FAILED.match(r) for r in reasons)


_FAILED = re.compile(r"verifier (\S+ )?(failed|crashed)")


def row_domain(row: dict[str, Any]) -> str:
    """A row's domain: its verifier name (names joined with '+' when it has several)."""
    from flowlm.verify.rows import pairs_of

    return "+".join(sorted({p.name for p in pairs_of(row)}))


def prompt_of(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat prompt of a row whose verifier routing is valid; `ValueError` (one line) otherwise."""
    from flowlm.post.teachers import prompt_messages
    from flowlm.verify.base import UnknownVerifierError
    from flowlm.verify.rows import validate_row

    try:
        msgs = prompt_messages(row)
        validate_row(row)
        row_tools(row)
    except (ValueError, UnknownVerifierError) as exc:
        raise ValueError(exc.args[0] if exc.args else str(exc)) from None
    return [{"role": m["role"], "content": m.get("content") or ""} for m in msgs]


def row_tools(row: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A row's own function schemas (`tools`: a list of objects, each `{type: function, function: {name, ...}}`
    or the bare function), or None; `ValueError` (one line) for anything else."""
    tools = row.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list) or not tools or not all(isinstance(t, dict) for t in tools):
        raise ValueError("`tools` must be a non-empty list of function schemas (objects)")
    if not all(isinstance((t.get("function") or t).get("name"), str) for t in tools):
        raise ValueError("every entry of `tools` needs a function `name`")
    return [t if "function" in t else {"type": "function", "function": t} for t in tools]


def prompt_functions(row: dict[str, Any], offered: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """The functions a row's prompt lists: its own `tools` (checked by its verifier, never run), or the
    offered built-in tools (`rollout.tools`, which run); a row with its own under built-in tools is a
    ConfigError naming it."""
    from flowlm.errors import ConfigError

    own = row_tools(row)
    if own and offered:
        raise ConfigError(f"rl prompts: row {row.get('id', '?')} offers its own functions (`tools`: checked, not "
                          "run) and rollout.tools offers built-in tools that run: use one or the other")
    return own or offered


def check_prompt_rows(rows: Sequence[dict[str, Any]], where: str = "prompts") -> list[list[dict[str, Any]]]:
    """The chat prompt of every row, after checking its verifier routing (FlowError naming the row)."""
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(prompt_of(row))
        except ValueError as exc:
            raise FlowError(f"{where}: row {i} ({row.get('id', 'no id')}): {exc}") from None
    return out


def verify_completions(rows: list[dict[str, Any]], texts: list[str], *, pool: Any = None) -> list[Any]:
    """One verdict per (row, completion text): in a `VerifyPool` (hard timeouts) when given, else in this
    process. Nothing raised by a verifier gets out: it becomes a score-0 verdict (`is_verifier_error`)."""
    from flowlm.verify import Verdict, verify_row, verify_rows

    if pool is not None:
        return verify_rows(rows, texts, pool=pool)
    out = []
    for row, text in zip(rows, texts):
        try:
            out.append(verify_row(row, text))
        except Exception as exc:  # noqa: BLE001 - a verifier must never stop the run
            out.append(Verdict(0.0, f"verifier failed: {type(exc).__name__}: {str(exc)[:200]}"))
    return out


def plain_row(row: dict[str, Any]) -> dict[str, Any]:
    """A chat prompt row as a base-model prompt: the last user turn in the plain QA template (the built-in
    eval suite's `--format plain`), as a `prompt` string, routing kept. A row already holding a `prompt`
    string is kept as it is."""
    from flowlm.eval.suites import PLAIN_QA

    if isinstance(row.get("prompt"), str):
        return row
    users = [m.get("content") for m in row.get("messages") or () if isinstance(m, dict) and m.get("role") == "user"]
    if not users or not isinstance(users[-1], str):
        raise FlowError(f"rl prompts: row {row.get('id', '?')} has no user turn to render plain")
    out = {k: v for k, v in row.items() if k != "messages"}
    return {**out, "prompt": PLAIN_QA.replace("{question}", users[-1])}
