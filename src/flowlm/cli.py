"""The `flowlm` command: a small fixed set of verbs; recipes and `key.sub=value` overrides carry the knobs.

    flowlm run [RECIPE] [--run-dir DIR] [key.sub=value ...]   run a whole flow (default recipe: tiny)
    flowlm train RECIPE --stage NAME [...]                    run selected stages (e.g. under torchrun)
    flowlm train --objective NAME --init CKPT --data FILE     one objective on your data (flowlm.flow.direct)
    flowlm eval --model DIR                                   BPB of a checkpoint on the built-in eval sets
    flowlm report RUN_DIR [--html [PATH]]                     tables from a run's flow.json (and its web page)
    flowlm ablate RECIPE --arm base --arm NAME:key=value      arms of a recipe sharing unchanged stages, compared
Sub-packages add verbs (verify, data, generate, eval, post, rl, trace) through `add_parser` / `main` in their `cli.py`,
and `flowlm.flow.ablate` adds `ablate` the same way (`PLUGIN_VERBS`).

One convention for every verb that reads records (verify, generate, data): the input is `--file PATH`
(`-`, or no `--file` while stdin is piped, reads stdin); the records go to stdout unless `--out PATH` is
given, in which case they are written to a temporary sibling and renamed into place. Progress bars and
summaries go to stderr, so stdout stays machine-readable JSONL. `add_io_arguments`, `iter_input_objects`
and `open_output` below implement it once for all of them.

No traceback reaches a user: `run_guarded` turns a `FlowError` into `error: <message>` (its exit code), an
unexpected exception into one `error: internal error: ...` line plus a crash log under the temp dir (exit
1; `FLOWLM_DEBUG=1` re-raises instead; a collective that failed because another torchrun rank died says so
instead of "internal error"), Ctrl-C into exit 130, and a closed stdout pipe (`| head`) into a
quiet exit 141. Argument errors stay argparse's (usage + message, exit 2).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from flowlm.errors import ConfigError, FlowError

DEFAULT_RECIPE = "tiny"
PLUGIN_VERBS = ("flowlm.verify.cli", "flowlm.data.cli", "flowlm.generate.cli", "flowlm.eval.cli", "flowlm.post.cli",
                "flowlm.rl.cli", "flowlm.trace.cli", "flowlm.flow.ablate")


def build_parser() -> argparse.ArgumentParser:
    from flowlm import __version__

    p = argparse.ArgumentParser(prog="flowlm", description="The OLMo-3 model flow, end to end, at any scale.")
    p.add_argument("--version", action="version", version=f"flowlm {__version__}")
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True

    run = sub.add_parser("run", help="run a recipe end to end (skips unchanged stages, resumes crashed ones)")
    _recipe_args(run, default=DEFAULT_RECIPE)

    train = sub.add_parser("train", help="run only the named stages of a recipe (torchrun-friendly), or one "
                           "objective on your own data (--objective)")
    _recipe_args(train, default=None)
    train.add_argument("--stage", action="append",
                       help="stage to run (repeatable); the stages it reads must be done, others are not touched")
    train.add_argument("--objective", help="train this objective (sft, dpo, reward_model, distill, lm) without a recipe")
    train.add_argument("--init", help="--objective: the checkpoint to start from (its tokenizer is used)")
    train.add_argument("--data", action="append", default=[], help="--objective: jsonl / parquet file (repeatable); grpo: "
                       "prompt rows, or NAME=PATH, a benchmark-format file (gsm8k=train.jsonl.gz)")
    train.add_argument("--print-recipe", action="store_true", help="--objective: print the recipe, do not run it")
    train.set_defaults(subparser=train)

    rep = sub.add_parser("report", help="print the stage and BPB tables of a run; --html writes the web page")
    rep.add_argument("run_dir", type=Path)
    rep.add_argument("--html", nargs="?", const="", default=None, metavar="PATH",
                     help="also write the report as one self-contained web page (default RUN_DIR/report.html)")

    for mod in PLUGIN_VERBS:
        try:
            importlib.import_module(mod).add_parser(sub)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
    return p


def _recipe_args(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("recipe", nargs="?", default=default, help="built-in recipe name or YAML path")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. stages.pretrain.steps=20")
    p.add_argument("--run-dir", type=Path, default=None, help="run directory (default: runs/<recipe name>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def cmd_train_objective(args: argparse.Namespace) -> int:
    """`flowlm train --objective NAME --init CKPT --data FILE [overrides]`: see `flowlm.flow.direct`."""
    import yaml

    from flowlm.config import apply_overrides
    from flowlm.flow.direct import objective_recipe, with_overrides
    from flowlm.flow.runner import run_recipe
    from flowlm.flow.schema import parse_recipe

    if args.stage:
        raise ConfigError("--objective runs its own recipe: drop --stage (or drop --objective and name a recipe)")
    if args.init is None:
        raise ConfigError("--objective needs --init CKPT (the checkpoint to start from)")
    if args.recipe and "=" not in args.recipe:
        raise ConfigError(f"--objective builds its own recipe: drop '{args.recipe}' (overrides look like stages.NAME.key=value)")
    overrides = [args.recipe, *args.overrides] if args.recipe else list(args.overrides)
    raw = with_overrides(apply_overrides(objective_recipe(args.objective, args.init, args.data), overrides),
                         args.objective, args.data)
    if args.print_recipe:
        print(yaml.safe_dump(raw, sort_keys=False), end="")
        return 0
    origin = f"objective:{args.objective}"
    recipe = parse_recipe(raw, origin)
    run_dir = args.run_dir or Path("runs") / recipe.name
    record = run_recipe(recipe, origin, overrides, run_dir, show_progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        finish_report(record.run_dir)
    return 0


def cmd_run(args: argparse.Namespace, only: list[str] | None = None) -> int:
    if args.recipe is None:
        raise ConfigError("a recipe is required (e.g. `flowlm train tiny --stage pretrain`)")
    if "=" in args.recipe:  # `flowlm run a.b=1`: only overrides, default recipe
        args.overrides, args.recipe = [args.recipe, *args.overrides], DEFAULT_RECIPE
    from flowlm.flow.runner import load_recipe, run_recipe

    recipe, origin = load_recipe(args.recipe, args.overrides)
    run_dir = args.run_dir or Path("runs") / recipe.name
    record = run_recipe(recipe, origin, args.overrides, run_dir, only=only, show_progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        finish_report(record.run_dir)
    return 0


def finish_report(run_dir: Path) -> None:
    """After a run: the tables on stdout and the web page `<run>/report.html` (named on stderr)."""
    from flowlm.flow.html_report import write_html
    from flowlm.flow.report import print_report

    print_report(run_dir)
    try:
        print(f"report: {write_html(run_dir)}", file=sys.stderr)
    except OSError as exc:  # the run itself succeeded: say why the page is missing, keep exit 0
        print(f"report: {run_dir / 'report.html'} not written: {exc.strerror or exc}", file=sys.stderr)


RESUME_HINT = "interrupted: finished stages and checkpoints are kept; rerun to resume"


def main(argv: list[str] | None = None) -> int:
    """The `flowlm` entry point: parse, dispatch, and turn every failure into one line (see module docstring)."""
    return run_guarded(lambda: _dispatch(argv))


def _dispatch(argv: list[str] | None) -> int:
    parser = build_parser()
    # Overrides may come after options (`run tiny --run-dir d a.b=1`); argparse leaves those over.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.verb not in ("run", "train", "ablate") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    if args.verb == "train" and not args.stage and not args.objective:
        args.subparser.error("the following arguments are required: --stage (or --objective)")
    if args.verb in ("run", "train"):
        try:
            if args.verb == "train" and args.objective:
                return cmd_train_objective(args)
            return cmd_run(args, only=args.stage if args.verb == "train" else None)
        except KeyboardInterrupt:
            print(RESUME_HINT, file=sys.stderr)
            return 130
    if args.verb == "report":
        from flowlm.flow.report import print_report

        print_report(args.run_dir)
        if args.html is not None:
            from flowlm.flow.html_report import write_html

            print(f"report: {write_html(args.run_dir, None if args.html == '' else Path(args.html))}", file=sys.stderr)
        return 0
    return int(args.func(args))


# --- failures: one line each ------------------------------------------------------------------------------


def run_guarded(fn: Callable[[], int]) -> int:
    """Run a verb and return its exit code; no exception but SystemExit (argparse) leaves this function.

    Shared by `main` and the standalone `python -m flowlm.<pkg>.cli` entry points.
    """
    try:
        return int(fn())
    except FlowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if isinstance(exc, BrokenPipeError) and _stdout_closed():
            # The reader of our stdout went away (`flowlm verify ... | head`): stop quietly, as `cat` would.
            # stdout is pointed at /dev/null so the interpreter's final flush does not fail again.
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141  # 128 + SIGPIPE, what a shell reports for a writer killed by a closed pipe
        if os.environ.get("FLOWLM_DEBUG", "") not in ("", "0"):
            raise
        peer = peer_failure(exc)
        if peer is None:
            print(internal_error(exc), file=sys.stderr)
            return 1
        print(peer, file=sys.stderr)
        leave_broken_group()
        return 1  # only reached where os._exit is patched out


def internal_error(exc: BaseException) -> str:
    """Save the traceback of an unexpected exception to `<tmp>/flowlm-crash-<pid>.log`; return the one-line message."""
    lines = str(exc).strip().splitlines()
    msg = f": {lines[0]}{' ...' if len(lines) > 1 else ''}" if lines else ""
    return f"error: internal error: {type(exc).__name__}{msg} ({save_crash_log(exc)})"


def save_crash_log(exc: BaseException) -> str:
    """Write `exc`'s traceback to `<tmp>/flowlm-crash-<pid>.log`; return where it went (or why it did not)."""
    from flowlm import __version__

    path = Path(tempfile.gettempdir()) / f"flowlm-crash-{os.getpid()}.log"
    try:
        path.write_text(f"flowlm {__version__}, python {sys.version.split()[0]}, argv: {sys.argv!r}\n"
                        + "".join(traceback.format_exception(exc)), encoding="utf-8")
        return f"full traceback in {path}"
    except OSError as err:
        return f"traceback not saved: {path}: {err.strerror}; rerun with FLOWLM_DEBUG=1 to see it"


