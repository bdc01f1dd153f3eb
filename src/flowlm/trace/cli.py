"""`flowlm trace`: find where a model's output occurs verbatim in the data that trained it (OLMoTrace).

    flowlm trace --model runs/tiny-post/sft/model --text "The answer is 42."
    flowlm generate --model runs/tiny-post/sft/model --file prompts.jsonl \
        | flowlm trace --model runs/tiny-post/sft/model
    flowlm trace --store runs/tiny/tokenizer/stores/pretrain --tokenizer runs/tiny/tokenizer/tokenizer --text "..."

With `--model` inside a flowlm run, the data is every token store the model's stage and its ancestors
trained on (`flowlm.trace.lineage`: pretraining, midtraining, long-context, SFT, both sides of DPO pairs);
the index is built once and kept in `<run>/trace_index/<key>` (the key hashes the stores' paths, metadata,
sizes and modification times, so a re-run stage gets a new index). With `--store` (repeatable) the data
is those stores, indexed in a temporary directory unless `--index DIR` keeps it.

Input: `--text`, or JSONL rows (`--file`, or stdin) whose output is `completions[].text` (what
`flowlm generate` writes), `completion`, `response` or `text`; the prompt (`prompt`, or the last user
message of `messages`) only weighs the document ranking. Output: each row plus `trace` (a list for
`completions`) on stdout or `--out`; a summary on stderr (for `--text`: every span with its top document).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

from flowlm.cli import add_io_arguments, check_output, input_path, iter_input_objects, open_output, write_json_line
from flowlm.errors import ConfigError, FlowError

TEXT_FIELDS = ("completion", "response", "text")


def add_parser(subparsers: Any) -> None:
    """Register the `trace` verb on the top-level CLI."""
    p = subparsers.add_parser("trace", help="find the verbatim spans of model outputs in the training data "
                              "(OLMoTrace), with the documents they come from")
    add_io_arguments(p, "rows with model outputs (completions[].text, completion, response or text)",
                     out_help="write the traced rows here (atomically) instead of to stdout")
    p.add_argument("--text", help="trace this one output instead of --file")
    p.add_argument("--model", type=Path, metavar="DIR",
                   help="a model of a flowlm run: trace against the data it and its ancestors trained on")
    p.add_argument("--store", type=Path, action="append", default=[], metavar="DIR",
                   help="a token store to trace against (repeatable; instead of --model)")
    p.add_argument("--tokenizer", type=Path, metavar="DIR", help="--store: the tokenizer the stores were made with")
    p.add_argument("--index", type=Path, metavar="DIR", help="keep (or reuse) the index here")
    p.add_argument("--density", type=float, default=0.05,
                   help="spans kept per output token, rarest first (OLMoTrace: 0.05)")
    p.add_argument("--min-tokens", type=int, default=1, help="shortest span considered (tokens)")
    p.add_argument("--docs", type=int, default=10, help="documents retrieved per span (default 10)")
    p.add_argument("--context", type=int, default=32, help="tokens of document shown each side of a match")
    p.set_defaults(func=main)


def _setup(args: argparse.Namespace, tmp: str) -> tuple[Any, Any, str]:
    """(index, tokenizer, description of the data) for the arguments."""
    from flowlm.model.tokenizer import load_tokenizer
    from flowlm.trace.index import cached_index, require_tokenizer

    if bool(args.model) == bool(args.store):
        raise ConfigError("trace: give --model DIR (a model of a flowlm run) or --store DIR (token stores), not both")
    for flag, value in (("density", args.density), ("docs", args.docs), ("min-tokens", args.min_tokens)):
        if value <= 0:
            raise ConfigError(f"trace: --{flag} must be positive, got {value}")
    if args.context < 0:
        raise ConfigError(f"trace: --context must be >= 0, got {args.context}")
    if args.model:
        from flowlm.trace.lineage import lineage_index, training_stores

        lineage = training_stores(args.model)
        if not lineage.stores:
            raise FlowError(f"{args.model}: stage '{lineage.stage}' and its ancestors trained on no token store"
                            + "".join(f"; {s}: {why}" for s, why in lineage.skipped.items()))
        for s, why in lineage.skipped.items():
            print(f"trace: stage '{s}' not indexed: {why}", file=sys.stderr)
        index, tok = lineage_index(lineage, args.model, args.index)
        what = ", ".join(f"{s}: {p.relative_to(lineage.run_dir) if p.is_relative_to(lineage.run_dir) else p}"
                         for s, p in lineage.stores)
        return index, tok, what
    if args.tokenizer is None:
        raise ConfigError("trace: --store needs --tokenizer DIR (the tokenizer the stores were made with)")
    stores, tok = list(args.store), load_tokenizer(args.tokenizer)
    index = cached_index(stores, args.index or Path(tmp) / "index")
    require_tokenizer(index, tok, str(args.tokenizer))
    return index, tok, ", ".join(str(p) for p in stores)


def _outputs(where: str, row: dict[str, Any]) -> str | list[str]:
    """The output text(s) of a row: a list for `completions`, else the first text field."""
    comps = row.get("completions")
    if isinstance(comps, list):
        texts = [c.get("text") if isinstance(c, dict) else c for c in comps]
        if all(isinstance(t, str) for t in texts):
            return texts
        raise FlowError(f"{where}: completions must be strings or objects with a 'text' string")
    for key in TEXT_FIELDS:
        if isinstance(row.get(key), str):
            return row[key]
    raise FlowError(f"{where}: no output to trace (expected completions[].text, {', '.join(TEXT_FIELDS)})")


def _summary(index: Any, result: dict[str, Any]) -> Iterator[str]:
    yield (f"trace: {result['n_tokens']} tokens, {len(result['spans'])} span(s) kept, "
           f"{result['coverage']:.0%} of the text highlighted, {result['match_coverage']:.0%} of its tokens in "
           f"verbatim matches")
    for k, s in enumerate(result["spans"], 1):
        top = result["docs"][s["docs"][0]] if s["docs"] else None
        where = f"; top document: {top['store']} #{top['store_doc']}" if top else ""
        yield f"  [{k}] {s['text']!r}: {s['tokens']} tokens, {s['count']} occurrence(s){where}"
        if top:
            sn = top["snippet"]
            yield f"      ...{sn['before'][-60:]}[[{sn['match']}]]{sn['after'][:60]}...".replace("\n", "\\n")


def main(args: argparse.Namespace) -> int:
    from flowlm.trace.tracer import TraceSettings, trace_text
    from flowlm.verify.rows import prompt_text

    if args.text is not None and args.file is not None:
        raise ConfigError("trace: give --text or --file, not both")
    check_output(args.out)
    path = None if args.text is not None else input_path(args.file, "trace")
    settings = TraceSettings(density=args.density, min_tokens=args.min_tokens, max_docs=args.docs, context=args.context)
    with tempfile.TemporaryDirectory(prefix="flowlm-trace-") as tmp:
        index, tok, what = _setup(args, tmp)
        print(f"trace: data {what} ({index.n_tokens:,} tokens, {index.meta['n_docs']:,} documents)", file=sys.stderr)
        if args.text is not None:
            result = trace_text(index, tok, args.text, settings=settings)
            with open_output(args.out) as fh:
                write_json_line(fh, {"text": args.text, "trace": result})
            for line in _summary(index, result):
                print(line, file=sys.stderr)
            return 0
        # every row is read and checked before any work: a bad line fails the command with FILE:LINE
        rows = [(where, row, _outputs(where, row)) for where, row in iter_input_objects(path)]
        covered, n = 0.0, 0
        with open_output(args.out) as fh:
            for _, row, texts in rows:
                prompt = prompt_text(row)
                outs = [texts] if isinstance(texts, str) else texts
                traced = [trace_text(index, tok, t, prompt, settings) for t in outs]
                covered += sum(t["coverage"] for t in traced)
                n += len(traced)
                write_json_line(fh, {**row, "trace": traced[0] if isinstance(texts, str) else traced})
        print(f"trace: {len(rows)} row(s), {n} output(s), mean highlighted {covered / max(n, 1):.1%}", file=sys.stderr)
    return 0

