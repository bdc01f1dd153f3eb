"""Stage kind `eval`: generation-based evaluation of earlier stages' models (or checkpoint paths) on suites.

    evaluate:
      kind: eval
      models: [sft, dpo]                 # earlier stages (their `model` output) or checkpoint paths
      suites: [builtin, gsm8k=/data/gsm8k/test.jsonl]
      n: 4
      temperature: 0.6

Every suite is first checked against the training data of the evaluated models (`flowlm.eval.contamination`):
the corpus stage's JSONL corpora, the rows of every data-building stage the models descend from (SFT rows,
preference pairs), and those stages' prompt files (an rl stage's `prompts:` file, or its benchmark spec
`gsm8k=PATH`); the matched share is stored next to the score. Output: `<name>/results.json`
(settings, per-suite summaries and every item's samples, scores and reasons); `flow.json` gets the
summaries as `metrics.results[model][suite]`, which `flowlm report` shows as a stage × suite table.
Benchmark files named in `suites` are declared inputs, so editing one reruns the stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from flowlm.atomic import atomic_write_json
from flowlm.config import Strict
from flowlm.flow.stages.registry import StageContext, StageKind, StageResult, register

HEADLINE_KEYS = ("items", "n", "mean_reward", "mean_tokens", "truncated", "unclosed_think", "errors",
                 "contamination", "contamination_unchecked", "by_category", "tool_calls", "tool_use", "tool_errors")


class EvalStageConfig(Strict):
    """Which models, which suites, and how to prompt and sample (see `flowlm eval --help`)."""

    kind: Literal["eval"] = "eval"
    models: list[str] = Field(min_length=1, description="earlier stage names or checkpoint paths")
    suites: list[str] = Field(default_factory=lambda: ["builtin"], min_length=1,
                              description="suite names; file suites as NAME=PATH")
    max_items: int | None = Field(None, gt=0, description="first N items per suite (built-in: N generated)")
    n: int = Field(1, ge=1, description="samples per item")
    temperature: float = Field(0.6, ge=0, description="0 = greedy")
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int | None = Field(None, gt=0, description="default: each suite's own")
    format: Literal["chat", "plain"] = "chat"
    thinking: bool = True
    switch: Literal["", "/think", "/no_think"] = ""
    fewshot: int = Field(0, ge=0)
    tools: list[str] = Field(default_factory=list, description="chat: built-in tools (calculator, python) the models "
                             "may call while they answer; the reply after the last call is scored")
    max_tool_calls: int = Field(5, ge=1, description="with tools: calls per sample at most")
    tool_workers: int = Field(8, ge=0, description="with tools: threads that run calls beside decoding (0: inline, "
                              "a schedule that depends on the seeds alone)")
    seed: int = 0
    contamination: bool = Field(True, description="check suites against the run's corpora")
    backend: Literal["native", "vllm", "auto"] = "native"
    max_slots: int = Field(64, gt=0)
    workers: int = Field(2, ge=0, description="verifier processes (0 = in the stage's process)")
    timeout: float = Field(60.0, gt=0, description="hard limit per verification (s)")


def _suite_files(cfg: EvalStageConfig) -> list[str]:
    from flowlm.eval.evaluate import parse_suite_specs

    return [path for _, path in parse_suite_specs(cfg.suites) if path is not None]


def _inputs(ctx: StageContext, name: str, cfg: EvalStageConfig) -> list[str]:
    if not cfg.contamination:
        return [*cfg.models, *_suite_files(cfg)]
    from flowlm.rl.prompts import spec_file

    stages, files = _training_sources(ctx, name, cfg)
    return [*cfg.models, *stages, *(spec_file(f) for f in files), *_suite_files(cfg)]


def _training_sources(ctx: StageContext, name: str, cfg: EvalStageConfig) -> tuple[list[str], list[str]]:
    """Where the training data of the evaluated models lives: stages (the latest corpus stage, and every
    data-building stage among the models' ancestors: SFT rows, preference pairs) and files outside the run
    (an ancestor's `prompts` or `data` given as a path, or as a benchmark spec `gsm8k=PATH`). Ancestors are
    followed through the stages' declared inputs, so a data stage no evaluated model descends from is not
    scanned (nor run for it). Built-in prompts have no file: they are training-split items without
    near-duplicates of the built-in eval items (`flowlm.data.tasks.generate_clean`)."""
    from flowlm.flow.stages.registry import declared_inputs, get_kind
    from flowlm.rl.prompts import benchmark_spec

    stages, files = [ctx.latest("corpus", name)], []
    todo, seen = [m for m in cfg.models if m in ctx.recipe.stages], set()
    while todo:
        ref = todo.pop(0)
        if ref in seen:
            continue
        seen.add(ref)
        stage = ctx.recipe.stages[ref]
        if get_kind(stage.kind).makes_data and ref not in stages:
            stages.append(ref)
        for field in ("prompts", "data"):
            source = getattr(stage, field, None)
            if isinstance(source, str) and source not in ctx.recipe.stages and (
                    "/" in source or benchmark_spec(source) is not None) and source not in files:
                files.append(source)
        todo += [r for r in declared_inputs(ctx, ref, stage) if r in ctx.recipe.stages]
    return stages, files


def _training_files(ctx: StageContext, name: str, cfg: EvalStageConfig) -> list[Path | str]:
    """The files the contamination check scans: the corpus stage's JSONL corpora, the data stages' rows,
    and the outside files of `_training_sources` (a benchmark spec stays a spec: its rows are read)."""
    from flowlm.rl.prompts import benchmark_spec

    (corpus, *data_stages), files = _training_sources(ctx, name, cfg)
    out: list[Path | str] = [ctx.path(rel) for rel in ctx.outputs[corpus].values() if rel.endswith(".jsonl")]
    out += [ctx.path(ctx.outputs[s]["rows"]) for s in data_stages if "rows" in ctx.outputs[s]]
    return out + [f if benchmark_spec(f) is not None else Path(f) for f in files]


def _shown(ctx: StageContext, path: Path | str) -> str:
    """A scanned file as the results name it: relative to the run directory when inside it."""
    if isinstance(path, Path) and path.is_relative_to(ctx.run_dir):
        return str(path.relative_to(ctx.run_dir))
    return str(path)


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary numbers kept in `flow.json`: pass@k for k = 1, 2, 4, ... and n, maj@n, lengths, flags,
    and the per-category breakdown."""
    n = int(summary.get("n", 1))
    ks = sorted({k for k in (2**i for i in range(12)) if k <= n} | {n})
    keep = [*HEADLINE_KEYS, *(f"pass@{k}" for k in ks), f"maj@{n}"]
    return {k: summary[k] for k in keep if k in summary}


def run(ctx: StageContext, name: str, cfg: EvalStageConfig) -> StageResult:
    from flowlm.eval.evaluate import evaluate_models, load_suites, parse_suite_specs, sandbox_for
    from flowlm.eval.harness import SamplingSettings
    from flowlm.eval.prompting import PromptFormat

    fmt = PromptFormat(style=cfg.format, thinking=cfg.thinking, switch=cfg.switch, fewshot=cfg.fewshot,
                       tools=tuple(cfg.tools), max_tool_calls=cfg.max_tool_calls, tool_workers=cfg.tool_workers)
    sampling = SamplingSettings(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p,
                                max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    suites = load_suites(parse_suite_specs(cfg.suites), max_items=cfg.max_items, seed=cfg.seed)
    sandbox = sandbox_for(suites)  # fails before any generation when code cannot be scored safely
    models = {ref: ctx.model_dir(ref) for ref in cfg.models}
    corpora = _training_files(ctx, name, cfg) if cfg.contamination else []
    results = evaluate_models(models, suites, fmt=fmt, sampling=sampling, backend=cfg.backend,
                              max_slots=cfg.max_slots, workers=cfg.workers, timeout=cfg.timeout, corpus_paths=corpora)
    doc = {"settings": {"format": fmt.__dict__, "sampling": sampling.__dict__,
                        "models": {ref: str(p) for ref, p in models.items()},
                        "corpora": [_shown(ctx, p) for p in corpora], "sandbox": sandbox},
           "results": {m: {s: r.summary for s, r in by_suite.items()} for m, by_suite in results.items()},
           "items": {m: {s: r.items for s, r in by_suite.items()} for m, by_suite in results.items()}}
    out = ctx.path(name) / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, doc)
    metrics = {"results": {m: {s: headline(r.summary) for s, r in by_suite.items()} for m, by_suite in results.items()}}
    if sandbox is not None:  # which backend scored the code, in the run record
        metrics["sandbox"] = sandbox
    return {"results": f"{name}/results.json"}, metrics


register(StageKind(name="eval", config=EvalStageConfig, run=run, inputs=_inputs, main_rank_only=True,
                   default_for=("eval",)))
