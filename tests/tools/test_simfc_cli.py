"""`flowlm post simfc` through the installed entry point, on real checkpoints: a micro assistant and a micro
simulator that learnt their parts of one conversation by heart (`memorize`), the rows it writes, SFT on them,
and its bad input."""

from __future__ import annotations

import json

import pytest

from flowlm.generate.prompts import to_prompt_ids
from flowlm.model.tokenizer import turn_end_ids
from flowlm.post.simfc import query_prompt, result_prompt
from flowlm.post.teachers import with_mode
from tests.flow.test_post_flow import flowlm

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather of a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
QUERY = "What is the weather in Paris?"
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
RESULT = '{"temp_c": 18}'
ANSWER = "It is 18 degrees in Paris."


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(assistant dir, simulator dir): the simulator learnt the request of the `single` pattern and the
    function's result, the assistant the call and, after the result, the answer."""
    from flowlm.model.hf import save_pretrained
    from flowlm.model.tokenizer import load_tokenizer, train_tokenizer
    from tests.tools.memorize import memorize

    out = tmp_path_factory.mktemp("simfc")
    words = [query_prompt([WEATHER], "single")[0]["content"], result_prompt([WEATHER], {"name": "get_weather", "arguments": {
        "city": "Paris"}})[0]["content"], QUERY, CALL, RESULT, ANSWER, json.dumps(WEATHER)]
    train_tokenizer(words * 40, 700, out / "tok")
    tok = load_tokenizer(out / "tok")
    end = list(turn_end_ids(tok))

    def prompt(msgs, thinking, tools=None):
        return to_prompt_ids(with_mode(msgs, thinking), tok, enable_thinking=thinking, tools=tools)

    def said(text):
        return tok.encode(text, add_special_tokens=False) + end

    call_args = {"name": "get_weather", "arguments": {"city": "Paris"}}
    sim = memorize(len(tok), [(prompt(query_prompt([WEATHER], "single"), False), False), (said(QUERY), True)],
                   more=[[(prompt(result_prompt([WEATHER], call_args), False), False), (said(RESULT), True)]],
                   context=2048, steps=400)
    user = [{"role": "user", "content": QUERY}]
    called = user + [{"role": "assistant", "content": "", "reasoning_content": "I look it up.",
                      "tool_calls": [{"type": "function", "function": call_args}]},
                     {"role": "tool", "name": "get_weather", "content": RESULT}]
    asst = memorize(len(tok), [(prompt(user, True, [WEATHER]), False), (said(f"<think>\nI look it up.\n</think>\n\n{CALL}"), True)],
                    more=[[(prompt(called, True, [WEATHER]), False), (said(f"<think>\nIt says 18.\n</think>\n\n{ANSWER}"), True)]],
                    context=2048, steps=400)
    save_pretrained(sim, tok, out / "sim")
    save_pretrained(asst, tok, out / "asst")
    return out / "asst", out / "sim"


