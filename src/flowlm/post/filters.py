"""Qwen3 cold-start filters: queries too easy or unverifiable, and the six response defects.

Qwen3's cold start (Qwen3 technical report §4.1, seed summary in shared/seeds) filters both sides:

- **queries**: drop those a model answers right *without* reasoning (sampled `k` times in non-thinking
  mode; pass rate >= `max_pass_rate` is too easy: `too_easy`) and those that cannot be verified
  (no verifier tags: `unverifiable`; or, with `hard_to_verify`, those the same model says hold several
  sub-questions or ask for general writing: `hard_to_verify`); drop prompts too close to evaluation data
  (`contaminated`);
- **responses**, in the report's order, first reason wins: (1) wrong final answer (`wrong_answer`,
  via `flowlm.verify`), (2) heavy repetition (`repetition`), (3) an answer guessed without enough
  reasoning (`guess`), (4) think trace and final summary disagree (`think_summary_mismatch`),
  (5) language mixing or style jumps (`language_mix`), (6) too similar to evaluation data
  (`contaminated`). Format checks run first: `teacher_error` (nothing generated), `truncated`
  (cut by the token budget) and `empty_answer` (no answer, e.g. a think block never closed).

Each check is a small function returning a drop reason (a stable key, used by the accounting) or None;
`check_response` runs them in order. Word counts are whitespace words (`flowlm.data.accounting`).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from flowlm.config import Strict
from flowlm.post.teachers import Message, ask, completion_text, user_text
from flowlm.verify import math_extract

_WORD = re.compile(r"\S+")
RESPONSE_REASONS = ("teacher_error", "truncated", "empty_answer", "wrong_answer", "repetition", "guess",
                    "think_summary_mismatch", "language_mix", "contaminated")


class ResponseFilterCfg(Strict):
    """Thresholds of the response filters; a threshold set to None turns its filter off."""

    min_score: float | None = 1.0
    """Verifier score a response needs to count as right (binary verifiers: 1). None: no answer check."""
    repetition_ngram: int = 8
    """Word n-gram length of the repetition ratio. Long enough that templated working steps ("sorted so
    far: ...") do not count, while a loop of any shorter period still repeats every n-gram."""
    max_repetition: float | None = 0.5
    """Drop when more than this share of the word n-grams repeat an earlier one (built-in worked
    solutions: median 0, max 0.17 at n=8; a looping trace approaches 1)."""
    min_reasoning_words: int | None = 20
    """Thinking mode, multi-step tasks: a think trace shorter than this is a guess (built-in worked
    solutions have 25+ words)."""
    check_answer_first: bool = True
    """Thinking mode: a think trace whose first line already states a final answer (boxed, `####`,
    "final answer is") and then goes on is an answer given before the reasoning: a guess."""
    check_consistency: bool = True
    """Thinking mode: the final answer the think trace reaches must equal the one in the summary."""
    max_foreign_script: float | None = 0.05
    """Drop when more than this share of the letters is outside the prompt's main script (see `language_mix`)."""


class QueryFilterCfg(Strict):
    """Qwen3 query filter: too easy without reasoning, or not verifiable."""

    k: int = 4
    """Non-thinking samples per prompt for the pass rate; 0 turns the too-easy filter off."""
    max_pass_rate: float = 0.75
    """A prompt answered right in at least this share of the k non-thinking samples is too easy."""
    require_verifier: bool = True
    """Drop prompts without verifier tags (Qwen3 drops queries that are hard to verify)."""
    hard_to_verify: bool = False
    """Ask the query teacher (a model) whether each prompt holds several sub-questions or asks for general
    writing, and drop those it says yes to (`hard_to_verify`; Qwen3 had Qwen2.5-72B-Instruct judge this).
    Rules cannot tell: MATH's enumerated conditions ("(i) ... (ii) ...") look like sub-questions."""


# --- the response checks ----------------------------------------------------------------------------


MARKUP = ("<think>", "</think>", "<|im_start|>", "<|im_end|>")


def markup_problem(response: Mapping[str, Any]) -> str | None:
    """`malformed_markup` when think or chat tags are left inside the reasoning or the answer (a model that
    opened `<think>` several times): such a response cannot be written as a chat row and read back as the
    same turn, so it cannot become training data as it stands."""
    text = str(response.get("reasoning") or "") + str(response.get("content") or "")
    return "malformed_markup" if any(tag in text for tag in MARKUP) else None


def format_problem(response: Mapping[str, Any]) -> str | None:
    """`teacher_error`, `truncated`, `malformed_markup` or `empty_answer` for a response that is not a
    finished answer."""
    if response.get("finish_reason") == "error" or response.get("error"):
        return "teacher_error"
    if markup_problem(response):
        return "malformed_markup"
    if response.get("finish_reason") == "length":
        return "truncated"
    if not str(response.get("content") or "").strip():
        return "empty_answer"
    return None


def wrong_answer(row: Mapping[str, Any], response: Mapping[str, Any], *, min_score: float = 1.0) -> str | None:
    """`wrong_answer` when the row's verifiers score the response below `min_score`; None for rows without
    verifier tags (nothing to check against)."""
    from flowlm.verify import verify_row

    if not has_verifier(row):
        return None
    cols = dict(row)
    if not isinstance(cols.get("prompt"), str):  # verifiers (judge, reward model) read the prompt text
        cols["prompt"] = _prompt_text(row)
    return "wrong_answer" if verify_row(cols, completion_text(response)).score < min_score else None


def has_verifier(row: Mapping[str, Any]) -> bool:
    """Does the row route to a verifier (`dataset`/`verifier` tag or a `verifiers` list)?"""
    return any(row.get(k) for k in ("dataset", "verifier", "verifiers"))


def _prompt_text(row: Mapping[str, Any], *, whole: bool = False) -> str:
    """The last user turn (switches removed), or with `whole` every message of the prompt."""
    from flowlm.post.teachers import prompt_messages

    try:
        msgs = prompt_messages(row)
    except ValueError:
        return ""
    if whole:
        return "\n".join(str(m.get("content") or "") for m in msgs)
    return user_text(msgs)


def repetition_ratio(text: str, n: int) -> float:
    """Share of the word n-grams of `text` (lowercased) that repeat an earlier n-gram; 0 when too short."""
    words = _WORD.findall(text.lower())
    if len(words) < 2 * n:
        return 0.0
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams)


