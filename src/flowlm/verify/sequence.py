"""`sequence` verifier: an ordered list answer (`\\boxed{-5, 3, 7}`) must match the gold list in order.

The `math` verifier compares comma-separated answers as sets (math-verify parses `-5, 7, 3` as the set
{-5, 3, 7}: measured, `verify("math", "\\boxed{-5, 7, 3}", "-5, 3, 7")` scores 1), which is right for
"all solutions of x^2 = 1" and wrong for "sort these numbers". The built-in `sorting` task routes here.
Elements are compared one by one with the math equivalence (`flowlm.verify.math_equiv.equivalent`).

Registered with the other built-in verifiers (`flowlm.verify.builtin`).
"""

from __future__ import annotations

from typing import Any

from flowlm.verify import math_extract
from flowlm.verify.base import GroundTruthError, Verdict, register
from flowlm.verify.math_equiv import equivalent
from flowlm.verify.thinking import extract_answer


def _elements(text: str) -> list[str]:
    return [p.strip() for p in text.strip().strip("[]()").split(",") if p.strip()]


def _validate(ground_truth: Any, row: dict[str, Any]) -> None:
    if not isinstance(ground_truth, str) or not _elements(ground_truth):
        raise GroundTruthError(f"sequence ground truth must be a comma-separated string, got {ground_truth!r}")


@register("sequence", validator=_validate)
def verify_sequence(completion: str, ground_truth: Any, **row: Any) -> Verdict:
    """1 when the extracted answer lists the gold elements in the gold order, else 0."""
    _validate(ground_truth, row)
    gold = _elements(math_extract.last_boxed(ground_truth) or ground_truth)
    answer_text = extract_answer(completion)
    if not answer_text:
        return Verdict(0.0, "no answer after </think>")
    pred, method = math_extract.extract(answer_text, row.get("strictness", "standard"))
    if pred is None:
        return Verdict(0.0, "no final answer found")
    got = _elements(pred)
    if len(got) != len(gold):
        return Verdict(0.0, f"wrong: {len(got)} elements, expected {len(gold)}", {"extracted": pred[:200]})
    for i, (a, b) in enumerate(zip(got, gold)):
        if not equivalent(a, b, float(row.get("timeout", 5.0))).equal:
            return Verdict(0.0, f"wrong: element {i + 1} is {a[:40]!r}, expected {b[:40]!r}", {"extracted": pred[:200]})
    return Verdict(1.0, f"correct: {pred[:80]}", {"extracted": pred[:200], "extraction": method})
