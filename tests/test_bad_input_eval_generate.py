"""Bad input to `flowlm generate` and `flowlm eval` fails up front with one line naming FILE:LINE / key / flag.

Each case runs the installed entry point as a user does (`tests.test_cli_verbs.run_flowlm`) on a micro
checkpoint (the generation tests' random micro model, `tests.generate.conftest`, with context 128), and
checks the exit code, the single `error:` line, and that nothing was generated or written. Only the
run-time failure path of `generate` (a row that passes every check but fails inside the engine) is
exercised in process: no input reaches it through the checks any more.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from tests.generate.conftest import micro_model
from tests.test_cli_verbs import one_error_line, run_flowlm

from flowlm.cli import run_guarded
from flowlm.generate import cli as gen_cli
from flowlm.generate.params import Result, Timings

GOOD = {"prompt": "What is 1+1?", "dataset": "math", "ground_truth": "2", "id": "a"}
CONTEXT = 128  # the checkpoint's max_seq_len


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generation tests' micro model (context 128) with a small trained tokenizer, saved as a checkpoint."""
    from flowlm.data import builtin
    from flowlm.model.hf import save_pretrained
    from flowlm.model.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("bad_input")
    tok = train_tokenizer([d["text"] for d in builtin.pretrain_docs(0, 60_000)], 400, root / "tok")
    return save_pretrained(micro_model(vocab_size=len(tok), max_seq_len=CONTEXT), tok, root / "ckpt")


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _error(r, code: int) -> str:
    """The one `error:` line of a failed run with exit `code`, after checking nothing went to stdout."""
    assert r.returncode == code and r.stdout == "", (r.returncode, r.stdout[:300], r.stderr)
    line = one_error_line(r)
    assert "internal error" not in line
    return line


# --- generate: every row is checked before anything is generated ---------------------------------------------

BAD_ROWS = [
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role must be one of system, user"),
    ({"messages": ["hi"]}, "messages[0] must be an object with role and content"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content must be a string"),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": None}]},
     "messages[1].content must be a string"),
    ({"messages": []}, "messages must be a non-empty list"),
    ({"prompt": ""}, "prompt must be a non-empty string"),
    ({"prompt_ids": []}, "prompt_ids must be a non-empty list"),
    ({"prompt_ids": [-1]}, "prompt_ids[0] must be a token id"),
    ({"prompt_ids": [5, 1.5]}, "prompt_ids[1] must be a token id"),
    ({"prompt_ids": [99999999]}, "token id 99999999 outside the vocabulary [0, "),
    ({"prompt_ids": [5] * CONTEXT}, f"prompt has {CONTEXT} tokens; the context is {CONTEXT}"),
    ({"prompt": "hi", "sampling": {"temperature": -5}}, "sampling: temperature must be >= 0"),
    ({"prompt": "hi", "temperature": 0.7}, "'temperature' is a sampling parameter: put it under \"sampling\""),
]


BAD_ROW_IDS = ["role", "message-not-object", "content-int", "content-null", "messages-empty", "prompt-empty",
               "ids-empty", "ids-negative", "ids-float", "ids-beyond-vocab", "too-long", "row-sampling",
               "top-level-sampling-key"]


@pytest.mark.parametrize("row,message", BAD_ROWS, ids=BAD_ROW_IDS)
def test_generate_rejects_bad_row_before_generating(ckpt: Path, tmp_path: Path, row: dict, message: str) -> None:
    src = _jsonl(tmp_path / "in.jsonl", [{"prompt": "ok"}, row, {"prompt": "ok2"}])
    out = tmp_path / "out.jsonl"
    r = run_flowlm("generate", "--model", str(ckpt), "--file", str(src), "--out", str(out), "--max-new-tokens", "2",
                   "--no-progress")
    line = _error(r, 1)
    assert line.startswith(f"error: {src}:2: {message}"), line
    assert not out.exists() and "requests done" not in r.stderr


