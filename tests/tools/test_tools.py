"""Tool use at generation time: the calculator on hand-checked expressions, sandboxed python, the loop on a
scripted engine (calls run, answers fed back, limits), and `flowlm generate --tools` through the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from flowlm.generate.params import SamplingParams
from flowlm.model.tokenizer import train_tokenizer, turn_end_ids
from flowlm.tools.builtin import CALCULATOR, PYTHON, calculate
from flowlm.tools.loop import run_with_tools
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


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = ["The answer is 42. We add numbers and call tools to compute things exactly."] * 50
    return train_tokenizer(texts, 400, tmp_path_factory.mktemp("tok") / "tok")


class ScriptedEngine:
    """Replies from a script per conversation (one per turn), as the rollout engine would return them."""

    def __init__(self, tok, script: dict[int, list[str]], context: int = 100_000):
        self.tokenizer, self.script, self.context = tok, script, context
        self.pending: list[tuple[list[int], int]] = []
        self.prompts: dict[int, list[str]] = {}

    def prepare(self, ids, params):
        return ids, (f"prompt has {len(ids)} tokens; the context is {self.context}" if len(ids) >= self.context else None)

    def submit(self, ids, params, tag):
        assert turn_end_ids(self.tokenizer)[0] in params.stop_token_ids and params.n == 1
        self.pending.append((ids, tag))
        self.prompts.setdefault(tag, []).append(self.tokenizer.decode(ids, skip_special_tokens=False))

    def has_unfinished(self):
        return bool(self.pending)

    def step(self):
        out = []
        for ids, tag in self.pending_and_clear():
            text = self.script[tag][len(self.prompts[tag]) - 1]
            tokens = self.tokenizer.encode(text, add_special_tokens=False) + list(turn_end_ids(self.tokenizer))
            out.append(SimpleNamespace(tag=tag, error=None,
                                       completions=[SimpleNamespace(tokens=tokens, finish_reason="stop")]))
        return out

    def pending_and_clear(self):
        got, self.pending = self.pending, []
        return got


def call(name, **args):
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": args})}\n</tool_call>'


def test_the_loop_runs_calls_feeds_answers_back_and_stops(tok):
    script = {
        0: ["<think>\nBig numbers: use the calculator.\n</think>\n\n" + call("calculator", expression="48213 * 9127"),
            "<think>\n</think>\n\nThe answer is 440040051."],
        1: [call("search", q="x"), "I cannot search."],
        2: [call("calculator", expression="1+1")] * 3,
        3: ['<tool_call>{"name": oops}</tool_call>', "Sorry."],
        4: ["<tool_call>{broken</tool_call>"] * 4,  # never a valid call: the turns are bounded all the same
    }
    engine = ScriptedEngine(tok, script)
    convs = [[{"role": "user", "content": f"question {i}"}] for i in range(5)]
    res = run_with_tools(engine, convs, {"calculator": CALCULATOR}, [SamplingParams(max_new_tokens=64)] * 5,
                         max_calls=2)
    a = res[0]
    assert a["answer"] == "The answer is 440040051." and a["tool_calls"] == 1 and a["turns"] == 2
    assert a["finish_reason"] == "stop" and a["error"] is None
    first, answer, final = a["messages"]
    assert first["tool_calls"] == [{"type": "function", "function": {"name": "calculator",
                                                                     "arguments": {"expression": "48213 * 9127"}}}]
    assert first["reasoning_content"] == "Big numbers: use the calculator." and answer == {
        "role": "tool", "name": "calculator", "content": "440040051"}
    assert final["content"] == "The answer is 440040051."
    # the second turn's prompt lists the tool, carries the call and the tool's answer
    second = engine.prompts[0][1]
    assert '"name": "calculator"' in second and "440040051" in second and "48213 * 9127" in second
    assert res[1]["messages"][1]["content"] == "error: no tool named 'search' (tools: calculator)"
    assert res[1]["answer"] == "I cannot search."
    c = res[2]
    assert c["tool_calls"] == 2 and c["turns"] == 3 and c["finish_reason"] == "max_calls"
    assert res[3]["messages"][1]["content"].startswith("error: call 1 is not JSON") and res[3]["answer"] == "Sorry."
    assert res[4]["turns"] == 3 and res[4]["tool_calls"] == 0 and res[4]["finish_reason"] == "max_calls"


def test_a_conversation_that_outgrows_the_context_ends_with_an_error(tok):
    from flowlm.model.tokenizer import render_ids

    first = render_ids(tok, [{"role": "user", "content": "q"}], add_generation_prompt=True, tools=[CALCULATOR.schema])
    engine = ScriptedEngine(tok, {0: [call("calculator", expression="2*3")] * 5}, context=len(first) + 60)
    res = run_with_tools(engine, [[{"role": "user", "content": "q"}]], {"calculator": CALCULATOR},
                         [SamplingParams(max_new_tokens=8)], max_calls=5)[0]
    assert res["error"].startswith("prompt has") and res["finish_reason"] == "length" and res["tool_calls"] >= 1


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
    assert len(out) == 2 and all(len(r["completions"]) == 1 and r["trajectory"] and r["error"] is None for r in out)
    assert out[0]["trajectory"][-1]["role"] == "assistant" and "conversations done" in proc.stderr
    bad = flowlm("generate", "--model", model, "--file", str(rows), "--tools", "search", check=False)
    assert bad.returncode == 2 and "unknown tool 'search'" in bad.stderr
    none = flowlm("generate", "--model", model, "--file", str(rows), "--tools", ",", check=False)
    assert none.returncode == 2 and "name at least one tool" in none.stderr
    ids = tmp_path / "ids.jsonl"
    ids.write_text('{"prompt_ids": [1, 2, 3]}\n')
    wrong = flowlm("generate", "--model", model, "--file", str(ids), "--tools", "calculator", check=False)
    assert wrong.returncode == 1 and f"{ids}:1: --tools needs chat messages" in wrong.stderr
    many = flowlm("generate", "--model", model, "--file", str(rows), "--tools", "calculator", "--n", "2", check=False)
    assert many.returncode == 1 and "n must be 1" in many.stderr
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
