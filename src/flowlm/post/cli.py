"""`flowlm post {coldstart,pairs,multiturn,simfc}`: post-training data from prompt rows or tool sets (JSONL in,
JSONL rows out).

    flowlm post coldstart --builtin 200 --teacher procedural --set teacher.error_rate=0.3 --out sft.jsonl
    flowlm post coldstart --file prompts.jsonl --teacher runs/x/model --query-teacher runs/y/model -n 8 \\
        --bench gsm8k/test.jsonl --set keep_per_prompt=2 --set no_think_fraction=0.2
    flowlm post pairs --file prompts.jsonl --strong runs/big/model --weak runs/small/model --out dpo.jsonl
    flowlm post pairs --builtin 100 --pool procedural --pool weak --set thinking=false
    flowlm post multiturn --file prompts.jsonl --teacher runs/big/model --simulator runs/sim/model --set turns=3
    flowlm post simfc --file toolsets.jsonl --teacher runs/big/model --simulator runs/sim/model --out fc.jsonl
    flowlm post simfc --tools "mcp:python my_server.py" --teacher runs/big/model --set per_toolset=50

Input rows (`--file`, or stdin, the convention of every record verb in `flowlm.cli`) hold `messages` or a
`prompt` string, plus the verifier routing of `flowlm.verify.rows` (`dataset` + `ground_truth`, or
`verifiers`); `--builtin N` uses N training-split built-in task prompts instead (never held-out ones).
A teacher is a checkpoint directory, `procedural` (the built-in tasks' worked solutions; needs rows with
a `solution`, as `--builtin` makes) or `weak` (the procedural weak model). Knobs are `--set key=value`
overrides of `ColdStartCfg` / `PairCfg` plus `teacher.*` (`TeacherCfg`) and, for judge pairs,
`judge_verifier` / `judge_options.*` (a registered verifier name, checked up front). The accounting table
goes to stderr; a bad input line, or a row a `procedural`/`weak` teacher cannot answer (no `solution`),
stops the run with `error: FILE:LINE: ...` before any sampling, and an unwritable `--out` before any work.
`multiturn` grows prompt rows into multi-turn prompts (`flowlm.post.multiturn`: self-talk or synthetic
context; a `--simulator` model plays the user). `simfc` reads tool sets instead (`flowlm.post.simfc`: rows
with `tools`, or `--tools` built-in names and `mcp:SERVER` entries, each one tool set) and needs model
teachers; its knobs are `SimFCCfg` plus `teacher.*`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pydantic import field_validator

from flowlm.cli import (add_io_arguments, check_output, input_path, iter_input_objects, open_output, run_guarded,
                        write_json_line)
from flowlm.errors import ConfigError, FlowError
from flowlm.post.coldstart import ColdStartCfg
from flowlm.post.delta import PairCfg
from flowlm.post.multiturn import MultiTurnCfg
from flowlm.post.simfc import SimFCCfg
from flowlm.post.procedural import NAMED_TEACHERS, procedural_problem
from flowlm.post.teachers import TeacherCfg


class ColdStartRun(ColdStartCfg):
    """`flowlm post coldstart` settings: the builder's config plus how teachers are built."""

    teacher: TeacherCfg = TeacherCfg()


class MultiTurnRun(MultiTurnCfg):
    """`flowlm post multiturn` settings: the builder's config plus how the models are built."""

    teacher: TeacherCfg = TeacherCfg()


class SimFCRun(SimFCCfg):
    """`flowlm post simfc` settings: the builder's config plus how the models are built (both roles)."""

    teacher: TeacherCfg = TeacherCfg()


class PairsRun(PairCfg):
    """`flowlm post pairs` settings: the builder's config, teachers, and the judge of `--pool` pairs."""

    teacher: TeacherCfg = TeacherCfg()
    judge_verifier: str | None = None
    """Judge pairs: a registered verifier scoring each answer (e.g. `judge`, `reward_model`); None: the
    row's own verifiers."""
    judge_options: dict[str, Any] = {}
    """Extra arguments of `judge_verifier` (e.g. `reward_model: PATH`, `judge_url: URL`)."""

    @field_validator("judge_verifier")
    @classmethod
    def _known_verifier(cls, name: str | None) -> str | None:
        """An unknown name would score every answer 0 (and make no pair): refuse it here."""
        from flowlm.verify.base import UnknownVerifierError, get_verifier

        if name is not None:
            try:
                get_verifier(name)
            except UnknownVerifierError as exc:
                raise ValueError(exc.args[0]) from None
        return name


