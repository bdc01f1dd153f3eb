"""`flowlm eval`: generation-based evaluation of a checkpoint on suites, or its BPB (no `--suite`).

    flowlm eval --model DIR --suite builtin,gsm8k=/data/gsm8k/test.jsonl [--n 8] [--temperature 0.6]
                [--max-new-tokens N] [--format chat|plain] [--no-thinking] [--out results.json]
    flowlm eval --model DIR --suite humaneval --file /data/humaneval/HumanEval.jsonl.gz
    flowlm eval --model RUN/soup/model                 # BPB, with the run's own eval settings

Suite mode prints a table (suite × metrics) on stderr and the results — settings, per-suite summary and
per-item detail (every sample's text, score and reason) — as one JSON document on stdout, or atomically
to `--out`. BPB mode prints its numbers as JSON the same way and says on stderr which settings it used:
a checkpoint inside a run directory is scored with that run's `eval` section and items, so the numbers
equal the ones in its `flow.json`. Bad input names the file and line; a verifier whose Python
dependency is missing names the package before anything is generated.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("eval", help="evaluate a checkpoint: pass@k on suites (--suite) or BPB")
    p.add_argument("--model", required=True, type=Path, help="checkpoint directory (flowlm or Hugging Face)")
    p.add_argument("--suite", action="append", default=[], metavar="NAME[=PATH][,...]",
                   help="suites: builtin, arithmetic, ..., gsm8k, math500, math, aime, amc, humaneval, mbpp, "
                        "ifeval, ifbench, jsonl (files: NAME=PATH or --file); none = BPB mode")
    p.add_argument("--file", type=Path, default=None, help="the file (or folder) of the one file suite")
    p.add_argument("--out", type=Path, default=None, help="write the JSON results here instead of stdout")
    p.add_argument("--n", type=int, default=1, help="samples per item (pass@k for every k <= n)")
    p.add_argument("--temperature", type=float, default=0.6, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: each suite's own")
    p.add_argument("--max-items", type=int, default=None, help="first N items per suite (BPB: per task)")
    p.add_argument("--format", choices=("chat", "plain"), default="chat", help="chat template or plain template")
    p.add_argument("--no-thinking", action="store_true", help="chat: enable_thinking=False (hard switch)")
    p.add_argument("--switch", choices=("/think", "/no_think"), default="", help="chat: soft switch in the user turn")
    p.add_argument("--fewshot", type=int, default=0, help="worked examples before each question")
    p.add_argument("--tools", default=None, metavar="NAME[,NAME]",
                   help="chat: tools the model may call while it answers (built-in: calculator, python; or "
                        "mcp:COMMAND, an MCP server's); the reply after its last call is scored")
    p.add_argument("--max-tool-calls", type=int, default=None, metavar="N", help="with --tools: calls per sample (5)")
    p.add_argument("--tool-workers", type=int, default=None, metavar="N",
                   help="with --tools: threads that run calls beside decoding (8; 0 = inline, a schedule that "
                        "depends on the seeds alone)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (BPB: seed of the built-in sets)")
    p.add_argument("--backend", choices=("native", "vllm", "auto"), default="native")
    p.add_argument("--max-slots", type=int, default=64, help="sequences decoded together")
    p.add_argument("--workers", type=int, default=2, help="verifier processes (0 = in this process)")
    p.add_argument("--timeout", type=float, default=60.0, help="hard time limit per verification (s)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from flowlm.cli import check_output

    check_output(args.out)
    check_arguments(args)
    if not args.suite:
        return _bpb(args)
    from flowlm.eval.evaluate import evaluate_models, load_suites, parse_suite_specs, sandbox_for
    from flowlm.eval.harness import SamplingSettings
    from flowlm.eval.prompting import PromptFormat

    fmt = PromptFormat(style=args.format, thinking=not args.no_thinking, switch=args.switch, fewshot=args.fewshot,
                       tools=tuple(n.strip() for n in (args.tools or "").split(",") if n.strip()),
                       max_tool_calls=5 if args.max_tool_calls is None else args.max_tool_calls,
                       tool_workers=8 if args.tool_workers is None else args.tool_workers)
    sampling = SamplingSettings(n=args.n, temperature=args.temperature, top_p=args.top_p,
                                max_new_tokens=args.max_new_tokens, seed=args.seed or 0)
    suites = load_suites(parse_suite_specs(args.suite, args.file), max_items=args.max_items)
    sandbox = sandbox_for(suites)
    if sandbox is not None:
        from flowlm.verify.sandbox import describe_backend

        print(f"sandbox: {describe_backend()}", file=sys.stderr)
    with _progress(not args.no_progress) as tick:
        results = evaluate_models({str(args.model): args.model}, suites, fmt=fmt, sampling=sampling,
                                  backend=args.backend, max_slots=args.max_slots, workers=args.workers,
                                  timeout=args.timeout, progress=tick)[str(args.model)]
    print_table({name: r.summary for name, r in results.items()}, sampling.n)
    doc = {"model": str(args.model), "settings": {"format": fmt.__dict__, "sampling": sampling.__dict__,
                                                  "sandbox": sandbox},
           "results": {name: r.summary for name, r in results.items()},
           "items": {name: r.items for name, r in results.items()}}
    _write(args.out, doc)
    return _report_failures(results)


def _report_failures(results: dict[str, Any]) -> int:
    """1 with a one-line error on stderr naming the first failed item when any request failed (e.g. a
    prompt longer than the model's context): the results are written, those items score 0 and are
    counted in `errors`, but a run with holes in it must not pass as a clean one. Else 0."""
    failed = [(name, it) for name, r in results.items() for it in r.items if it.get("error")]
    if not failed:
        return 0
    name, it = failed[0]
    more = f" (and {len(failed) - 1} more; see each item's \"error\")" if len(failed) > 1 else ""
    print(f"error: eval: suite {name!r} item {it['id']!r} failed: {it['error']}{more}; "
          f"{len(failed)} item(s) scored 0", file=sys.stderr)
    return 1


def check_arguments(args: argparse.Namespace) -> None:
    """Reject option values that would be ignored or misread, before any model is loaded (`ConfigError`)."""
    from flowlm.errors import ConfigError

    if args.file is not None and not args.suite:
        raise ConfigError("--file needs --suite (e.g. --suite jsonl); without --suite, eval computes BPB "
                          "on the built-in or the run's own sets")
    if args.max_items is not None and args.max_items < 1:
        raise ConfigError(f"--max-items must be >= 1, got {args.max_items}")
    if not math.isfinite(args.timeout) or args.timeout <= 0:
        raise ConfigError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    if args.max_tool_calls is not None and not args.tools:
        raise ConfigError("--max-tool-calls needs --tools")
    if args.tool_workers is not None and not args.tools:
        raise ConfigError("--tool-workers needs --tools")
    if args.tools is not None and not args.suite:
        raise ConfigError("--tools needs --suite (tools are offered to generated answers; BPB generates nothing)")
    if args.tools is not None and not any(n.strip() for n in args.tools.split(",")):
        raise ConfigError("--tools: name at least one tool (calculator, python)")
    if args.workers < 0:
        raise ConfigError(f"--workers must be >= 0 (0 = verify in this process), got {args.workers}")
    from flowlm.generate.params import check_slots

    check_slots(args.n, args.max_slots, "item")


def _bpb(args: argparse.Namespace) -> int:
    from flowlm.eval.bpb import evaluate_bpb
    from flowlm.eval.runsettings import bpb_inputs
    from flowlm.model.adapter import load_causal_lm
    from flowlm.model.tokenizer import load_tokenizer

    inputs = bpb_inputs(args.model, seed=args.seed, max_items=args.max_items)
    print(f"eval: BPB settings from {inputs.source}: max_items={inputs.max_items}, "
          f"heldout_docs={len(inputs.heldout)}, tasks={sorted(inputs.sets)}", file=sys.stderr)
    model = load_causal_lm(args.model).eval()
    tok = load_tokenizer(args.model)
    scores = evaluate_bpb(model, tok, inputs.sets, max_items=inputs.max_items, batch_tokens=inputs.batch_tokens,
                          heldout_docs=inputs.heldout)
    _write(args.out, scores if args.out is None else {**scores, "settings": inputs.describe()})
    return 0


def _write(out: Path | None, doc: dict[str, Any]) -> None:
    from flowlm.cli import open_output

    with open_output(out) as fh:
        fh.write(json.dumps(doc, indent=1, ensure_ascii=False, default=str) + "\n")


class _progress:
    """A rich progress bar on stderr (or nothing) fed by `tick(model, done, total)`."""

    def __init__(self, show: bool) -> None:
        self.show, self.bar, self.task = show, None, None

    def __enter__(self):
        if not self.show:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("eval"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=Console(stderr=True))
        self.bar.__enter__()
        return self.tick

    def tick(self, model: str, done: int, total: int) -> None:
        if self.task is None:
            self.task = self.bar.add_task("eval", total=total)
        self.bar.update(self.task, completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


def print_table(summaries: dict[str, dict[str, Any]], n: int) -> None:
    """suite × (items, mean reward, pass@1, pass@n, maj@n, tokens, truncated, unclosed think) on stderr,
    with a row per category under a suite whose items fall in more than one (`by_category`)."""
    from rich.console import Console
    from rich.table import Table

    labels = {"items": "items", "mean_reward": "reward", "pass@1": "pass@1", f"pass@{n}": f"pass@{n}",
              f"maj@{n}": f"maj@{n}", "mean_tokens": "tokens", "truncated": "at limit", "unclosed_think": "open think",
              "tool_use": "used tools", "tool_calls": "calls", "contamination": "contam."}
    cols = [c for c in labels if any(c in s for s in summaries.values())]
    table = Table(title="eval")
    table.add_column("suite")
    for c in cols:
        table.add_column(labels[c], justify="right")
    for name, s in summaries.items():
        table.add_row(name, *(_fmt(s.get(c)) for c in cols))
        by_category = s.get("by_category") or {}
        if len(by_category) > 1:  # one row per category under its suite (the columns it has)
            for cat, sub in by_category.items():
                table.add_row(f"  {cat}", *(_fmt(sub.get(c)) for c in cols))
    Console(stderr=True).print(table)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 10 else f"{v:.4f}"
    return str(v)
