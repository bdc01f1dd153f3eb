"""Constraint registry and evaluation for instruction-following verifiers.

A constraint is a pure check `fn(response, **kwargs) -> bool` registered under an instruction id
(e.g. `punctuation:no_comma`) together with the kwargs it requires. `parse_ground_truth` turns a
row's `{"instruction_id_list": [...], "kwargs": [...]}` into bound constraints and fails loudly on an
unknown id, a missing or unexpected kwarg, or a kwarg of the wrong type or value, so a typo can never
become a silent pass (or a silent 0 on every response). A kwarg's type is the annotation of the check's
parameter (`int` counts accept integral floats, as IFBench writes them; `float`; `str`; `list[str]`);
`check_kwarg` adds the allowed values (relations, language codes, 1-based positions).

Strict mode checks the response as is. Loose mode (IFEval paper, §3) passes a constraint if it holds
for any of 8 variants: the response, and the response without its first line, last line or both,
each with and without `*` characters.
"""

from __future__ import annotations

import functools
import json
import math
import typing
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
    """Bind kwargs to a constraint id; raises GroundTruthError on unknown ids, missing or unexpected
    kwargs, and kwargs of the wrong type or value (`check_kwarg`)."""
    _load_all()
    spec = SPECS.get(id_) if isinstance(id_, str) else None
    if spec is None:
        raise GroundTruthError(f"unknown instruction id {id_!r}")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise GroundTruthError(f"{id_}: kwargs must be an object, got {kwargs!r}")
    # IFBench rows list every kwarg of every type with null values: keep only those that are set.
    kw = {k: v for k, v in (kwargs or {}).items() if v is not None}
    missing = [k for k in spec.required if k not in kw]
    if missing:
        raise GroundTruthError(f"{id_}: missing kwargs {missing}")
    allowed = (*spec.required, *spec.optional)
    unexpected = sorted(k for k in kw if k not in allowed)
    if unexpected:
        raise GroundTruthError(f"{id_}: unexpected kwargs {unexpected} (it takes {', '.join(allowed) or 'none'})")
    for k, v in kw.items():
        problem = check_kwarg(id_, k, v, _kwarg_types(spec.fn).get(k))
        if problem:
            raise GroundTruthError(f"{id_}: {k} must be {problem}, got {v!r}")
    return Constraint(spec, kw)


RELATIONS = ("less than", "at least")
# 1-based positions (a paragraph, sentence or word number; `N` also divides in `count:words_japanese`).
_POSITIONS = {"nth_paragraph", "n", "m", "sentence:keyword/N", "count:words_japanese/N"}
# Single characters.
_CHARACTERS = {"letter"}


@functools.lru_cache(maxsize=None)
def _kwarg_types(fn: CheckFn) -> dict[str, Any]:
    """The annotated types of a check's parameters (the kwargs it takes)."""
    return typing.get_type_hints(fn)


def check_kwarg(id_: str, key: str, value: Any, kind: Any) -> str | None:
    """What `value` of kwarg `key` of constraint `id_` must be, when it is not that (else None). `kind` is
    the check's annotation for it (None: no annotation, anything goes)."""
    from flowlm.verify.ifeval.text import LANGUAGE_CODES

    if key.endswith("relation"):
        return None if value in RELATIONS else " or ".join(repr(r) for r in RELATIONS)
    if key == "language":
        known = value in LANGUAGE_CODES
        return None if known else "a language code langdetect reports (ISO 639-1: 'en', 'de', 'zh-cn', ...)"
    if kind is int:
        if not (_is_number(value) and (isinstance(value, int) or value.is_integer())):
            return "an int"
        least = 1 if key in _POSITIONS or f"{id_}/{key}" in _POSITIONS else 0
        return None if value >= least else f"an int >= {least}"
    if kind is float:
        return None if _is_number(value) and value >= 0 else "a number >= 0"
    if kind is str:
        if key in _CHARACTERS:
            return None if isinstance(value, str) and len(value) == 1 else "one character"
        return None if isinstance(value, str) and value.strip() else "a non-empty string"
    if kind == list[str]:
        ok = isinstance(value, list) and value and all(isinstance(x, str) and x.strip() for x in value)
        return None if ok else "a non-empty list of non-empty strings"
    return None


def _is_number(value: Any) -> bool:
    """An int or a finite float (not a bool)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


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
    if not isinstance(ids, list):
        raise GroundTruthError(f"instruction_id_list must be a list of ids, got {ids!r}")
    kwargs = gt.get("kwargs") or [{} for _ in ids]
    if isinstance(kwargs, dict):
        kwargs = [kwargs]
    if not isinstance(kwargs, list):
        raise GroundTruthError(f"kwargs must be a list of objects (one per instruction id), got {kwargs!r}")
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
