"""Stage kind `trace`: how much of the models' eval answers occurs verbatim in their own training data.

It reads an eval stage's samples and traces each with `flowlm.trace` (OLMoTrace's span rules) against
the token stores that evaluated model and its ancestors trained on (`flowlm.trace.lineage`). It records
per model and suite:
- `match_coverage`: the mean share of answer tokens inside a verbatim match;
- `long_share`: the share of answers holding a verbatim run of at least `long_span` tokens;
- `longest`: the longest verbatim run of any answer (tokens);
- `top`: the three longest kept spans (OLMoTrace's rules), with the store each came from.

It writes every trace to `traces.jsonl`. An SFT model that copies its training answers shows up here
as answers made of long spans of the SFT store. A model that composes its answers from short common
pieces does not.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field

from flowlm.config import Strict
from flowlm.errors import FlowError
from flowlm.flow.stages.registry import StageContext, StageKind, StageResult, register


class TraceStageConfig(Strict):
    kind: Literal["trace"] = "trace"
    eval: str = Field(description="the eval stage whose samples are traced")
    models: list[str] | None = Field(None, description="models of that stage to trace (default: all)")
    max_items: int = Field(50, gt=0, description="answers traced per model and suite (the first sample of each item)")
    long_span: int = Field(12, gt=0, description="a verbatim run of at least this many tokens counts as a long copy")
    density: float = Field(0.05, gt=0, description="spans kept per output token, rarest first (OLMoTrace)")


def _inputs(ctx: StageContext, name: str, cfg: TraceStageConfig) -> list[str]:
    stage = ctx.recipe.stages.get(cfg.eval)
    if stage is None or stage.kind != "eval":
        raise FlowError(f"stage '{name}': eval '{cfg.eval}' is not an eval stage of recipe '{ctx.recipe.name}'")
    unknown = [m for m in cfg.models or [] if m not in stage.models]
    if unknown:
        raise FlowError(f"stage '{name}': models {unknown} are not evaluated by stage '{cfg.eval}' ({stage.models})")
    return [cfg.eval, *(m for m in (cfg.models or stage.models) if m in ctx.recipe.stages)]


def summarize(traces: list[dict[str, Any]], long_span: int) -> dict[str, Any]:
    """The numbers of one model × suite from its answers' traces (`flowlm.trace.tracer.trace_text` dicts)."""
    spans = [(s, t) for t in traces for s in t["spans"]]
    top = sorted(spans, key=lambda st: -st[0]["tokens"])[:3]
    n = len(traces)
    return {"outputs": n,
            "match_coverage": round(sum(t["match_coverage"] for t in traces) / n, 4) if n else None,
            "long_share": round(sum(t["longest_match"] >= long_span for t in traces) / n, 4) if n else None,
            "longest": max((t["longest_match"] for t in traces), default=0),
            "top": [{"text": s["text"], "tokens": s["tokens"], "count": s["count"],
                     "store": t["docs"][s["docs"][0]]["store"] if s["docs"] else None} for s, t in top]}


def run(ctx: StageContext, name: str, cfg: TraceStageConfig) -> StageResult:
    from flowlm.atomic import atomic_write_text
    from flowlm.trace.index import store_key
    from flowlm.trace.lineage import lineage_index, training_stores
    from flowlm.trace.tracer import TraceSettings, trace_text

    results = json.loads(ctx.path(ctx.outputs[cfg.eval]["results"]).read_text())["items"]
    stage = ctx.recipe.stages[cfg.eval]
    settings = TraceSettings(density=cfg.density)
    metrics: dict[str, Any] = {}
    lines = []
    for ref in cfg.models or stage.models:
        model_dir = ctx.model_dir(ref)
        try:  # a model from outside any run (an eval of a path) has no lineage to trace against
            lineage = training_stores(model_dir)
        except FlowError as exc:
            metrics[ref] = {"skipped": str(exc)}
            continue
        if not lineage.stores:
            metrics[ref] = {"skipped": "no token store among its training data"}
            continue
        # kept in this run, also for a model of another run (nothing is written into that one)
        keep = ctx.run_dir / "trace_index" / store_key([p for _, p in lineage.stores])
        index, tok = lineage_index(lineage, model_dir, keep)
        metrics[ref] = {}
        for suite, items in (results.get(ref) or {}).items():
            traces = []
            for item in items[: cfg.max_items]:
                if not item.get("samples"):
                    continue
                text = item["samples"][0].get("text") or ""
                trace = trace_text(index, tok, text, item.get("question") or "", settings)
                traces.append(trace)
                lines.append(json.dumps({"model": ref, "suite": suite, "id": item.get("id"), "text": text,
                                         "trace": trace}, ensure_ascii=False))
            metrics[ref][suite] = summarize(traces, cfg.long_span)
    out = ctx.path(name)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "traces.jsonl", "".join(line + "\n" for line in lines))
    return {"traces": f"{name}/traces.jsonl"}, {"traces": metrics}


register(StageKind(name="trace", config=TraceStageConfig, run=run, inputs=_inputs, main_rank_only=True))
