"""Entry points over the harness: several checkpoints × several suites (the flow's eval stage and the CLI),
and an in-training evaluation function for the train engine's `EvalCallback`.

    results = evaluate_models({"sft": Path("runs/x/sft/model")}, [load_suite("builtin")], corpus_paths=[...])
    results["sft"]["builtin"].summary            # pass@k, mean_reward, maj@n, lengths, contamination
    fn = make_generation_eval_fn(tokenizer, [load_suite("arithmetic", n=64)])    # fn(model) -> {name: value}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flowlm.errors import ConfigError
from flowlm.eval.harness import SamplingSettings, SuiteResult, build_engine, run_suites
from flowlm.eval.prompting import PromptFormat
from flowlm.eval.suites import Suite, load_suite

HEADLINE = ("pass@1", "mean_reward")


def parse_suite_specs(specs: Sequence[str], file: str | Path | None = None) -> list[tuple[str, str | None]]:
    """`["gsm8k=/d/test.jsonl", "builtin", "mbpp"]` → `[(name, path | None)]`; `file` is the path of the
    one file suite without `=PATH` (an error when that is ambiguous)."""
    out: list[tuple[str, str | None]] = []
    for spec in specs:
        for part in (p.strip() for p in str(spec).split(",")):
            if part:
                name, _, path = part.partition("=")
                out.append((name.strip(), path.strip() or None))
    from flowlm.eval.suites import BUILTIN_SUITES, suite_names

    if not out:
        raise ConfigError(f"no suite named in {list(specs)!r}; suites: {', '.join(suite_names())}")
    needs = [i for i, (name, path) in enumerate(out) if path is None and name not in BUILTIN_SUITES]
    if file is not None:
        if len(needs) != 1:
            raise ConfigError(f"--file goes with exactly one file suite without =PATH; got {[out[i][0] for i in needs] or 'none'}")
        out[needs[0]] = (out[needs[0]][0], str(file))
    return out


def load_suites(specs: Sequence[tuple[str, str | None]], *, max_items: int | None = None, seed: int = 0) -> list[Suite]:
    return [load_suite(name, path, n=max_items, seed=seed) for name, path in specs]


def evaluate_models(models: dict[str, str | Path], suites: list[Suite], *, fmt: PromptFormat | None = None,
                    sampling: SamplingSettings | None = None, backend: str = "native", max_slots: int = 64,
                    workers: int = 2, timeout: float = 60.0, corpus_paths: Sequence[str | Path] = (),
                    progress: Callable[[str, int, int], None] | None = None) -> dict[str, dict[str, SuiteResult]]:
    """Every model (label → checkpoint dir) on every suite. With `corpus_paths` (the run's training data)
    each suite's contamination share is checked once and stored in every summary as `contamination`."""
    from flowlm.eval.contamination import contamination_report

    fmt, sampling = fmt or PromptFormat(), sampling or SamplingSettings()
    contamination = {s.name: contamination_report(s.items, corpus_paths, name=s.name) for s in suites} if corpus_paths else {}
    out: dict[str, dict[str, SuiteResult]] = {}
    for label, path in models.items():
        engine = build_engine(path, backend=backend, max_slots=max_slots)
        tick = (lambda done, total, label=label: progress(label, done, total)) if progress else None
        out[label] = run_suites(engine, suites, fmt, sampling, workers=workers, timeout=timeout, progress=tick)
        for name, result in out[label].items():
            if name in contamination:
                c = contamination[name]
                result.summary.update(contamination=c["share"], contamination_unchecked=c["unchecked"],
                                      contaminated_ids=c["matched_ids"])
        del engine
    return out


def make_generation_eval_fn(tokenizer: Any, suites: list[Suite], *, fmt: PromptFormat | None = None,
                            sampling: SamplingSettings | None = None, max_slots: int = 64,
                            metrics: Sequence[str] = HEADLINE,
                            by_category: bool = False) -> Callable[[Any], dict[str, float]]:
    """`fn(model) -> {"<suite>/<metric>": value}` for `flowlm.train.engine.EvalCallback`: generates with a
    private copy of the model's weights (the engine copies the module; training is not disturbed) and
    verifies in this process (no worker pool inside a training job). Defaults to greedy decoding, which
    keeps in-loop curves free of sampling noise. Single-process models only (an FSDP-sharded model would
    need its full state gathered first). With `sampling.n` > 1 pass@n is added to `metrics`; with
    `by_category`, `"<suite>/<category>/pass@1"` (and pass@n) for every category of a suite's items."""
    from flowlm.generate import engine as gen

    fmt = fmt or PromptFormat()
    sampling = sampling or SamplingSettings(temperature=0.0)

    keys = [*metrics, f"pass@{sampling.n}"] if sampling.n > 1 else list(metrics)

    def fn(model: Any) -> dict[str, float]:
        # A `torch.compile`d module wraps the model it runs; the engine needs the model itself.
        engine = gen.Engine(getattr(model, "_orig_mod", model), tokenizer, gen.GenerateConfig(max_slots=max_slots))
        results = run_suites(engine, suites, fmt, sampling, workers=0)
        out = {f"{name}/{m}": float(r.summary[m]) for name, r in results.items() for m in keys if m in r.summary}
        if by_category:
            for name, r in results.items():
                for cat, sub in r.summary.get("by_category", {}).items():
                    out.update({f"{name}/{cat}/{k}": float(v) for k, v in sub.items() if k.startswith("pass@")})
        return out

    return fn


def results_table(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    """(model, suite, summary) rows from `{model: {suite: SuiteResult | summary dict}}`."""
    rows = []
    for model, suites in results.items():
        for suite, r in suites.items():
            rows.append((model, suite, r.summary if isinstance(r, SuiteResult) else r))
    return rows


def sandbox_for(suites: Any) -> dict[str, Any] | None:
    """The sandbox that will score these suites' code (`flowlm.verify.sandbox.backend_info`), None when no
    item runs code. Raises `SandboxUnavailable` (one line) before anything is generated when none works."""
    from flowlm.verify.code_verifier import SANDBOXED
    from flowlm.verify.sandbox import backend_info

    names = {n for suite in suites for it in suite.items for n in it.verifier_names()}
    return backend_info() if names & set(SANDBOXED) else None
