"""`flowlm generate`: sample completions for a JSONL file of prompts with the rollout engine.

    flowlm generate --model CKPT [--file in.jsonl | -] [--out out.jsonl] [--n 4 --temperature 0.7 ...]

Prompts come from `--file` (`--prompts` is the older spelling) or stdin, and output rows go to stdout
or `--out`, the convention of every record verb (`flowlm.cli`); the progress bar and the summary
line go to stderr.

Input rows: `{"prompt": str}`, `{"messages": [...]}` (rendered with the checkpoint's chat template)
or `{"prompt_ids": [...]}`, optionally with `"sampling": {...}` overriding the command-line
parameters for that row. Every row is checked before any generation — its shape, chat roles and
content, token ids against the vocabulary, prompt length against the context, sampling values — so
bad input fails fast with `file:line` and nothing is generated. A request that still fails while
generating gets an `"error"` in its output row and the others complete; the command then exits 1
naming the failed lines. Output rows are the input row plus `completions` (text, tokens, logprobs,
versions, finish_reason), `error` and `timings` (null for a time that never came), written in input
order as soon as each prefix of the file is done (with `--out`, into a temporary file renamed into
place at the end). With `--tools NAMES` each row is a conversation (a prompt string is its user turn) whose
tool calls are run between turns (`flowlm.tools.engine`; docs/generate.md, Tool use); each completion
then also has `tool_mask`, `tool_calls`, `tool_errors` and its `trajectory` of messages.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from flowlm.cli import (add_io_arguments, check_output, input_path, iter_input_objects, open_output,
                        write_json_line)
from flowlm.errors import ConfigError, FlowError
from flowlm.generate.params import LOGPROBS_MODES, SamplingParams, check_slots
from flowlm.generate.prompts import ends_its_turn, is_chat, prompt_problem

PROMPT_KEYS = ("prompt", "messages", "prompt_ids")
SAMPLING_KEYS = tuple(f.name for f in dataclasses.fields(SamplingParams))
"""Per-row sampling settings belong under `sampling`; at a row's top level they are refused."""
MAX_NAMED = 5
"""Failed lines named on stderr at most (then `and N more`)."""

