"""`flowlm post` run as a user runs it (the installed entry point), plus its argument handling in-process."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_entry import flowlm_command

from flowlm.errors import ConfigError, FlowError
from flowlm.post import cli


def _run(*args: str, stdin: str | None = None, standalone: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "flowlm.post.cli"] if standalone else [*flowlm_command(), "post"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("FLOWLM_DEBUG", None)
    r = subprocess.run([*cmd, *args], input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                       capture_output=True, text=True, env=env, timeout=120)
    assert "Traceback" not in r.stdout and "Traceback" not in r.stderr, r.stderr
    return r


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    cli.add_parser(p.add_subparsers(dest="verb"))
    return p.parse_args(["post", *argv])


def test_coldstart_from_builtin_prompts(tmp_path):
    out = tmp_path / "sft.jsonl"
    r = _run("coldstart", "--builtin", "12", "--teacher", "procedural", "--query-teacher", "weak", "-n", "3",
             "--set", "teacher.error_rate=0.5", "--set", "no_think_fraction=0.3", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("prompts    in      12") and lines[1].startswith("candidates ")
    assert int(lines[1].split()[2]) % 3 == 0  # n=3 candidates for each prompt the query filter kept
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows and lines[-1] == f"post coldstart: {len(rows)} rows from 12 prompts -> {out}"
    assert all(r["messages"][-1]["role"] == "assistant" and "ground_truth" in r for r in rows)


def test_pairs_from_a_file_on_stdin_and_judge_pairs(tmp_path):
    from flowlm.post.procedural import builtin_rows

    prompts = "".join(json.dumps(r) + "\n" for r in builtin_rows(6))
    r = _run("pairs", "--strong", "procedural", "--weak", "weak", stdin=prompts)
    assert r.returncode == 0, r.stderr
    pairs = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(pairs) == 6 and all({"prompt", "chosen", "rejected"} <= set(p) for p in pairs)
    r = _run("pairs", "--builtin", "6", "--pool", "procedural", "--pool", "weak", "-n", "2",
             "--set", "thinking=false", standalone=True)
    assert r.returncode == 0, r.stderr
    assert all(p["source"] == "judge" and not p["thinking"] for p in map(json.loads, r.stdout.splitlines()))


def test_bad_input_is_one_error_line(tmp_path):
    f = tmp_path / "prompts.jsonl"
    f.write_text('{"prompt": "Compute 1 + 2.", "dataset": "math", "ground_truth": "3"}\n{"messages": "oops"}\n')
    out = tmp_path / "out.jsonl"
    r = _run("coldstart", "--file", str(f), "--teacher", "procedural", "--out", str(out))
    assert r.returncode == 1 and r.stdout == "" and not out.exists()
    assert r.stderr == (f"error: {f}:2: a row needs `messages` (a list of {{role, content}}) "
                        "or a non-empty `prompt` string\n")
    f.write_text('{"prompt": "x", "dataset": "nope", "ground_truth": "3"}\n')
    r = _run("pairs", "--file", str(f), "--strong", "procedural", "--weak", "weak")
    assert r.returncode == 1 and r.stderr.startswith(f"error: {f}:1: unknown verifier 'nope'")
    assert len(r.stderr.strip().splitlines()) == 1
    r = _run("coldstart", "--builtin", "2", "--teacher", "procedural", "--set", "filters.max_repetitio=1")
    assert r.returncode == 2 and "did you mean 'filters.max_repetition'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = _run("coldstart", "--builtin", "2", "--teacher", "procedural", "--query-teacher", "weak",
             "--set", "query.hard_to_verify=true")
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "error: coldstart: query.hard_to_verify needs a model as the query teacher (it is asked about each prompt)"]


def test_argument_errors_in_process(tmp_path):
    with pytest.raises(ConfigError, match="not both"):
        cli.main(_args("coldstart", "--builtin", "2", "--file", "x.jsonl", "--teacher", "procedural"))
    with pytest.raises(ConfigError, match="--strong and --weak"):
        cli.main(_args("pairs", "--builtin", "2", "--strong", "procedural"))
    with pytest.raises(ConfigError, match="excludes"):
        cli.main(_args("pairs", "--builtin", "2", "--pool", "weak", "--pool", "weak", "--weak", "weak"))
    with pytest.raises(FlowError, match="not a checkpoint directory"):
        cli.main(_args("coldstart", "--builtin", "2", "--teacher", str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="max_slots"):
        cli.main(_args("coldstart", "--builtin", "2", "--teacher", str(tmp_path), "-n", "9",
                       "--set", "teacher.max_slots=4"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(FlowError, match="no prompt rows"):
        cli.main(_args("coldstart", "--file", str(empty), "--teacher", "procedural"))
    cfg = cli.build_config(_args("pairs", "--builtin", "2", "--pool", "a", "--pool", "b", "-n", "3",
                                 "--set", "judge_verifier=judge", "--set", "judge_options.judge_url=http://x"))
    assert cfg.n_per_teacher == 3 and cfg.judge_options == {"judge_url": "http://x"}
    assert cli.build_config(_args("pairs", "--builtin", "2", "-n", "5")).n_chosen == 5


def test_decontamination_against_bench_files(tmp_path):
    from flowlm.post.procedural import builtin_rows

    wp = next(r for r in builtin_rows(12) if r["task"] == "word_problem")
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"question": wp["messages"][0]["content"], "answer": wp["answer"]}) + "\n")
    args = _args("coldstart", "--builtin", "12", "--teacher", "procedural", "-n", "1", "--bench", str(bench),
                 "--out", str(tmp_path / "o.jsonl"))
    assert cli.main(args) == 0
    kept = {json.loads(x)["id"].split("#")[0] for x in Path(tmp_path / "o.jsonl").read_text().splitlines()}
    assert len(kept) == 11 and wp["id"] not in kept


def test_a_checkpoint_as_teacher(tiny_ckpt, tmp_path, capsys):
    """The whole path with a model teacher: a random model's answers are all dropped, and counted."""
    out = tmp_path / "pairs.jsonl"
    args = _args("pairs", "--builtin", "3", "--strong", str(tiny_ckpt), "--weak", "weak", "-n", "2",
                 "--set", "teacher.max_new_tokens=8", "--set", "teacher.max_slots=4", "--out", str(out))
    assert cli.main(args) == 0 and out.read_text() == ""
    assert "no_chosen=3" in capsys.readouterr().err  # 8 tokens are never a finished, right answer
    args = _args("coldstart", "--builtin", "3", "--teacher", str(tiny_ckpt), "-n", "2",
                 "--set", "teacher.max_new_tokens=8", "--out", str(out))
    assert cli.main(args) == 0 and out.read_text() == ""
    err = capsys.readouterr().err
    assert "no_valid_candidate=3" in err and "candidates in       6" in err
    # the same model as the judge of hard-to-verify prompts: each of its 8-token replies is a verdict or counted
    args = _args("coldstart", "--builtin", "3", "--teacher", "procedural", "--query-teacher", str(tiny_ckpt),
                 "--set", "query.hard_to_verify=true", "--set", "query.k=0", "--set", "teacher.max_new_tokens=8",
                 "--out", str(out))
    assert cli.main(args) == 0
    judge = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("judge "))
    got = re.match(r"judge\s+in\s+(\d+) .*-> kept\s+(\d+) .*?(?:unclear=(\d+))?$", judge)
    assert got and got[1] == "3" and int(got[2]) + int(got[3] or 0) == 3, judge
