"""`flowlm rl prompts`: RL prompt rows from a benchmark-format file, or from the built-in training split.

    flowlm rl prompts --suite gsm8k=/data/gsm8k/train.jsonl.gz --out gsm8k_rl.jsonl
    flowlm rl prompts --suite math=/data/math/train.jsonl --suite mbpp=/data/mbpp --max-items 500
    flowlm rl prompts --builtin 1000 --out builtin_rl.jsonl

An rl stage, `flowlm rl filter`, `flowlm post coldstart` and `flowlm post pairs` read prompt rows: chat
`messages` plus the verifier routing of `flowlm.verify.rows` (`dataset` + `ground_truth`), the schema of
open-instruct's RLVR sets. Benchmarks and their training splits are published in their own formats
(GSM8K's `question` / `answer … #### n`, MATH's `problem` / `solution`, HumanEval's stub and tests, …).
This verb reads any file the eval suites read (`flowlm.eval.benchmarks`, same field checks: a missing
field is `FILE:LINE`), and writes each item as the eval would prompt it in chat format: the question with
the suite's answer instruction (`\\boxed{}` for math, a code block for code) as the user turn, the
routing and verifier columns the eval scores it with, the item's id (prefixed with the suite's name where
it lacks it: MATH files may number their rows from 0) and category. So a model trained on
these rows is scored by `flowlm eval --suite NAME=TEST_FILE` on the same terms.

A file whose name says it is a test split gets a warning on stderr (RL on it would contaminate that
benchmark's eval); the built-in suites' held-out items are refused (`--builtin N` gives the training
split, as a recipe's `prompts: builtin` does).

An rl stage reads the same rows without the conversion step: `prompts: gsm8k=/data/gsm8k/train.jsonl.gz`
(`benchmark_spec`; the stage's fingerprint hashes the resolved file), and so does `flowlm train --objective
grpo --data gsm8k=PATH`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flowlm.errors import ConfigError

TEST_SPLIT_WORDS = ("test", "heldout", "held_out", "eval")
EVAL_ONLY_FILES = ("humaneval", "input_data", "ifbench", "sanitized-mbpp", "bfcl")


def prompt_key(row: Any) -> str | None:
    """What identifies a prompt across files: its last user turn without a trailing `/think` or `/no_think`,
    whitespace collapsed and case folded (None: a row with no user turn or `prompt`)."""
    from flowlm.post.teachers import user_text
    from flowlm.verify.rows import prompt_messages

    try:
        text = user_text(prompt_messages(row)) if isinstance(row, dict) else ""
    except ValueError:
        return None
    return " ".join(text.split()).casefold() or None


def exclude_seen(rows: list[dict[str, Any]], seen: Any) -> tuple[list[dict[str, Any]], int]:
    """`rows` without those whose prompt (`prompt_key`) is among the rows of `seen` (Qwen3 picks RL prompts
    that the cold-start SFT did not use), and how many were left out."""
    kept = [rows[i] for i in unseen(rows, seen)]
    return kept, len(rows) - len(kept)


def unseen(rows: list[dict[str, Any]], seen: Any) -> list[int]:
    """The indices of `rows` whose prompt (`prompt_key`) is not among the rows of `seen`."""
    keys = {k for k in (prompt_key(r) for r in seen) if k is not None}
    return [i for i, r in enumerate(rows) if prompt_key(r) not in keys]


def suite_rows(name: str, path: Path | None, *, max_items: int | None = None) -> tuple[list[dict[str, Any]], str]:
    """The prompt rows of benchmark file `path` read as suite `name`, and the file actually read (a folder
    resolves to the suite's published file name). Raises ConfigError / FlowError as `flowlm eval` does."""
    from flowlm.eval.benchmarks import BENCHMARKS
    from flowlm.eval.prompting import PromptFormat, chat_messages
    from flowlm.eval.suites import BUILTIN_SUITES, load_suite

    if name in BUILTIN_SUITES:
        raise ConfigError(f"suite {name}: the built-in suites are held-out eval items; RL on them would train on "
                          "the test set. Use --builtin N for the training split")
    if name not in BENCHMARKS:
        import difflib

        close = difflib.get_close_matches(name, BENCHMARKS, n=1)
        hint = " (its rows are prompt rows already)" if name == "jsonl" else f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"flowlm rl prompts: unknown suite '{name}'{hint}; benchmark formats: {', '.join(BENCHMARKS)}")
    if path is None:
        raise ConfigError(f"flowlm rl prompts: suite {name} needs its file: --suite {name}=PATH")
    suite = load_suite(name, path, n=max_items)
    fmt = PromptFormat()
    rows = []
    for item in suite.items:
        rid = item.id if name in item.id.lower() else f"{name}-{item.id}"  # MATH rows may number from 0
        row: dict[str, Any] = {"id": rid, "messages": chat_messages(item, suite, fmt), **item.row}
        if item.tools:  # BFCL: the functions the prompt lists, checked by the `tool_call` verifier, never run
            row["tools"] = list(item.tools)
        if item.category is not None:
            row["category"] = item.category
        rows.append(row)
    return rows, suite.source


def benchmark_spec(source: str) -> tuple[str, Path] | None:
    """`(suite, path)` when `source` is `NAME=PATH` with NAME a benchmark format (`gsm8k=/d/train.jsonl.gz`),
    else None (a file path, a stage name or `builtin`)."""
    from flowlm.eval.benchmarks import BENCHMARKS

    name, sep, path = source.partition("=")
    if not sep or name.strip() not in BENCHMARKS or not path.strip():
        return None
    return name.strip(), Path(path.strip())


def spec_file(source: str) -> str:
    """What a stage reading prompts `source` hashes into its fingerprint: a benchmark spec's resolved file
    (FlowError when it does not exist), else `source` itself."""
    from flowlm.eval.benchmarks import resolve

    spec = benchmark_spec(source)
    return source if spec is None else str(resolve(*spec))


def eval_file_warning(name: str, path: str) -> str | None:
    """The warning for training on benchmark file `path` read as suite `name`, when its name says it holds
    evaluation items: a test split (`test.jsonl`), or a benchmark published only for evaluation (HumanEval,
    IFEval's `input_data.jsonl`, IFBench, BFCL; sanitized MBPP, whose 427 problems include its test split).
    None for anything else (a training split)."""
    base = Path(path).name.lower()
    if not (any(w in base for w in TEST_SPLIT_WORDS) or base.startswith(EVAL_ONLY_FILES)):
        return None
    return f"{path} holds evaluation items: training on them trains on what `flowlm eval --suite {name}` scores"
