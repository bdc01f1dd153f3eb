"""SimFC (`flowlm.post.simfc`): conversations of each pattern, every drop reason accounted for, tool sets in the
schemas users have. The assistant and the simulator here are scripted `Teacher`s (what they say is decided by
the test), so each check meets exactly the conversation it names; the same builder driven by real checkpoints
through `flowlm post simfc` is tested in tests/tools/test_simfc_cli.py."""

from __future__ import annotations

import json

import pytest

from flowlm.errors import FlowError
from flowlm.post.simfc import (SimFCCfg, build_simfc, call_problem, normalise_tools, parse_result, pattern_problem,
                               toolset_rows)

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather of a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
    "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "local_time", "description": "Local time of a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TOOLSET = {"id": "travel", "tools": [WEATHER, TIME]}


def call(name: str, **args) -> str:
    return f'<tool_call>{json.dumps({"name": name, "arguments": args})}</tool_call>'


def reply(content: str, reasoning: str = "", finish: str = "stop") -> dict:
    return {"reasoning": reasoning, "content": content, "finish_reason": finish}


class Scripted:
    """A Teacher whose reply to a prompt is `script(messages, functions, thinking)`; it records what it was asked."""

    def __init__(self, name, script):
        self.name, self.script, self.asked = name, script, []

    def sample(self, prompts, n, *, thinking, seed, functions=None):
        out = []
        for j, msgs in enumerate(prompts):
            fns = functions[j] if functions else None
            self.asked.append((msgs, fns, thinking))
            out.append([self.script(msgs, fns, thinking) for _ in range(n)])
        return out


QUERIES = {"single": "What is the weather in Paris?", "parallel": "Weather in Paris and in Rome, please.",
           "multi_step": "What time is it where it is warmest, Paris or Oslo?",
           "multi_turn": "Weather in Paris?", "refusal": "Book me a flight to Paris."}


def simulator(results=None, query=None):
    """Writes each pattern's request, a follow-up, and a function's result (`results[name]`, JSON text)."""
    results = results or {"get_weather": '{"temp_c": 18}', "local_time": '```json\n{"time": "14:05"}\n```'}

    def script(msgs, fns, thinking):
        text = msgs[-1]["content"]
        assert fns is None  # the simulator's prompts list no tools: they describe them
        if text.startswith("Write a message from a user"):
            pattern = next(p for p in QUERIES if _asks(p) in text)
            return reply(QUERIES[pattern] if query is None else query)
        if text.startswith("Here is a conversation"):
            return reply("User: And in Rome?")
        name = json.loads(text.split("The function:\n", 1)[1].split("\n\nIt was called", 1)[0])["name"]
        return reply(results[name])
    return Scripted("sim", script)


def _asks(pattern):
    from flowlm.post.simfc import ASKS
    return ASKS[pattern]


def assistant(turns):
    """Answers the k-th assistant turn of a conversation (counted in its messages) with `turns[query][k]`."""
    def script(msgs, fns, thinking):
        assert fns == [WEATHER, TIME]  # the tool set is listed in every assistant prompt
        first = msgs[0]["content"].replace(" /no_think", "")
        k = sum(m["role"] == "assistant" for m in msgs)
        return reply(turns[first][k], reasoning="Let me think." if thinking else "")
    return Scripted("asst", script)


GOOD = {
    QUERIES["single"]: [call("get_weather", city="Paris"), "It is 18 °C in Paris."],
    QUERIES["parallel"]: ["Checking both. " + call("get_weather", city="Paris") + call("get_weather", city="Rome"),
                          "Both are at 18 °C."],
    QUERIES["multi_step"]: [call("get_weather", city="Paris") + call("get_weather", city="Oslo"),
                            call("local_time", city="Paris"), "Paris is warmer; it is 14:05 there."],
    QUERIES["multi_turn"]: [call("get_weather", city="Paris"), "18 °C.", call("get_weather", city="Rome"), "18 °C too."],
    QUERIES["refusal"]: ["I cannot book flights: I can only look up weather and local time."],
}


