"""How an item becomes prompt tokens: the chat template (thinking on/off, `/think` `/no_think`) or a plain
template for base models, optionally with few-shot examples.

- `chat`: the tokenizer's chat template with the generation prompt. `thinking=False` is Qwen3's hard
  switch (`enable_thinking=False`: an empty, closed think block ends the prompt); `switch` appends the
  soft switch `/think` or `/no_think` to the last user turn (plain text the model learned in SFT). The
  end-of-turn token (`<|im_end|>`) stops generation. Few-shot examples are earlier user/assistant turns.
- `plain`: the suite's template (`Question: {question}\\nAnswer:` by default, the format the built-in
  pretraining data uses), examples first, each followed by its worked demo; the suite's stop strings
  end the answer where a base model would start the next question.
- `tools` (chat only): tools (built-in, or `mcp:SERVER`) listed in the system turn; the harness runs the model's calls
  between turns (`flowlm.tools.engine`) and scores the reply after the last one, so an eval with and
  without tools is the seed's no-tools / tools comparison.

Rendering happens here, not in the engine, so every backend gets the same token ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from flowlm.errors import ConfigError
from flowlm.eval.suites import EvalItem, Suite
from flowlm.model.tokenizer import require_thinking_switch, turn_end_ids


@dataclass(frozen=True, kw_only=True)
class PromptFormat:
    """Prompt construction shared by every suite of one eval."""

    style: Literal["chat", "plain"] = "chat"
    """`chat` (the tokenizer's chat template) or `plain` (the suite's text template, for base models)."""
    thinking: bool = True
    """Chat: render the generation prompt with thinking enabled (Qwen3 `enable_thinking`)."""
    switch: Literal["", "/think", "/no_think"] = ""
    """Chat: soft switch appended to the last user turn."""
    fewshot: int = 0
    """Worked examples before the question (from the suite's few-shot pool, never the item itself)."""
    system: str | None = None
    """Chat: an optional system turn."""
    tools: tuple[str, ...] = ()
    """Chat: tools (built-in names or `mcp:SERVER`; `flowlm.tools.builtin`) listed in the system turn and run
    while the model answers (`flowlm.tools.engine.ToolEngine`); the reply after the last call is what is scored."""
    max_tool_calls: int = 5
    """With `tools`: calls (and tool turns) per sample at most."""
    tool_workers: int = 8
    """With `tools`: threads that run calls while the engine decodes (0: inline, a schedule that depends on
    the seeds alone)."""

    def __post_init__(self) -> None:
        if self.style not in ("chat", "plain"):
            raise ConfigError(f"prompt style must be chat or plain, got {self.style!r}")
        if self.switch not in ("", "/think", "/no_think"):
            raise ConfigError(f"switch must be '', '/think' or '/no_think', got {self.switch!r}")
        if self.fewshot < 0:
            raise ConfigError(f"fewshot must be >= 0, got {self.fewshot}")
        if self.tools:
            from flowlm.tools.builtin import known_tools

            try:
                object.__setattr__(self, "tools", tuple(known_tools(list(self.tools))))
            except ValueError as exc:
                raise ConfigError(f"tools: {exc}") from None
            if self.style == "plain":
                raise ConfigError("tools need the chat format (the template lists them), not plain")
        if self.max_tool_calls < 1:
            raise ConfigError(f"max_tool_calls must be >= 1, got {self.max_tool_calls}")
        if self.tool_workers < 0:
            raise ConfigError(f"tool_workers must be >= 0, got {self.tool_workers}")

    def tool_schemas(self) -> list[dict[str, Any]]:
        """The function schemas of `tools`, as the chat template lists them."""
        from flowlm.tools.builtin import TOOLS

        return [TOOLS[n].schema for n in self.tools]


@dataclass(frozen=True)
class Rendered:
    """Prompt token ids plus what ends the answer."""

    ids: list[int]
    stop: tuple[str, ...]
    stop_token_ids: tuple[int, ...]
    think_open: bool
    """The prompt itself opened a think block (some templates pre-open `<think>`)."""


def examples(suite: Suite, item: EvalItem, k: int) -> list[EvalItem]:
    """The first `k` items of the few-shot pool that have a demo and are not `item`."""
    out = [ex for ex in suite.fewshot_pool if ex.demo and ex.id != item.id and ex.question != item.question]
    return out[:k]


def render(item: EvalItem, suite: Suite, fmt: PromptFormat, tokenizer: Any) -> Rendered:
    """Token ids of `item`'s prompt under `fmt`."""
    if fmt.style == "plain":
        return _plain(item, suite, fmt, tokenizer)
    return _chat(item, suite, fmt, tokenizer)


def _user_text(item: EvalItem, suite: Suite) -> str:
    return f"{item.question}\n\n{suite.instruction}" if suite.instruction else item.question


def chat_messages(item: EvalItem, suite: Suite, fmt: PromptFormat) -> list[dict[str, Any]]:
    """The conversation sent to the chat template."""
    msgs: list[dict[str, Any]] = [{"role": "system", "content": fmt.system}] if fmt.system else []
    for ex in examples(suite, item, fmt.fewshot):
        msgs += [{"role": "user", "content": _user_text(ex, suite)}, {"role": "assistant", "content": ex.demo}]
    if item.messages is not None:
        msgs += [dict(m) for m in item.messages]
    else:
        msgs.append({"role": "user", "content": _user_text(item, suite)})
    if fmt.switch:
        last = max(i for i, m in enumerate(msgs) if m["role"] == "user") if any(m["role"] == "user" for m in msgs) else None
        if last is not None:
            msgs[last] = {**msgs[last], "content": f"{msgs[last].get('content') or ''} {fmt.switch}".strip()}
    return msgs


def _chat(item: EvalItem, suite: Suite, fmt: PromptFormat, tokenizer: Any) -> Rendered:
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')} has no chat template: "
                          "evaluate with the plain prompt format (--format plain)")
    if not fmt.thinking:
        require_thinking_switch(tokenizer, "thinking off (--no-thinking, thinking: false)")
    if item.tools and fmt.tools:
        raise ConfigError(f"suite {suite.name}: its items offer their own functions (checked, not run), so "
                          "built-in tools cannot be offered too (drop --tools for it)")
    extra = {"tools": list(item.tools)} if item.tools else {"tools": fmt.tool_schemas()} if fmt.tools else {}
    text = tokenizer.apply_chat_template(chat_messages(item, suite, fmt), tokenize=False,
                                         add_generation_prompt=True, enable_thinking=fmt.thinking, **extra)
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    tail = text[text.rfind("assistant"):]
    return Rendered(ids, (), turn_end_ids(tokenizer), tail.count("<think>") > tail.count("</think>"))


def _plain(item: EvalItem, suite: Suite, fmt: PromptFormat, tokenizer: Any) -> Rendered:
    if item.tools:
        raise ConfigError(f"suite {suite.name}: its items offer tools, which only the chat format lists "
                          "(drop --format plain)")
    parts = []
    for ex in examples(suite, item, fmt.fewshot):
        head = _fill(suite.plain_template, ex)
        sep = "" if head.endswith(("\n", " ")) else " "
        done = "\n[DONE]" if "[BEGIN]" in suite.plain_template else ""
        parts.append(f"{head}{sep}{(ex.demo or '').strip()}{done}\n\n")
    text = "".join(parts) + _fill(suite.plain_template, item)
    return Rendered(list(tokenizer.encode(text, add_special_tokens=False)), suite.plain_stop, (), False)


def _fill(template: str, item: EvalItem) -> str:
    code = item.row.get("prompt") if isinstance(item.row.get("prompt"), str) else item.question
    return template.replace("{question}", item.question).replace("{code_prompt}", code)
