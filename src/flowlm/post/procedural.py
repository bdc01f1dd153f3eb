"""The miniature's teachers: the built-in procedural tasks (`flowlm.data.tasks`) answered from their worked
solutions, and the prompt rows they answer.

- `ProceduralTeacher`: the miniature's strong model. `error_rate` corrupts a deterministic share of the
  candidates, each with one defect a Qwen3 response filter must catch (`NOISE_KINDS`).
- `WeakProceduralTeacher`: the miniature's weak model (OLMo 3's Qwen3-0.6B role in delta learning):
  a short sketch and a plausible final answer that is right with probability `skill ** steps`.
- `builtin_rows(n)`: prompt rows from the training split of the built-in tasks (never held out).
- `NAMED_TEACHERS` (their CLI names) and `procedural_problem(row)` (why they cannot answer a row).

Both follow `flowlm.post.teachers.Teacher`.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from flowlm.errors import FlowError
from flowlm.post.teachers import _SWITCH, Message, Response, _error, prompt_messages, user_text

NOISE_KINDS = ("wrong_answer", "repetition", "guess", "mismatch", "language_mix")
"""Defects `ProceduralTeacher(error_rate>0)` puts into candidates, one per corrupted candidate:
a wrong final answer (reasoning and answer agree on it), a looping think trace, an answer guessed with
no reasoning, a think trace whose conclusion differs from the final answer, and a reasoning trace
that switches script midway."""


def _item_key(text: str) -> str:
    return " ".join(_SWITCH.sub("", text).split())


def _rng(*parts: Any) -> random.Random:
    return random.Random(hashlib.sha256(repr(parts).encode()).hexdigest())


def final_line(answer: str, solution: str) -> str:
    """The final-answer line of a procedural item (`flowlm.data.builtin` format: `####` for word problems)."""
    if solution.rstrip().splitlines()[-1].startswith("####"):
        return f"The answer is {answer}.\n#### {answer}"
    return f"The answer is \\boxed{{{answer}}}."


def wrong_answer(answer: str, rng: random.Random) -> str:
    """A plausible wrong answer: an integer off by a small amount, or a list with two neighbours swapped."""
    parts = [p.strip() for p in answer.split(",")]
    if len(parts) > 1:
        i = rng.randrange(len(parts) - 1)
        j = next((k for k in range(i, len(parts) - 1) if parts[k] != parts[k + 1]), None)
        if j is not None:
            parts[j], parts[j + 1] = parts[j + 1], parts[j]
            return ", ".join(parts)
        return ", ".join(parts[:-1])
    try:
        return str(int(answer) + rng.choice([-10, -2, -1, 1, 2, 10]))
    except ValueError:
        return answer + "0"


def _steps(solution: str) -> int:
    """Working lines of a worked solution (the final answer line excluded)."""
    return max(1, len([ln for ln in solution.strip().splitlines() if ln.strip()]) - 1)


class _ItemIndex:
    """Worked items by their prompt text (the last user turn, `/no_think` removed)."""

    def __init__(self, items: Iterable[Mapping[str, Any]]) -> None:
        self.items: dict[str, Mapping[str, Any]] = {}
        for it in items:
            if it.get("solution") and it.get("answer") is not None:
                self.items[_item_key(str(it["prompt"]))] = it

    @classmethod
    def rows_to_items(cls, rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Items from prompt rows that carry a worked `solution` (and `answer` or a string `ground_truth`)."""
        out = []
        for row in rows:
            answer = row.get("answer", row.get("ground_truth"))
            if not row.get("solution") or not isinstance(answer, (str, int)):
                continue
            try:
                text = user_text(prompt_messages(row))
            except ValueError:
                continue
            out.append({"prompt": text, "answer": str(answer), "solution": row["solution"]})
        return out

    def find(self, messages: Sequence[Message]) -> Mapping[str, Any] | None:
        return self.items.get(_item_key(user_text(messages)))


