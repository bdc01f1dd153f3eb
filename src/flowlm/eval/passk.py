"""Sample-level metrics of a generation eval: unbiased pass@k, mean reward, majority vote, length stats.

pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"): with n samples of which
c are correct, the probability that at least one of k samples drawn without replacement is correct is
1 - C(n-c, k) / C(n, k), averaged over items. The binomials overflow floats for n in the hundreds, so
it is computed as the product 1 - prod_{i=n-c+1}^{n} (1 - k/i) (each factor in [0, 1], no overflow);
the result is exactly 1 when n - c < k. OLMo 3 reports pass@1 as the mean correctness over N samples
("Avg@N"), which is what pass@1 of this estimator is.

Items with a `category` are also summarised per category (`by_category`: items, mean reward, pass@1 and
pass@n), e.g. per built-in task or per MATH subject.

A sample counts as correct for pass@k when its score is 1 (partial-credit verifiers such as IFEval's
`fraction` reward give less); `mean_reward` keeps the partial credit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

CORRECT = 1.0 - 1e-9  # a sample is "correct" for pass@k at full reward (floats from weighted means)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one item with `c` correct out of `n` samples (1 <= k <= n, 0 <= c <= n)."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def pass_at_ks(correct: Sequence[int], n: int, ks: Sequence[int] | None = None) -> dict[int, float]:
    """Mean pass@k over items (`correct[i]` = correct samples of item i, each of `n` samples), for
    every k in `ks` (default: 1..n)."""
    ks = list(range(1, n + 1)) if ks is None else list(ks)
    if not correct:
        return {k: 0.0 for k in ks}
    return {k: sum(pass_at_k(n, c, k) for c in correct) / len(correct) for k in ks}


def majority_correct(answers: Sequence[str | None], scores: Sequence[float]) -> float:
    """Score of the most frequent extracted answer (ties: the one seen first); 0 when no sample has one.

    `answers` are canonical forms (equal strings = the same answer); samples without an answer do
    not vote. Majority voting (Wang et al. 2023, self-consistency) for math suites: "maj@n".
    """
    votes = Counter(a for a in answers if a)
    if not votes:
        return 0.0
    best = max(votes.values())
    winner = next(a for a in answers if a and votes[a] == best)
    return float(scores[answers.index(winner)])


def summarize(items: Sequence[dict[str, Any]], n: int, *, majority: bool = False) -> dict[str, Any]:
    """Suite-level metrics from per-item samples.

    Each item has `samples`: dicts with `score` (0..1), `tokens` (generated count), `finish_reason`
    (`stop` / `length`), `unclosed_think` (bool) and, for majority vote, `answer` (canonical str or
    None), and optionally `category`. Items whose request failed (`error`) score 0 on every sample and are
    counted in `errors`.
    """
    scores = [[s["score"] for s in it["samples"]] or [0.0] * n for it in items]
    correct = [sum(x >= CORRECT for x in sc) for sc in scores]
    rewards = [sum(sc) / len(sc) for sc in scores]  # per item, partial credit kept
    samples = [s for it in items for s in it["samples"]]
    n_samples = max(len(samples), 1)
    out: dict[str, Any] = {
        "items": len(items),
        "n": n,
        "mean_reward": sum(rewards) / max(len(items), 1),
        **{f"pass@{k}": v for k, v in pass_at_ks(correct, n).items()},
        "mean_tokens": sum(s["tokens"] for s in samples) / n_samples,
        "truncated": sum(s["finish_reason"] == "length" for s in samples) / n_samples,
        "unclosed_think": sum(bool(s.get("unclosed_think")) for s in samples) / n_samples,
        "errors": sum(1 for it in items if it.get("error")),
    }
    if any("tool_calls" in s for s in samples):  # with tools: calls per sample, and the share that called one
        out["tool_calls"] = sum(s.get("tool_calls", 0) for s in samples) / n_samples
        out["tool_use"] = sum(s.get("tool_calls", 0) > 0 for s in samples) / n_samples
        out["tool_errors"] = sum(s.get("tool_errors", 0) for s in samples) / n_samples
    if majority:
        votes = [majority_correct([s.get("answer") for s in it["samples"]], [s["score"] for s in it["samples"]])
                 if it["samples"] else 0.0 for it in items]
        out[f"maj@{n}"] = sum(votes) / max(len(items), 1)
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        if it.get("category") is not None:
            groups.setdefault(str(it["category"]), []).append(i)
    if groups:
        out["by_category"] = {cat: _category(rewards, correct, idx, n) for cat, idx in sorted(groups.items())}
    return out


def _category(rewards: list[float], correct: list[int], idx: list[int], n: int) -> dict[str, Any]:
    """items, mean_reward and pass@1 (and pass@n for n > 1) of the items at `idx`."""
    ks = (1, n) if n > 1 else (1,)
    return {"items": len(idx), "mean_reward": sum(rewards[i] for i in idx) / len(idx),
            **{f"pass@{k}": v for k, v in pass_at_ks([correct[i] for i in idx], n, ks).items()}}