def test_simfc_writes_the_simulated_conversation_and_sft_trains_on_it(models, tmp_path):
    asst, sim = models
    sets = tmp_path / "toolsets.jsonl"
    other = {"name": "stock_price", "description": "Price of a stock", "parameters": {"ticker": {"type": "str"}}}
    sets.write_text(json.dumps({"id": "weather", "tools": [WEATHER]}) + "\n" + json.dumps({"id": "stocks", "tools": json.dumps([other])}) + "\n")
    out = tmp_path / "fc.jsonl"
    proc = flowlm("post", "simfc", "--file", str(sets), "--teacher", str(asst), "--simulator", str(sim), "--out", str(out),
                  "--set", "patterns=[single]", "--set", "per_toolset=1", "--set", "teacher.temperature=0",
                  "--set", "teacher.max_new_tokens=60", "--set", "max_steps=2")
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 1, proc.stderr
    assert rows[0]["messages"] == [
        {"role": "user", "content": QUERY},
        {"role": "assistant", "content": "", "reasoning_content": "I look it up.", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "name": "get_weather", "content": RESULT},
        {"role": "assistant", "content": ANSWER, "reasoning_content": "It says 18."}]
    assert rows[0]["tools"] == [WEATHER] and rows[0]["pattern"] == "single"
    # the stock tool set was never learnt: its conversation is accounted for, with a reason, not lost
    conv = next(ln for ln in proc.stderr.splitlines() if ln.startswith("conversations"))
    assert "in       2" in conv and "kept       1" in conv and "=1" in conv, proc.stderr
    assert "toolsets" in proc.stderr and "no_conversation=1" in proc.stderr
    flowlm("train", "--objective", "sft", "--init", str(asst), "--data", str(out), "--run-dir", str(tmp_path / "sft"),
           "--no-progress", "stages.sft.seq_len=1024", "stages.sft.batch_size=1", "eval.max_items=2",
           "eval.heldout_docs=1", "eval.tasks=[prose]", "threads=1")
    steps = [json.loads(x) for x in (tmp_path / "sft" / "sft" / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(x)]
    assert steps and steps[0]["grad_norm"] > 0


def test_simfc_tool_sets_from_builtin_tools_and_mcp_servers(models, tmp_path):
    from tests.tools.test_mcp import SERVER

    asst, _ = models
    proc = flowlm("post", "simfc", "--tools", "calculator", "--tools", SERVER, "--teacher",
                  str(asst), "--set", "per_toolset=1", "--set", "patterns=[refusal]", "--set", "teacher.max_new_tokens=8",
                  "--out", str(tmp_path / "o.jsonl"))
    assert "toolsets   in       2" in proc.stderr  # one per --tools entry; the server's tools listed, none called


@pytest.mark.parametrize("args,rows,msg", [
    (["--teacher", "procedural"], None, "not a checkpoint directory"),
    (["--set", "teacher.tools=[calculator]"], None, "teacher.tools"),
    (["--set", "patterns=[chat]"], None, "patterns must be among"),
    ([], '{"id": "a"}\n', "toolsets.jsonl:1: a tool set row needs `tools`"),
    ([], '{"tools": [{"name": "f"}]}\n{"tools": "[{"}\n', "toolsets.jsonl:2: tools is not JSON"),
    (["--tools", "calculator"], '{"tools": [{"name": "f"}]}\n', "--tools or --file, not both"),
])
def test_simfc_bad_input_is_one_line_and_nothing_runs(models, tmp_path, args, rows, msg):
    asst, _ = models
    sets = tmp_path / "toolsets.jsonl"
    sets.write_text(rows or '{"tools": [{"name": "f"}]}\n')
    cmd = ["post", "simfc", "--file", str(sets), "--out", str(tmp_path / "o.jsonl")]
    if "--teacher" not in args:
        cmd += ["--teacher", str(asst)]
    proc = flowlm(*cmd, *args, check=False)
    assert proc.returncode != 0 and msg in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.jsonl").exists()


def test_a_simfc_stage_in_a_recipe_writes_rows_accounting_and_a_token_store(models, tmp_path):
    """`kind: simfc` in a recipe, through `flowlm run`: the same conversation as the CLI's, its accounting, and
    a token store (the run's tokenizer, assistant masks) that a train stage names as its data."""
    from flowlm.data.store import TokenStore
    from tests.flow.test_post_flow import write_recipe

    asst, sim = models
    sets = tmp_path / "toolsets.jsonl"
    sets.write_text(json.dumps({"id": "weather", "tools": [WEATHER]}) + "\n")
    recipe = {"name": "fc", "threads": 1, "model": {"preset": "tiny"}, "stages": {
        "corpus": {"pretrain_bytes": 20000, "midtrain_bytes": 5000, "long_docs": 1, "curate": None},
        "tokenizer": {"path": str(asst)},
        "fc_data": {"kind": "simfc", "toolsets": str(sets), "teacher": str(asst), "simulator": str(sim),
                    "teacher_settings": {"temperature": 0, "max_new_tokens": 60},
                    "config": {"patterns": ["single"], "per_toolset": 1, "max_steps": 2}}}}
    flowlm("run", str(write_recipe(tmp_path / "fc.yaml", recipe)), "--run-dir", str(tmp_path / "run"), "--no-progress")
    out = tmp_path / "run" / "fc_data"
    [row] = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    assert row["messages"][-1]["content"] == ANSWER and row["tools"] == [WEATHER]
    acc = json.loads((out / "accounting.json").read_text())
    assert acc["conversations"]["kept"]["docs"] == 1 == acc["toolsets"]["kept"]["docs"]
    report = flowlm("report", str(tmp_path / "run")).stdout
    assert "toolsets 1/1, conversations 1/1" in " ".join(report.split())  # the stage's headline: its accounting
    store = TokenStore.open(out / "store")
    assert len(store.offsets) == 2 and store.label_mask is not None and 0 < store.label_mask.sum() < len(store.tokens)
    bad = dict(recipe, stages={**recipe["stages"], "fc_data": {**recipe["stages"]["fc_data"], "tools": ["calculator"]}})
    proc = flowlm("run", str(write_recipe(tmp_path / "bad.yaml", bad)), "--run-dir", str(tmp_path / "bad"), check=False)
    assert proc.returncode != 0 and "give toolsets (a JSONL file) or tools" in proc.stderr


def test_model_teachers_sample_with_vllm_and_share_the_gpu(models, tmp_path, monkeypatch):
    """`teacher.backend=vllm` (here `tests/fake_vllm.py` stands in for vLLM: flowlm's engine behind vLLM's
    calls): the teachers sample the same greedy answers as with the native engine, each vLLM engine takes an
    even share of the GPU's memory unless `teacher.gpu_memory_utilization` says otherwise, and `flowlm post
    simfc` makes the same row through it."""
    import os
    import subprocess
    import sys

    from tests import fake_vllm
    from tests.cli_entry import flowlm_command
    from tests.rl.test_rl_flow import fake_vllm_env

    from flowlm.post.teachers import TeacherCfg, make_teacher

    asst, sim = models
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    prompt = [[{"role": "user", "content": QUERY}]]
    tools = [[WEATHER]]
    native = make_teacher(str(asst), [], TeacherCfg(temperature=0, max_new_tokens=60))
    viav = make_teacher(str(asst), [], TeacherCfg(temperature=0, max_new_tokens=60, backend="vllm"), model_teachers=2)
    assert viav.engine.llm.gpu_memory_utilization == 0.425
    assert viav.sample(prompt, 1, thinking=True, seed=0, functions=tools) == \
        native.sample(prompt, 1, thinking=True, seed=0, functions=tools)
    fixed = make_teacher(str(asst), [], TeacherCfg(backend="vllm", gpu_memory_utilization=0.3), model_teachers=2)
    assert fixed.engine.llm.gpu_memory_utilization == 0.3
    sets = tmp_path / "toolsets.jsonl"
    sets.write_text(json.dumps({"id": "weather", "tools": [WEATHER]}) + "\n")
    env = {**os.environ, **fake_vllm_env(tmp_path)}
    proc = subprocess.run([*flowlm_command(), "post", "simfc", "--file", str(sets), "--teacher", str(asst), "--simulator",
                           str(sim), "--set", "patterns=[single]", "--set", "per_toolset=1", "--set", "teacher.temperature=0",
                           "--set", "teacher.max_new_tokens=60", "--set", "max_steps=2", "--set", "teacher.backend=vllm",
                           "--out", str(tmp_path / "fc.jsonl")], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    [row] = [json.loads(x) for x in (tmp_path / "fc.jsonl").read_text().splitlines()]
    assert row["messages"][-1]["content"] == ANSWER