def test_each_pattern_gives_its_conversation_as_an_sft_row():
    rows, acc = build_simfc([TOOLSET], assistant(GOOD), simulator(), SimFCCfg())
    assert [r["pattern"] for r in rows] == ["single", "parallel", "multi_step", "multi_turn", "refusal"]
    by = {r["pattern"]: r for r in rows}
    assert all(r["tools"] == [WEATHER, TIME] and r["source"] == "simfc" for r in rows)
    single = by["single"]["messages"]
    assert [m["role"] for m in single] == ["user", "assistant", "tool", "assistant"]
    assert single[1] == {"role": "assistant", "content": "", "reasoning_content": "Let me think.", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
    assert single[2] == {"role": "tool", "name": "get_weather", "content": '{"temp_c": 18}'}
    assert single[3]["content"] == "It is 18 °C in Paris." and "tool_calls" not in single[3]
    par = by["parallel"]["messages"]
    assert par[1]["content"] == "Checking both." and len(par[1]["tool_calls"]) == 2
    assert [m["role"] for m in par] == ["user", "assistant", "tool", "tool", "assistant"]
    step = by["multi_step"]["messages"]
    assert [m["role"] for m in step] == ["user", "assistant", "tool", "tool", "assistant", "tool", "assistant"]
    assert step[5]["content"] == '{"time": "14:05"}'  # a fenced JSON result, stored as compact JSON
    turn = by["multi_turn"]["messages"]
    assert [m["content"] for m in turn if m["role"] == "user"] == [QUERIES["multi_turn"], "And in Rome?"]
    assert [m["role"] for m in by["refusal"]["messages"]] == ["user", "assistant"]
    assert acc["conversations"].kept.docs == 5 and acc["toolsets"].kept.docs == 1 and not acc["conversations"].dropped


@pytest.mark.parametrize("pattern,turns,reason", [
    ("single", ["<tool_call>{not json</tool_call>"], "malformed_call"),
    ("single", [call("get_forecast", city="Paris")], "unknown_function"),
    ("single", [call("get_weather", town="Paris")], "bad_arguments"),
    ("single", [call("get_weather", city=7)], "bad_arguments"),
    ("single", [call("get_weather", city="Paris", unit="k")], "bad_arguments"),
    ("single", [call("get_weather", city="Paris") + call("local_time", city="Paris")], "pattern_mismatch"),
    ("single", ["It is sunny."], "pattern_mismatch"),
    ("parallel", [call("get_weather", city="Paris"), "18 °C."], "pattern_mismatch"),
    ("multi_step", [call("get_weather", city="Paris"), "18 °C."], "pattern_mismatch"),
    ("refusal", [call("get_weather", city="Paris")], "pattern_mismatch"),
    ("single", [""], "empty_answer"),
    ("single", ["word " * 40], "repetition"),
    ("multi_step", [call("get_weather", city="Paris")] * 5, "no_final_answer"),
])
def test_a_conversation_that_fails_a_check_is_dropped_with_its_reason(pattern, turns, reason):
    query = QUERIES[pattern]
    rows, acc = build_simfc([TOOLSET], assistant({query: turns}), simulator(), SimFCCfg(patterns=[pattern], per_toolset=1))
    assert rows == [] and acc["conversations"].dropped.keys() == {reason}
    assert acc["toolsets"].dropped["no_conversation"].docs == 1


def test_cut_replies_bad_results_and_bad_requests_are_dropped():
    cut = Scripted("asst", lambda m, f, t: reply(call("get_weather", city="Par"), finish="length"))
    assert build_simfc([TOOLSET], cut, simulator(), SimFCCfg(patterns=["single"], per_toolset=1))[1][
        "conversations"].dropped.keys() == {"truncated"}
    bad = simulator(results={"get_weather": "It is sunny and warm."})
    assert build_simfc([TOOLSET], assistant(GOOD), bad, SimFCCfg(patterns=["single"], per_toolset=1))[1][
        "conversations"].dropped.keys() == {"bad_result"}
    for query in ("", "word " * 300, "<tool_call>{}</tool_call>"):
        acc = build_simfc([TOOLSET], assistant(GOOD), simulator(query=query), SimFCCfg(patterns=["single"],
                                                                                    per_toolset=1))[1]
        assert acc["conversations"].dropped.keys() == {"bad_query"}


def test_repeated_requests_are_kept_once_and_the_rest_accounted_for():
    rows, acc = build_simfc([TOOLSET], assistant(GOOD), simulator(), SimFCCfg(patterns=["single"], per_toolset=3))
    st = acc["conversations"]
    assert len(rows) == 1 and st.inp.docs == 3 and st.dropped["duplicate"].docs == 2
    assert st.inp.tokens == st.kept.tokens + st.dropped["duplicate"].tokens  # conserved in words too


def test_non_thinking_conversations_carry_the_switch_and_are_asked_without_thinking():
    asst, sim = assistant(GOOD), simulator()
    rows, _ = build_simfc([TOOLSET], asst, sim, SimFCCfg(patterns=["multi_turn"], per_toolset=1, no_think_fraction=1.0))
    followup = next(m[-1]["content"] for m, _, _ in sim.asked if m[-1]["content"].startswith("Here is a conversation"))
    assert f"User: {QUERIES['multi_turn']}\n" in followup and "/no_think" not in followup  # the switch is not shown
    users = [m["content"] for m in rows[0]["messages"] if m["role"] == "user"]
    assert users == [f"{QUERIES['multi_turn']} /no_think", "And in Rome? /no_think"]
    assert all(not thinking for _, _, thinking in asst.asked)
    assert all(m.get("reasoning_content") == "" for m in rows[0]["messages"] if m["role"] == "assistant")


def test_user_turns_near_eval_items_are_dropped_as_contaminated():
    from flowlm.data.decontam import DecontamCfg, Decontaminator

    item = "What is the weather in Paris today and tomorrow for the team that is travelling there next week?"
    deco = Decontaminator([{"benchmark": "b", "item_id": "1", "question": item, "answer": "18"}], DecontamCfg(mode="posttrain"))
    _, acc = build_simfc([TOOLSET], assistant({item: GOOD[QUERIES["single"]]}), simulator(query=item),
                         SimFCCfg(patterns=["single"], per_toolset=1), decontam=deco)
    assert acc["conversations"].dropped.keys() == {"contaminated"}


def test_a_kept_row_renders_with_the_calls_and_answers_masked_as_sft_trains_on_them(tok):
    from flowlm.data.chat import render_chat_example

    rows, _ = build_simfc([TOOLSET], assistant(GOOD), simulator(), SimFCCfg(patterns=["single"], per_toolset=1))
    ids, mask = render_chat_example(tok, rows[0])
    text = tok.decode(ids, skip_special_tokens=False)
    trained = tok.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=False)
    assert '"name": "get_weather", "description"' in text  # the tool set is listed
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in trained
    assert "It is 18 °C in Paris." in trained and '{"temp_c": 18}' not in trained  # the result is context


