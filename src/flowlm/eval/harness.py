"""Generation-based evaluation: render every item, sample n answers through `flowlm.generate`, score
every answer with `flowlm.verify`, summarise per suite (`flowlm.eval.passk`).

    engine = build_engine("runs/tiny/sft/model")                 # native / HF path / vLLM
    results = run_suites(engine, [load_suite("builtin")], PromptFormat(), SamplingSettings(n=4))
    results["builtin"].summary["pass@1"], results["builtin"].items[0]["samples"][0]["reason"]

All suites' requests go to the engine at once (continuous batching keeps its slots full across suite
boundaries), then all answers go to one verifier pool. Sample i of item j uses the seed
`seed + j * n + i`, so a result does not depend on batching or on which other suites ran.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from flowlm.errors import ConfigError
from flowlm.eval.passk import summarize
from flowlm.eval.prompting import PromptFormat, Rendered, render
from flowlm.eval.suites import Suite


@dataclass(frozen=True, kw_only=True)
class SamplingSettings:
    """Sampling for every suite of one eval. `temperature=0` is greedy."""

    n: int = 1
    """Samples per item (pass@k is reported for every k <= n)."""
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0
    max_new_tokens: int | None = None
    """None: each suite's own default (`Suite.max_new_tokens`)."""
    seed: int = 0

    def __post_init__(self) -> None:
        from flowlm.generate.params import SamplingParams

        problem = SamplingParams(n=self.n, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                                 max_new_tokens=self.max_new_tokens or 1, seed=self.seed).validate()
        if problem:
            raise ConfigError(f"eval sampling: {problem}")


@dataclass
class SuiteResult:
    """Summary metrics and per-item detail (samples, scores, reasons) of one suite."""

    name: str
    summary: dict[str, Any]
    items: list[dict[str, Any]] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "items": self.items}


def build_engine(model_dir: str | Path, *, backend: str = "native", max_slots: int = 64,
                 context: int | None = None) -> Any:
    """An engine for a checkpoint: native (flowlm / Olmo3 weights natively, other HF models through the
    engine's HF path) or vLLM (`backend="vllm"`; `auto` picks vLLM when it is installed and CUDA is up)."""
    if backend == "auto":
        backend = "vllm" if _vllm_usable() else "native"
    if backend == "vllm":
        from flowlm.generate.vllm_backend import VLLMEngine

        return VLLMEngine(model_dir, max_slots=max_slots, context=context)
    if backend != "native":
        raise ConfigError(f"eval backend must be native, vllm or auto, got {backend!r}")
    from flowlm.generate import engine as gen

    return gen.Engine.from_pretrained(model_dir, gen.GenerateConfig(max_slots=max_slots, context=context))


def _vllm_usable() -> bool:
    import importlib.util

    import torch

    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def _params(suite: Suite, r: Rendered, s: SamplingSettings, index: int) -> Any:
    from flowlm.generate.params import SamplingParams

    return SamplingParams(n=s.n, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                          max_new_tokens=s.max_new_tokens or suite.max_new_tokens, stop=r.stop,
                          stop_token_ids=r.stop_token_ids, seed=s.seed + index * s.n)


