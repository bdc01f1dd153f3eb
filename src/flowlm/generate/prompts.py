"""Prompt normalisation shared by every backend: text, chat messages or token ids -> checked token ids.

`messages_problem` / `prompt_problem` are the up-front checks of a prompt read from a file (`flowlm
generate`, the `jsonl` eval suite): they return a one-line reason naming the key (`messages[2].content`)
so callers can raise it with their FILE:LINE, before anything is rendered or generated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flowlm.generate.params import SamplingParams

Prompt = Sequence[int] | str | Sequence[dict[str, Any]]
CHAT_ROLES = ("system", "user", "assistant", "tool")
"""The roles flowlm's chat template renders (`flowlm/model/templates/chat.jinja`); any other raises there."""


def messages_problem(messages: Any) -> str | None:
    """Why `messages` is not a conversation the chat template renders as written (one line naming the
    offending key), or None. Content must be a string, except an assistant turn carrying `tool_calls`,
    whose content may be null or absent (the template renders the calls alone)."""
    if not isinstance(messages, list) or not messages:
        return f"messages must be a non-empty list of {{role, content}} objects, got {_describe(messages)}"
    for i, m in enumerate(messages):
        problem = _message_problem(m)
        if problem:
            return f"messages[{i}]{problem}"
    return None


def _message_problem(m: Any) -> str | None:
    """The problem of one message, as a suffix of `messages[i]` (` must be ...` or `.key must be ...`)."""
    if not isinstance(m, dict) or "role" not in m:
        return " must be an object with role and content"
    role, content, calls = m["role"], m.get("content"), m.get("tool_calls")
    if role not in CHAT_ROLES:
        return f".role must be one of {', '.join(CHAT_ROLES)}, got {role!r}"
    if calls is not None and (role != "assistant" or not isinstance(calls, list)
                              or not all(isinstance(c, dict) for c in calls)):
        return ".tool_calls must be a list of objects, on an assistant turn"
    if not isinstance(content, str) and not (role == "assistant" and calls and content is None):
        also = " (or null with tool_calls)" if role == "assistant" else ""
        return f".content must be a string{also}, got {_describe(content) if 'content' in m else 'none'}"
    if m.get("reasoning_content") is not None and not isinstance(m["reasoning_content"], str):
        return f".reasoning_content must be a string, got {_describe(m['reasoning_content'])}"
    return None


def prompt_problem(key: str, value: Any) -> str | None:
    """Why the prompt `value` under `key` (`prompt`: text, `messages`: chat, `prompt_ids`: token ids)
    cannot be generated from (one line), or None. Vocabulary and context limits need the model: see
    `check_prompt`."""
    if key == "messages":
        return messages_problem(value)
    if key == "prompt":
        ok = isinstance(value, str) and value
        return None if ok else f"prompt must be a non-empty string, got {_describe(value)}"
    if not isinstance(value, list) or not value:
        return f"prompt_ids must be a non-empty list of token ids, got {_describe(value)}"
    bad = next((i for i, t in enumerate(value) if not (isinstance(t, int) and not isinstance(t, bool) and t >= 0)),
               None)
    return None if bad is None else f"prompt_ids[{bad}] must be a token id (an integer >= 0), got {value[bad]!r}"


def _describe(value: Any) -> str:
    """`an empty string`, `an empty list`, `null` or the JSON-ish type name, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, (str, list)) and not value:
        return f"an empty {'string' if isinstance(value, str) else 'list'}"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


def to_prompt_ids(prompt: Prompt, tokenizer: Any, enable_thinking: bool = True,
                  tools: list[dict[str, Any]] | None = None) -> list[int]:
    """Token ids of a prompt: a string is encoded without special tokens, a list of message dicts is
    rendered with the tokenizer's chat template plus the assistant generation prompt (and `tools`, function
    schemas the template lists in the system turn, when given), and a list of ints is taken as is. Raises
    `ValueError` with a one-line reason otherwise."""
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ValueError("a text prompt needs a tokenizer")
        return list(tokenizer.encode(prompt, add_special_tokens=False))
    prompt = list(prompt)
    if prompt and all(isinstance(m, dict) for m in prompt):
        if tokenizer is None:
            raise ValueError("chat messages need a tokenizer")
        from flowlm.model.tokenizer import render_ids

        extra = {"tools": tools} if tools else {}
        return render_ids(tokenizer, prompt, add_generation_prompt=True, enable_thinking=enable_thinking, **extra)
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        raise ValueError("prompt must be a string, chat messages or a list of token ids")
    return prompt


def is_chat(prompt: Any) -> bool:
    """Whether `prompt` is chat messages (rendered with the chat template), not text or token ids."""
    return isinstance(prompt, (list, tuple)) and bool(prompt) and all(isinstance(m, dict) for m in prompt)


def ends_its_turn(prompt: Prompt, params: SamplingParams, tokenizer: Any) -> SamplingParams:
    """`params` for `prompt`: a chat prompt's reply ends its turn, so the template's end-of-turn token
    (`<|im_end|>`) joins the stop ids, as a chat model's HF `generation_config` has it among its EOS ids
    (a model's EOS ends a document, not a turn). Text and token-id prompts, and `ignore_eos`, are left alone."""
    if params.ignore_eos or tokenizer is None or not is_chat(prompt):
        return params
    from dataclasses import replace

    from flowlm.model.tokenizer import turn_end_ids

    extra = [t for t in turn_end_ids(tokenizer) if t not in params.stop_token_ids]
    return replace(params, stop_token_ids=(*params.stop_token_ids, *extra)) if extra else params


def check_prompt(ids: list[int], params: SamplingParams, *, context: int, vocab_size: int,
                 max_n: int) -> str | None:
    """Why this prompt cannot be generated from (one line), or None."""
    if not ids:
        return "empty prompt"
    if len(ids) >= context:
        return f"prompt has {len(ids)} tokens; the context is {context} (no room to generate)"
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        return f"token id {bad} outside the vocabulary [0, {vocab_size})"
    bad = next((t for t in params.stop_token_ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        return f"stop token id {bad} outside the vocabulary [0, {vocab_size})"
    if params.n > max_n:
        return f"n={params.n} exceeds the engine's max_slots={max_n}"
    return None
