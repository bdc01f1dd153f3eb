"""`flowlm verify --name NAME --file rows.jsonl`: score JSONL rows, one JSON verdict per line.

Each input row holds the completion (`completion` or `response`), its ground truth and routing
tags (see `flowlm.verify.rows`); `--name` overrides the tags. Rows are validated first, so an unknown
verifier or malformed ground truth stops the run with `error: FILE:LINE: ...` (exit 1) before any
scoring. Scoring runs in a process pool (`--workers`, hard `--timeout` per item).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from flowlm.errors import FlowError
from flowlm.jsonlines import iter_json_objects


def add_parser(subparsers: Any) -> None:
    """Register the `verify` verb on the top-level CLI."""
    p = subparsers.add_parser("verify", help="score completions with a verifier (JSONL in, JSONL verdicts out)")
    _arguments(p)
    p.set_defaults(func=main)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", default=None, help="verifier name (default: route each row by its dataset tag)")
    p.add_argument("--file", required=True, type=Path, help="JSONL rows")
    p.add_argument("--workers", type=int, default=2, help="verifier processes")
    p.add_argument("--timeout", type=float, default=60.0, help="hard time limit per verification (s)")


def load_rows(path: Path, name: str | None) -> list[dict[str, Any]]:
    """Parse and validate every row; any problem raises FlowError naming FILE:LINE."""
    from flowlm.verify.base import GroundTruthError, UnknownVerifierError
    from flowlm.verify.rows import validate_row

    if not path.is_file():
        raise FlowError(f"{path}: no such file")
    rows = []
    for n, row in iter_json_objects(path):
        try:
            validate_row(row, name)
        except (GroundTruthError, UnknownVerifierError) as exc:
            msg = exc.args[0] if exc.args else str(exc)
            raise FlowError(f"{path}:{n}: {msg}") from None
        rows.append(row)
    return rows


def main(args: argparse.Namespace) -> int:
    """Run the verb; raises FlowError for bad input (the top-level CLI prints it and exits 1)."""
    from flowlm.verify import verify_rows

    rows = load_rows(args.file, args.name)
    verdicts = verify_rows(rows, name=args.name, workers=args.workers, timeout=args.timeout)
    for row, v in zip(rows, verdicts):
        out = {"id": row.get("id"), **v.to_dict()} if "id" in row else v.to_dict()
        print(json.dumps(out, ensure_ascii=False, default=str))
    return 0


def _standalone(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="flowlm verify")
    _arguments(p)
    try:
        return main(p.parse_args(argv))
    except FlowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(_standalone())