Row = tuple[str, dict[str, Any], Any, SamplingParams]
"""(FILE:LINE, input row, prompt, sampling params) of one parsed input line."""


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
    p.add_argument("--logprobs", choices=LOGPROBS_MODES, default="raw",
                   help="completion log-probs of the raw logits (temperature 1) or of the logits divided by the "
                        "row's temperature (what RL at that temperature trains); both before top-k/top-p/min-p")
    p.add_argument("--tools", default=None, metavar="NAMES",
                   help="comma-separated tools the model may call (built-in: calculator, python; or mcp:COMMAND, "
                        "every tool of an MCP server); calls are run and answered in the loop; chat or prompt rows")
    p.add_argument("--max-tool-calls", type=int, default=5, help="--tools: calls per conversation at most")
    p.add_argument("--tool-workers", type=int, default=8,
                   help="--tools: threads that run calls beside decoding (0 = inline, a schedule that depends on the "
                        "seeds alone)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=main)


def base_params(args: argparse.Namespace) -> dict[str, Any]:
    return dict(n=args.n, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
                max_new_tokens=args.max_new_tokens, stop=tuple(args.stop), stop_token_ids=tuple(args.stop_token_id),
                seed=args.seed)


def read_rows(path: Path | None, base: dict[str, Any]) -> list[Row]:
    """Parse every line of `path` (None: stdin) into (where, row, prompt, params); a malformed line raises
    `FlowError` naming file:line."""
    rows = []
    for where, row in iter_input_objects(path):
        rows.append(_parse_row(where, row, base, len(rows)))
    if not rows:
        raise FlowError(f"{path or '<stdin>'}: no prompts")
    return rows


def _parse_row(where: str, row: dict[str, Any], base: dict[str, Any], index: int) -> Row:
    """One input row checked without the model: one prompt key of the right shape, valid sampling values."""
    keys = [k for k in PROMPT_KEYS if k in row]
    if len(keys) != 1:
        raise FlowError(f"{where}: a row needs exactly one of {', '.join(PROMPT_KEYS)} (found {keys or 'none'})")
    problem = prompt_problem(keys[0], row[keys[0]])
    if problem:
        raise FlowError(f"{where}: {problem}")
    misplaced = [k for k in SAMPLING_KEYS if k in row]
    if misplaced:  # it would be carried to the output unread, and the row sampled with other settings
        raise FlowError(f"{where}: {misplaced[0]!r} is a sampling parameter: put it under \"sampling\" "
                        f"({{\"sampling\": {{\"{misplaced[0]}\": ...}}}})")
    return where, row, row[keys[0]], _row_params(where, row, base, index)


def _row_params(where: str, row: dict[str, Any], base: dict[str, Any], index: int) -> SamplingParams:
    """The command line's sampling parameters with the row's `sampling` overrides, validated."""
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
    problem = params.validate()
    if problem:
        raise FlowError(f"{where}: sampling: {problem}")
    return params


def check_stop_token_ids(ids: list[int], vocab_size: int) -> None:
    """`--stop-token-id` values must be token ids of the model (a `ConfigError` naming the vocabulary)."""
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise ConfigError(f"--stop-token-id {bad[0]} is outside the model's vocabulary [0, {vocab_size})")


def prepare_rows(engine: Any, rows: list[Row]) -> list[list[int]]:
    """Token ids of every row, checked against the model (roles the template accepts, vocabulary, context,
    `n` <= slots); the first row that cannot be generated raises `FlowError` naming its FILE:LINE."""
    prepared = []
    for where, _, prompt, params in rows:
        ids, problem = engine.prepare(prompt, params)
        if problem:
            raise FlowError(f"{where}: {problem}")
        prepared.append(ids)
    return prepared


def build_engine(args: argparse.Namespace) -> Any:
    if args.backend == "vllm":
        from flowlm.generate.vllm_backend import VLLMEngine

        return VLLMEngine(args.model, max_slots=args.max_slots, enable_thinking=not args.no_thinking,
                          logprobs=args.logprobs)
    from flowlm.generate.engine import Engine, GenerateConfig

    return Engine.from_pretrained(args.model, GenerateConfig(max_slots=args.max_slots,
                                                             enable_thinking=not args.no_thinking,
                                                             logprobs=args.logprobs))


def main(args: argparse.Namespace) -> int:
    check_output(args.out)
    problem = SamplingParams(**base_params(args)).validate()
    if problem:
        raise ConfigError(f"generate: {problem}")
    check_slots(args.n, args.max_slots, "prompt")
    tools = None
    if args.tools is not None:
        from flowlm.tools.builtin import usable_tools

        if args.max_tool_calls < 1:
            raise ConfigError(f"generate: --max-tool-calls must be at least 1, got {args.max_tool_calls}")
        if args.tool_workers < 0:
            raise ConfigError(f"generate: --tool-workers must be at least 0, got {args.tool_workers}")
        tools = usable_tools([t.strip() for t in args.tools.split(",") if t.strip()])
    rows = read_rows(input_path(args.file, "generate"), base_params(args))
    engine = build_engine(args)
    if tools is not None:  # calls run between turns, token for token (`flowlm.tools.engine`)
        from flowlm.tools.engine import ToolEngine

        rows = [_conversation(row) for row in rows]
        engine = ToolEngine(engine, tools, max_calls=args.max_tool_calls, enable_thinking=not args.no_thinking,
                            workers=args.tool_workers)
    check_stop_token_ids(args.stop_token_id, engine.vocab_size)
    if args.no_thinking and any(is_chat(prompt) for _, _, prompt, _ in rows):
        from flowlm.model.tokenizer import require_thinking_switch

        require_thinking_switch(engine.tokenizer, "--no-thinking")
    prompts = prepare_rows(engine, rows)
    # a chat prompt's reply ends its turn (the prompts are token ids from here on)
    order = [engine.submit(ids, ends_its_turn(prompt, params, engine.tokenizer), tag=row)
             for ids, (_, row, prompt, params) in zip(prompts, rows)]
    with open_output(args.out) as out:
        failed, calls = _run(engine, order, out, show=not args.no_progress)
    where = f" -> {args.out}" if args.out is not None else ""
    ran = f", {calls} tool call(s) run" if tools is not None else ""
    print(f"generate: {len(rows) - len(failed)}/{len(rows)} requests done{ran}, {len(failed)} failed{where}",
          file=sys.stderr)
    if failed:
        raise FlowError(f"generate: {failed_lines(failed, [w for w, *_ in rows])}")
    return 0


def _conversation(row: Row) -> Row:
    """`--tools`: a row's prompt as a conversation (a prompt string is the user turn); token ids are refused,
    since the tools could not be listed in them."""
    where, raw, prompt, params = row
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    elif not is_chat(prompt):
        raise FlowError(f"{where}: --tools needs chat messages or a prompt string, not prompt_ids")
    return where, raw, prompt, params


def failed_lines(failed: dict[int, str], wheres: list[str]) -> str:
    """`2 rows failed: in.jsonl:3: <error>; in.jsonl:7: <error>` (the first `MAX_NAMED`), from
    {input position: error}."""
    named = [f"{wheres[i]}: {failed[i]}" for i in sorted(failed)[:MAX_NAMED]]
    more = f"; and {len(failed) - MAX_NAMED} more" if len(failed) > MAX_NAMED else ""
    return f"{len(failed)} row{'s' if len(failed) > 1 else ''} failed: {'; '.join(named)}{more}"


def _run(engine: Any, order: list[int], out: TextIO, show: bool) -> tuple[dict[int, str], int]:
    """Stream results into `out` in input order; returns {input position: error} of the failed requests and
    the tool calls run (with tools)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    done: dict[int, Any] = {}
    failed: dict[int, str] = {}
    next_pos, tokens, calls, t0 = 0, 0, 0, time.perf_counter()
    columns = (TextColumn("generate"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeElapsedColumn())
    # The bar lives on stderr and leaves sys.stdout alone: stdout may be the output rows.
    with Progress(*columns, console=Console(stderr=True), disable=not show, redirect_stdout=False) as bar:
        task = bar.add_task("generate", total=len(order), rate="")
        for result in engine.stream():
            done[result.request_id] = result
            tokens += result.num_generated
            calls += sum(c.tool_calls for c in result.completions)
            rate = tokens / max(time.perf_counter() - t0, 1e-9)
            bar.update(task, advance=1, rate=f"{rate:,.0f} tok/s")
            while next_pos < len(order) and order[next_pos] in done:
                res = done.pop(order[next_pos])
                if res.error is not None:
                    failed[next_pos] = res.error
                write_json_line(out, {**res.tag, **res.to_dict()})
                next_pos += 1
            out.flush()
    return failed, calls
