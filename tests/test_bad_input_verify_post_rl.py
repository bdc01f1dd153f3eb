"""Bad input to `flowlm verify`, `flowlm post` and `flowlm rl filter`, run as a user runs them: the installed
entry point in a subprocess. Each case checks the exit code and that stderr is one `error: ...` line naming
the file/line/key at fault (never `internal error`), or, for prompts `rl filter` cannot sample, that each is
named and counted. No training: `post` uses 2-3 built-in prompts and the procedural teachers, `rl filter` a
tiny random checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.cli_entry import flowlm_command

MATH_ROW = {"dataset": "math", "ground_truth": "42", "completion": "The answer is \\boxed{42}"}


def run_flowlm(*args: str, tmpdir: Path) -> subprocess.CompletedProcess[str]:
    """Run `flowlm ARGS` with stdin closed to the terminal; no traceback may reach the user."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "TMPDIR": str(tmpdir)}
    env.pop("FLOWLM_DEBUG", None)
    r = subprocess.run([*flowlm_command(), *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       env=env, timeout=300)
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    return r


def one_error_line(r: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The single `error: ...` line of a failed run with exit code `code`."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code and len(lines) == 1 and lines[0].startswith("error: "), (r.returncode, r.stderr)
    assert "internal error" not in lines[0]
    return lines[0]


def write_rows(path: Path, *rows: dict[str, Any] | str) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# --- flowlm verify ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("option,value", [("--timeout", "0"), ("--timeout", "-5"), ("--workers", "-1"),
                                          ("--workers", "0")])
def test_verify_refuses_a_timeout_or_worker_count_that_cannot_work(tmp_path, option, value):
    rows = write_rows(tmp_path / "good.jsonl", MATH_ROW)
    r = run_flowlm("verify", "--file", str(rows), option, value, tmpdir=tmp_path)
    line = one_error_line(r, code=2)
    assert option in line and value in line and r.stdout == ""


def test_verify_of_an_empty_file_is_an_error(tmp_path):
    empty = write_rows(tmp_path / "empty.jsonl")
    assert one_error_line(run_flowlm("verify", "--file", str(empty), tmpdir=tmp_path)) == f"error: {empty}: no rows"


@pytest.mark.parametrize("kwargs,message", [
    ({"relation": "at least", "num_words": "abc"}, "num_words must be an int, got 'abc'"),
    ({"relation": "sort of", "num_words": 3}, "relation must be 'less than' or 'at least', got 'sort of'"),
    ({"relation": "at least", "num_words": 3, "num_word": 4},
     "unexpected kwargs ['num_word'] (it takes num_words, relation)"),
])
def test_verify_checks_ifeval_kwargs_at_load_time(tmp_path, kwargs, message):
    gt = {"instruction_id_list": ["length_constraints:number_words"], "kwargs": [kwargs]}
    rows = write_rows(tmp_path / "ifk.jsonl", MATH_ROW, {"dataset": "ifeval", "ground_truth": gt,
                                                         "completion": "one two three"})
    line = one_error_line(run_flowlm("verify", "--file", str(rows), "--workers", "1", tmpdir=tmp_path))
    assert line == f"error: {rows}:2: length_constraints:number_words: {message}"


@pytest.mark.parametrize("row,message", [
    ({"verifiers": [{"name": "math", "ground_truth": "1", "weight": "abc"}]},
     "`verifiers[0].weight` must be a number >= 0, got 'abc'"),
    ({"dataset": ["math", "math"], "ground_truth": ["1", "2"], "weights": 3},
     "`weights` must be a list of 2 numbers (one per tag), got 3"),
    ({"dataset": ["math", "math"], "ground_truth": ["1", "2"], "weights": [1, "b"]},
     "`weights[1]` must be a number >= 0, got 'b'"),
    ({"dataset": {"a": 1}, "ground_truth": "1"}, "`dataset` must be a verifier name or a list of names"),
    ({"dataset": "code", "ground_truth": {"stdio": [{"input": 5}]}},
     'stdio[0] needs "input" and "output" strings'),
    ({"dataset": "code", "ground_truth": {"inputs": ["1"], "outputs": ["1", "2"]}}, "1 inputs but 2 outputs"),
])
def test_verify_reports_a_malformed_row_schema_as_file_line_and_key(tmp_path, row, message):
    rows = write_rows(tmp_path / "rows.jsonl", {**row, "completion": "1"})
    line = one_error_line(run_flowlm("verify", "--file", str(rows), "--workers", "1", tmpdir=tmp_path))
    assert line.startswith(f"error: {rows}:1: {message}")


def test_real_ifeval_and_ifbench_ground_truths_still_validate():
    """The kwarg checks accept every row of the real benchmark files (IFBench writes its ints as floats)."""
    from flowlm.verify.rows import validate_row

    data = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    files = [data / "ifeval" / "input_data.jsonl", data / "ifbench" / "IFBench_test.jsonl"]
    if not all(f.is_file() for f in files):
        pytest.skip("../shared/data (IFEval / IFBench) not found")
    n = 0
    for f in files:
        for line in f.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            validate_row({"dataset": "ifeval", "ground_truth": {"instruction_id_list": r["instruction_id_list"],
                                                                "kwargs": r["kwargs"]}})
            n += 1
    assert n >= 541


