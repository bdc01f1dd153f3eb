"""Constraint registry and evaluation for instruction-following verifiers.

A constraint is a pure check `fn(response, **kwargs) -> bool` registered under an instruction id
(e.g. `punctuation:no_comma`) together with the kwargs it requires. `parse_ground_truth` turns a
row's `{"instruction_id_list": [...], "kwargs": [...]}` into bound constraints and fails loudly on an
unknown id or a missing kwarg, so a typo can never become a silent pass.

Strict mode checks the response as is. Loose mode (IFEval paper, §3) passes a constraint if it holds
for any of 8 variants: the response, and the response without its first line, last line or both,
each with and without `*` characters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from flowlm.verify.base import GroundTruthError

CheckFn = Callable[..., bool]


@dataclass(frozen=True)
class Spec:
    """A registered constraint type."""

    id: str
    fn: CheckFn
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    needs_prompt: bool = False  # the check also receives the prompt text (as `prompt=`)


@dataclass(frozen=True)
class Constraint:
    """A constraint bound to its kwargs."""

    spec: Spec
    kwargs: dict[str, Any] = field(default_factory=dict)

    def check(self, response: str, prompt: str | None = None) -> bool:
        """Does `response` satisfy the constraint? Exceptions from odd output count as "not met"."""
        kw = dict(self.kwargs)
        if self.spec.needs_prompt:
            kw["prompt"] = prompt or ""
        try:
            return bool(self.spec.fn(response, **kw))
        except Exception:  # noqa: BLE001 - malformed model output fails the constraint
            return False


SPECS: dict[str, Spec] = {}


def constraint(id_: str, required: tuple[str, ...] = (), optional: tuple[str, ...] = (),
               needs_prompt: bool = False) -> Callable[[CheckFn], CheckFn]:
    """Decorator registering a check under `id_`."""

    def deco(fn: CheckFn) -> CheckFn:
        if id_ in SPECS:
            raise ValueError(f"duplicate constraint id {id_}")
        SPECS[id_] = Spec(id_, fn, tuple(required), tuple(optional), needs_prompt)
        return fn

    return deco


def _load_all() -> None:
    # The check modules register themselves on import.
    from flowlm.verify.ifeval import ifbench_format_checks, ifbench_word_checks, ifeval_checks  # noqa: F401


def build(id_: str, kwargs: dict[str, Any] | None) -> Constraint:
    """Bind kwargs to a constraint id; raises GroundTruthError on unknown ids or missing kwargs."""
    _load_all()
    spec = SPECS.get(id_)
    if spec is None:
        raise GroundTruthError(f"unknown instruction id {id_!r}")
    # IFBench rows list every kwarg of every type with null values: keep only those that are set.
    kw = {k: v for k, v in (kwargs or {}).items() if v is not None}
    missing = [k for k in spec.required if k not in kw]
    if missing:
        raise GroundTruthError(f"{id_}: missing kwargs {missing}")
    allowed = set(spec.required) | set(spec.optional)
    return Constraint(spec, {k: v for k, v in kw.items() if k in allowed})


def parse_ground_truth(gt: Any) -> list[Constraint]:
    """Accept IFEval rows (`instruction_id_list` + `kwargs`), open-instruct's `instruction_id`
    key, a JSON string of either, or a list of such dicts (one constraint each)."""
    if isinstance(gt, str):
        try:
            gt = json.loads(gt)
        except json.JSONDecodeError as exc:
            raise GroundTruthError(f"instruction ground truth is not JSON: {exc}") from None
    if isinstance(gt, list):
        return [c for item in gt for c in parse_ground_truth(item)]
    if not isinstance(gt, dict):
        raise GroundTruthError(f"instruction ground truth must be a dict, got {type(gt).__name__}")
    ids = gt.get("instruction_id_list", gt.get("instruction_id"))
    if isinstance(ids, str):
        ids = [ids]
    if not ids:
        raise GroundTruthError("no instruction ids")
    kwargs = gt.get("kwargs") or [{} for _ in ids]
    if isinstance(kwargs, dict):
        kwargs = [kwargs]
    if len(kwargs) != len(ids):
        raise GroundTruthError(f"{len(ids)} instruction ids but {len(kwargs)} kwargs")
    return [build(i, k) for i, k in zip(ids, kwargs)]


def loose_variants(response: str) -> list[str]:
    """The 8 response variants of IFEval's loose mode."""
    lines = response.split("\n")
    first = "\n".join(lines[1:]).strip()
    last = "\n".join(lines[:-1]).strip()
    both = "\n".join(lines[1:-1]).strip()
    base = [response, first, last, both]
    return base + [v.replace("*", "") for v in base]


def evaluate(constraints: list[Constraint], response: str, mode: str = "strict",
             prompt: str | None = None) -> list[bool]:
    """Per-constraint verdicts; an empty (all-whitespace) candidate never satisfies anything."""
    if mode not in ("strict", "loose"):
        raise GroundTruthError(f"mode must be strict or loose, got {mode!r}")
    candidates = [response] if mode == "strict" else loose_variants(response)
    return [any(r.strip() and c.check(r, prompt) for r in candidates) for c in constraints]
