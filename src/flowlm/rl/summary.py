"""What an rl stage's run record says about its training: the curves of `metrics.jsonl` in a few numbers.

`rl_summary(rows)` reads the stage's per-step rows (those with a `reward`) and its eval rows, and returns:

- `steps`: training steps logged;
- `by_quarter`: for the reward (overall and per domain, `reward/<domain>`), the response length, the
  entropy, the informative share, the truncated share and (with tools) the tool calls per completion, the
  mean over each quarter of the steps (fewer
  parts when there are fewer than 4 steps; a part where a key was never logged, or logged as null, is None);
- `mismatch_abs_diff_max`: the largest |engine − learner| log-prob of any step;
- `generation_eval`: per in-loop eval suite, pass@1 at the first and at the last eval point, with their
  steps (`eval/<suite>/pass@1`; per-category keys are left to the JSONL).

A step logged twice (a resumed run re-logs the steps after its last checkpoint) counts once, as its
last row. The flow's report prints these as the RL table (`flowlm.flow.report`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

CURVES = ("reward", "response_len", "entropy", "informative_share", "truncated_share", "tool_calls")


def quarters(n: int) -> list[tuple[int, int]]:
    """`[start, end)` of up to 4 contiguous, near-equal parts of `n` items (the first parts take the remainder)."""
    parts = min(4, n)
    bounds, start = [], 0
    for i in range(parts):
        size = n // parts + (1 if i < n % parts else 0)
        bounds.append((start, start + size))
        start += size
    return bounds


def finite_mean(values: Iterable[Any]) -> float | None:
    """The mean of the finite numbers in `values` (None, NaN and non-numbers skipped); None when there are none."""
    vals = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def rl_summary(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The summary described in the module docstring, from the rows of an rl stage's `metrics.jsonl`."""
    by_step: dict[int, dict[str, Any]] = {}
    evals: dict[int, dict[str, Any]] = {}
    for row in rows:
        step = row.get("step")
        if not isinstance(step, int):
            continue
        if "reward" in row:
            by_step[step] = row
        elif any(k.startswith("eval/") for k in row):
            evals[step] = {**evals.get(step, {}), **row}
    steps = [by_step[s] for s in sorted(by_step)]
    keys = [k for k in CURVES if any(k in r for r in steps)]
    keys += sorted({k for r in steps for k in r if k.startswith("reward/")})
    parts = quarters(len(steps))
    out: dict[str, Any] = {
        "steps": len(steps),
        "by_quarter": {k: [finite_mean(r.get(k) for r in steps[a:b]) for a, b in parts] for k in keys},
    }
    diffs = [r["mismatch/abs_diff_max"] for r in steps if isinstance(r.get("mismatch/abs_diff_max"), (int, float))]
    if diffs:
        out["mismatch_abs_diff_max"] = max(diffs)
    curves: dict[str, dict[str, list[float]]] = {}
    for step in sorted(evals):
        for key, value in evals[step].items():
            parts_of_key = key.split("/")
            if len(parts_of_key) == 3 and parts_of_key[2] == "pass@1" and isinstance(value, (int, float)):
                point = [step, float(value)]
                suite = curves.setdefault(parts_of_key[1], {"first": point, "last": point})
                suite["last"] = point
    if curves:
        out["generation_eval"] = curves
    return out