class _IndexedTeacher:
    """A teacher that answers the built-in items it indexes (by prompt); `_one` makes one response.
    Prompts it has no item for come back as `error` responses."""

    name: str
    missing = "no item for this prompt"
    rng_tag: tuple[str, ...] = ()  # keeps the streams of different teachers apart

    def __init__(self, items: Iterable[Mapping[str, Any]]) -> None:
        self.index = _ItemIndex(items)

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]], **kwargs: Any) -> Any:
        return cls(_ItemIndex.rows_to_items(rows), **kwargs)

    def sample(self, prompts: list[list[Message]], n: int, *, thinking: bool, seed: int,
               functions: list[list[dict[str, Any]] | None] | None = None) -> list[list[Response]]:
        out = []
        for msgs in prompts:  # (a row with its own functions matches no built-in item: an `error` response)
            item = self.index.find(msgs)
            if item is None:
                out.append(_error(f"{self.name} teacher: {self.missing}", n))
                continue
            out.append([self._one(item, thinking, _rng(*self.rng_tag, seed, item["prompt"], i)) for i in range(n)])
        return out

    def _one(self, item: Mapping[str, Any], thinking: bool, rng: random.Random) -> Response:
        raise NotImplementedError


class ProceduralTeacher(_IndexedTeacher):
    """The strong procedural teacher: thinking mode answers with the worked solution as reasoning and the
    final-answer line as content; non-thinking mode with the worked solution as the answer (as
    `flowlm.data.builtin.sft_examples` does). Prompts it has no item for come back as `error` responses."""

    missing = "no worked solution for this prompt"

    def __init__(self, items: Iterable[Mapping[str, Any]], *, error_rate: float = 0.0,
                 noise: Sequence[str] = NOISE_KINDS, name: str = "procedural") -> None:
        if not 0.0 <= error_rate <= 1.0:
            raise FlowError(f"ProceduralTeacher: error_rate must be in [0, 1], got {error_rate}")
        unknown = set(noise) - set(NOISE_KINDS)
        if unknown or not noise:
            raise FlowError(f"ProceduralTeacher: noise kinds must be among {NOISE_KINDS}, got {list(noise)}")
        super().__init__(items)
        self.error_rate, self.noise, self.name = error_rate, tuple(noise), name

    def _one(self, item: Mapping[str, Any], thinking: bool, rng: random.Random) -> Response:
        answer, solution = str(item["answer"]), str(item["solution"])
        resp = {"reasoning": solution, "content": final_line(answer, solution)} if thinking else \
            {"reasoning": "", "content": solution}
        if rng.random() < self.error_rate:
            resp = corrupt(resp, answer, rng.choice(self.noise), rng)
        return {**resp, "finish_reason": "stop"}


