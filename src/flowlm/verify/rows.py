"""Data-row schema and routing: which verifiers score a row, with which ground truths.

A row is a JSON object. Its verifier(s) are given in one of two ways:

1. tag + ground truth: `{"dataset": "math", "ground_truth": "42"}` (`verifier` is an alias of
   `dataset` and wins if both are present). Several pairs: `{"dataset": ["math", "ifeval"],
   "ground_truth": ["42", {...}]}` (same length), optional `"weights": [1, 1]`.
2. an explicit list: `{"verifiers": [{"name": "math", "ground_truth": "42", "weight": 1.0,
   "strictness": "strict"}, ...]}`; extra keys are per-verifier options.

The completion is `completion` (or `response`) unless passed separately. Every other column is
passed to each verifier as keyword arguments (`prompt`, `entry_point`, `mode`, ...). A row's score is
the weighted mean of its pairs' scores (so it stays in [0, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flowlm.verify.base import GroundTruthError, Verdict, validate

_SCHEMA_KEYS = {"dataset", "verifier", "ground_truth", "weights", "verifiers", "completion", "response"}


@dataclass(frozen=True)
class Pair:
    """One (verifier, ground truth) assignment of a row."""

    name: str
    ground_truth: Any
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)


def pairs_of(row: dict[str, Any], default_name: str | None = None) -> list[Pair]:
    """The row's (verifier, ground truth) pairs; raises GroundTruthError on schema errors."""
    if "verifiers" in row:
        specs = row["verifiers"]
        if not isinstance(specs, list) or not specs:
            raise GroundTruthError("`verifiers` must be a non-empty list")
        out = []
        for s in specs:
            if not isinstance(s, dict) or "name" not in s:
                raise GroundTruthError("each `verifiers` entry needs a name")
            opts = {k: v for k, v in s.items() if k not in ("name", "ground_truth", "weight")}
            out.append(Pair(s["name"], s.get("ground_truth"), float(s.get("weight", 1.0)), opts))
        return out
    tag = row.get("verifier", row.get("dataset", default_name))
    if default_name is not None:
        tag = default_name  # an explicit name (CLI --name, adapter name) overrides row tags
    if tag is None:
        raise GroundTruthError("row has no `dataset`/`verifier` tag and no verifier name was given")
    if isinstance(tag, (list, tuple)):
        gts = row.get("ground_truth")
        if not isinstance(gts, (list, tuple)) or len(gts) != len(tag):
            raise GroundTruthError("several tags need a ground_truth list of the same length")
        weights = row.get("weights") or [1.0] * len(tag)
        if len(weights) != len(tag):
            raise GroundTruthError("weights must match the tags")
        return [Pair(t, g, float(w)) for t, g, w in zip(tag, gts, weights)]
    return [Pair(str(tag), row.get("ground_truth"))]


def row_columns(row: dict[str, Any]) -> dict[str, Any]:
    """Columns passed through to verifiers (everything but the routing keys)."""
    return {k: v for k, v in row.items() if k not in _SCHEMA_KEYS}


def row_completion(row: dict[str, Any]) -> Any:
    """The completion held in the row (`completion`, else `response`)."""
    return row.get("completion", row.get("response"))


def validate_row(row: dict[str, Any], default_name: str | None = None) -> list[Pair]:
    """Load-time check: tags exist, ground truths are well formed (unknown IFEval ids fail here)."""
    pairs = pairs_of(row, default_name)
    cols = row_columns(row)
    for p in pairs:
        validate(p.name, p.ground_truth, {**cols, **p.options})
    return pairs


def combine(pairs: list[Pair], verdicts: list[Verdict]) -> Verdict:
    """Weighted mean of the pair verdicts; reasons joined as `name: reason`."""
    total = sum(p.weight for p in pairs) or 1.0
    score = sum(p.weight * v.score for p, v in zip(pairs, verdicts)) / total
    if len(pairs) == 1:
        return verdicts[0]
    reason = " | ".join(f"{p.name}: {v.reason}" for p, v in zip(pairs, verdicts))
    return Verdict(score, reason, {"parts": [v.to_dict() for v in verdicts]})
