"""Readers for standard benchmark files in their published formats (the user gives the path).

| suite | file (published name) | fields read | verifier row |
|---|---|---|---|
| `gsm8k` | `test.jsonl` (openai/grade-school-math) | question, answer (`... #### n`) | `gsm8k`, ground truth = the solution |
| `math500` | `test.jsonl` (PRM800K MATH-500) | problem, solution, answer, unique_id | `math`, ground truth = answer |
| `math` | `test.jsonl[.gz]` (Hendrycks MATH, 5000) | problem, solution (last `\\boxed{}` = answer) | `math` |
| `aime` | `test.jsonl` (AIME 2024, Qwen2.5-Math copy) | id, problem, solution, answer | `math` |
| `amc` | `test.jsonl` (AMC 2023) | id, problem, answer (a float: 27.0) | `math`, ground truth "27" |
| `humaneval` | `HumanEval.jsonl[.gz]` | task_id, prompt, entry_point, canonical_solution, test | `humaneval` + prompt, entry_point |
| `mbpp` | `sanitized-mbpp.json` (a JSON array) | task_id, prompt, code, test_list, test_imports | `mbpp`, tests + imports |
| `ifeval` | `input_data.jsonl` | key, prompt, instruction_id_list, kwargs | `ifeval` + prompt |
| `ifbench` | `IFBench_test.jsonl` | key, prompt, instruction_id_list, kwargs | `ifbench` + prompt |
| `bfcl` | `BFCL_v4_simple_python.json` (or any AST category: multiple, parallel, live_simple, ...; JSON lines) and `possible_answer/<same name>` beside it | id, question (turns of messages), function | `tool_call`, ground truth = the possible answers, `functions` = the signatures |

Prompts follow the common practice of each benchmark: math asks for the answer in `\\boxed{}`;
HumanEval shows the function stub (plain mode: the stub itself is the prompt and the model writes the
body, stopped at the next top-level statement); MBPP gives the task and its tests (plain mode: the
`[BEGIN]` / `[DONE]` format of the MBPP paper). BFCL items are the first turn's messages with the
functions listed by the chat template (chat format only), and a call is scored by BFCL's AST check
(`flowlm.verify.tool_call`). A row missing a field is a one-line `FlowError` naming FILE:LINE.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from flowlm.errors import FlowError
from flowlm.eval.suites import BOXED, EvalItem, Suite

FILES: dict[str, tuple[str, ...]] = {
    "gsm8k": ("test.jsonl",), "math500": ("test.jsonl",), "math": ("test.jsonl", "test.jsonl.gz"),
    "aime": ("test.jsonl",), "amc": ("test.jsonl",), "humaneval": ("HumanEval.jsonl.gz", "HumanEval.jsonl"),
    "mbpp": ("sanitized-mbpp.json",), "ifeval": ("input_data.jsonl",), "ifbench": ("IFBench_test.jsonl",),
    "bfcl": ("BFCL_v4_simple_python.json", "BFCL_v3_simple.json"),
}
CODE_INSTRUCTION = "Write the complete function in a ```python code block."
HUMANEVAL_STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")


def _rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(`FILE:LINE` or `FILE:item N`, row) for a JSONL(.gz) file or a JSON array file (a `.json` file that is
    not an array is read as JSON lines, as BFCL publishes its data)."""
    from flowlm.jsonlines import iter_json_objects

    if path.name.endswith(".json") and _first_byte(path) == b"[":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise FlowError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
        if not isinstance(rows, list):
            raise FlowError(f"{path}: expected a JSON array of rows")
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise FlowError(f"{path}: item {i}: expected a JSON object")
            yield f"{path}: item {i}", row
        return
    for lineno, row in iter_json_objects(path):
        yield f"{path}:{lineno}", row


def _first_byte(path: Path) -> bytes:
    """The file's first byte that is not whitespace (b"" for an empty file), read without loading the file."""
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(4096), b""):
            if chunk.strip():
                return chunk.lstrip()[:1]
    return b""


