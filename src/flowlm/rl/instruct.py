"""Prompt rows for Instruct RL and Qwen3's general RL: verifiable instructions and reward-model rewards.

- `add_instructions(rows, share, seed)`: a seeded `share` of the rows get one IFEval-style instruction
  appended to their last user turn (`INSTRUCTIONS`: no commas, a word limit, a keyword, lowercase; `only`
  restricts the draw to some of their IFEval ids) and
  are then scored by their own verifier and `ifeval` together (equal weights, the row routing's
  `verifiers` list), or with `alone` by `ifeval` only (the IF domain by itself). A row's instruction
  depends on its id (and task) alone, so the same row gets the same one in every run; sorting never gets
  "no commas" (its answer is a list). OLMo 3's Instruct RL
  mixes math, code, IF and chat prompts; on the miniature the built-in task prompts plus these
  instructions are its math + IF mix.
- `add_reward_model(rows, path, weight)`: every row also scored by the Bradley–Terry reward model at
  `path` (verifier `reward_model`, the prompt text passed along), with `weight` against the row's rule
  rewards: Qwen3's general RL combines rule-based rewards with a model-based reward without a reference.
- `instruction_for(key, seed, task)`: the instruction a row or held-out item gets (the eval suite
  `builtin_instruct` gives its items theirs the same way).
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Sequence

# (instruction text as IFEval phrases it, IFEval instruction id, kwargs)
INSTRUCTIONS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("Do not use any commas in your response.", "punctuation:no_comma", {}),
    ("Answer with less than 60 words.", "length_constraints:number_words",
     {"num_words": 60, "relation": "less than"}),
    ("Include the keyword \"answer\" in your response.", "keywords:existence", {"keywords": ["answer"]}),
    ("Your entire response should be in English, and in all lowercase letters. No capital letters are allowed.",
     "change_case:english_lowercase", {}),
)


def _draw(key: str, seed: int) -> random.Random:
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


def _pairs(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The row's routing as an explicit `verifiers` list."""
    from flowlm.verify.rows import pairs_of

    return [{"name": p.name, "ground_truth": p.ground_truth, "weight": p.weight, **p.options} for p in pairs_of(row)]


def _with_routing(row: dict[str, Any], verifiers: list[dict[str, Any]]) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k not in ("dataset", "verifier", "ground_truth", "weights", "verifiers")}
    return {**out, "verifiers": verifiers}


# Instructions a task's answer itself would break: a sorted list is written with commas.
_CLASHES = {"sorting": {"punctuation:no_comma"}}


INSTRUCTION_IDS = tuple(i[1] for i in INSTRUCTIONS)


def check_instruction_ids(ids: Sequence[str]) -> None:
    """A ValueError naming the ids that are not in `INSTRUCTION_IDS`."""
    unknown = sorted(set(ids) - set(INSTRUCTION_IDS))
    if unknown:
        raise ValueError(f"unknown {unknown}; known: {list(INSTRUCTION_IDS)}")


def instruction_for(key: str, seed: int = 0, task: str | None = None,
                    only: Sequence[str] | None = None) -> tuple[str, dict[str, Any]]:
    """`(text, ifeval ground truth)` of the instruction row `key` (of `task`) gets; `only`: drawn from these
    IFEval ids alone (with all of them, the same draw as without)."""
    check_instruction_ids(only or ())
    options = [i for i in INSTRUCTIONS if i[1] not in _CLASHES.get(task or "", ()) and (only is None or i[1] in only)]
    if not options:
        raise ValueError(f"no instruction of {list(only or ())} fits task {task!r} (its answer would break it)")
    text, iid, kwargs = options[_draw(key, seed).randrange(len(options))]
    return text, {"instruction_id_list": [iid], "kwargs": [dict(kwargs)]}


def with_ifeval(row: dict[str, Any], ground_truth: dict[str, Any]) -> dict[str, Any]:
    """`row` routed to its own verifiers and `ifeval` (with `ground_truth`), as one `verifiers` list."""
    return _with_routing(row, [*_pairs(row), {"name": "ifeval", "ground_truth": ground_truth}])


def add_instruction(row: dict[str, Any], seed: int = 0, *, alone: bool = False,
                    only: Sequence[str] | None = None) -> dict[str, Any]:
    """`row` with one instruction (of the ids `only`, default any) appended to its last user turn and
    `ifeval` added to its verifiers (`alone`: `ifeval` replaces them)."""
    try:
        text, gt = instruction_for(str(row.get("id", "")), seed, row.get("task"), only)
    except ValueError as exc:
        raise ValueError(f"row {row.get('id', '?')}: {exc}") from None
    messages = [dict(m) for m in row.get("messages") or ()]
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if not users or not isinstance(messages[users[-1]].get("content"), str):
        raise ValueError(f"row {row.get('id', '?')}: no user turn to add an instruction to")
    messages[users[-1]]["content"] = f"{messages[users[-1]]['content']} {text}"
    routed = _with_routing(row, [{"name": "ifeval", "ground_truth": gt}]) if alone else with_ifeval(row, gt)
    return {**routed, "messages": messages}


def add_instructions(rows: Sequence[dict[str, Any]], share: float, seed: int = 0, *,
                     alone: bool = False, only: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """A seeded `share` of `rows` (chosen by id) with one verifiable instruction each (`alone`: scored by
    `ifeval` only; `only`: of these IFEval ids); the rest unchanged."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"instructions share must be in [0, 1], got {share}")
    return [add_instruction(r, seed, alone=alone, only=only) if _draw(f"pick:{r.get('id', i)}", seed).random() < share
            else dict(r) for i, r in enumerate(rows)]


def add_reward_model(rows: Sequence[dict[str, Any]], path: str, weight: float) -> list[dict[str, Any]]:
    """Every row also scored by the reward model at `path` (weight `weight`; its rule rewards keep theirs)."""
    if weight <= 0:
        raise ValueError(f"reward model weight must be positive, got {weight}")
    out = []
    for r in rows:
        users = [m.get("content") for m in r.get("messages") or () if m.get("role") == "user"]
        prompt = users[-1] if users and isinstance(users[-1], str) else str(r.get("prompt", ""))
        rm = {"name": "reward_model", "ground_truth": str(path), "weight": float(weight), "prompt": prompt}
        out.append(_with_routing(r, [*_pairs(r), rm]))
    return out