def test_generate_tool_call_turn_with_null_content_is_accepted(ckpt: Path, tmp_path: Path) -> None:
    call = {"role": "assistant", "content": None, "tool_calls": [{"name": "add", "arguments": {"a": 1}}]}
    src = _jsonl(tmp_path / "in.jsonl", [{"messages": [{"role": "user", "content": "add"}, call,
                                                       {"role": "tool", "content": "2"}]}])
    r = run_flowlm("generate", "--model", str(ckpt), "--file", str(src), "--max-new-tokens", "2", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["error"] is None


def test_generate_stop_token_id_outside_vocabulary(ckpt: Path, tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "in.jsonl", [{"prompt": "ok"}])
    r = run_flowlm("generate", "--model", str(ckpt), "--file", str(src), "--stop-token-id", "99999999",
                   "--max-new-tokens", "2", "--no-progress")
    line = _error(r, 2)
    assert line.startswith("error: --stop-token-id 99999999 is outside the model's vocabulary [0, "), line


def test_generate_out_directory_fails_before_reading_input(tmp_path: Path) -> None:
    r = run_flowlm("generate", "--model", str(tmp_path / "no_model"), "--file", str(tmp_path / "none.jsonl"),
                   "--out", str(tmp_path))
    assert _error(r, 1) == f"error: {tmp_path}: is a directory (--out names the output file)"


def _args(ckpt: Path, src: Path, out: Path) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    gen_cli.add_parser(parser.add_subparsers())
    return parser.parse_args(["generate", "--model", str(ckpt), "--file", str(src), "--out", str(out),
                              "--max-new-tokens", "2", "--no-progress"])


def test_generate_run_time_failure_exits_1_naming_the_line(ckpt: Path, tmp_path: Path, monkeypatch,
                                                           capsys) -> None:
    """A request that fails inside the engine keeps its error row, the others complete, and the command
    exits 1 naming the failed line (simulated: the up-front checks are skipped so the engine rejects it)."""
    monkeypatch.setattr(gen_cli, "prepare_rows", lambda engine, rows: [prompt for _, _, prompt, _ in rows])
    src = _jsonl(tmp_path / "in.jsonl", [{"prompt_ids": [5, 6]}, {"prompt_ids": [5] * CONTEXT}, {"prompt_ids": [7]}])
    out = tmp_path / "out.jsonl"
    assert run_guarded(lambda: gen_cli.main(_args(ckpt, src, out))) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"generate: 2/3 requests done, 1 failed -> {out}",
                   f"error: generate: 1 row failed: {src}:2: prompt has {CONTEXT} tokens; the context is {CONTEXT} "
                   "(no room to generate)"]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["error"] is None for r in rows] == [True, False, True]
    assert rows[1]["timings"]["ttft_s"] is None and rows[0]["timings"]["ttft_s"] >= 0


def test_timings_of_a_request_that_never_started_are_null() -> None:
    rejected = Result(0, [], [], Timings(submitted=100.0, finished=100.5), error="empty prompt")
    assert rejected.to_dict()["timings"] == {"latency_s": 0.5, "ttft_s": None}


def test_failed_lines_are_capped() -> None:
    wheres = [f"f:{i + 1}" for i in range(8)]
    msg = gen_cli.failed_lines({i: "boom" for i in range(7)}, wheres)
    assert msg.startswith("7 rows failed: f:1: boom; f:2: boom") and msg.endswith("f:5: boom; and 2 more")


def test_messages_problem_accepts_the_template_roles() -> None:
    from flowlm.generate.prompts import CHAT_ROLES, messages_problem

    assert CHAT_ROLES == ("system", "user", "assistant", "tool")
    assert messages_problem([{"role": role, "content": "x"} for role in CHAT_ROLES]) is None
    assert messages_problem([{"role": "assistant", "tool_calls": [{"name": "f", "arguments": "{}"}]}]) is None
    assert messages_problem([{"role": "assistant"}]) == \
        "messages[0].content must be a string (or null with tool_calls), got none"
    misplaced = messages_problem([{"role": "user", "content": None, "tool_calls": [{}]}])
    assert misplaced.startswith("messages[0].tool_calls")


# --- eval: options and the jsonl suite --------------------------------------------------------------------------


