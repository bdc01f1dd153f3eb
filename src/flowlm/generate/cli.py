"""`flowlm generate`: sample completions for a JSONL file of prompts with the rollout engine.

    flowlm generate --model CKPT --prompts in.jsonl --out out.jsonl [--n 4 --temperature 0.7 ...]

Input rows: `{"prompt": str}`, `{"messages": [...]}` (rendered with the checkpoint's chat template)
or `{"prompt_ids": [...]}`, optionally with `"sampling": {...}` overriding the command-line
parameters for that row. The whole file is parsed before any generation, so a malformed line fails
fast with `file:line`; a row that parses but cannot be generated (empty or too long prompt, invalid
sampling values) gets an `"error"` in its output row and the others complete. Output rows are the
input row plus `completions` (text, tokens, logprobs, versions, finish_reason), `error` and
`timings`, written in input order as soon as each prefix of the file is done (atomically renamed
into place at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from flowlm.errors import ConfigError, FlowError
from flowlm.jsonlines import iter_json_objects
from flowlm.generate.params import SamplingParams

PROMPT_KEYS = ("prompt", "messages", "prompt_ids")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("generate", help="sample completions for a JSONL file of prompts")
    p.add_argument("--model", required=True, type=Path, help="checkpoint directory (flowlm or Hugging Face)")
    p.add_argument("--prompts", required=True, type=Path, help="JSONL: prompt | messages | prompt_ids per row")
    p.add_argument("--out", required=True, type=Path, help="output JSONL")
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


def read_rows(path: Path, base: dict[str, Any]) -> list[tuple[dict[str, Any], Any, SamplingParams]]:
    """Parse every line into (row, prompt, params); a malformed line raises `FlowError` naming file:line."""
    if not path.exists():
        raise FlowError(f"{path}: no such prompts file")
    rows = []
    for lineno, row in iter_json_objects(path):
        rows.append(_parse_row(path, lineno, row, base, len(rows)))
    if not rows:
        raise FlowError(f"{path}: no prompts")
    return rows


def _parse_row(path: Path, lineno: int, row: dict[str, Any], base: dict[str, Any],
               index: int) -> tuple[dict[str, Any], Any, SamplingParams]:
    where = f"{path}:{lineno}"
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
    from flowlm.generate.engine import Engine, EngineConfig

    return Engine.from_pretrained(args.model, EngineConfig(max_slots=args.max_slots,
                                                           enable_thinking=not args.no_thinking))


def main(args: argparse.Namespace) -> int:
    problem = SamplingParams(**base_params(args)).validate()
    if problem:
        raise ConfigError(f"generate: {problem}")
    rows = read_rows(args.prompts, base_params(args))
    engine = build_engine(args)
    order = [engine.submit(prompt, params, tag=row) for row, prompt, params in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    n_err = _run(engine, order, tmp, show=not args.no_progress)
    os.replace(tmp, args.out)
    print(f"generate: {len(rows) - n_err}/{len(rows)} requests done, {n_err} failed -> {args.out}")
    return 0


def _run(engine: Any, order: list[int], tmp: Path, show: bool) -> int:
    """Stream results into `tmp` in input order; returns the number of failed requests."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    done: dict[int, Any] = {}
    next_pos, n_err, tokens, t0 = 0, 0, 0, time.perf_counter()
    columns = (TextColumn("generate"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeElapsedColumn())
    with Progress(*columns, disable=not show) as bar, tmp.open("w", encoding="utf-8") as out:
        task = bar.add_task("generate", total=len(order), rate="")
        for result in engine.stream():
            done[result.request_id] = result
            n_err += result.error is not None
            tokens += result.num_generated
            rate = tokens / max(time.perf_counter() - t0, 1e-9)
            bar.update(task, advance=1, rate=f"{rate:,.0f} tok/s")
            while next_pos < len(order) and order[next_pos] in done:
                res = done.pop(order[next_pos])
                out.write(json.dumps({**res.tag, **res.to_dict()}, ensure_ascii=False) + "\n")
                next_pos += 1
            out.flush()
    return n_err
