"""Data-row schema and routing: which verifiers score a row, with which ground truths.

A row is a JSON object. Its verifier(s) are given in one of two ways:

1. tag + ground truth: `{"dataset": "math", "ground_truth": "42"}` (`verifier` is an alias of
   `dataset` and wins if both are present). Several pairs: `{"dataset": ["math", "ifeval"],
   "ground_truth": ["42", {...}]}` (same length), optional `"weights": [1, 1]` (numbers >= 0, not all 0).
2. an explicit list: `{"verifiers": [{"name": "math", "ground_truth": "42", "weight": 1.0,
   "strictness": "strict"}, ...]}`; extra keys are per-verifier options.

The completion is `completion` (or `response`) unless passed separately. Every other column is
passed to each verifier as keyword arguments (`prompt`, `entry_point`, `mode`, ...). A row's score is
the weighted mean of its pairs' scores (so it stays in [0, 1]).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
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
    """The row's (verifier, ground truth) pairs; raises GroundTruthError (naming the key) on schema errors."""
    if "verifiers" in row:
        return _explicit_pairs(row["verifiers"])
    tag = row.get("verifier", row.get("dataset", default_name))
    if default_name is not None:
        tag = default_name  # an explicit name (CLI --name, adapter name) overrides row tags
    if tag is None:
        raise GroundTruthError("row has no `dataset`/`verifier` tag and no verifier name was given")
    key = "verifier" if "verifier" in row and default_name is None else "dataset"
    if isinstance(tag, (list, tuple)):
        if not tag or not all(isinstance(t, str) for t in tag):
            raise GroundTruthError(f"`{key}` must be a verifier name or a non-empty list of names, got {tag!r}")
        gts = row.get("ground_truth")
        if not isinstance(gts, (list, tuple)) or len(gts) != len(tag):
            raise GroundTruthError("several tags need a ground_truth list of the same length")
        weights = row.get("weights")
        if weights is None:
            weights = [1.0] * len(tag)
        if not isinstance(weights, (list, tuple)) or len(weights) != len(tag):
            raise GroundTruthError(f"`weights` must be a list of {len(tag)} numbers (one per tag), got {weights!r}")
        ws = [_weight(w, f"weights[{i}]") for i, w in enumerate(weights)]
        _check_total(ws, "weights")
        return [Pair(t, g, w) for t, g, w in zip(tag, gts, ws)]
    if not isinstance(tag, str):
        raise GroundTruthError(f"`{key}` must be a verifier name or a list of names, got {tag!r}")
    return [Pair(tag, row.get("ground_truth"))]


def _explicit_pairs(specs: Any) -> list[Pair]:
    """The pairs of a `verifiers` list (`{"name", "ground_truth"?, "weight"?, **options}` each)."""
    if not isinstance(specs, list) or not specs:
        raise GroundTruthError("`verifiers` must be a non-empty list")
    out = []
    for i, s in enumerate(specs):
        if not isinstance(s, dict) or not isinstance(s.get("name"), str):
            raise GroundTruthError(f"`verifiers[{i}]` must be an object with a `name` string")
        opts = {k: v for k, v in s.items() if k not in ("name", "ground_truth", "weight")}
        out.append(Pair(s["name"], s.get("ground_truth"), _weight(s.get("weight", 1.0), f"verifiers[{i}].weight"),
                        opts))
    _check_total([p.weight for p in out], "verifiers[*].weight")
    return out


def _weight(value: Any, key: str) -> float:
    """`value` as a pair weight: a finite number >= 0 (not a string, not a bool)."""
    try:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    except OverflowError:  # an int beyond any float
        ok = False
    if not ok:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise GroundTruthError(f"`{key}` must be a number >= 0, got {shown}")
    return float(value)


def _check_total(weights: list[float], key: str) -> None:
    """All-zero weights leave a row's weighted mean undefined: refuse them."""
    if not any(weights):
        raise GroundTruthError(f"`{key}`: at least one weight must be > 0")


def row_columns(row: dict[str, Any]) -> dict[str, Any]:
    """Columns passed through to verifiers (everything but the routing keys)."""
    return {k: v for k, v in row.items() if k not in _SCHEMA_KEYS}


def prompt_messages(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The chat prompt of a row: `messages` (or TRL `prompt` messages) without a final assistant turn, or a
    `prompt` string as one user turn. Raises ValueError (one line) for anything else."""
    value = row.get("messages", row.get("prompt"))
    if isinstance(value, str) and value.strip() and "messages" not in row:
        return [{"role": "user", "content": value}]
    if not (isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value)):
        raise ValueError("a row needs `messages` (a list of {role, content}) or a non-empty `prompt` string")
    msgs = [dict(m) for m in value]
    if msgs[-1]["role"] == "assistant":  # multi-turn preference: only the last turn is answered anew
        msgs = msgs[:-1]
    if not msgs or msgs[-1]["role"] != "user" or not isinstance(msgs[-1].get("content"), str):
        raise ValueError("the prompt must end with a user turn whose content is a string")
    return msgs


def prompt_turns(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`prompt_messages` for untrusted rows: [] where it would raise (no prompt, or a malformed one)."""
    try:
        return prompt_messages(row)
    except ValueError:
        return []


def prompt_text(row: Mapping[str, Any]) -> str:
    """The question a row's completion answers, as text: its `prompt` string, else the last user turn of
    its messages ("" when none). What the judge and IFEval's prompt-aware checks read."""
    turns = prompt_turns(row)
    return turns[-1]["content"] if turns else ""


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