def test_call_schema_checks():
    tools = [WEATHER]
    assert call_problem({"name": "get_weather", "arguments": {"city": "Oslo", "unit": "f"}}, tools) is None
    assert call_problem({"name": "x", "arguments": {}}, tools)[0] == "unknown_function"
    assert call_problem({"name": "get_weather", "arguments": {}}, tools) == (
        "bad_arguments", "get_weather: missing argument 'city'")
    assert "not of type string" in call_problem({"name": "get_weather", "arguments": {"city": True}}, tools)[1]
    loose = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {}, "additionalProperties": True}}}]
    assert call_problem({"name": "f", "arguments": {"any": 1}}, loose) is None


def test_patterns_are_judged_on_the_calls_of_each_turn():
    assert pattern_problem("single", [(1, 1), (1, 0)], finished=True) is None
    assert pattern_problem("parallel", [(1, 1), (1, 1), (1, 0)], finished=True) == "pattern_mismatch"
    assert pattern_problem("multi_step", [(1, 1), (1, 1), (1, 0)], finished=True) is None
    assert pattern_problem("multi_turn", [(1, 1), (1, 0), (2, 0)], finished=True) == "pattern_mismatch"
    assert pattern_problem("multi_turn", [(1, 1), (1, 0), (2, 1), (2, 0)], finished=True) is None
    assert pattern_problem("refusal", [(1, 1)], finished=False) == "pattern_mismatch"  # known before the end