def add_parser(subparsers: Any) -> None:
    """Register the `post` verb on the top-level CLI."""
    p = subparsers.add_parser("post", help="post-training data: cold-start SFT rows, DPO preference pairs, "
                                                 "multi-turn prompts, simulated function-calling conversations")
    verbs = p.add_subparsers(dest="post_cmd", metavar="VERB", required=True)
    cold = verbs.add_parser("coldstart", help="rejection-sampled SFT chat rows (Qwen3 cold-start filters)")
    _common(cold)
    cold.add_argument("--teacher", required=True, metavar="PATH|procedural|weak", help="who answers the prompts")
    cold.add_argument("--query-teacher", default=None, metavar="PATH|procedural|weak",
                      help="drop prompts this model answers right without reasoning (too easy); default: no such check")
    cold.add_argument("-n", type=int, default=None, help="candidates per prompt (config key n)")
    pairs = verbs.add_parser("pairs", help="DPO pairs: strong vs weak (delta learning) or best vs worst of a pool")
    _common(pairs)
    pairs.add_argument("--strong", default=None, metavar="PATH|procedural|weak", help="chosen side (delta pairs)")
    pairs.add_argument("--weak", default=None, metavar="PATH|procedural|weak", help="rejected side (delta pairs)")
    pairs.add_argument("--pool", action="append", default=[], metavar="PATH|procedural|weak",
                       help="judge pairs: a pool member (repeatable; include weak models)")
    pairs.add_argument("-n", type=int, default=None,
                       help="strong candidates per prompt (n_chosen), or answers per pool member (n_per_teacher)")
    for v in (cold, pairs):
        v.set_defaults(func=main)
    multi = verbs.add_parser("multiturn", help="multi-turn prompts from single-turn ones (self-talk or synthetic "
                                                "context) for last-turn preference pairs")
    _common(multi)
    multi.add_argument("--teacher", default=None, metavar="PATH|procedural",
                       help="answers the turns of self-talk (a checkpoint; procedural answers built-in prompts)")
    multi.add_argument("--simulator", required=True, metavar="PATH", help="plays the user (a checkpoint directory)")
    multi.set_defaults(func=multiturn_main)
    sim = verbs.add_parser("simfc", help="function-calling SFT rows from tool sets, the user and the tools "
                                         "simulated by a model (OLMo 3's SimFC)")
    add_io_arguments(sim, "tool set rows (`tools`: function definitions)",
                     out_help="write the output rows here (atomically) instead of to stdout")
    sim.add_argument("--tools", action="append", default=[], metavar="NAME|mcp:SERVER",
                     help="a tool set from built-in tools or an MCP server's tools (repeatable; instead of --file)")
    sim.add_argument("--teacher", required=True, metavar="PATH", help="the assistant (a checkpoint directory)")
    sim.add_argument("--simulator", default=None, metavar="PATH",
                     help="plays the user and the functions (a checkpoint directory; default: --teacher)")
    sim.add_argument("--bench", action="append", default=[], metavar="FILE",
                     help="benchmark file to decontaminate the user turns against (repeatable)")
    sim.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="config override, e.g. per_toolset=20, patterns=[single,parallel], teacher.temperature=0.8")
    sim.set_defaults(func=simfc_main)


def _common(p: argparse.ArgumentParser) -> None:
    add_io_arguments(p, "prompt rows", out_help="write the output rows here (atomically) instead of to stdout")
    p.add_argument("--builtin", type=int, default=None, metavar="N",
                   help="use N built-in training-split task prompts instead of --file")
    p.add_argument("--bench", action="append", default=[], metavar="FILE",
                   help="benchmark file to decontaminate against (repeatable; JSONL or JSON array)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. keep_per_prompt=2, filters.max_repetition=0.4, teacher.temperature=0.6")


def build_config(args: argparse.Namespace) -> ColdStartRun | PairsRun:
    """Defaults, then `-n`, then `--set` overrides, validated once."""
    from flowlm.config import apply_overrides, validate

    model = ColdStartRun if args.post_cmd == "coldstart" else PairsRun
    raw: dict[str, Any] = {}
    if args.n is not None:
        raw["n" if args.post_cmd == "coldstart" else ("n_per_teacher" if args.pool else "n_chosen")] = args.n
    return validate(model, apply_overrides(raw, args.set), f"flowlm post {args.post_cmd}")