# What gloo (and the c10d store) say when the rank at the other end of a connection has gone away.
PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "Socket closed",
             "remote process exited", "NCCL communicator was aborted")


def peer_failure(exc: BaseException) -> str | None:
    """The one-line message for a collective that failed because another rank stopped, else None.

    When one rank of a torchrun job dies (`kill -9`, out of memory, its own error), the others fail inside
    their next collective with gloo's "Connection reset by peer" or a `torch.distributed.DistError`. That is
    not a flowlm bug, so it is not reported as an internal error: the message names this rank, says the
    cause is a peer (torchrun's failure summary names which one) and how to resume. The traceback is still
    saved, as for any unexpected exception. torch is only looked at if the verb already imported it.
    """
    dist = sys.modules.get("torch.distributed")
    try:
        if dist is None or not dist.is_available() or not dist.is_initialized():
            return None
        rank, size = dist.get_rank(), dist.get_world_size()
    except Exception:  # a half-torn-down process group: fall back to the internal-error line
        return None
    # collectives raise RuntimeError (DistError is one); an OSError such as a broken pipe to a file is the
    # verb's own failure, even when its text matches
    text = str(exc)
    dist_error = getattr(dist, "DistError", None)
    if not isinstance(exc, RuntimeError) or not (
            (dist_error is not None and isinstance(exc, dist_error)) or any(s in text for s in PEER_GONE)):
        return None
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    reason = f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__
    return (f"error: rank {rank} of {size}: a collective failed because another rank stopped (killed, crashed or "
            f"out of memory; torchrun's summary names it); rerun the same command to resume from the last "
            f"checkpoint. {reason} ({save_crash_log(exc)})")