def _need(where: str, row: dict[str, Any], *keys: str) -> list[Any]:
    missing = [k for k in keys if k not in row or row[k] is None]
    if missing:
        raise FlowError(f"{where}: row has no {', '.join(missing)} (fields: {', '.join(sorted(row))[:200]})")
    return [row[k] for k in keys]


def _gsm8k(where: str, i: int, row: dict[str, Any]) -> EvalItem:
    question, answer = _need(where, row, "question", "answer")
    demo = re.sub(r"<<[^>]*>>", "", answer)  # calculator annotations are not prose
    return EvalItem(f"gsm8k-{i}", question, {"dataset": "gsm8k", "ground_truth": answer}, demo=demo)


def _math(where: str, i: int, row: dict[str, Any]) -> EvalItem:
    from flowlm.verify.math_extract import last_boxed

    (problem,) = _need(where, row, "problem")
    solution = row.get("solution")
    answer = row.get("answer")
    if answer is None:
        answer = last_boxed(solution) if isinstance(solution, str) else None
        if not answer:
            raise FlowError(f"{where}: row has no answer and its solution no \\boxed{{}} answer")
    gt = _number_text(answer)
    item_id = str(row.get("unique_id", row.get("id", row.get("idx", i))))
    demo = solution if isinstance(solution, str) and "\\boxed" in solution else f"The answer is $\\boxed{{{gt}}}$."
    subject = row.get("subject", row.get("type"))  # MATH500 / MATH's subject, e.g. "Precalculus"
    return EvalItem(item_id, problem, {"dataset": "math", "ground_truth": gt}, demo=demo,
                    category=subject if isinstance(subject, str) and subject else None)


def _number_text(x: Any) -> str:
    """AMC answers are floats (27.0): the integer text for whole numbers, else the value as written."""
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x)


def _humaneval(where: str, i: int, row: dict[str, Any]) -> EvalItem:
    task_id, prompt, entry, test = _need(where, row, "task_id", "prompt", "entry_point", "test")
    vrow = {"dataset": "humaneval", "ground_truth": {"test": test, "entry_point": entry}, "prompt": prompt,
            "entry_point": entry}
    question = f"Complete the following Python function.\n\n```python\n{prompt}```"
    return EvalItem(task_id, question, vrow, demo=row.get("canonical_solution"))


def _mbpp(where: str, i: int, row: dict[str, Any]) -> EvalItem:
    task_id, text, tests = _need(where, row, "task_id", "prompt", "test_list")
    imports = row.get("test_imports") or []
    vrow = {"dataset": "mbpp", "ground_truth": {"tests": list(tests), "imports": list(imports)}}
    question = f"{text}\nYour code should pass these tests:\n\n" + "\n".join(tests)
    return EvalItem(f"mbpp-{task_id}", question, vrow, demo=row.get("code"))


def _instructions(dataset: str) -> Callable[[str, int, dict[str, Any]], EvalItem]:
    def read(where: str, i: int, row: dict[str, Any]) -> EvalItem:
        prompt, ids, kwargs = _need(where, row, "prompt", "instruction_id_list", "kwargs")
        vrow = {"dataset": dataset, "ground_truth": {"instruction_id_list": ids, "kwargs": kwargs}, "prompt": prompt}
        return EvalItem(f"{dataset}-{row.get('key', i)}", prompt, vrow)

    return read


def bfcl_answers(path: Path) -> dict[str, Any]:
    """BFCL's possible answers for the question file `path`: `possible_answer/<name>` beside it, by id."""
    answers = path.parent / "possible_answer" / path.name
    if not answers.is_file():
        raise FlowError(f"{path}: no possible answers at {answers} (BFCL keeps them in possible_answer/ beside the "
                        "questions; categories without them, multi-turn and irrelevance, are not AST-checked)")
    return {str(row.get("id")): row.get("ground_truth") for _, row in _rows(answers)}