def repetition(response: Mapping[str, Any], *, n: int = 8, max_ratio: float = 0.5) -> str | None:
    """`repetition` when the think trace or the answer repeats itself (see `repetition_ratio`)."""
    worst = max(repetition_ratio(str(response.get(k) or ""), n) for k in ("reasoning", "content"))
    return "repetition" if worst > max_ratio else None


def guess(response: Mapping[str, Any], *, min_words: int | None = 20, answer_first: bool = True,
          multi_step: bool = True) -> str | None:
    """`guess` for a thinking-mode response to a multi-step task whose think trace is shorter than
    `min_words`, or (`answer_first`) states a final answer on its first line and only then reasons."""
    if not multi_step:
        return None
    reasoning = str(response.get("reasoning") or "").strip()
    if min_words is not None and len(_WORD.findall(reasoning)) < min_words:
        return "guess"
    lines = [ln for ln in reasoning.splitlines() if ln.strip()]
    if answer_first and len(lines) > 1 and math_extract.extract(lines[0], "standard")[0] is not None:
        return "guess"
    return None


def think_summary_mismatch(response: Mapping[str, Any]) -> str | None:
    """`think_summary_mismatch` when the final answers extracted from the think trace and from the content
    (`math_extract`, standard strictness: boxed, "final answer is", `####`) both exist and differ.

    Compared as normalised strings (MATH canonicalisation), then with the math equivalence; a trace that
    states no extractable answer cannot disagree."""
    think, _ = math_extract.extract(str(response.get("reasoning") or ""), "standard")
    final, _ = math_extract.extract(str(response.get("content") or ""), "standard")
    if think is None or final is None:
        return None
    return None if same_answer(final, think) else "think_summary_mismatch"


def same_answer(a: str, b: str) -> bool:
    """Math equivalence, except that comma-separated answers are compared in order, element by element
    (the math equivalence compares them as sets, which would hide a reordered list)."""
    from flowlm.verify.math_equiv import equivalent

    if "," in a or "," in b:
        xs, ys = ([p.strip() for p in s.strip().strip("[]()").split(",")] for s in (a, b))
        return len(xs) == len(ys) and all(equivalent(x, y, timeout=2.0).equal for x, y in zip(xs, ys))
    return equivalent(a, b, timeout=2.0).equal


@functools.lru_cache(maxsize=65536)
def script_of(ch: str) -> str | None:
    """The script of a letter (first word of its Unicode name: LATIN, CJK, CYRILLIC, ...); None for
    non-letters and for Greek, which math writes inside any language (π, θ, Σ)."""
    if not ch.isalpha():
        return None
    name = unicodedata.name(ch, "")
    script = name.split(" ", 1)[0] if name else "OTHER"
    return None if script in ("GREEK", "MATHEMATICAL") else script


_MATH_LETTERS = re.compile(r"\\[A-Za-z]+|(?<![A-Za-z])[A-Za-z](?![A-Za-z])")


def script_counts(text: str) -> Counter[str]:
    """Letters per script, LaTeX commands (`\\boxed`) and one-letter variables (`x`) left out: they are
    math notation inside any language."""
    return Counter(s for s in map(script_of, _MATH_LETTERS.sub("", text)) if s is not None)


