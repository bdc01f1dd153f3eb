"""`flowlm generate`: sample completions for a JSONL file of prompts with the rollout engine.

    flowlm generate --model CKPT [--file in.jsonl | -] [--out out.jsonl] [--n 4 --temperature 0.7 ...]

Prompts come from `--file` (`--prompts` is the older spelling) or stdin, and output rows go to stdout
or `--out`, the convention of every record verb (`flowlm.cli`); the progress bar and the summary
line go to stderr.

Input rows: `{"prompt": str}`, `{"messages": [...]}` (rendered with the checkpoint's chat template)
or `{"prompt_ids": [...]}`, optionally with `"sampling": {...}` overriding the command-line
parameters for that row. The whole file is parsed before any generation, so a malformed line fails
fast with `file:line`; a row that parses but cannot be generated (empty or too long prompt, invalid
sampling values) gets an `"error"` in its output row and the others complete. Output rows are the
input row plus `completions` (text, tokens, logprobs, versions, finish_reason), `error` and
`timings`, written in input order as soon as each prefix of the file is done (with `--out`, into a
temporary file renamed into place at the end).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from flowlm.cli import add_io_arguments, input_path, iter_input_objects, open_output, write_json_line
from flowlm.errors import ConfigError, FlowError
from flowlm.generate.params import SamplingParams

PROMPT_KEYS = ("prompt", "messages", "prompt_ids")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("generate", help="sample completions for a JSONL file of prompts")
    p.add_argument("--model", required=True, type=Path, help="checkpoint directory (flowlm or Hugging Face)")
    add_io_arguments(p, "prompts, one of prompt | messages | prompt_ids per row", input_aliases=("--prompts",),
                     out_help="write the output rows here (atomically) instead of to stdout")
    p.add_argument("--backend", choices=("native", "vllm"), default="native")
    p.add_argument("--n", type=int, default=1, help="completions per prompt")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--stop-token-id", action="append", type=int, default=[], help="stop token id (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="per-row seed = seed + line index")
    p.add_argument("--max-slots", type=int, default=64, help="sequences decoded together")
    p.add_argument("--no-thinking", action="store_true", help="chat rows: render with thinking disabled")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=main)


def base_params(args: argparse.Namespace) -> dict[str, Any]:
    return dict(n=args.n, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
                max_new_tokens=args.max_new_tokens, stop=tuple(args.stop), stop_token_ids=tuple(args.stop_token_id),
                seed=args.seed)


def read_rows(path: Path | None, base: dict[str, Any]) -> list[tuple[dict[str, Any], Any, SamplingParams]]:
    """Parse every line of `path` (None: stdin) into (row, prompt, params); a malformed line raises
    `FlowError` naming file:line."""
    rows = []
    for where, row in iter_input_objects(path):
        rows.append(_parse_row(where, row, base, len(rows)))
    if not rows:
        raise FlowError(f"{path or '<stdin>'}: no prompts")
    return rows


def _parse_row(where: str, row: dict[str, Any], base: dict[str, Any],
               index: int) -> tuple[dict[str, Any], Any, SamplingParams]:
    keys = [k for k in PROMPT_KEYS if k in row]
    if len(keys) != 1:
        raise FlowError(f"{where}: a row needs exactly one of {', '.join(PROMPT_KEYS)} (found {keys or 'none'})")
    prompt = row[keys[0]]
    expected = {"prompt": str, "messages": list, "prompt_ids": list}[keys[0]]
    if not isinstance(prompt, expected) or (keys[0] == "messages" and not all(isinstance(m, dict) for m in prompt)):
        raise FlowError(f"{where}: {keys[0]} has the wrong type ({type(prompt).__name__})")
    overrides = row.get("sampling", {})
    if not isinstance(overrides, dict):
        raise FlowError(f"{where}: sampling must be an object")
    kwargs = {**base, **overrides}
    if kwargs.get("seed") is not None and "seed" not in overrides:
        kwargs["seed"] = kwargs["seed"] + index  # distinct rows, reproducible run
    try:
        params = SamplingParams(**kwargs)
    except TypeError as exc:
        raise FlowError(f"{where}: sampling: {exc}") from None
    return row, prompt, params


def build_engine(args: argparse.Namespace) -> Any:
    if args.backend == "vllm":
        from flowlm.generate.vllm_backend import VLLMEngine

        return VLLMEngine(args.model, max_slots=args.max_slots, enable_thinking=not args.no_thinking)
    from flowlm.generate.engine import Engine, GenerateConfig

    return Engine.from_pretrained(args.model, GenerateConfig(max_slots=args.max_slots,
                                                             enable_thinking=not args.no_thinking))


def main(args: argparse.Namespace) -> int:
    problem = SamplingParams(**base_params(args)).validate()
    if problem:
        raise ConfigError(f"generate: {problem}")
    rows = read_rows(input_path(args.file, "generate"), base_params(args))
    engine = build_engine(args)
    order = [engine.submit(prompt, params, tag=row) for row, prompt, params in rows]
    with open_output(args.out) as out:
        n_err = _run(engine, order, out, show=not args.no_progress)
    where = f" -> {args.out}" if args.out is not None else ""
    print(f"generate: {len(rows) - n_err}/{len(rows)} requests done, {n_err} failed{where}", file=sys.stderr)
    return 0


def _run(engine: Any, order: list[int], out: TextIO, show: bool) -> int:
    """Stream results into `out` in input order; returns the number of failed requests."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    done: dict[int, Any] = {}
    next_pos, n_err, tokens, t0 = 0, 0, 0, time.perf_counter()
    columns = (TextColumn("generate"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeElapsedColumn())
    # The bar lives on stderr and leaves sys.stdout alone: stdout may be the output rows.
    with Progress(*columns, console=Console(stderr=True), disable=not show, redirect_stdout=False) as bar:
        task = bar.add_task("generate", total=len(order), rate="")
        for result in engine.stream():
            done[result.request_id] = result
            n_err += result.error is not None
            tokens += result.num_generated
            rate = tokens / max(time.perf_counter() - t0, 1e-9)
            bar.update(task, advance=1, rate=f"{rate:,.0f} tok/s")
            while next_pos < len(order) and order[next_pos] in done:
                res = done.pop(order[next_pos])
                write_json_line(out, {**res.tag, **res.to_dict()})
                next_pos += 1
            out.flush()
    return n_err
