"""The `ifeval` / `ifbench` verifiers: fraction (or all) of a row's constraints met.

Ground truth: `{"instruction_id_list": [...], "kwargs": [{...}, ...]}` (see `core.parse_ground_truth`).
Row options: `mode` = `strict` (default) | `loose`; `reward` = `fraction` (default, open-instruct's
partial credit) | `all`; the row's prompt (`prompt`, or the last user turn of `messages`) goes to checks that compare
against the prompt.
"""

from __future__ import annotations

from typing import Any

from flowlm.verify.base import GroundTruthError, Verdict, register
from flowlm.verify.ifeval.core import evaluate, parse_ground_truth
from flowlm.verify.rows import prompt_text
from flowlm.verify.thinking import extract_answer


def _validate(ground_truth: Any, row: dict[str, Any]) -> None:
    parse_ground_truth(ground_truth)
    if row.get("mode", "strict") not in ("strict", "loose"):
        raise GroundTruthError("mode must be strict or loose")
    if row.get("reward", "fraction") not in ("fraction", "all"):
        raise GroundTruthError("reward must be fraction or all")


@register("ifeval", "ifbench", "instruction_following", validator=_validate)
def verify_instructions(completion: str, ground_truth: Any, **row: Any) -> Verdict:
    """Score a response against its verifiable instructions."""
    constraints = parse_ground_truth(ground_truth)
    # Without thinking tags the response is scored exactly as given (loose mode's first/last-line
    # variants depend on leading and trailing whitespace).
    answer = completion if "<think>" not in completion and "</think>" not in completion else extract_answer(completion)
    if not answer.strip():
        return Verdict(0.0, "empty answer", {"followed": [False] * len(constraints)})
    followed = evaluate(constraints, answer, row.get("mode", "strict"), prompt_text(row) or None)
    n = sum(followed)
    score = n / len(followed) if row.get("reward", "fraction") == "fraction" else float(n == len(followed))
    missed = [c.spec.id for c, ok in zip(constraints, followed) if not ok]
    reason = f"{n}/{len(followed)} constraints met" + (f"; not met: {', '.join(missed[:5])}" if missed else "")
    return Verdict(score, reason, {"followed": followed})