def test_tool_sets_in_openai_bare_and_xlam_schemas():
    xlam = json.dumps([{"name": "search", "description": "Find items", "parameters": {
        "query": {"type": "str", "description": "what to find"}, "limit": {"type": "int, optional", "default": 10},
        "tags": {"type": "List[str]", "description": "filters"}}}])
    [tool] = normalise_tools(xlam, "f:1")
    assert tool["function"]["parameters"] == {"type": "object", "properties": {
        "query": {"type": "string", "description": "what to find"}, "limit": {"type": "integer", "default": 10},
        "tags": {"type": "array", "description": "filters"}}, "required": ["query", "tags"]}
    assert normalise_tools([WEATHER["function"]], "f:2") == [WEATHER]
    sets = toolset_rows([("f:1", {"id": "a", "tools": [WEATHER]}), ("f:2", {"function": [TIME["function"]]})])
    assert sets == [{"id": "a", "tools": [WEATHER]}, {"id": "toolset1", "tools": [TIME]}]
    for bad, msg in ((["x"], "non-empty list"), ("{", "not JSON"), ([{"description": "no name"}], "function name"),
                     ([WEATHER, WEATHER], "two functions named"), ([{"name": "f", "parameters": []}], "must be an object")):
        with pytest.raises(FlowError, match=msg):
            normalise_tools(bad, "f:3")
    with pytest.raises(FlowError, match="f:4: a tool set row needs `tools`"):
        toolset_rows([("f:4", {"id": "x"})])


def test_results_are_json_or_refused():
    assert parse_result(' ```json\n[1, 2]\n``` ') == [1, 2] and parse_result('"ok"') == "ok"
    with pytest.raises(ValueError):
        parse_result("sunny")
    with pytest.raises(ValueError, match="nested too deeply"):  # a RecursionError would stop the builder
        parse_result("[" * 100_000)


def test_a_simulator_without_a_thinking_switch_is_asked_without_one(tok):
    """A Qwen3-style simulator is asked in non-thinking mode (fast, no trace to drop); a ChatML or Llama 3
    simulator, whose template ignores the switch, is asked plainly: `/no_think` would be noise in its prompt."""
    import copy

    from tests.model.test_chat_templates import CHATML

    for template, switched in ((tok.chat_template, True), (CHATML, False)):
        sim = simulator()
        sim.tokenizer = copy.deepcopy(tok)
        sim.tokenizer.chat_template = template
        build_simfc([TOOLSET], assistant(GOOD), sim, SimFCCfg(patterns=["single"], per_toolset=1))
        assert {thinking for _, _, thinking in sim.asked} == {not switched}


def test_calls_in_any_format_are_kept_structured_with_values_typed_by_the_tool_set():
    """An assistant writing Qwen3-Coder's XML (every value text): the tool set's schema types the values, so the
    schema check passes and the row holds the typed call, which SFT writes in the student's own format."""
    days = {"type": "function", "function": {"name": "forecast", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}}
    xml = "<tool_call>\n<function=forecast>\n<parameter=city>\n1066\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>"
    toolset = {"id": "f", "tools": [days]}
    asst = Scripted("asst", lambda m, f, t: reply(xml if len(m) == 1 else "Sunny for 3 days."))
    sim = Scripted("sim", lambda m, f, t: reply('{"sky": "sun"}' if "You simulate" in m[-1]["content"] else "Forecast for 1066?"))
    rows, _ = build_simfc([toolset], asst, sim, SimFCCfg(patterns=["single"], per_toolset=1))
    assert rows[0]["messages"][1]["tool_calls"][0]["function"] == {"name": "forecast", "arguments": {"city": "1066", "days": 3}}
