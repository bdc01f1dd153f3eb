"""`flowlm rl filter`: the offline difficulty filter of RL prompts (OLMo 3: 8 samples, drop pass rate > 62.5%);
`flowlm rl prompts`: prompt rows from benchmark-format files or the built-in training split (`flowlm.rl.prompts`).

    flowlm rl filter --model runs/x/dpo/model --file prompts.jsonl --out hard.jsonl
    flowlm rl filter --model CKPT --file prompts.jsonl -k 16 --max-pass-rate 0.5 --set temperature=0.7
    flowlm rl filter --model CKPT --file prompts.jsonl --exclude coldstart_sft.jsonl --out rl.jsonl

Each prompt row (`messages` or a `prompt` string, plus the verifier routing of `flowlm.verify.rows`) is
sampled `k` times through the rollout engine (seeded by `seed` and the prompt's text; a chat reply ends
at the end-of-turn token; `prompt_format=plain` samples an RL-Zero stage's plain text prompts, ending at
the template's next question) and every sample is verified; the pass rate is the mean
verifier score (the share of correct samples for binary verifiers). Rows whose pass rate lies in
[`min_pass_rate`, `max_pass_rate`] are written with a `pass_rate` column; the others are dropped as too
easy / too hard. Sampling and verification settings are `--set key=value` overrides of `FilterCfg`.
Input is `--file` or stdin, output stdout or `--out` (atomic; an unwritable `--out` fails before any work),
the accounting goes to stderr; a bad input line stops the command with `error: FILE:LINE: ...` before any
sampling (exit 1). `--exclude FILE` (repeatable) leaves out, before sampling, the prompts that FILE's rows
hold (`flowlm.rl.prompts.prompt_key`: the last user turn, mode switch, case and spacing aside): Qwen3's RL
queries are ones the cold-start SFT did not use. They are counted as excluded in the accounting line. A prompt the model cannot sample from (longer than its context, or empty once templated)
gets no pass rate: like the too easy / too hard rows it is left out of the output, named on stderr
(`rl filter: FILE:LINE: not sampled (left out of the output): WHY`) and counted as `unsampled` in the
accounting line; when no prompt can be sampled the command fails (exit 1).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from flowlm.cli import (add_io_arguments, check_output, input_path, iter_input_objects, open_output, run_guarded,
                        write_json_line)
from flowlm.config import Strict
from flowlm.errors import FlowError


class FilterCfg(Strict):
    """Settings of `flowlm rl filter` (OLMo 3 / open-instruct `filtering_vllm.py` defaults)."""

    k: int = Field(8, gt=0, description="samples per prompt")
    max_pass_rate: float = Field(0.625, ge=0, le=1, description="drop prompts solved more often (too easy)")
    min_pass_rate: float = Field(0.0, ge=0, le=1, description="drop prompts solved less often (too hard)")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(1024, gt=0)
    thinking: bool = True
    seed: int = 0
    max_slots: int = Field(64, gt=0, description="sequences decoded together (at least k)")
    verify_workers: int = Field(0, ge=0, description="verifier processes (0 = in-process)")
    verify_timeout: float = Field(60.0, gt=0)
    backend: Literal["native", "vllm"] = Field("native", description="the engine: native or vllm (CUDA, the vllm extra)")
    prompt_format: Literal["chat", "plain"] = Field(
        "chat", description="chat: the chat template; plain: the last user turn in the base-model template "
        "'Question: ...\\nAnswer:' as text (an RL-Zero stage's prompts; a `prompt` string is taken as is)")
    stop: list[str] | None = Field(None, description="strings that end a sample (plain default: the template's "
                                   "next '\\nQuestion:')")
    tools: list[str] = Field(default_factory=list, description="built-in tools the model may call while it samples "
                             "(as an rl stage's rollout.tools, so pass rates are those the RL run will see)")
    max_tool_calls: int = Field(5, ge=1, description="with tools: calls per sample at most")

    @model_validator(mode="after")
    def _check(self) -> "FilterCfg":
        if self.min_pass_rate > self.max_pass_rate:
            raise ValueError(f"min_pass_rate {self.min_pass_rate} exceeds max_pass_rate {self.max_pass_rate}")
        if self.k > self.max_slots:
            raise ValueError(f"k={self.k} exceeds max_slots={self.max_slots}")
        if self.tools:
            from flowlm.tools.builtin import known_tools

            known_tools(self.tools)
            if self.prompt_format == "plain":
                raise ValueError("tools need chat prompts (the template lists them), not prompt_format=plain")
        return self


def add_parser(subparsers: Any) -> None:
    """Register the `rl` verb on the top-level CLI."""
    p = subparsers.add_parser("rl", help="RL tools: prompt rows from benchmark files, offline difficulty filter")
    verbs = p.add_subparsers(dest="rl_cmd", metavar="VERB", required=True)
    f = verbs.add_parser("filter", help="sample k answers per prompt, keep prompts whose pass rate is low enough",
                         epilog="Prompts longer than the model's context cannot be sampled: they are left out of "
                                "the output, named on stderr (FILE:LINE) and counted as 'unsampled'.")
    add_io_arguments(f, "prompt rows with verifier routing", out_help="write the kept rows here (atomically)")
    f.add_argument("--model", required=True, type=Path, metavar="CKPT", help="checkpoint directory to sample from")
    f.add_argument("-k", type=int, default=None, help="samples per prompt (default 8)")
    f.add_argument("--max-pass-rate", type=float, default=None, help="drop prompts above this pass rate (0.625)")
    f.add_argument("--exclude", action="append", default=[], type=Path, metavar="FILE",
                   help="leave out prompts found in this JSONL (e.g. the cold-start SFT rows; repeatable)")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. temperature=0.7, max_new_tokens=512, min_pass_rate=0.1")
    f.set_defaults(func=main)
    r = verbs.add_parser("prompts", help="RL prompt rows (chat messages + verifier routing) from benchmark-format "
                         "files (GSM8K, MATH, MBPP, ...) or the built-in training split",
                         epilog="Each row is prompted as `flowlm eval --suite NAME` prompts it (chat format), so a "
                                "model trained on the rows is scored on the same terms.")
    r.add_argument("--suite", action="append", default=[], metavar="NAME=PATH[,...]",
                   help="a benchmark format and its file (or folder): gsm8k, math500, math, aime, amc, humaneval, "
                        "mbpp, ifeval, ifbench, bfcl (repeatable)")
    r.add_argument("--builtin", type=int, default=None, metavar="N",
                   help="N prompts of the built-in tasks' training split (as a recipe's `prompts: builtin`)")
    r.add_argument("--seed", type=int, default=0, help="seed of the --builtin prompts (default 0)")
    r.add_argument("--max-items", type=int, default=None, metavar="N", help="first N rows per suite")
    r.add_argument("--out", type=Path, default=None, metavar="PATH",
                   help="write the rows here (atomically) instead of to stdout")
    r.set_defaults(func=prompts_main)


def build_config(args: argparse.Namespace) -> FilterCfg:
    from flowlm.config import apply_overrides, validate

    raw: dict[str, Any] = {}
    if args.k is not None:
        raw["k"] = args.k
    if args.max_pass_rate is not None:
        raw["max_pass_rate"] = args.max_pass_rate
    return validate(FilterCfg, apply_overrides(raw, args.set), "flowlm rl filter")


def load_rows(path: Path | None) -> tuple[list[dict[str, Any]], list[str]]:
    """Every row checked up front (prompt and verifier routing), with its `FILE:LINE`; the first bad one
    raises a FlowError naming it."""
    from flowlm.rl.rows import prompt_of

    rows, wheres = [], []
    for where, row in iter_input_objects(path):
        try:
            prompt_of(row)
        except ValueError as exc:
            raise FlowError(f"{where}: {exc}") from None
        rows.append(row)
        wheres.append(where)
    if not rows:
        raise FlowError(f"{path or '<stdin>'}: no prompt rows")
    return rows, wheres


def _engine(model: Path, cfg: FilterCfg) -> Any:
    """The engine that samples the filter's rows: native or vLLM, with the rl stage's built-in tools if any."""
    from flowlm.generate.engine import Engine, GenerateConfig

    if not (model / "config.json").is_file():
        raise FlowError(f"{model}: not a checkpoint directory (no config.json)")
    if cfg.backend == "vllm":  # open-instruct's filtering_vllm.py path, for real-scale models on a GPU
        from flowlm.generate.vllm_backend import VLLMEngine

        engine: Any = VLLMEngine(model, max_slots=cfg.max_slots, seed=cfg.seed, enable_thinking=cfg.thinking)
    else:
        engine = Engine.from_pretrained(model, GenerateConfig(max_slots=cfg.max_slots, enable_thinking=cfg.thinking))
    if not cfg.tools:
        return engine
    from flowlm.tools.builtin import usable_tools  # the rollouts an rl stage with rollout.tools samples
    from flowlm.tools.engine import ToolEngine

    return ToolEngine(engine, usable_tools(cfg.tools), max_calls=cfg.max_tool_calls, enable_thinking=cfg.thinking)


def _with_row_functions(engine: Any, rows: list[dict[str, Any]], prompts: list[Any], params: list[Any],
                        cfg: FilterCfg) -> tuple[list[Any], list[Any]]:
    """The prompts of rows with their own `tools` rendered to token ids with them (a reply ends its turn);
    the other rows as they are. Such a row under `tools` (built-in tools that run) is a ConfigError."""
    from flowlm.generate.prompts import ends_its_turn, to_prompt_ids
    from flowlm.rl.rows import prompt_functions
    from flowlm.tools.builtin import TOOLS

    offered = [TOOLS[n].schema for n in cfg.tools] or None
    prompts, params = list(prompts), list(params)
    for i, row in enumerate(rows):
        if row.get("tools") is not None:
            params[i] = ends_its_turn(prompts[i], params[i], engine.tokenizer)
            prompts[i] = to_prompt_ids(prompts[i], engine.tokenizer, cfg.thinking,
                                       tools=prompt_functions(row, offered))
    return prompts, params


def prompt_seed(seed: int, prompt: list[dict[str, Any]]) -> int:
    """The sampling seed of a prompt: from `seed` and the prompt's text, so a row gets the same samples
    wherever it sits in the file (filtering a filtered file reproduces its pass rates)."""
    import zlib

    return (seed * 1_000_003 + zlib.crc32(json.dumps(prompt, sort_keys=True).encode())) % (1 << 30)


def pass_rates(model: Path, rows: list[dict[str, Any]], cfg: FilterCfg, wheres: list[str] | None = None
               ) -> tuple[list[float | None], dict[str, int], dict[int, str]]:
    """The pass rate of every row over `cfg.k` samples (None where the prompt could not be sampled), the
    counts of the accounting line, and why each unsampled row (by index) could not be sampled. Fails when
    no prompt can be sampled at all (`wheres` names the rows, default `row N`)."""
    from flowlm.generate.params import SamplingParams
    from flowlm.rl.rows import check_prompt_rows, is_verifier_error, verify_completions

    engine = _engine(model, cfg)
    prompts: list[Any] = check_prompt_rows(rows)
    stop = cfg.stop
    if cfg.prompt_format == "plain":  # as the rl stage samples RL-Zero prompts: text, no chat template
        from flowlm.eval.suites import PLAIN_STOP
        from flowlm.rl.rows import plain_row

        prompts = [plain_row(row)["prompt"] for row in rows]
        stop = list(PLAIN_STOP) if stop is None else stop
    elif not cfg.thinking:
        from flowlm.model.tokenizer import require_thinking_switch

        require_thinking_switch(engine.tokenizer, "thinking=false")
    params = [SamplingParams(n=cfg.k, temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                             stop=tuple(stop or ()), seed=prompt_seed(cfg.seed, p)) for p in prompts]
    if cfg.prompt_format == "chat":  # a row's own functions (`tools`), listed in its prompt as an rl stage lists them
        prompts, params = _with_row_functions(engine, rows, prompts, params, cfg)
    results = engine.generate(prompts, params)  # a prompt that cannot be sampled comes back at once, with its error
    skipped = {i: str(r.error) for i, r in enumerate(results) if not r.ok}
    if len(skipped) == len(rows):
        where = wheres[0] if wheres else "row 1"
        raise FlowError(f"rl filter: none of the {len(rows)} prompts can be sampled from {model} "
                        f"({where}: {skipped[0]})")
    sampled = [i for i in range(len(rows)) if i not in skipped]
    pool = None
    if cfg.verify_workers > 0:
        from flowlm.verify.pool import VerifyPool

        pool = VerifyPool(workers=cfg.verify_workers, timeout=cfg.verify_timeout)
    try:
        verdicts = verify_completions([rows[i] for i in sampled for _ in range(cfg.k)],
                                      [c.text for i in sampled for c in results[i].completions], pool=pool)
    finally:
        if pool is not None:
            pool.close()
    rates: list[float | None] = [None] * len(rows)
    for j, i in enumerate(sampled):
        chunk = verdicts[j * cfg.k:(j + 1) * cfg.k]
        rates[i] = sum(v.score for v in chunk) / cfg.k
    counts = {"unsampled": len(skipped), "verifier_errors": sum(is_verifier_error(v) for v in verdicts),
              "samples": len(verdicts)}
    return rates, counts, skipped


def main(args: argparse.Namespace) -> int:
    """Run `flowlm rl filter`; bad input raises FlowError (printed as one line by `run_guarded`)."""
    check_output(args.out)
    cfg = build_config(args)
    if not args.model.is_dir():
        raise FlowError(f"{args.model}: not a checkpoint directory")
    rows, wheres = load_rows(input_path(args.file, "rl filter"))
    seen = 0
    if args.exclude:
        from flowlm.jsonlines import iter_json_objects
        from flowlm.rl.prompts import unseen

        keep = unseen(rows, (row for path in args.exclude for _, row in iter_json_objects(path)))
        seen = len(rows) - len(keep)
        rows, wheres = [rows[i] for i in keep], [wheres[i] for i in keep]
        if not rows:
            raise FlowError(f"rl filter: every prompt is in --exclude ({', '.join(map(str, args.exclude))})")
    rates, counts, skipped = pass_rates(args.model, rows, cfg, wheres)
    for i, why in skipped.items():
        print(f"rl filter: {wheres[i]}: not sampled (left out of the output): {why}", file=sys.stderr)
    kept = easy = hard = 0
    with open_output(args.out) as fh:
        for row, rate in zip(rows, rates):
            if rate is None:
                continue
            if rate > cfg.max_pass_rate:
                easy += 1
            elif rate < cfg.min_pass_rate:
                hard += 1
            else:
                kept += 1
                write_json_line(fh, {**row, "pass_rate": round(rate, 6)})
    solved = [r for r in rates if r is not None]
    mean = sum(solved) / len(solved) if solved else float("nan")
    where = f" -> {args.out}" if args.out is not None else ""
    excluded = f", excluded (in --exclude) {seen}" if args.exclude else ""
    print(f"rl filter: {len(rows)} prompts x {cfg.k} samples, mean pass rate {mean:.3f}; kept {kept}, "
          f"too easy (> {cfg.max_pass_rate:g}) {easy}, too hard (< {cfg.min_pass_rate:g}) {hard}, "
          f"unsampled {counts['unsampled']}, verifier errors {counts['verifier_errors']}{excluded}{where}",
          file=sys.stderr)
    return 0


def prompts_main(args: argparse.Namespace) -> int:
    """Run `flowlm rl prompts`: rows of every `--suite` file, then `--builtin N`; counts and warnings on stderr."""
    from flowlm.errors import ConfigError
    from flowlm.eval.evaluate import parse_suite_specs
    from flowlm.rl.prompts import eval_file_warning, suite_rows

    check_output(args.out)
    if not args.suite and args.builtin is None:
        raise ConfigError("flowlm rl prompts: give --suite NAME=PATH (a benchmark-format file) or --builtin N")
    if args.builtin is not None and args.builtin < 1:
        raise ConfigError(f"--builtin must be >= 1, got {args.builtin}")
    if args.max_items is not None and args.max_items < 1:
        raise ConfigError(f"--max-items must be >= 1, got {args.max_items}")
    parts: list[tuple[str, list[dict[str, Any]]]] = []
    for name, path in parse_suite_specs(args.suite) if args.suite else []:
        rows, source = suite_rows(name, None if path is None else Path(path), max_items=args.max_items)
        if (warning := eval_file_warning(name, source)) is not None:
            print(f"rl prompts: warning: {warning}", file=sys.stderr)
        parts.append((f"{name} {source}", rows))
    if args.builtin is not None:
        from flowlm.post.procedural import builtin_rows

        parts.append((f"builtin training split (seed {args.seed})", builtin_rows(args.builtin, args.seed)))
    seen: dict[str, str] = {}
    for label, rows in parts:  # ids key the RL accounting (rollouts.jsonl): checked before anything is written
        for row in rows:
            rid = str(row.get("id"))
            if rid in seen:
                raise FlowError(f"rl prompts: id {rid!r} of {label} is also an id of {seen[rid]}")
            seen[rid] = label
    with open_output(args.out) as fh:
        for _, rows in parts:
            for row in rows:
                write_json_line(fh, row)
    where = f" -> {args.out}" if args.out is not None else ""
    print("rl prompts: " + "; ".join(f"{label}: {len(rows)} rows" for label, rows in parts) + where, file=sys.stderr)
    return 0


def _standalone(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="flowlm")
    add_parser(p.add_subparsers(dest="verb", required=True))
    return run_guarded(lambda: main(p.parse_args(["rl", *(argv if argv is not None else sys.argv[1:])])))


if __name__ == "__main__":
    sys.exit(_standalone())