@pytest.mark.parametrize("extra,message", [
    (["--file", "{good}"], "--file needs --suite (e.g. --suite jsonl)"),
    (["--suite", ""], "no suite named"),
    (["--suite", " , "], "no suite named"),
    (["--max-items", "0"], "--max-items must be >= 1, got 0"),
    (["--max-items", "-1"], "--max-items must be >= 1, got -1"),
    (["--suite", "jsonl", "--file", "{good}", "--timeout", "0"], "--timeout must be a positive number"),
    (["--suite", "jsonl", "--file", "{good}", "--timeout", "-3"], "--timeout must be a positive number"),
    (["--suite", "jsonl", "--file", "{good}", "--workers", "-1"], "--workers must be >= 0"),
])
def test_eval_rejects_bad_options(ckpt: Path, tmp_path: Path, extra: list[str], message: str) -> None:
    good = _jsonl(tmp_path / "good.jsonl", [GOOD])
    r = run_flowlm("eval", "--model", str(ckpt), *(a.format(good=good) for a in extra), "--no-progress")
    line = _error(r, 2)
    assert line.startswith(f"error: {message}"), line


@pytest.mark.parametrize("messages,message", [
    ([{"role": "wizard", "content": "x"}], "messages[0].role must be one of system, user, assistant, tool"),
    ([{"role": "user", "content": None}], "messages[0].content must be a string"),
    ([{"role": "user", "content": ["2+2"]}], "messages[0].content must be a string"),
    (["What is 1+1?"], "messages[0] must be an object with role and content"),
])
def test_eval_jsonl_rejects_bad_messages(ckpt: Path, tmp_path: Path, messages: list, message: str) -> None:
    bad = {"messages": messages, "dataset": "math", "ground_truth": "2"}
    src = _jsonl(tmp_path / "r.jsonl", [GOOD, bad])
    r = run_flowlm("eval", "--model", str(ckpt), "--suite", "jsonl", "--file", str(src), "--no-progress")
    line = _error(r, 1)
    assert line.startswith(f"error: {src}:2: {message}"), line


def test_eval_jsonl_rejects_empty_prompt(ckpt: Path, tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "r.jsonl", [{**GOOD, "prompt": ""}])
    r = run_flowlm("eval", "--model", str(ckpt), "--suite", f"jsonl={src}", "--no-progress")
    assert _error(r, 1).startswith(f"error: {src}:1: prompt must be a non-empty string")


def test_eval_out_directory_fails_before_generating(ckpt: Path, tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "good.jsonl", [GOOD])
    r = run_flowlm("eval", "--model", str(ckpt), "--suite", "jsonl", "--file", str(src), "--out", str(tmp_path),
                   "--max-new-tokens", "2", "--workers", "0", "--no-progress")
    assert _error(r, 1) == f"error: {tmp_path}: is a directory (--out names the output file)"


def test_eval_item_longer_than_the_context_exits_1_naming_it_and_keeps_the_rest(ckpt: Path, tmp_path: Path) -> None:
    """An item whose prompt does not fit the model fails inside the engine: the results are still written (the
    other item scored, the failed one with its error, counted in `errors`), and the command exits 1 naming it."""
    long = {**GOOD, "id": "too-long", "prompt": "one two three four five six seven " * 60}
    src = _jsonl(tmp_path / "r.jsonl", [GOOD, long])
    out = tmp_path / "res.json"
    r = run_flowlm("eval", "--model", str(ckpt), "--suite", "jsonl", "--file", str(src), "--out", str(out),
                   "--max-new-tokens", "2", "--workers", "0", "--no-progress")
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    errors = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]  # the table also goes to stderr
    assert len(errors) == 1 and "internal error" not in errors[0], r.stderr[-2000:]
    line = errors[0]
    assert line.startswith("error: eval: suite 'jsonl' item 'too-long' failed: prompt has "), line
    assert "1 item(s) scored 0" in line
    doc = json.loads(out.read_text())
    items = {it["id"]: it for it in doc["items"]["jsonl"]}
    assert items["a"]["error"] is None and len(items["a"]["samples"]) == 1
    assert items["too-long"]["error"] and items["too-long"]["samples"] == []
    assert doc["results"]["jsonl"]["errors"] == 1 and doc["results"]["jsonl"]["items"] == 2
