"""`flowlm verify --name NAME --file rows.jsonl`: score JSONL rows, one JSON verdict per line.

    flowlm verify [--file rows.jsonl | -] [--out verdicts.jsonl] [--name NAME] [--workers 2] [--timeout 60]
    python -m flowlm.verify.cli ...        # the same, standalone

Each input row holds the completion (`completion` or `response`), its ground truth and routing
tags (see `flowlm.verify.rows`); `--name` overrides the tags. Rows come from `--file` or stdin and
verdicts go to stdout or `--out` (written atomically), the convention of every record verb
(`flowlm.cli`). Rows are validated first, so an unknown verifier or malformed ground truth stops the
run with `error: FILE:LINE: ...` (exit 1) before any scoring. Scoring runs in a process pool
(`--workers` >= 1, hard `--timeout` > 0 per item); an input without rows is an error (`FILE: no rows`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from flowlm.cli import (add_io_arguments, check_output, input_path, iter_input_objects, open_output, run_guarded,
                        write_json_line)
from flowlm.errors import ConfigError, FlowError


def add_parser(subparsers: Any) -> None:
    """Register the `verify` verb on the top-level CLI."""
    p = subparsers.add_parser("verify", help="score completions with a verifier (JSONL in, JSONL verdicts out)")
    _arguments(p)
    p.set_defaults(func=main)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", default=None, help="verifier name (default: route each row by its dataset tag)")
    add_io_arguments(p, "rows to score", out_help="write the verdicts here (atomically) instead of to stdout")
    p.add_argument("--workers", type=int, default=2, help="verifier processes (at least 1)")
    p.add_argument("--timeout", type=float, default=60.0, help="hard time limit per verification (s, > 0)")


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse settings that would score every row 0 (`--timeout` <= 0) or mean nothing (`--workers` < 1)."""
    if args.workers < 1:
        raise ConfigError(f"verify: --workers must be at least 1 (verifier processes), got {args.workers}")
    if not args.timeout > 0:  # also NaN
        raise ConfigError(f"verify: --timeout must be > 0 seconds, got {args.timeout:g}")


def load_rows(path: Path | None, name: str | None) -> list[dict[str, Any]]:
    """Parse and validate every row of `path` (None: stdin); any problem raises FlowError naming FILE:LINE."""
    return load_rows_with_verifiers(path, name)[0]


def load_rows_with_verifiers(path: Path | None, name: str | None) -> tuple[list[dict[str, Any]], set[str]]:
    """`load_rows`, plus the names of the verifiers the rows route to."""
    from flowlm.verify.base import GroundTruthError, UnknownVerifierError
    from flowlm.verify.rows import validate_row

    rows, names = [], set()
    for where, row in iter_input_objects(path):
        try:
            names.update(p.name for p in validate_row(row, name))
        except (GroundTruthError, UnknownVerifierError) as exc:
            msg = exc.args[0] if exc.args else str(exc)
            raise FlowError(f"{where}: {msg}") from None
        rows.append(row)
    if not rows:
        raise FlowError(f"{path or '<stdin>'}: no rows")
    return rows, names


def announce_sandbox(verifiers: set[str]) -> None:
    """Print, once on stderr, which sandbox scores model-written code, when any of `verifiers` runs code."""
    from flowlm.verify.code_verifier import SANDBOXED
    from flowlm.verify.sandbox import describe_backend

    if verifiers & set(SANDBOXED):
        print(f"sandbox: {describe_backend()}", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    """Run the verb; raises FlowError for bad input (the top-level CLI prints it and exits 1)."""
    from flowlm.verify import verify_rows

    check_arguments(args)
    check_output(args.out)
    rows, verifiers = load_rows_with_verifiers(input_path(args.file, "verify"), args.name)
    announce_sandbox(verifiers)
    verdicts = verify_rows(rows, name=args.name, workers=args.workers, timeout=args.timeout)
    with open_output(args.out) as out:
        for row, v in zip(rows, verdicts):
            write_json_line(out, {"id": row.get("id"), **v.to_dict()} if "id" in row else v.to_dict())
    return 0


def _standalone(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="flowlm verify")
    _arguments(p)
    return run_guarded(lambda: main(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(_standalone())
