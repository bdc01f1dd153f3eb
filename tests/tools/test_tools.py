"""Tool use at generation time: the calculator on hand-checked expressions, sandboxed python, and
`flowlm generate --tools` / `flowlm eval --tools` through the CLI (the rollouts themselves, on a scripted and a
real engine: `test_tool_rollouts.py`)."""

from __future__ import annotations

import json

import yaml

from flowlm.tools.builtin import CALCULATOR, PYTHON, calculate
from tests.flow.test_post_flow import BASE, flowlm


def test_calculator_values_and_refusals():
    assert calculate("48213 * 9127") == 440040051 and calculate("-(2 + 3) ** 2 % 7") == 3 and calculate("7 // 2") == 3
    assert CALCULATOR.run({"expression": "1 / 4"}) == "0.25" and CALCULATOR.run({"expression": "10 / 2"}) == "5"
    assert CALCULATOR.run({"expression": "1/0"}) == "error: division by zero"
    for bad in ("__import__('os')", "x + 1", "2 ** 1000", "9 ** 9 ** 9", "[1, 2]", "True + 1", "1e308 * 10"):
        assert CALCULATOR.run({"expression": bad}).startswith("error:"), bad
    assert CALCULATOR.run({}) == "error: missing argument 'expression'"
    assert CALCULATOR.run({"expression": "1", "x": 2}) == "error: unknown argument 'x'"
    assert CALCULATOR.run({"expression": 5}).startswith("error:")


def test_python_runs_in_the_sandbox():
    assert PYTHON.run({"code": "print(6 * 7)"}) == "42"
    out = PYTHON.run({"code": "import socket; socket.create_connection(('1.1.1.1', 80), timeout=2)"})
    assert "exit status" in out  # no network in the sandbox
    assert PYTHON.run({"code": "raise SystemExit(3)"}).endswith("(exit status 3)")


def test_generate_with_tools_and_eval_on_bfcl_through_the_cli(tmp_path):
    recipe = {**BASE, "model": {"preset": "tiny", "overrides": {**BASE["model"]["overrides"], "max_seq_len": 1024}},
              "stages": {k: BASE["stages"][k] for k in ("corpus", "tokenizer", "pretrain")}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    flowlm("run", str(tmp_path / "r.yaml"), "--run-dir", str(tmp_path / "run"), "--no-progress")
    model = str(tmp_path / "run" / "pretrain" / "model")
    rows = tmp_path / "q.jsonl"
    rows.write_text('{"prompt": "What is 48213 * 9127?"}\n{"messages": [{"role": "user", "content": "Add 2 and 3."}]}\n')
    proc = flowlm("generate", "--model", model, "--file", str(rows), "--tools", "calculator", "--max-new-tokens", "8",
                  "--temperature", "0", "--out", str(tmp_path / "o.jsonl"))
    out = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(out) == 2 and all(len(r["completions"]) == 1 and r["error"] is None for r in out)
    for c in (r["completions"][0] for r in out):  # the tool fields ride on each completion
        assert c["trajectory"][-1]["role"] == "assistant" and len(c["tool_mask"]) == len(c["tokens"])
        assert c["tool_calls"] == sum(m["role"] == "tool" for m in c["trajectory"])
    assert "2/2 requests done, " in proc.stderr and "tool call(s) run" in proc.stderr
    bad = flowlm("generate", "--model", model, "--file", str(rows), "--tools", "search", check=False)
    assert bad.returncode == 2 and "unknown tool 'search'" in bad.stderr
    none = flowlm("generate", "--model", model, "--file", str(rows), "--tools", ",", check=False)
    assert none.returncode == 2 and "name at least one tool" in none.stderr
    neg = flowlm("generate", "--model", model, "--file", str(rows), "--tools", "calculator", "--tool-workers", "-1",
                 check=False)
    assert neg.returncode == 2 and "--tool-workers must be at least 0, got -1" in neg.stderr
    ids = tmp_path / "ids.jsonl"
    ids.write_text('{"prompt_ids": [1, 2, 3]}\n')
    wrong = flowlm("generate", "--model", model, "--file", str(ids), "--tools", "calculator", check=False)
    assert wrong.returncode == 1 and f"{ids}:1: --tools needs chat messages" in wrong.stderr
    many = flowlm("generate", "--model", model, "--file", str(rows), "--tools", "calculator", "--n", "2",
                  "--max-new-tokens", "8", "--seed", "1", "--tool-workers", "0")
    assert all(len(json.loads(x)["completions"]) == 2 for x in many.stdout.splitlines())
    # eval with a built-in tool offered: the tool columns join the summary and the settings record it
    flowlm("eval", "--model", model, "--suite", "builtin", "--max-items", "3", "--max-new-tokens", "8", "--tools",
           "calculator", "--tool-workers", "0", "--workers", "0", "--no-progress", "--out", str(tmp_path / "tools.json"))
    res = json.loads((tmp_path / "tools.json").read_text())
    assert res["settings"]["format"]["tools"] == ["calculator"] and res["results"]["builtin"]["tool_use"] >= 0
    assert res["settings"]["format"]["tool_workers"] == 0
    assert all("tool_calls" in s for it in res["items"]["builtin"] for s in it["samples"])
    for bad, why in ((["--tools", "search"], "unknown tool 'search'"), (["--format", "plain", "--tools", "calculator"],
                     "tools need the chat format"), (["--max-tool-calls", "2"], "--max-tool-calls needs --tools"),
                     (["--tools", "calculator", "--max-tool-calls", "0"], "max_tool_calls must be >= 1, got 0"),
                     (["--tool-workers", "2"], "--tool-workers needs --tools"),
                     (["--tools", "calculator", "--tool-workers", "-1"], "tool_workers must be >= 0, got -1")):
        proc = flowlm("eval", "--model", model, "--suite", "builtin", *bad, check=False)
        assert proc.returncode == 2 and why in proc.stderr, proc.stderr
    # a BFCL file as an eval suite: the functions in the prompt, the calls scored by the tool_call verifier
    from tests.eval.test_bfcl import ANSWERS, write_bfcl

    bfcl = write_bfcl(tmp_path / "bfcl")
    ev = flowlm("eval", "--model", model, "--suite", f"bfcl={bfcl}", "--max-new-tokens", "8", "--temperature", "0",
                "--workers", "0", "--out", str(tmp_path / "bfcl.json"))
    res = json.loads((tmp_path / "bfcl.json").read_text())
    summary = res["results"]["bfcl"]
    assert summary["items"] == 2 and set(summary["by_category"]) == {"simple_python", "parallel"} and "pass@1" in summary
    items = res["items"]["bfcl"]
    assert [it["ground_truth"] for it in items] == [a["ground_truth"] for a in ANSWERS]
    assert all(s["reason"] for it in items for s in it["samples"]) and ev.returncode == 0
    both = flowlm("eval", "--model", model, "--suite", f"bfcl={bfcl}", "--tools", "calculator", check=False)
    assert both.returncode == 2 and "offer their own functions (checked, not run)" in both.stderr