def leave_broken_group() -> None:
    """Exit this rank now, with status 1, after a peer's death broke its process group.

    Destroying a gloo group whose peer has gone can abort the interpreter during finalization ("terminate
    called without an active exception": status -6 instead of 1, and torchrun would report a second crash).
    The exit handlers still run first (they flush logs, stop worker pools, remove temp dirs); then the rank
    leaves without running the broken group's destructor.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    import atexit

    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()  # CPython's own finalization step, run here so nothing is skipped
    os._exit(1)


def _stdout_closed() -> bool:
    """True when stdout is a pipe whose reading end is closed (poll reports POLLERR on the writing end)."""
    try:
        import select

        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or stdout is not a real file
        return False


# --- records in, records out: the I/O convention of verify / generate / data ------------------------------


def add_io_arguments(p: argparse.ArgumentParser, what: str, *, input_aliases: tuple[str, ...] = (),
                     out_help: str = "write the output records here (atomically) instead of to stdout") -> None:
    """`--file PATH` (plus old spellings in `input_aliases`) and `--out PATH`, as every record verb spells them."""
    p.add_argument("--file", *input_aliases, dest="file", type=Path, default=None, metavar="PATH",
                   help=f"{what} (JSONL); '-' = stdin, which is also the default when stdin is piped")
    p.add_argument("--out", type=Path, default=None, metavar="PATH", help=out_help)


def is_stdio(path: Path | str | None) -> bool:
    return path is not None and str(path) == "-"


def input_path(path: Path | None, verb: str) -> Path | None:
    """The file named by `--file`, or None for stdin (`--file -`, or no `--file` while stdin is piped)."""
    if path is not None and not is_stdio(path):
        return path
    if path is None and stdin_is_terminal():
        raise ConfigError(f"{verb}: no input: give --file PATH (or '-' for stdin), or pipe JSONL into stdin")
    return None


def stdin_is_terminal() -> bool:
    try:
        return sys.stdin is None or sys.stdin.closed or sys.stdin.isatty()
    except (AttributeError, ValueError):
        return True


def iter_input_objects(path: Path | None) -> Iterator[tuple[str, dict[str, Any]]]:
    """`("FILE:LINE", object)` per non-blank line of `path` (None: stdin, named `<stdin>`); the first bad
    line raises a FlowError naming FILE:LINE (`flowlm.jsonlines`, strict)."""
    from flowlm.jsonlines import BadLine, iter_json_objects, parse_object

    if path is not None:
        if path.is_dir():
            raise FlowError(f"{path}: is a directory, not a JSONL file")
        for lineno, row in iter_json_objects(path):
            yield f"{path}:{lineno}", row
        return
    if sys.stdin is None:  # started with fd 0 closed
        raise FlowError("<stdin>: no standard input to read")
    for lineno, raw in enumerate(sys.stdin.buffer, start=1):  # bytes: JSON lines are UTF-8 whatever the locale
        if raw.strip():
            try:
                yield f"<stdin>:{lineno}", parse_object(raw)
            except BadLine as exc:
                raise FlowError(f"<stdin>:{lineno}: {exc}") from None


def check_output(out: Path | None) -> None:
    """Fail before any work when `--out` cannot be written: a directory, or a path whose nearest existing
    ancestor is a file or not writable (`open_output` creates missing parents and writes a sibling
    temporary). Call it at the start of a verb, so a bad `--out` does not cost the run."""
    if out is None or is_stdio(out):
        return
    if out.is_dir():
        raise FlowError(f"{out}: is a directory (--out names the output file)")
    ancestor = out.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise FlowError(f"{out}: cannot write: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise FlowError(f"{out}: cannot write in {ancestor} (permission denied)")


@contextlib.contextmanager
def open_output(out: Path | None) -> Iterator[TextIO]:
    """stdout (None or `-`), or a text file written beside `out` and renamed onto it when the block succeeds;
    on failure (or Ctrl-C) the temporary is removed and an existing `out` is left untouched."""
    if out is None or is_stdio(out):
        yield sys.stdout
        sys.stdout.flush()
        return
    from flowlm.atomic import replacing

    if out.is_dir():
        raise FlowError(f"{out}: is a directory (--out names the output file)")
    try:
        with replacing(out) as tmp, tmp.open("w", encoding="utf-8") as fh:
            yield fh
    except OSError as exc:
        raise FlowError(f"{out}: cannot write ({exc.strerror or exc})") from None


def write_json_line(fh: TextIO, obj: Any) -> None:
    """One record per line, UTF-8 (not ASCII-escaped)."""
    fh.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
