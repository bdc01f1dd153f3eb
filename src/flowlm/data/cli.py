"""`flowlm data {run,filter,dedup,quality,decon}`: the data pipeline from the command line.

    flowlm data VERB [INPUT ...] [--file PATH ...] [--out DIR] [--config YAML] [--preset builtin] [--set k=v ...]
    flowlm data decon --file corpus.jsonl --bench gsm8k/test.jsonl > kept.jsonl
    cat corpus.jsonl | flowlm data dedup --out runs/dedup

Every verb runs `run_pipeline` with a subset of stages on; configuration comes from `--config`
(YAML, the `PipelineConfig` schema), `--preset builtin`, and dotted `--set key=value` overrides.

Inputs and outputs follow the convention of every record verb (`flowlm.cli`) as far as a directory
pipeline allows:
- inputs are the positional INPUTs (files, directories, globs) plus `--file PATH` (repeatable, the same
  thing); `-` is stdin, which is also read when no input is named and stdin is piped;
- `--out DIR` (`-o`) writes the pipeline directory as `run_pipeline` does (`docs/part-*.jsonl`,
  `stats.json`, `decontam_report.jsonl` for decon, `work/` with the markers that let a rerun resume);
- without `--out` the pipeline runs in a temporary directory under the system temp dir (`$TMPDIR`),
  removed whatever happens (success, error, Ctrl-C), and the kept documents are written to stdout as
  JSONL, one per line, in shard order;
- the per-step accounting table always goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowlm.cli import is_stdio, stdin_is_terminal
from flowlm.config import apply_overrides, deep_merge, validate
from flowlm.errors import ConfigError

if TYPE_CHECKING:
    from flowlm.data.pipeline import PipelineResult

VERBS = {
    "run": {},
    "filter": {"dedup": {"exact": None, "minhash": None, "substring": None}, "upsample": {"mode": "none"}},
    "dedup": {"filters": {k: None for k in ("length", "repetition", "quality", "compression", "url",
                                            "langid", "pii")}, "upsample": {"mode": "none"}},
    "quality": {"filters": {k: None for k in ("length", "repetition", "quality", "compression", "url",
                                              "langid", "pii")},
                "dedup": {"exact": None, "minhash": None, "substring": None}},
    "decon": {"filters": {k: None for k in ("length", "repetition", "quality", "compression", "url",
                                            "langid", "pii")},
              "dedup": {"exact": None, "minhash": None, "substring": None}, "upsample": {"mode": "none"}},
}


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("data", help="Dolma-3-style data pipeline")
    verbs = p.add_subparsers(dest="data_cmd", metavar="VERB", required=True)
    for verb in VERBS:
        v = verbs.add_parser(verb, help=f"{verb} documents (jsonl/.gz/.zst/parquet)",
                             description=f"flowlm data {verb}: kept documents go to stdout as JSONL unless "
                                         "--out DIR is given; the accounting table goes to stderr.")
        v.add_argument("inputs", nargs="*", metavar="INPUT", help="input files, directories or globs ('-' = stdin)")
        v.add_argument("--file", action="append", default=[], dest="files", metavar="PATH",
                       help="input file, directory or glob, like INPUT (repeatable; '-' = stdin, the default "
                            "when no input is named and stdin is piped)")
        v.add_argument("-o", "--out", default=None, metavar="DIR",
                       help="write the pipeline directory here (docs/, stats.json, resumable work/) "
                            "instead of the kept documents to stdout")
        v.add_argument("--config", help="YAML file with PipelineConfig fields")
        v.add_argument("--preset", choices=["default", "builtin"], default="default")
        v.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override, e.g. dedup.minhash.bands=20")
        v.add_argument("--executor", choices=["serial", "local", "ray"])
        v.add_argument("--workers", type=_positive_int, help="worker processes (>= 1)")
        v.add_argument("--excluded", action="store_true", help="write rejected docs per stage (needs --out)")
        if verb == "decon":
            v.add_argument("--bench", action="append", required=True, help="benchmark file (repeatable)")
            v.add_argument("--mode", choices=["posttrain", "pretrain"], default="pretrain")
        v.set_defaults(func=main)


def _positive_int(text: str) -> int:
    """argparse type for counts: an integer >= 1 (else argparse's usage error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    return value


def _config_file(path: str) -> str:
    """`--config PATH` checked: an existing file (a missing file or a directory is a one-line ConfigError)."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"--config {path}: is a directory, not a config file")
    if not p.is_file():
        raise ConfigError(f"--config {path}: config file not found")
    return path


def _out_dir(out: str | None) -> Path | None:
    """`--out DIR` as a path (None: stdout); an existing non-directory there is a one-line ConfigError."""
    if out is None or is_stdio(out):
        return None
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a directory (the pipeline writes docs/, stats.json "
                          "and work/ into it)")
    return path


def build_config(args: argparse.Namespace) -> Any:
    from flowlm.data.pipeline import PipelineConfig, builtin_config

    base = builtin_config() if args.preset == "builtin" else PipelineConfig()
    raw: dict[str, Any] = json.loads(base.model_dump_json())
    raw = deep_merge(raw, VERBS[args.data_cmd])
    origin = "flowlm data"
    if args.config:
        from flowlm.config import read_recipe

        user, origin = read_recipe(_config_file(args.config))
        raw = deep_merge(raw, user)
    if args.data_cmd == "decon":
        raw["decontam"] = {"benchmarks": args.bench, "cfg": {**raw["decontam"]["cfg"], "mode": args.mode}}
    for key, val in (("executor", args.executor), ("workers", args.workers)):
        if val is not None:
            raw[key] = val
    if args.excluded:
        raw["write_excluded"] = True
    raw = apply_overrides(raw, args.set)
    return validate(PipelineConfig, raw, origin)


def main(args: argparse.Namespace) -> int:
    from flowlm.data.pipeline import run_pipeline

    if getattr(args, "data_cmd", None) not in VERBS:
        raise ConfigError(f"flowlm data: unknown verb {getattr(args, 'data_cmd', None)!r}")
    cfg = build_config(args)
    out_dir = _out_dir(args.out)
    if out_dir is None and args.excluded:
        raise ConfigError(f"flowlm data {args.data_cmd}: --excluded writes files into the output directory; "
                          "give --out DIR")
    # Holds the stdin spool, and the whole pipeline directory when there is no --out; TemporaryDirectory
    # removes it on every way out of the block, Ctrl-C included (the executor's pool is closed first).
    with tempfile.TemporaryDirectory(prefix="flowlm-data-", ignore_cleanup_errors=True) as tmp:
        inputs, spool = _inputs(args, Path(tmp))
        res = run_pipeline(inputs, out_dir or Path(tmp) / "pipeline", cfg, spooled=[spool] if spool else [])
        _print_stats(res.stats.to_dict(), spool, res if out_dir is not None else None)
        if out_dir is None:
            _copy_docs(res.shards)
    return 0


def _inputs(args: argparse.Namespace, tmp: Path) -> tuple[list[str], Path | None]:
    """The input paths, with stdin (`-`, or nothing named while stdin is piped) spooled to a file in `tmp`."""
    named = [*args.inputs, *args.files]
    if not named:
        if stdin_is_terminal():
            raise ConfigError(f"flowlm data {args.data_cmd}: no input: name INPUT files or --file PATH "
                              "('-' for stdin), or pipe JSONL documents into stdin")
        named = ["-"]
    spool = tmp / "stdin.jsonl" if any(is_stdio(x) for x in named) else None
    if spool is not None:
        with open(spool, "wb") as fh:
            shutil.copyfileobj(sys.stdin.buffer, fh)
    # `-` given twice reads stdin once
    return list(dict.fromkeys(str(spool) if is_stdio(x) else x for x in named)), spool


def _print_stats(stats: dict[str, Any], spool: Path | None, kept: PipelineResult | None) -> None:
    """The per-step accounting table on stderr; with a kept output directory, where its files are."""
    for name, st in stats["steps"].items():
        drops = ", ".join(f"{k}={v['docs']}" for k, v in st["dropped"].items())
        print(f"{name:10s} in {st['in']['docs']:>8} docs {st['in']['tokens']:>11} tok -> "
              f"out {st['out']['docs']:>8} docs {st['out']['tokens']:>11} tok  {drops}", file=sys.stderr)
    q = stats["quarantine"]
    line = f"quarantined: {q['count']}"
    if kept is not None:
        line += f"; docs: {kept.out_dir / 'docs'}; stats: {kept.stats_path}"
    print(line, file=sys.stderr)
    if kept is None:  # stats.json goes with the temporary directory: show the first few here
        for item in q["items"][:5]:
            where = str(item["where"]).replace(str(spool), "<stdin>") if spool else item["where"]
            print(f"  {where}: {item['reason']}", file=sys.stderr)


def _copy_docs(shards: list[Path]) -> None:
    """Kept documents to stdout, byte for byte (the published shards are plain JSONL, one doc a line)."""
    sys.stdout.flush()
    for shard in shards:
        with open(shard, "rb") as fh:
            shutil.copyfileobj(fh, sys.stdout.buffer)
    sys.stdout.buffer.flush()