def corrupt(resp: Response, answer: str, kind: str, rng: random.Random) -> Response:
    """`resp` with one defect of `kind` (see `NOISE_KINDS`); the answer is replaced everywhere it is stated."""
    bad = wrong_answer(answer, rng)
    reasoning, content = resp["reasoning"], resp["content"]
    if kind == "wrong_answer":
        return {"reasoning": _swap_final(reasoning, answer, bad), "content": _swap_final(content, answer, bad)}
    if kind == "repetition":
        loop = "Wait, let me recompute that step once more to be sure."
        text = reasoning or content
        times = max(12, 2 * len(text.split()) // len(loop.split()) + 2)  # a degenerate loop outgrows the work
        looped = text.split("\n")[0] + "\n" + "\n".join([loop] * times) + "\n" + text
        return {"reasoning": looped, "content": content} if reasoning else {"reasoning": "", "content": looped}
    if kind == "guess":
        guessed = f"Probably {answer}. The answer is \\boxed{{{answer}}}."
        return {"reasoning": "I guess." if reasoning else "", "content": guessed}
    if kind == "mismatch":
        if not reasoning:  # no think trace to disagree with: fall back to a wrong answer
            return corrupt(resp, answer, "wrong_answer", rng)
        return {"reasoning": _swap_final(reasoning, answer, bad), "content": content}
    if kind == "language_mix":
        lines = (reasoning or content).split("\n")
        mid = len(lines) // 2
        mixed = "\n".join(lines[:mid] + ["接下来我们继续计算,然后检查每一步的结果是否正确。"] * 3 + lines[mid:])
        return {"reasoning": mixed, "content": content} if reasoning else {"reasoning": "", "content": mixed}
    raise ValueError(f"unknown noise kind {kind!r}")


def _swap_final(text: str, answer: str, bad: str) -> str:
    """Replace the stated final answer (boxed, `####`, `The answer is`) by `bad`."""
    text = text.replace(f"\\boxed{{{answer}}}", f"\\boxed{{{bad}}}").replace(f"#### {answer}", f"#### {bad}")
    return text.replace(f"The answer is {answer}.", f"The answer is {bad}.")


class WeakProceduralTeacher(_IndexedTeacher):
    """The weak procedural teacher: a one-step sketch and a plausible, often wrong final answer.

    A response to an item with `s` working steps is right with probability `skill ** s` (each step a
    chance to slip), decided deterministically from (seed, prompt, sample index); wrong answers are a
    near miss (`wrong_answer`). Thinking mode puts the first working line in the reasoning; non-thinking
    mode answers directly. Used as the rejected side of delta pairs and as the no-reasoning model of
    the Qwen3 query filter (an item it answers right without reasoning is too easy).
    """

    rng_tag = ("weak",)

    def __init__(self, items: Iterable[Mapping[str, Any]], *, skill: float = 0.7, name: str = "weak") -> None:
        if not 0.0 <= skill <= 1.0:
            raise FlowError(f"WeakProceduralTeacher: skill must be in [0, 1], got {skill}")
        super().__init__(items)
        self.skill, self.name = skill, name

    def _one(self, item: Mapping[str, Any], thinking: bool, rng: random.Random) -> Response:
        answer, solution = str(item["answer"]), str(item["solution"])
        right = rng.random() < self.skill ** _steps(solution)
        said = answer if right else wrong_answer(answer, rng)
        first = solution.strip().splitlines()[0]
        reasoning = f"{first}\nThe rest is quick, so the answer should be {said}." if thinking else ""
        return {"reasoning": reasoning, "content": final_line(said, solution), "finish_reason": "stop"}


# --- built-in prompt rows -------------------------------------------------------------------------------

BUILTIN_SEED_OFFSET = 3_000_017
"""Keeps these prompts apart from `sft_examples` (seed + 2,000,003) for the same run seed."""


def builtin_rows(n: int, seed: int = 0, *, tasks: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """`n` prompt rows from the training split of the built-in tasks (all of them, or the generators named
    in `tasks`), without near-duplicates of the built-in eval items (`tasks.generate_clean`), with their
    verifier routing (as the built-in eval suite routes them) and worked solutions for the procedural
    teachers."""
    from flowlm.data import tasks as task_gen

    unknown = sorted(set(tasks or ()) - set(task_gen.GENERATORS))
    if unknown:
        raise FlowError(f"builtin tasks: unknown {', '.join(unknown)}; known: {', '.join(task_gen.GENERATORS)}")
    rows = []
    for it in task_gen.generate_clean(seed + BUILTIN_SEED_OFFSET, n, tasks=tuple(tasks) if tasks else None):
        if task_gen.is_heldout(it["prompt"]):  # the split rule is what keeps eval items out of training data
            raise FlowError(f"builtin prompt {it['id']} is on the held-out side of the split")
        verifier = {"word_problem": "gsm8k", "sorting": "sequence"}.get(it["task"], "math")
        rows.append({"id": it["id"], "task": it["task"], "messages": [{"role": "user", "content": it["prompt"]}],
                     "dataset": verifier, "ground_truth": it["answer"], "answer": it["answer"],
                     "solution": it["solution"]})
    return rows


NAMED_TEACHERS = ("procedural", "weak")
"""Teacher specs that answer from the rows' worked solutions (`procedural_problem` says which rows they can)."""


def procedural_problem(row: Mapping[str, Any]) -> str | None:
    """Why the `procedural` / `weak` teachers cannot answer `row` (None: they can): they need a worked
    `solution` string and a final answer (`answer`, else a string or int `ground_truth`)."""
    solution = row.get("solution")
    if not isinstance(solution, str) or not solution.strip():
        return "needs a 'solution' field (the worked solution it answers with)"
    answer = row.get("answer", row.get("ground_truth"))
    if isinstance(answer, bool) or not isinstance(answer, (str, int)):
        return "needs an 'answer' field (or a string 'ground_truth') beside the 'solution'"
    return None
