"""BPB settings for a checkpoint: the run's own when the checkpoint lives inside a flowlm run directory.

A run evaluates every stage with its recipe's `eval` section (tasks, items per task, batch tokens,
held-out documents) on the items its corpus stage wrote (`<corpus>/bpb_eval.json`). `flowlm eval
--model RUN/soup/model` must use exactly those, or it prints a different number from the one
`flow.json` records for that checkpoint (before this module: prose 3.0945 from the CLI's own defaults
— 200 items, 64 held-out docs, seed 0 — vs 3.0250 in the record). Outside a run, the built-in sets
and the recipe defaults apply. The selection rule itself is the flow's (`flow.stages.common.bpb_settings`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowlm.errors import FlowError

RECORD = "flow.json"


@dataclass(frozen=True)
class BpbInputs:
    """Everything `evaluate_bpb` needs besides the model, and where it came from."""

    sets: dict[str, list[dict[str, str]]] = field(repr=False)
    heldout: list[str] = field(repr=False)
    max_items: int
    batch_tokens: int
    source: str
    """Human-readable origin: `run RUN (flow.json eval section, corpus/bpb_eval.json)` or `built-in defaults`."""

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "tasks": sorted(self.sets), "max_items": self.max_items,
                "batch_tokens": self.batch_tokens, "heldout_docs": len(self.heldout)}


def find_run_dir(model_dir: Path, max_up: int = 4) -> Path | None:
    """The nearest ancestor of `model_dir` (itself included, up to `max_up` levels) holding a `flow.json`."""
    p = Path(model_dir).resolve()
    for _ in range(max_up + 1):
        if (p / RECORD).is_file():
            return p
        if p.parent == p:
            break
        p = p.parent
    return None


def run_bpb_inputs(run_dir: Path) -> BpbInputs:
    """The BPB settings and items recorded by the run in `run_dir`."""
    path = run_dir / RECORD
    try:
        rec = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise FlowError(f"{path}:{exc.lineno}: corrupt run record ({exc.msg})") from None
    from flowlm.config import validate
    from flowlm.flow.schema import EvalConfig
    from flowlm.flow.stages.common import bpb_settings

    ecfg = validate(EvalConfig, ((rec.get("recipe") or {}).get("config") or {}).get("eval", {}), f"{path} recipe.config.eval")
    stages = rec.get("stages", {})
    corpus = [name for name, st in stages.items() if st.get("kind") == "corpus" and "bpb_eval" in st.get("outputs", {})]
    if not corpus:
        raise FlowError(f"{path}: the run has no finished corpus stage with BPB eval items")
    items_path = run_dir / stages[corpus[-1]]["outputs"]["bpb_eval"]
    try:
        raw = json.loads(items_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FlowError(f"{items_path}: cannot read the run's BPB eval items ({exc})") from None
    sets, heldout = bpb_settings(ecfg, raw)  # the flow's own selection rule, so the numbers agree
    source = f"run {run_dir} ({RECORD} eval section; items from {items_path.relative_to(run_dir)})"
    return BpbInputs(sets, heldout, ecfg.max_items, ecfg.batch_tokens, source)


def builtin_bpb_inputs(seed: int = 0) -> BpbInputs:
    """The built-in eval sets with the recipe defaults (a checkpoint outside any run)."""
    from flowlm.data.builtin import bpb_eval_sets, heldout_docs
    from flowlm.flow.schema import EvalConfig

    d = EvalConfig()
    return BpbInputs(bpb_eval_sets(seed), heldout_docs(d.heldout_docs), d.max_items, d.batch_tokens,
                     f"built-in eval sets (seed {seed}) with the recipe defaults")


def bpb_inputs(model_dir: Path, *, seed: int | None = None, max_items: int | None = None) -> BpbInputs:
    """The run's settings when `model_dir` is inside a run (and no seed is forced), else the built-in
    defaults; an explicit `max_items` overrides either (and says so in `source`)."""
    run_dir = find_run_dir(model_dir) if seed is None else None
    base = run_bpb_inputs(run_dir) if run_dir is not None else builtin_bpb_inputs(seed or 0)
    if max_items is None or max_items == base.max_items:
        return base
    return BpbInputs(base.sets, base.heldout, max_items, base.batch_tokens, f"{base.source}; max_items={max_items} (--max-items)")