def generate(engine: Any, suites: list[Suite], fmt: PromptFormat, sampling: SamplingSettings,
             progress: Callable[[int, int], None] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Per suite, per item: `{id, question, prompt_tokens, ground_truth, samples: [...], error}` with
    samples `{text, tokens, finish_reason, unclosed_think}` (unscored)."""
    tok = engine.tokenizer
    if tok is None:
        raise ConfigError("eval needs the checkpoint's tokenizer (tokenizer.json next to the weights)")
    out: dict[str, list[dict[str, Any]]] = {s.name: [] for s in suites}
    owner: dict[int, tuple[dict[str, Any], Rendered]] = {}
    for suite in suites:
        for j, item in enumerate(suite.items):
            r = render(item, suite, fmt, tok)
            rec = {"id": item.id, "category": item.category, "question": item.question, "prompt_tokens": len(r.ids),
                   "ground_truth": item.row.get("ground_truth", item.row.get("verifiers")), "samples": [],
                   "error": None}
            out[suite.name].append(rec)
            owner[engine.submit(r.ids, _params(suite, r, sampling, j))] = (rec, r)
    done = 0
    for result in engine.stream():
        rec, r = owner[result.request_id]
        rec["error"] = result.error
        rec["samples"] = [_sample(c, r) for c in result.completions]
        done += 1
        if progress is not None:
            progress(done, len(owner))
    return out


def _sample(c: Any, r: Rendered) -> dict[str, Any]:
    opened = r.think_open or "<think>" in c.text
    out = {"text": c.text, "tokens": len(c.tokens), "finish_reason": c.finish_reason,
           "unclosed_think": opened and "</think>" not in c.text}
    if c.tool_mask is not None:  # with tools: `tokens` counts the generated ones, not the tools' answers
        out.update(tokens=len(c.tokens) - sum(c.tool_mask), tool_calls=c.tool_calls, tool_errors=c.tool_errors)
    return out


def score(suites: list[Suite], generated: dict[str, list[dict[str, Any]]], *, workers: int = 2,
          timeout: float = 60.0) -> None:
    """Fill `score`, `reason` and (math) `answer` into every sample, in place. `workers=0` verifies in
    this process (no hard timeout beyond the verifiers' own)."""
    from flowlm.verify import verify_row, verify_rows

    rows, comps, slots = [], [], []
    for suite in suites:
        for item, rec in zip(suite.items, generated[suite.name]):
            for sample in rec["samples"]:
                rows.append(item.row)
                comps.append(sample["text"])
                slots.append(sample)
    if workers > 0 and rows:
        verdicts = verify_rows(rows, comps, workers=workers, timeout=timeout)
    else:
        verdicts = [verify_row(row, comp) for row, comp in zip(rows, comps)]
    for sample, v in zip(slots, verdicts):
        sample.update(score=v.score, reason=v.reason, answer=_canonical(v.meta.get("extracted")))


def _canonical(answer: Any) -> str | None:
    """Majority-vote key: the MATH-style canonical string of an extracted answer."""
    if not isinstance(answer, str) or not answer.strip():
        return None
    from flowlm.verify.math_normalize import normalize

    try:
        return normalize(answer)
    except Exception:  # noqa: BLE001 - odd model output must not stop a vote
        return answer.strip()


def run_suites(engine: Any, suites: list[Suite], fmt: PromptFormat, sampling: SamplingSettings, *,
               workers: int = 2, timeout: float = 60.0,
               progress: Callable[[int, int], None] | None = None) -> dict[str, SuiteResult]:
    """Generate, score and summarise every suite (see module docstring)."""
    names = [s.name for s in suites]
    if len(set(names)) != len(names):
        raise ConfigError(f"eval: suite names must be distinct, got {names}")
    if fmt.tools:  # the model's calls run between its turns; the reply after the last call is scored
        from flowlm.tools.builtin import usable_tools
        from flowlm.tools.engine import ToolEngine

        engine = ToolEngine(engine, usable_tools(list(fmt.tools)), max_calls=fmt.max_tool_calls, enable_thinking=fmt.thinking,
                            workers=fmt.tool_workers)
    stats0 = dict(getattr(engine, "stats", {}))
    t0 = time.perf_counter()
    generated = generate(engine, suites, fmt, sampling, progress)
    gen_s = time.perf_counter() - t0
    tokens = getattr(engine, "stats", {}).get("generated_tokens", 0) - stats0.get("generated_tokens", 0)
    t1 = time.perf_counter()
    score(suites, generated, workers=workers, timeout=timeout)
    score_s = time.perf_counter() - t1
    out = {}
    for suite in suites:
        items = generated[suite.name]
        summary = summarize(items, sampling.n, majority=suite.majority_vote)
        summary.update(source=suite.source)
        out[suite.name] = SuiteResult(suite.name, summary, items)
    n_items = sum(len(s.items) for s in suites)
    timing = {"generate_s": round(gen_s, 3), "score_s": round(score_s, 3), "items_per_s": n_items / max(gen_s, 1e-9),
              "generated_tokens": tokens, "tokens_per_s": tokens / max(gen_s, 1e-9)}
    for r in out.values():
        r.summary["timing"] = timing
    return out
