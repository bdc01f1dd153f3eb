"""`flowlm verify` CLI: one JSON verdict per row, file:line errors with exit code 1.

In-process tests call `main` on parsed arguments; the entry-point tests run the installed `flowlm verify`
(and `python -m flowlm.verify.cli`) as a user does: --file or stdin in, stdout or --out out, no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_entry import flowlm_command

from flowlm.errors import FlowError
from flowlm.verify.cli import add_parser, main

ROWS = [{"id": 1, "dataset": "math", "ground_truth": "4", "completion": "\\boxed{4}"},
        {"id": 2, "dataset": "gsm8k", "ground_truth": "#### 5", "response": "#### 6"},
        {"id": 3, "dataset": "gsm8k", "ground_truth": "#### 72", "completion": "48 + 24 = 72\n#### 72"}]


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers(dest="verb"))
    return p.parse_args(["verify", "--workers", "2", "--timeout", "30", *argv])


def _rows_file(tmp_path: Path, rows: list[dict] = ROWS) -> Path:
    f = tmp_path / "rows.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return f


def test_cli_scores_rows(tmp_path, capsys):
    assert main(_args("--file", str(_rows_file(tmp_path)))) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(o["id"], o["score"]) for o in out] == [(1, 1.0), (2, 0.0), (3, 1.0)]
    assert all(o["reason"] for o in out)


def test_cli_name_overrides_tags(tmp_path, capsys):
    f = _rows_file(tmp_path, [{"ground_truth": "3", "completion": "it is 3"}])
    assert main(_args("--file", str(f), "--name", "gsm8k")) == 0
    assert json.loads(capsys.readouterr().out)["score"] == 1.0


def test_bad_json_line_names_file_and_line(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text(json.dumps({"dataset": "math", "ground_truth": "1", "completion": "1"}) + "\n{not json\n")
    with pytest.raises(FlowError, match=r"rows\.jsonl:2: invalid JSON"):
        main(_args("--file", str(f)))


def test_unknown_constraint_is_a_load_error(tmp_path):
    f = _rows_file(tmp_path, [{"dataset": "ifeval", "completion": "x",
                               "ground_truth": {"instruction_id_list": ["nope:nope"], "kwargs": [{}]}}])
    with pytest.raises(FlowError, match=r"rows\.jsonl:1: unknown instruction id"):
        main(_args("--file", str(f)))


def test_add_parser_registers_verb():
    args = _args("--name", "math", "--file", "x.jsonl")
    assert args.func is main and args.name == "math" and args.file == Path("x.jsonl") and args.out is None


# --- the installed entry point ----------------------------------------------------------------------------


def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=120)
    assert "Traceback" not in r.stdout and "Traceback" not in r.stderr, r.stderr
    return r


def _scores(stdout: str) -> list[tuple[int, float]]:
    return [(o["id"], o["score"]) for o in map(json.loads, stdout.splitlines())]


def test_entry_point_file_stdin_and_out(tmp_path):
    f = _rows_file(tmp_path)
    r = _run([*flowlm_command(), "verify", "--file", str(f), "--workers", "1"])
    assert r.returncode == 0 and r.stderr == "" and _scores(r.stdout) == [(1, 1.0), (2, 0.0), (3, 1.0)]
    for args in ([], ["--file", "-"]):  # piped stdin, implicit or named
        r = _run([*flowlm_command(), "verify", "--workers", "1", *args], stdin=f.read_text())
        assert r.returncode == 0 and _scores(r.stdout) == [(1, 1.0), (2, 0.0), (3, 1.0)]
    out = tmp_path / "sub" / "verdicts.jsonl"
    r = _run([*flowlm_command(), "verify", "--file", str(f), "--workers", "1", "--out", str(out)])
    assert r.returncode == 0 and r.stdout == ""
    assert _scores(out.read_text()) == [(1, 1.0), (2, 0.0), (3, 1.0)]
    assert sorted(p.name for p in out.parent.iterdir()) == ["verdicts.jsonl"]  # no temporary left behind


@pytest.mark.parametrize("standalone", [False, True])
def test_entry_point_bad_line_is_one_error_line(tmp_path, standalone):
    f = _rows_file(tmp_path, ROWS[:1])
    f.write_text(f.read_text() + "{not json\n")
    cmd = [sys.executable, "-m", "flowlm.verify.cli"] if standalone else [*flowlm_command(), "verify"]
    out = tmp_path / "verdicts.jsonl"
    r = _run([*cmd, "--file", str(f), "--out", str(out)])
    assert r.returncode == 1 and r.stdout == "" and not out.exists()
    assert r.stderr == f"error: {f}:2: invalid JSON (Expecting property name enclosed in double quotes)\n"
    r = _run([*cmd], stdin=f.read_text())
    assert r.returncode == 1 and r.stderr.startswith("error: <stdin>:2: invalid JSON")
    r = _run([*cmd, "--file", str(tmp_path / "missing.jsonl")])
    assert r.returncode == 1 and r.stderr == f"error: {tmp_path / 'missing.jsonl'}: file not found\n"
    r = _run([*cmd, "--file", str(tmp_path)])
    assert r.returncode == 1 and r.stderr == f"error: {tmp_path}: is a directory, not a JSONL file\n"
    r = _run([*cmd, "--file", str(_rows_file(tmp_path, ROWS[:1])), "--out", str(tmp_path)])
    assert r.returncode == 1 and r.stderr == f"error: {tmp_path}: is a directory (--out names the output file)\n"


def test_entry_point_without_input_on_a_terminal():
    primary, secondary = pty.openpty()
    try:
        r = subprocess.run([*flowlm_command(), "verify"], stdin=secondary, capture_output=True, text=True, timeout=120)
    finally:
        os.close(primary)
        os.close(secondary)
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr == ("error: verify: no input: give --file PATH (or '-' for stdin), "
                        "or pipe JSONL into stdin\n")


def test_entry_point_closed_stdout_pipe_is_quiet(tmp_path):
    """`flowlm verify ... | head -0`: the reader is gone before the verdicts are written."""
    f = _rows_file(tmp_path)
    p = subprocess.Popen([*flowlm_command(), "verify", "--file", str(f), "--workers", "1"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=120) == 141 and err == ""


def test_cli_reports_the_sandbox_once_when_rows_run_code(tmp_path, capsys):
    code = {"id": 9, "dataset": "code", "completion": "```python\ndef f():\n    return 1\n```",
            "ground_truth": ["assert f() == 1"]}
    assert main(_args("--file", str(_rows_file(tmp_path, [code, {**code, "id": 10}])))) == 0
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.startswith("sandbox: ")]
    assert len(lines) == 1 and ("seccomp" in lines[0] or "no seccomp" in lines[0])
    assert [json.loads(ln)["score"] for ln in out.splitlines()] == [1.0, 1.0]
    assert main(_args("--file", str(_rows_file(tmp_path)))) == 0  # math rows only: no sandbox line
    assert "sandbox:" not in capsys.readouterr().err