def language_mix(response: Mapping[str, Any], *, prompt: str = "", max_share: float = 0.05) -> str | None:
    """`language_mix` when the response mixes scripts or jumps style between trace and answer.

    Kept deliberately simple (letters' Unicode scripts, no language model): the main script is the
    prompt's most common one (else the response's); drop when more than `max_share` of the response's
    letters are in other scripts, or when the think trace and the answer are each mostly (> 50%) in a
    different script (thinks in Chinese, answers in English). Languages sharing a script are not told apart.
    """
    reasoning, content = str(response.get("reasoning") or ""), str(response.get("content") or "")
    total = script_counts(reasoning) + script_counts(content)
    if not total:
        return None
    main = (script_counts(prompt) or total).most_common(1)[0][0]
    if 1.0 - total[main] / sum(total.values()) > max_share:
        return "language_mix"
    tops = [c.most_common(1)[0] for c in (script_counts(reasoning), script_counts(content)) if c]
    if len(tops) == 2 and tops[0][0] != tops[1][0]:
        return "language_mix"
    return None


def contaminated(text: str, decontam: Any | None) -> str | None:
    """`contaminated` when the `flowlm.data.decontam.Decontaminator` finds a benchmark item in `text`."""
    if decontam is None or not text.strip():
        return None
    return "contaminated" if decontam.scan({"text": text}) else None


def check_response(row: Mapping[str, Any], response: Mapping[str, Any], cfg: ResponseFilterCfg, *,
                   thinking: bool, decontam: Any | None = None, check_answer: bool = True) -> str | None:
    """The first Qwen3 response filter `response` fails (order of `RESPONSE_REASONS`), or None.

    The reasoning filters (guess, mismatch) apply in thinking mode only: a non-thinking answer has an
    empty trace by design. A row may set `multi_step: false` to exempt a one-step task from `guess`; a row
    with its own functions (a function-calling task: the call is the answer) is one-step unless it says so."""
    reason = format_problem(response)
    if reason is None and check_answer and cfg.min_score is not None:
        reason = wrong_answer(row, response, min_score=cfg.min_score)
    if reason is None and cfg.max_repetition is not None:
        reason = repetition(response, n=cfg.repetition_ngram, max_ratio=cfg.max_repetition)
    if reason is None and thinking:
        reason = guess(response, min_words=cfg.min_reasoning_words, answer_first=cfg.check_answer_first,
                       multi_step=bool(row.get("multi_step", row.get("tools") is None)))
    if reason is None and thinking and cfg.check_consistency:
        reason = think_summary_mismatch(response)
    if reason is None and cfg.max_foreign_script is not None:
        reason = language_mix(response, prompt=_prompt_text(row), max_share=cfg.max_foreign_script)
    if reason is None:
        reason = contaminated(f"{response.get('reasoning') or ''}\n{response.get('content') or ''}", decontam)
    return reason


# --- the query checks ---------------------------------------------------------------------------------


def too_easy(pass_rate: float, *, max_pass_rate: float) -> str | None:
    """`too_easy` when the no-reasoning pass rate reaches `max_pass_rate`."""
    return "too_easy" if pass_rate >= max_pass_rate else None


def pass_rates(rows: Sequence[Mapping[str, Any]], prompts: Sequence[list[Message]], teacher: Any, *, k: int,
               seed: int) -> list[float]:
    """Share of `k` non-thinking samples per prompt that the row's verifiers accept (score 1)."""
    from flowlm.rl.rows import row_tools

    samples = ask(teacher, list(prompts), k, thinking=False, seed=seed, functions=[row_tools(dict(r)) for r in rows])
    rates = []
    for row, resp in zip(rows, samples):
        ok = [format_problem(r) is None and wrong_answer(row, r) is None for r in resp]
        rates.append(sum(ok) / max(len(ok), 1))
    return rates


HARD_TO_VERIFY_PROMPT = (
    "Read the question below. Does it contain several separate sub-questions, or ask for general writing (an "
    "essay, a story, a letter, an opinion) instead of one answer that can be checked? Reply with one word: "
    "yes or no.\n\nQuestion:\n{question}")


def _yes_no(response: Mapping[str, Any]) -> bool | None:
    """True / False for a reply whose first word is yes / no (case and punctuation aside); None otherwise."""
    words = _WORD.findall(str(response.get("content") or "").lower())
    first = words[0].strip(".,:;!\"'*") if words else ""
    return {"yes": True, "no": False}.get(first) if not (response.get("error") or response.get("finish_reason") == "error") else None


def hard_to_verify(prompts: Sequence[list[Message]], judge: Any, *, seed: int) -> list[bool | None]:
    """Per prompt, whether `judge` (asked once, non-thinking, `HARD_TO_VERIFY_PROMPT`) says it holds several
    sub-questions or asks for general writing; None where its reply is neither yes nor no (the prompt stays)."""
    asked = [[{"role": "user", "content": HARD_TO_VERIFY_PROMPT.format(question=user_text(msgs))}] for msgs in prompts]
    return [_yes_no(resp[0]) if resp else None for resp in ask(judge, asked, 1, thinking=False, seed=seed)]


def query_problem(row: Mapping[str, Any], cfg: QueryFilterCfg, *, decontam: Any | None = None) -> str | None:
    """`unverifiable` or `contaminated` for a prompt row (the too-easy check needs samples: `pass_rates`)."""
    if cfg.require_verifier and not has_verifier(row):
        return "unverifiable"
    return contaminated(_prompt_text(row, whole=True), decontam)
