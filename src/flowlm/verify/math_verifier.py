"""Math verifiers: `math` (MATH-style LaTeX answers) and `gsm8k` (numeric answers).

Pipeline: answer part after `</think>` → answer extraction at the configured strictness
(`math_extract`) → equivalence (`math_equiv`). Binary reward (OLMo 3 uses 1/0 for math).
Row options: `strictness` (`strict`/`standard`/`lenient`), `timeout` (seconds per check).
"""

from __future__ import annotations

from typing import Any

from flowlm.verify import math_extract
from flowlm.verify.base import GroundTruthError, Verdict, register
from flowlm.verify.math_equiv import equivalent
from flowlm.verify.thinking import extract_answer


def _gold_text(ground_truth: Any) -> str:
    """Accept a bare answer, a boxed answer, a GSM8K `#### n` solution, or a list (first item)."""
    if isinstance(ground_truth, (list, tuple)):
        if not ground_truth:
            raise GroundTruthError("empty ground-truth list")
        ground_truth = ground_truth[0]
    if isinstance(ground_truth, (int, float)):
        return repr(ground_truth) if isinstance(ground_truth, float) else str(ground_truth)
    if not isinstance(ground_truth, str) or not ground_truth.strip():
        raise GroundTruthError(f"math ground truth must be a non-empty string, got {ground_truth!r}")
    gold = ground_truth.strip()
    boxed = math_extract.last_boxed(gold)
    if boxed is not None:
        return boxed
    gsm = math_extract.gsm8k_answer(gold) if "####" in gold else None
    return gsm if gsm is not None else gold


def _validate(ground_truth: Any, row: dict[str, Any]) -> None:
    _gold_text(ground_truth)
    strictness = row.get("strictness", "standard")
    if strictness not in math_extract.STRICTNESS:
        raise GroundTruthError(f"strictness must be one of {math_extract.STRICTNESS}")


def _score(completion: str, ground_truth: Any, strictness: str, timeout: float) -> Verdict:
    gold = _gold_text(ground_truth)
    answer_text = extract_answer(completion)
    if not answer_text:
        return Verdict(0.0, "no answer after </think>")
    pred, method = math_extract.extract(answer_text, strictness)
    if pred is None:
        return Verdict(0.0, f"no final answer found ({strictness} extraction)")
    res = equivalent(pred, gold, timeout)
    meta = {"extracted": pred[:200], "extraction": method, "equivalence": res.method, **res.audit}
    if res.equal:
        return Verdict(1.0, f"correct ({res.method}): {pred[:80]}", meta)
    if res.method == "timeout":
        return Verdict(0.0, f"timeout: could not compare {pred[:80]!r} with {gold[:80]!r} within {timeout:g}s", meta)
    return Verdict(0.0, f"wrong: got {pred[:80]!r}, expected {gold[:80]!r}", meta)


@register("math", "math_verify", validator=_validate)
def verify_math(completion: str, ground_truth: Any, **row: Any) -> Verdict:
    """MATH-style answer check (default strictness `standard`)."""
    return _score(completion, ground_truth, row.get("strictness", "standard"), float(row.get("timeout", 5.0)))


@register("gsm8k", validator=_validate)
def verify_gsm8k(completion: str, ground_truth: Any, **row: Any) -> Verdict:
    """GSM8K check: `#### n`, boxed or "final answer is"; last number as fallback by default."""
    return _score(completion, ground_truth, row.get("strictness", "lenient"), float(row.get("timeout", 5.0)))