def _bfcl(answers: dict[str, Any]) -> Callable[[str, int, dict[str, Any]], EvalItem]:
    def read(where: str, i: int, row: dict[str, Any]) -> EvalItem:
        iid, question, functions = _need(where, row, "id", "question", "function")
        turns = question if isinstance(question, list) else []
        first = turns[0] if turns and isinstance(turns[0], list) else turns
        if not first or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in first):
            raise FlowError(f"{where}: question must be a list of turns, each a list of messages")
        if len(turns) > 1 and isinstance(turns[0], list):
            raise FlowError(f"{where}: a multi-turn BFCL item ({iid}); only single-turn AST categories are read")
        if not isinstance(functions, list) or not all(isinstance(f, dict) and "name" in f for f in functions):
            raise FlowError(f"{where}: function must be a list of function signatures")
        if str(iid).startswith(("simple_java", "simple_javascript")):  # BFCL converts their string values first
            raise FlowError(f"{where}: {iid}: the Java and JavaScript categories are not read (BFCL checks them "
                            "after converting values to those languages' types)")
        if str(iid) not in answers:
            raise FlowError(f"{where}: no possible answer for {iid}")
        vrow = {"dataset": "tool_call", "ground_truth": answers[str(iid)], "functions": functions}
        users = [m["content"] for m in first if m.get("role") == "user"]
        return EvalItem(str(iid), users[-1] if users else first[-1]["content"], vrow, messages=tuple(first),
                        category=str(iid).rsplit("_", 1)[0],
                        tools=tuple({"type": "function", "function": f} for f in functions))

    return read


READERS: dict[str, Callable[[str, int, dict[str, Any]], EvalItem]] = {
    "gsm8k": _gsm8k, "math500": _math, "math": _math, "aime": _math, "amc": _math,
    "humaneval": _humaneval, "mbpp": _mbpp, "ifeval": _instructions("ifeval"), "ifbench": _instructions("ifbench"),
    "bfcl": _bfcl({}),  # the real reader is made with the file's possible answers (read_benchmark)
}
BENCHMARKS = tuple(READERS)
# (max_new_tokens, chat instruction, plain template, plain stop strings)
STYLE: dict[str, tuple[int, str, str, tuple[str, ...]]] = {
    "gsm8k": (512, BOXED, "Question: {question}\nAnswer:", ("\nQuestion:",)),
    "math500": (1024, BOXED, "Problem: {question}\nSolution:", ("\nProblem:",)),
    "humaneval": (512, CODE_INSTRUCTION, "{code_prompt}", HUMANEVAL_STOP),
    "mbpp": (512, CODE_INSTRUCTION, "You are an expert Python programmer, and here is your task: {question}\n[BEGIN]\n",
             ("[DONE]",)),
    "ifeval": (1024, "", "{question}\n", ()),
    "bfcl": (256, "", "{question}\n", ()),
}
for _name, _like in (("math", "math500"), ("aime", "math500"), ("amc", "math500"), ("ifbench", "ifeval")):
    STYLE[_name] = STYLE[_like]


def resolve(name: str, path: Path) -> Path:
    """The benchmark file: `path` itself, or its published file name inside the folder `path`."""
    if path.is_file():
        return path
    if path.is_dir():
        for fname in FILES[name]:
            if (path / fname).is_file():
                return path / fname
        raise FlowError(f"{path}: no {' or '.join(FILES[name])} for suite {name} in this folder")
    raise FlowError(f"{path}: no such benchmark file (suite {name})")


def read_benchmark(name: str, path: Path) -> Suite:
    """Every row of the benchmark file as a `Suite` (validated; see module docstring)."""
    from flowlm.verify.base import GroundTruthError, UnknownVerifierError
    from flowlm.verify.rows import validate_row

    path = resolve(name, path)
    reader = _bfcl(bfcl_answers(path)) if name == "bfcl" else READERS[name]
    items = []
    for i, (where, row) in enumerate(_rows(path)):
        item = reader(where, i, row)
        try:
            validate_row(item.row)
        except (GroundTruthError, UnknownVerifierError) as exc:
            raise FlowError(f"{where}: {exc.args[0] if exc.args else exc}") from None
        items.append(item)
    if not items:
        raise FlowError(f"{path}: no rows")
    max_new, instruction, template, stop = STYLE[name]
    return Suite(name, tuple(items), str(path), max_new_tokens=max_new, instruction=instruction,
                 plain_template=template, plain_stop=stop, fewshot_pool=tuple(items))