def load_prompt_rows(args: argparse.Namespace, seed: int, teachers: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """`--builtin N` rows, or every row of `--file`/stdin checked up front (FILE:LINE on the first bad one),
    including that each of the named `procedural`/`weak` `teachers` can answer it."""
    from flowlm.post.procedural import builtin_rows

    if args.builtin is not None:
        if args.file is not None:
            raise ConfigError(f"flowlm post {args.post_cmd}: give --builtin N or --file PATH, not both")
        if args.builtin < 1:
            raise ConfigError(f"--builtin must be >= 1, got {args.builtin}")
        return builtin_rows(args.builtin, seed)
    source = input_path(args.file, f"post {args.post_cmd}")
    checked = [(where, check_prompt_row(where, row)) for where, row in iter_input_objects(source)]
    if not checked:
        raise FlowError(f"{args.file or '<stdin>'}: no prompt rows")
    for spec in teachers:  # after the row schema: a malformed row is reported as such first
        bad = next(((where, p) for where, row in checked if (p := procedural_problem(row))), None)
        if bad is not None:
            raise FlowError(f"{bad[0]}: teacher {spec!r} {bad[1]}")
    return [row for _, row in checked]


def check_prompt_row(where: str, row: dict[str, Any]) -> dict[str, Any]:
    """`row` if it has a chat prompt, (when tagged) valid verifier routing and well-formed own functions
    (`tools`); else one FlowError at `where`. Used by this CLI and the `coldstart` / `pairs` stage kinds."""
    from flowlm.post.filters import has_verifier
    from flowlm.post.teachers import prompt_messages
    from flowlm.rl.rows import row_tools
    from flowlm.verify.base import GroundTruthError, UnknownVerifierError
    from flowlm.verify.rows import validate_row

    try:
        prompt_messages(row)
        if has_verifier(row):
            validate_row(row)
        row_tools(row)
    except (ValueError, UnknownVerifierError) as exc:  # GroundTruthError is a ValueError
        msg = exc.args[0] if isinstance(exc, (GroundTruthError, UnknownVerifierError)) and exc.args else str(exc)
        raise FlowError(f"{where}: {msg}") from None
    return row


def load_decontam(paths: list[str]) -> Any | None:
    """A post-training decontaminator (8-gram, 0.5 overlap, as OLMo 3's SFT/DPO data) over `--bench` files."""
    if not paths:
        return None
    from flowlm.data.decontam import DecontamCfg, Decontaminator, load_benchmark

    items = [item for p in paths for item in load_benchmark(p)]
    return Decontaminator(items, DecontamCfg(mode="posttrain"))


def main(args: argparse.Namespace) -> int:
    """Run `flowlm post coldstart|pairs`; bad input raises FlowError (printed as one line by `run_guarded`)."""
    from flowlm.post.teachers import make_teacher

    check_output(args.out)
    cfg = build_config(args)
    specs = _teacher_specs(args)
    pool = getattr(args, "pool", [])
    if isinstance(cfg, PairsRun) and not pool and (cfg.judge_verifier or cfg.judge_options):
        raise ConfigError("flowlm post pairs: judge_verifier / judge_options apply to judge pairs (--pool); "
                          "delta pairs (--strong/--weak) have no judge")
    named = tuple(dict.fromkeys(s for s in [*specs.values(), *pool] if s in NAMED_TEACHERS))
    if cfg.teacher.tools and named:  # before the rows are checked: no row would make this work
        raise FlowError(f"teacher {named[0]!r}: teacher.tools needs a model teacher (a checkpoint directory)")
    rows = load_prompt_rows(args, cfg.seed, named)
    decontam = load_decontam(args.bench)
    slots = cfg.teacher.max_slots
    wanted = cfg.n if isinstance(cfg, ColdStartRun) else max(cfg.n_chosen, cfg.n_per_teacher)
    if any(Path(s).is_dir() for s in [*specs.values(), *pool] if s) and wanted > slots:
        raise ConfigError(f"n={wanted} exceeds teacher.max_slots={slots}")
    models = sum(1 for s in [*specs.values(), *pool] if s and s not in NAMED_TEACHERS)  # (vLLM: they share the GPU)
    teachers = {role: make_teacher(spec, rows, cfg.teacher, model_teachers=models)
                for role, spec in specs.items() if spec}
    if isinstance(cfg, ColdStartRun):
        from flowlm.post.coldstart import build_coldstart

        out, acc = build_coldstart(rows, teachers["teacher"], cfg, decontam=decontam,
                                   query_teacher=teachers.get("query"))
    elif pool:
        from flowlm.post.delta import build_judge_pairs, named_verifier_judge

        judge = named_verifier_judge(cfg.judge_verifier, **cfg.judge_options) if cfg.judge_verifier else None
        members = [make_teacher(spec, rows, cfg.teacher, model_teachers=models) for spec in pool]
        out, acc = build_judge_pairs(rows, members, judge, cfg, decontam=decontam)
    else:
        from flowlm.post.delta import build_delta_pairs

        out, acc = build_delta_pairs(rows, teachers["strong"], teachers["weak"], cfg, decontam=decontam)
    kind = "rows" if args.post_cmd == "coldstart" else "pairs"
    return _emit(args, out, acc, f"post {args.post_cmd}: {len(out)} {kind} from {len(rows)} prompts")


def _emit(args: argparse.Namespace, out: list[dict[str, Any]], acc: Any, summary: str) -> int:
    """Write the rows (atomically to `--out`, or to stdout), then the accounting table and `summary` to stderr."""
    with open_output(args.out) as fh:
        for row in out:
            write_json_line(fh, row)
    print(acc.table(), file=sys.stderr)
    print(summary + (f" -> {args.out}" if args.out is not None else ""), file=sys.stderr)
    return 0


def multiturn_main(args: argparse.Namespace) -> int:
    """Run `flowlm post multiturn`: prompt rows checked up front (FILE:LINE), then the builder."""
    from flowlm.config import apply_overrides, validate
    from flowlm.post.multiturn import build_multiturn
    from flowlm.post.teachers import make_teacher

    check_output(args.out)
    cfg = validate(MultiTurnRun, apply_overrides({}, args.set), "flowlm post multiturn")
    if cfg.teacher.tools:
        raise ConfigError("flowlm post multiturn: teacher.tools belongs to flowlm post coldstart / pairs")
    if not Path(args.simulator).is_dir():
        raise FlowError(f"--simulator {args.simulator}: not a checkpoint directory (a model plays the user)")
    if cfg.method == "self_talk" and args.teacher is None:
        raise ConfigError("flowlm post multiturn: self_talk needs --teacher (it answers each turn)")
    named = (args.teacher,) if args.teacher in NAMED_TEACHERS else ()
    rows = load_prompt_rows(args, cfg.seed, named)
    models = 1 + int(args.teacher is not None and args.teacher not in NAMED_TEACHERS)
    teacher = make_teacher(args.teacher, rows, cfg.teacher, model_teachers=models) if args.teacher else None
    simulator = make_teacher(args.simulator, rows, cfg.teacher, model_teachers=models)
    out, acc = build_multiturn(rows, teacher, simulator, cfg, decontam=load_decontam(args.bench))
    return _emit(args, out, acc, f"post multiturn: {len(out)} rows from {len(rows)} prompts")


def simfc_main(args: argparse.Namespace) -> int:
    """Run `flowlm post simfc`: tool sets checked up front (FILE:LINE), then the builder."""
    from flowlm.config import apply_overrides, validate
    from flowlm.post.simfc import build_simfc, tool_toolsets, toolset_rows
    from flowlm.post.teachers import make_teacher

    check_output(args.out)
    cfg = validate(SimFCRun, apply_overrides({}, args.set), "flowlm post simfc")
    if cfg.teacher.tools:
        raise ConfigError("flowlm post simfc: the simulator answers the calls; teacher.tools (tools that run) "
                          "belongs to flowlm post coldstart")
    for role, spec in (("--teacher", args.teacher), ("--simulator", args.simulator)):
        if spec is not None and not Path(spec).is_dir():
            raise FlowError(f"{role} {spec}: not a checkpoint directory (simfc needs models to play its roles)")
    if args.tools and args.file is not None:
        raise ConfigError("flowlm post simfc: give --tools or --file, not both")
    toolsets = tool_toolsets(args.tools) if args.tools else toolset_rows(
        iter_input_objects(input_path(args.file, "post simfc")))
    if not toolsets:
        raise FlowError(f"{args.file or '<stdin>'}: no tool set rows")
    models = 2 if args.simulator else 1
    teacher = make_teacher(args.teacher, [], cfg.teacher, model_teachers=models)
    simulator = make_teacher(args.simulator, [], cfg.teacher, model_teachers=models) if args.simulator else None
    out, acc = build_simfc(toolsets, teacher, simulator, cfg, decontam=load_decontam(args.bench))
    return _emit(args, out, acc, f"post simfc: {len(out)} conversations from {len(toolsets)} tool sets")


def _teacher_specs(args: argparse.Namespace) -> dict[str, str | None]:
    if args.post_cmd == "coldstart":
        return {"teacher": args.teacher, "query": args.query_teacher}
    if args.pool:
        if args.strong or args.weak:
            raise ConfigError("flowlm post pairs: --pool (judge pairs) excludes --strong/--weak (delta pairs)")
        if len(args.pool) < 2:
            raise ConfigError("flowlm post pairs: a judge pool needs at least two --pool teachers")
        return {}
    if not (args.strong and args.weak):
        raise ConfigError("flowlm post pairs: give --strong and --weak (delta pairs) or --pool twice or more")
    return {"strong": args.strong, "weak": args.weak}


def _standalone(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="flowlm")
    add_parser(p.add_subparsers(dest="verb", required=True))
    return run_guarded(lambda: main(p.parse_args(["post", *(argv if argv is not None else sys.argv[1:])])))


if __name__ == "__main__":
    sys.exit(_standalone())
