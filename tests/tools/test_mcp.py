"""Tools from MCP servers (`flowlm.tools.mcp`), against a server on the official SDK (`mcp_server.py`).

Listed tools become flowlm tools with the server's schemas; calls give the server's text, and every way a
call can fail (an error result, arguments the server rejects, a timeout, a server that is gone) is an
`error: ...` answer, never an exception. Calls from many threads share one connection. Through the
installed command, a micro model that learnt one call to the server's `add` runs it in `flowlm generate`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from flowlm.errors import ConfigError, FlowError
from flowlm.generate.params import SamplingParams
from flowlm.tools import mcp
from flowlm.tools.builtin import known_tools, select_tools
from flowlm.tools.engine import ToolEngine
from tests.tools.test_tool_rollouts import ScriptedEngine, call, make_tok

SERVER = f"mcp:{sys.executable} {Path(__file__).with_name('mcp_server.py')}"



@pytest.fixture(scope="module")
def tools():
    yield select_tools(["calculator", SERVER])
    mcp.close_all()


def test_a_servers_tools_are_offered_with_its_schemas_and_answer(tools):
    assert list(tools) == ["calculator", "add", "weather", "fails", "count", "slow"]
    add = tools["add"].schema["function"]
    assert add["description"] == "Add two integers." and add["parameters"]["required"] == ["a", "b"]
    assert add["parameters"]["properties"]["a"]["type"] == "integer"
    assert tools["add"].run({"a": 2, "b": 3}) == "5"
    assert tools["weather"].run({"city": "Paris"}) == "Paris: 18C, light rain"
    assert tools["fails"].run({"reason": "x"}).startswith("error: ")  # the server's error result
    rejected = tools["add"].run({"a": "x"})  # the server validates its own arguments
    assert rejected.startswith("error: ") and "validation" in rejected
    # one connection serves calls from many threads; the server's state is shared by them
    with ThreadPoolExecutor(8) as pool:
        counts = list(pool.map(lambda _: int(tools["count"].run({})), range(16)))
    assert sorted(counts) == list(range(1, 17))


def test_timeouts_dead_servers_and_bad_specs_are_answers_or_one_line_errors(tmp_path):
    server = mcp.MCPServer(SERVER[len("mcp:"):], call_timeout=1)
    try:
        assert server.call("slow", {"seconds": 0.1}) == "done"
        assert server.call("slow", {"seconds": 5}).startswith("error: ")
        assert server.call("nope", {}).startswith("error: ")
    finally:
        server.close()
    assert server.call("add", {"a": 1, "b": 2}) == f"error: the MCP server {server.spec!r} is not running"
    with pytest.raises(FlowError, match=r"MCP server 'false': cannot connect \("):
        mcp.MCPServer("false", connect_timeout=30)
    # a server that never answers: a one-line error in time, and its process does not outlive the attempt
    with pytest.raises(FlowError, match=r"MCP server 'sleep 4242.5': no tool listing within 2 s"):
        mcp.MCPServer("sleep 4242.5", connect_timeout=2)
    assert subprocess.run(["pgrep", "-f", "sleep 4242.5"], capture_output=True).returncode == 1
    for bad, why in (("mcp:", "give the server after 'mcp:'"), ("mcp:python 'x", "does not parse"),
                     ("search", "unknown tool 'search'; built-in tools: calculator, python, or mcp:SERVER")):
        with pytest.raises(ValueError, match=why):
            known_tools([bad])
    twice = f"mcp:{sys.executable}  {Path(__file__).with_name('mcp_server.py')}"  # another spec: a second server
    with pytest.raises(ConfigError, match=f"two tools named 'add' \\(from {SERVER} and {twice}\\)"):
        select_tools([SERVER, twice])
    mcp.disconnect(twice)
    assert select_tools([SERVER])["add"].run({"a": 1, "b": 2}) == "3"  # the first is still connected


def test_the_tool_loop_runs_calls_on_the_server(tools, tmp_path):
    tok = make_tok(tmp_path / "tok")

    def script(text, j, turn):
        return call("add", a=40, b=2) if turn == 0 else "It is 42."

    res = ToolEngine(ScriptedEngine(tok, script), tools, workers=4).generate(
        [[{"role": "user", "content": "40 + 2?"}]], [SamplingParams(n=3, max_new_tokens=300, seed=1)])[0]
    for comp in res.completions:
        assert comp.tool_calls == 1 and comp.text == "It is 42."
        assert comp.trajectory[1] == {"role": "tool", "name": "add", "content": "42"}
    assert '"name": "weather"' in tok.decode(res.prompt_ids)  # the server's tools are listed in the prompt


def test_generate_calls_an_mcp_servers_tool_through_the_installed_command(tmp_path):
    from flowlm.model.hf import save_pretrained
    from flowlm.model.tokenizer import render_ids, turn_end_ids
    from tests.flow.test_post_flow import flowlm
    from tests.tools.memorize import memorize

    tok = make_tok(tmp_path / "tok")
    question = [{"role": "user", "content": "What is 40 + 2?"}]
    only = SERVER + " --only add"  # one tool: a shorter prompt to learn
    prompt = render_ids(tok, question, add_generation_prompt=True, tools=[t.schema for t in select_tools([only]).values()])
    mcp.disconnect(only)
    end = list(turn_end_ids(tok))
    reply = tok.encode("<think>\n\n</think>\n\n" + call("add", a=40, b=2), add_special_tokens=False) + end
    turn = tok.encode("\n<|im_start|>tool\n42<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    answer = tok.encode("<think>\n\n</think>\n\nIt is 42.", add_special_tokens=False) + end
    model = memorize(len(tok), [(prompt, False), (reply, True), (turn, False), (answer, True)], context=2048)
    save_pretrained(model, tok, tmp_path / "m")
    rows = tmp_path / "q.jsonl"
    rows.write_text(json.dumps({"messages": question}) + "\n")
    proc = flowlm("generate", "--model", str(tmp_path / "m"), "--file", str(rows), "--tools", only,
                  "--temperature", "0", "--max-new-tokens", "300", "--out", str(tmp_path / "o.jsonl"))
    comp = json.loads((tmp_path / "o.jsonl").read_text())["completions"][0]
    assert comp["tool_calls"] == 1 and comp["trajectory"][1] == {"role": "tool", "name": "add", "content": "42"}
    assert comp["text"].endswith("It is 42.") and "1 tool call(s) run" in proc.stderr
    bad = flowlm("generate", "--model", str(tmp_path / "m"), "--file", str(rows), "--tools", "mcp:false", check=False)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith(
        "error: MCP server 'false': cannot connect (")


def test_without_the_sdk_mcp_entries_are_a_one_line_error_and_built_in_tools_still_work(monkeypatch):
    monkeypatch.setitem(sys.modules, "mcp", None)  # as if `mcp` were not installed
    assert list(select_tools(["calculator"])) == ["calculator"] and known_tools([SERVER]) == [SERVER]
    with pytest.raises(FlowError, match=r"MCP tools need the 'mcp' package, version 2 or later: "
                                        r"pip install 'flowlm\[mcp\]'"):
        select_tools([SERVER + " --only weather"])


def test_an_rl_stage_samples_rollouts_that_call_an_mcp_servers_tool(tmp_path):
    """`rollout.tools: ["mcp:..."]`: the RL source lists the server's tools in its prompts, the rollouts' calls
    go to the server, and the answer is context in the batch, not a target (the twenty-ninth session's rule)."""
    from flowlm.model.tokenizer import turn_end_ids
    from tests.tools.memorize import memorize
    from tests.tools.test_tool_rollouts import ROW, real_source

    tok = make_tok(tmp_path / "tok")
    only = SERVER + " --only add"
    src = real_source(tok, tools=[only], max_new_tokens=300)
    prompt = src.prompt_ids[0]
    assert '"name": "add"' in tok.decode(prompt)
    end = list(turn_end_ids(tok))
    reply = tok.encode("<think>\n\n</think>\n\n" + call("add", a=440040050, b=1), add_special_tokens=False) + end
    turn = tok.encode("\n<|im_start|>tool\n440040051<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    answer = tok.encode("<think>\n\n</think>\n\nIt is 440040051.", add_special_tokens=False) + end
    model = memorize(len(tok), [(prompt, False), (reply, True), (turn, False), (answer, True)], context=2048)
    src.bind(model)
    try:
        batch = next(iter(src))
    finally:
        src.close()
        mcp.disconnect(only)
    at = len(prompt) + len(reply)
    assert all(batch["input_ids"][r, at:at + len(turn)].tolist() == turn for r in range(2))  # the server's answer
    labelled = batch["labels"] != -100
    assert labelled[:, len(prompt) - 1:at - 1].all() and not labelled[:, at - 1:at - 1 + len(turn)].any()
    calls = batch["stat_num/tool_calls"].sum() / batch["stat_den/tool_calls"].sum()
    assert float(calls) == 1.0 and ROW["ground_truth"] == "440040051"  # one call per completion
