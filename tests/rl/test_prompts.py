"""`flowlm rl prompts` through the installed entry point, on the real benchmark files of ../shared/data: the
rows it writes are prompt rows every RL reader takes, prompted as `flowlm eval` prompts the same items, and
routed so that `flowlm verify` scores the published answers 1 and wrong ones 0."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from flowlm.eval.prompting import PromptFormat, chat_messages
from flowlm.eval.suites import load_suite
from flowlm.rl.rows import check_prompt_rows
from tests.cli_entry import flowlm_command

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not present")


def flowlm(*args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([*flowlm_command(), *args], capture_output=True, text=True, input=stdin, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def rows_of(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_gsm8k_train_rows_are_prompted_as_eval_prompts_and_verify_the_published_answers(tmp_path):
    out = tmp_path / "gsm8k.jsonl"
    proc = flowlm("rl", "prompts", "--suite", f"gsm8k={DATA}/gsm8k/train.jsonl.gz", "--max-items", "20",
                  "--out", str(out))
    rows = rows_of(out.read_text())
    assert len(rows) == 20 and len({r["id"] for r in rows}) == 20
    assert "warning" not in proc.stderr and "gsm8k" in proc.stderr and "20 rows" in proc.stderr
    # the same user turn flowlm eval sends for the same items (question + the \boxed{} instruction)
    suite = load_suite("gsm8k", DATA / "gsm8k" / "train.jsonl.gz", n=20)
    assert [r["messages"] for r in rows] == [chat_messages(it, suite, PromptFormat()) for it in suite.items]
    assert all(r["messages"][-1]["content"].endswith("\\boxed{}.") for r in rows)
    # every RL reader takes them (the rl stage, rl filter and post share this check)
    assert len(check_prompt_rows(rows)) == 20
    # routing survives: the published answer scores 1, an off-by-one 0, through `flowlm verify`
    finals = [r["ground_truth"].split("####")[-1].strip().replace(",", "") for r in rows]
    scored = [{**r, "completion": f"So the answer is $\\boxed{{{f}}}$."} for r, f in zip(rows, finals)]
    scored += [{**r, "completion": f"So the answer is $\\boxed{{{int(f) + 1}}}$."} for r, f in zip(rows, finals)]
    verdicts = rows_of(flowlm("verify", "--workers", "1", stdin="".join(json.dumps(r) + "\n" for r in scored)).stdout)
    assert [v["score"] for v in verdicts] == [1.0] * 20 + [0.0] * 20


def test_math_code_and_if_files_give_rows_their_verifiers_score(tmp_path):
    specs = {"math500": DATA / "math500", "math": DATA / "math_test", "aime": DATA / "aime24",
             "amc": DATA / "amc23", "humaneval": DATA / "humaneval", "mbpp": DATA / "mbpp_sanitized",
             "ifeval": DATA / "ifeval"}
    proc = flowlm("rl", "prompts", "--suite", ",".join(f"{k}={v}" for k, v in specs.items()), "--max-items", "2")
    rows = rows_of(proc.stdout)
    assert len(rows) == 14 and len({r["id"] for r in rows}) == 14
    assert [r["dataset"] for r in rows] == [d for d in ("math", "math", "math", "math", "math", "math", "math", "math",
                                                           "humaneval", "humaneval", "mbpp", "mbpp", "ifeval", "ifeval")]
    assert all(r["id"].lower().startswith(("math500-", "math-", "aime", "amc", "humaneval", "mbpp-", "ifeval-"))
               for r in rows), [r["id"] for r in rows]
    assert len(check_prompt_rows(rows)) == 14
    # every one of these files is evaluation data: each gets a warning naming it
    warnings = [ln for ln in proc.stderr.splitlines() if "warning" in ln]
    assert len(warnings) == 7 and all(str(v) in w for v, w in zip(specs.values(), warnings))
    # gold completions score 1: math answers boxed, the canonical HumanEval body, MBPP's reference code
    # (rows come in --suite order, two per file)
    demos = [it.demo for name, path in specs.items() for it in load_suite(name, path, n=2).items]
    gold = []
    for r, demo in zip(rows, demos):
        if r["dataset"] == "math":
            gold.append({**r, "completion": f"The answer is $\\boxed{{{r['ground_truth']}}}$."})
        elif r["dataset"] == "humaneval":
            gold.append({**r, "completion": demo})
        elif r["dataset"] == "mbpp":
            gold.append({**r, "completion": f"```python\n{demo}\n```"})
    verdicts = rows_of(flowlm("verify", "--workers", "1", stdin="".join(json.dumps(r) + "\n" for r in gold)).stdout)
    assert [v["score"] for v in verdicts] == [1.0] * len(gold), verdicts
    wrong = [{**r, "completion": "The answer is $\\boxed{-123456}$." if r["dataset"] == "math" else "```python\npass\n```"}
             for r in gold]
    verdicts = rows_of(flowlm("verify", "--workers", "1", stdin="".join(json.dumps(r) + "\n" for r in wrong)).stdout)
    assert [v["score"] for v in verdicts] == [0.0] * len(wrong)


def test_builtin_gives_the_training_split_and_the_held_out_suites_are_refused():
    rows = rows_of(flowlm("rl", "prompts", "--builtin", "30", "--seed", "3").stdout)
    assert len(rows) == 30 and len(check_prompt_rows(rows)) == 30
    from flowlm.data.tasks import is_heldout

    assert not any(is_heldout(r["messages"][-1]["content"]) for r in rows)
    assert rows == rows_of(flowlm("rl", "prompts", "--builtin", "30", "--seed", "3").stdout)  # seeded
    for suite in ("builtin", "counting", "builtin_if"):
        proc = flowlm("rl", "prompts", "--suite", suite, check=False)
        assert proc.returncode == 2 and "held-out" in proc.stderr and "--builtin N" in proc.stderr


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "#### 1"}) + "\n" + json.dumps({"question": "q2"}) + "\n")
    out = tmp_path / "rows.jsonl"
    cases = [
        (["--suite", f"gsm8k={bad}"], 1, f"{bad}:2: row has no answer"),
        (["--suite", "gsm8k"], 2, "--suite gsm8k=PATH"),
        (["--suite", "gsmk=x"], 2, "did you mean 'gsm8k'"),
        (["--suite", "jsonl=x"], 2, "prompt rows already"),
        (["--suite", f"gsm8k={tmp_path / 'none.jsonl'}"], 1, "no such benchmark file"),
        ([], 2, "give --suite NAME=PATH"),
        (["--builtin", "0"], 2, "--builtin must be >= 1"),
        (["--builtin", "2", "--max-items", "0"], 2, "--max-items must be >= 1"),
        # two files of one format share ids: refused before anything is written
        (["--suite", f"gsm8k={DATA}/gsm8k/test.jsonl", "--suite", f"gsm8k={DATA}/gsm8k/test_socratic.jsonl"], 1,
         "id 'gsm8k-0'"),
    ]
    for args, rc, text in cases:
        proc = flowlm("rl", "prompts", *args, "--out", str(out), check=False)
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert proc.returncode == rc and len(errors) == 1 and text in errors[0], (args, proc.stderr)
        assert "Traceback" not in proc.stderr and not out.exists()