# --- flowlm post -----------------------------------------------------------------------------------------


def test_post_pairs_refuses_an_unknown_judge_verifier(tmp_path):
    r = run_flowlm("post", "pairs", "--builtin", "2", "--pool", "procedural", "--pool", "weak",
                   "--set", "judge_verifier=nosuch", tmpdir=tmp_path)
    line = one_error_line(r, code=2)
    assert "'judge_verifier'" in line and "unknown verifier 'nosuch'" in line and r.stdout == ""


@pytest.mark.parametrize("teacher", ["procedural", "weak"])
def test_post_coldstart_names_a_row_the_procedural_teachers_cannot_answer(tmp_path, teacher):
    rows = write_rows(tmp_path / "plain.jsonl", {"prompt": "what is 1+1", "dataset": "math", "ground_truth": "2"})
    line = one_error_line(run_flowlm("post", "coldstart", "--file", str(rows), "--teacher", teacher, tmpdir=tmp_path))
    assert line.startswith(f"error: {rows}:1: teacher '{teacher}' needs a 'solution' field")


# --- unwritable --out: refused before any work ------------------------------------------------------------


@pytest.mark.parametrize("verb", [["verify"], ["post", "coldstart", "--teacher", "procedural"],
                                  ["rl", "filter", "--model", "MISSING"]])
def test_an_unwritable_out_fails_before_any_work(tmp_path, verb):
    """The input (and the model) are missing too: the error must be about `--out`, found first."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory\n")
    out = blocker / "out.jsonl"
    args = [a.replace("MISSING", str(tmp_path / "no_model")) for a in verb]
    r = run_flowlm(*args, "--file", str(tmp_path / "missing.jsonl"), "--out", str(out), tmpdir=tmp_path)
    assert one_error_line(r) == f"error: {out}: cannot write: {blocker} is not a directory"


# --- flowlm rl filter -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer model with a 128-token context over a small trained tokenizer (seconds to build)."""
    import torch

    from flowlm.data import tasks
    from flowlm.model.config import ModelConfig
    from flowlm.model.hf import save_pretrained
    from flowlm.model.olmo3 import Olmo3
    from flowlm.model.tokenizer import load_tokenizer, train_tokenizer

    root = tmp_path_factory.mktemp("rl_ckpt")
    train_tokenizer([tasks.as_text(it) for it in tasks.generate(0, 200)], 400, root / "tok")
    tok = load_tokenizer(root / "tok")
    torch.manual_seed(0)
    model = Olmo3(ModelConfig(vocab_size=len(tok), hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                              intermediate_size=64, max_seq_len=128, sliding_window=16)).eval()
    return save_pretrained(model, tok, root / "model")


SHORT = {"prompt": "What is 1+1?", "dataset": "math", "ground_truth": "2"}
LONG = {"prompt": "word " * 3000, "dataset": "math", "ground_truth": "2"}


def test_rl_filter_names_and_counts_prompts_longer_than_the_context(tmp_path, tiny_ckpt):
    rows = write_rows(tmp_path / "prompts.jsonl", SHORT, LONG)
    r = run_flowlm("rl", "filter", "--model", str(tiny_ckpt), "--file", str(rows), "-k", "2",
                   "--set", "max_new_tokens=4", "--set", "max_pass_rate=1", tmpdir=tmp_path)
    assert r.returncode == 0, r.stderr
    notes = [ln for ln in r.stderr.splitlines() if ln.startswith(f"rl filter: {rows}:")]
    assert len(notes) == 1 and notes[0].startswith(f"rl filter: {rows}:2: not sampled")
    assert "context" in notes[0] and "128" in notes[0]
    assert [json.loads(x)["prompt"] for x in r.stdout.splitlines()] == [SHORT["prompt"]]
    summary = r.stderr.strip().splitlines()[-1]
    assert "kept 1," in summary and "unsampled 1," in summary


def test_rl_filter_fails_when_no_prompt_fits(tmp_path, tiny_ckpt):
    rows = write_rows(tmp_path / "long.jsonl", LONG)
    r = run_flowlm("rl", "filter", "--model", str(tiny_ckpt), "--file", str(rows), "-k", "2", tmpdir=tmp_path)
    line = one_error_line(r)
    assert "none of the 1 prompts can be sampled" in line and f"{rows}:1:" in line and "context" in line


def test_a_line_nested_past_the_json_parsers_limit_is_one_error_line(tmp_path):
    """Through the installed commands: such a line was an 'internal error' (a RecursionError), not FILE:LINE."""
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"prompt": "2+2?", "dataset": "math", "ground_truth": "4"}\n' + "[" * 100_000 + "\n")
    for args in (["post", "coldstart", "--file", str(deep), "--teacher", "procedural"],
                 ["verify", "--file", str(deep)]):
        proc = subprocess.run([*flowlm_command(), *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == (
            f"error: {deep}:2: invalid JSON (nested too deeply)"), proc.stderr
