"""Tool-call formats (`flowlm.tools.formats`): OLMo 3's `<function_calls>` beside Hermes's `<tool_call>` JSON.

- The parsers on hand-written calls: values, namespaced names, several calls, and every way a call can be
  wrong, which is a problem and never an exception (nothing the model wrote is evaluated).
- The chat schema: an OLMo-3-style template (written here after the format of OLMo 3 Instruct's: tools in the
  system turn's `functions`, calls as `function_calls`, answers in `environment` turns, the last turn closed
  with the EOS) renders OpenAI-schema conversations, and rows in OLMo 3's own schema (its Dolci data) are
  read, rendered verbatim, and masked on the assistant turns; flowlm's template renders the same rows as
  `<tool_call>` JSON.
- The tool loop on that template: calls parsed in its format, `environment` turns appended token for token;
  the `tool_call` verifier scores either format.
"""

from __future__ import annotations

import json

import pytest

from flowlm.errors import FlowError
from flowlm.generate.params import SamplingParams
from flowlm.model.tokenizer import load_tokenizer, render_chat, render_ids, tool_format
from flowlm.tools.builtin import CALCULATOR
from flowlm.tools.engine import ToolEngine
from flowlm.tools.formats import parse_hermes, parse_olmo3
from flowlm.tools.messages import OLMO3_SYSTEM, pythonic
from tests.tools.test_tool_rollouts import ScriptedEngine

# After the format of OLMo 3 Instruct's chat template (written for these tests, not copied).
OLMO3_STYLE = (
    "{%- if not (messages | selectattr('role', 'equalto', 'system') | list) -%}"
    "{{- '<|im_start|>system\\nYou are a test model. You do not currently have access to any functions. "
    "<functions></functions><|im_end|>\\n' -}}{%- endif -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'system' -%}{{- '<|im_start|>system\\n' + m.content -}}"
    "{%- if m.get('functions') is not none -%}{{- ' <functions>' + m.functions + '</functions><|im_end|>\\n' -}}"
    "{%- else -%}{{- ' You do not currently have access to any functions. <functions></functions><|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- elif m.role == 'user' -%}{{- '<|im_start|>user\\n' + m.content -}}"
    "{%- if m.get('functions') is not none -%}{{- '\\n<functions>' + m.functions + '</functions>' -}}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- elif m.role == 'assistant' -%}{{- '<|im_start|>assistant\\n' -}}"
    "{%- if m.get('content') is not none -%}{{- m.content -}}{%- endif -%}"
    "{%- if m.get('function_calls') is not none -%}{{- '<function_calls>' + m.function_calls + '</function_calls>' -}}"
    "{%- endif -%}"
    "{%- if not loop.last -%}{{- '<|im_end|>\\n' -}}{%- else -%}{{- eos_token -}}{%- endif -%}"
    "{%- elif m.role == 'environment' -%}{{- '<|im_start|>environment\\n' + m.content + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- if loop.last and add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
    "{%- endfor -%}")


def with_template(tok, path, template):
    """A copy of `tok` (saved to and loaded from `path`) with another chat template."""
    tok.save_pretrained(path)
    out = load_tokenizer(path)
    out.chat_template = template
    return out


@pytest.fixture(scope="module")
def otok(tok, tmp_path_factory):
    """The same tokenizer with the OLMo-3-style template."""
    return with_template(tok, tmp_path_factory.mktemp("otok") / "tok", OLMO3_STYLE)


def test_olmo3_calls_parse_to_literal_values_and_never_raise():
    calls, problems = parse_olmo3('<function_calls>get_weather(city="Paris", days=3)\n'
                                  "weather.forecast(q='Rome', metric=true, extra=null, at=-1.5, tags=[1, 2], "
                                  'opts={"a": [None, False]})</function_calls>')
    assert problems == []
    assert calls == [{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}},
                     {"name": "weather.forecast", "arguments": {"q": "Rome", "metric": True, "extra": None,
                                                                "at": -1.5, "tags": [1, 2],
                                                                "opts": {"a": [None, False]}}}]
    assert parse_olmo3("<function_calls>[f(x=1), g()]</function_calls>")[0] == [
        {"name": "f", "arguments": {"x": 1}}, {"name": "g", "arguments": {}}]
    assert parse_olmo3("no calls here") == ([], [])
    # one broken line does not lose the others; calls are numbered across blocks
    calls, problems = parse_olmo3('<function_calls>f(x=1)\ng(x=\nh(y="z")</function_calls>')
    assert calls == [{"name": "f", "arguments": {"x": 1}}, {"name": "h", "arguments": {"y": "z"}}]
    assert problems == ["call 2 is not Python call syntax"]
    for text, why in (("<function_calls>f(1)</function_calls>", "call 1 (f): positional arguments (write name=value)"),
                      ("<function_calls>f(x=__import__('os').system('id'))</function_calls>",
                       "call 1 (f): argument 'x' is not a literal value"),
                      ("<function_calls>f(x=a + 1)</function_calls>", "call 1 (f): argument 'x' is not a literal value"),
                      ("<function_calls>f(**{'x': 1})</function_calls>", "call 1 (f): **arguments are not allowed"),
                      ("<function_calls>x = 1</function_calls>", "call 1 is not a function call"),
                      ("<function_calls>f()(x=1)</function_calls>", "call 1 does not call a function by name"),
                      ("<function_calls>f(x=1j)</function_calls>", "call 1 (f): argument 'x' is not a literal value"),
                      ("<function_calls>f(x=1)", "call 1 is in a block not closed with </function_calls>"),
                      ("<function_calls> </function_calls>", "call 1: an empty <function_calls> block"),
                      ("<function_calls>f(x=" + "[" * 5000 + "]" * 5000 + ")</function_calls>", None)):
        calls, problems = parse_olmo3(text)
        assert calls == [] and len(problems) == 1 and (why is None or problems[0] == why), (text[:40], problems)


def test_calls_written_in_olmo3s_form_read_back_the_same():
    calls = [{"name": "get_weather", "arguments": {"city": "São Paulo", "units": None, "days": [1, 2.5],
                                                   "deep": {"k": True}, "quote": 'say "hi"\n'}},
             {"type": "function", "function": {"name": "ns.tool", "arguments": '{"x": -3}'}}]
    text = pythonic(calls)
    assert text.splitlines()[1] == 'ns.tool(x=-3)'
    assert parse_olmo3(f"<function_calls>{text}</function_calls>") == (
        [calls[0], {"name": "ns.tool", "arguments": {"x": -3}}], [])
    assert parse_hermes('<tool_call>{"name": "a", "arguments": "{\\"x\\": 1}"}</tool_call>') == (
        [{"name": "a", "arguments": {"x": 1}}], [])
    for bad, why in (("{x", "call f: its arguments are a string that is not JSON"),
                     ("[1]", "call f: its arguments are not an object")):
        with pytest.raises(FlowError, match=why):
            pythonic([{"name": "f", "arguments": bad}])


def test_the_template_format_is_probed(tok, otok):
    assert tool_format(tok) == "hermes" and tool_format(otok) == "olmo3"


CONVERSATION = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "name": "get_weather", "content": "18C"},
                {"role": "assistant", "content": "It is 18C."}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def test_an_openai_schema_conversation_renders_in_olmo3s_schema(otok):
    ids, mask = render_chat(otok, CONVERSATION, tools=[WEATHER])
    functions = json.dumps([WEATHER])
    assert otok.decode(ids, skip_special_tokens=False) == (
        f"<|im_start|>system\n{OLMO3_SYSTEM} <functions>{functions}</functions><|im_end|>\n"
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        '<|im_start|>assistant\nChecking.<function_calls>get_weather(city="Paris")</function_calls><|im_end|>\n'
        "<|im_start|>environment\n18C<|im_end|>\n"
        "<|im_start|>assistant\nIt is 18C.<|endoftext|>")
    # both assistant turns are labelled, each with its closing token; the environment turn is not
    labelled = otok.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=False)
    assert labelled == ('Checking.<function_calls>get_weather(city="Paris")</function_calls><|im_end|>'
                        "It is 18C.<|endoftext|>")
    # a prompt with tools (what eval and the tool loop send) lists them the same way
    prompt = otok.decode(render_ids(otok, CONVERSATION[:1], add_generation_prompt=True, tools=[WEATHER]),
                         skip_special_tokens=False)
    assert prompt.endswith("Weather in Paris?<|im_end|>\n<|im_start|>assistant\n") and f"<functions>{functions}" in prompt


DOLCI_ROW = {"id": "d1", "messages": [
    {"role": "system", "content": "You are a helpful function-calling AI assistant.",
     "functions": '[{"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]'},
    {"role": "user", "content": "Weather in Paris?", "functions": None, "function_calls": None},
    {"role": "assistant", "content": None, "function_calls": "get_weather(city='Paris')"},
    {"role": "environment", "content": '{"temp": 18}'},
    {"role": "assistant", "content": "It is 18C."}]}


def test_rows_in_olmo3s_schema_are_read_rendered_verbatim_and_masked(tok, otok, tmp_path):
    from flowlm.data.chat import chat_row, read_chat_rows, render_chat_example

    row = chat_row(DOLCI_ROW)
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert row["messages"][2]["tool_calls"] == [{"type": "function", "function": {"name": "get_weather",
                                                                                   "arguments": {"city": "Paris"}}}]
    assert row["tools"] == [{"type": "function", "function": json.loads(DOLCI_ROW["messages"][0]["functions"])[0]}]
    # OLMo 3's template: the row as it was written (its own functions text, its call text with its quotes)
    ids, mask = render_chat_example(otok, row)
    text = otok.decode(ids, skip_special_tokens=False)
    assert (f"function-calling AI assistant. <functions>{DOLCI_ROW['messages'][0]['functions']}</functions>" in text
            and "<function_calls>get_weather(city='Paris')</function_calls><|im_end|>\n<|im_start|>environment\n"
                '{"temp": 18}<|im_end|>\n' in text)
    labelled = otok.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=False)
    assert labelled == "<function_calls>get_weather(city='Paris')</function_calls><|im_end|>It is 18C.<|endoftext|>"
    # flowlm's template: the same row in its own format, the tools listed and the call as <tool_call> JSON
    ids, mask = render_chat_example(tok, row)
    text = tok.decode(ids, skip_special_tokens=False)
    assert '"name": "get_weather"' in text and "<|im_start|>tool\n" in text and "environment" not in text
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in tok.decode(
        [t for t, m in zip(ids, mask) if m], skip_special_tokens=False)
    # a call that is not Python call syntax, or functions that are not JSON: one line naming file:line
    bad = tmp_path / "bad.jsonl"
    broken = json.loads(json.dumps(DOLCI_ROW))
    broken["messages"][2]["function_calls"] = "get_weather('Paris')"
    nojson = json.loads(json.dumps(DOLCI_ROW))
    nojson["messages"][0]["functions"] = "[{"
    bad.write_text(json.dumps(DOLCI_ROW) + "\n" + json.dumps(broken) + "\n")
    with pytest.raises(FlowError, match=rf"{bad}:2: messages\[2\].function_calls: call 1 \(get_weather\): "
                                        "positional arguments"):
        list(read_chat_rows(bad))
    bad.write_text(json.dumps(nojson) + "\n")
    with pytest.raises(FlowError, match=rf"{bad}:1: messages\[0\].functions is not JSON"):
        list(read_chat_rows(bad))
    # functions listed in a user turn (OLMo 3's template writes them after its text) stay there
    in_user = json.loads(json.dumps(DOLCI_ROW))
    in_user["messages"][1]["functions"] = in_user["messages"][0].pop("functions")
    row = chat_row(in_user)
    assert row["tools"][0]["function"]["name"] == "get_weather"
    text = otok.decode(render_chat_example(otok, row)[0], skip_special_tokens=False)
    assert text.count("<functions>") == 2 and "Weather in Paris?<|im_end|>" not in text  # the system's empty list
    assert f"Weather in Paris?\n<functions>{in_user['messages'][1]['functions']}</functions>" in text


def olmo3_script(text, j, turn):
    if turn == 0:
        return 'Let me compute.<function_calls>calculator(expression="48213 * 9127")</function_calls>'
    return "It is 440040051."


def test_the_tool_loop_reads_and_answers_olmo3_calls_token_for_token(otok):
    prompt = [{"role": "user", "content": "What is 48213 * 9127?"}]
    tools = {"calculator": CALCULATOR}
    engine = ToolEngine(ScriptedEngine(otok, olmo3_script), tools, workers=0)
    assert engine.format.name == "olmo3"
    res = engine.generate([prompt], [SamplingParams(max_new_tokens=200)])[0]
    comp = res.completions[0]
    assert comp.tool_calls == 1 and comp.tool_errors == 0 and comp.text == "It is 440040051."
    assert comp.trajectory[0] == {"role": "assistant", "content": "Let me compute.", "reasoning_content": "",
                                  "tool_calls": [{"type": "function", "function": {
                                      "name": "calculator", "arguments": {"expression": "48213 * 9127"}}}]}
    assert comp.trajectory[1] == {"role": "tool", "name": "calculator", "content": "440040051"}
    tool_text = otok.decode([t for t, m in zip(comp.tokens, comp.tool_mask) if m], skip_special_tokens=False)
    assert tool_text == "\n<|im_start|>environment\n440040051<|im_end|>\n<|im_start|>assistant\n"
    # the prompt listed the calculator in OLMo 3's way, and the trajectory is the template's own rendering
    # of the conversation (the last turn ends at <|im_end|> where the template closes a conversation with the EOS)
    assert "<functions>" in otok.decode(res.prompt_ids) and '"calculator"' in otok.decode(res.prompt_ids)
    whole = render_ids(otok, prompt + comp.trajectory, tools=[CALCULATOR.schema])
    got = res.prompt_ids + comp.tokens
    assert whole[:-1] == got[:-1] and otok.convert_ids_to_tokens(got[-1]) == "<|im_end|>"


def test_the_tool_call_verifier_scores_either_format():
    from flowlm.verify import verify_row

    truth = {"get_weather": {"city": ["Paris", "paris"], "days": [3, ""]}}
    row = {"dataset": "tool_call", "ground_truth": truth}
    assert verify_row(row, '<function_calls>get_weather(city="Paris", days=3)</function_calls>').score == 1.0
    assert verify_row(row, '<tool_call>{"name": "get_weather", "arguments": {"city": "paris"}}</tool_call>').score == 1.0
    wrong = verify_row(row, '<function_calls>get_weather(city="Rome")</function_calls>')
    assert wrong.score == 0.0 and "city" in wrong.reason
    broken = verify_row(row, "<function_calls>get_weather(city=open('/etc/passwd').read())</function_calls>")
    assert broken.score == 0.0 and broken.reason == "call 1 (get_weather): argument 'city' is not a literal value"


def test_a_template_that_writes_calls_another_way_is_refused_by_name(tok, tmp_path):
    tok.save_pretrained(tmp_path / "t")
    other = load_tokenizer(tmp_path / "t")
    other.chat_template = ("{%- for m in messages -%}{{- m.role + ': ' + (m.content or '') -}}"
                           "{%- for c in (m.tool_calls or []) -%}{{- '[CALL] ' + c.function.name -}}{%- endfor -%}"
                           "{%- endfor -%}")
    assert tool_format(other) == "other"
    with pytest.raises(FlowError, match="its chat template writes tool calls in a format flowlm does not read"):
        ToolEngine(ScriptedEngine(other, olmo3_script), {"calculator": CALCULATOR})


def olmo3_caller(otok):
    """A micro OLMo-3 that learnt by heart one calculator trajectory in OLMo 3's format, as its reply to the
    question below with the calculator listed (what `flowlm generate --tools calculator` renders)."""
    from tests.tools.memorize import memorize

    prompt = render_ids(otok, [{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                        tools=[CALCULATOR.schema])
    end = otok.encode("<|im_end|>", add_special_tokens=False)
    reply = otok.encode(olmo3_script("", 0, 0), add_special_tokens=False) + end
    tool = otok.encode("\n<|im_start|>environment\n440040051<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    answer = otok.encode(olmo3_script("", 0, 1), add_special_tokens=False) + end
    return memorize(len(otok), [(prompt, False), (reply, True), (tool, False), (answer, True)])


QUESTION = "What is 48213 * 9127?"


def test_an_olmo3_format_checkpoint_calls_tools_and_trains_on_its_own_schema_through_the_cli(otok, tmp_path):
    """A checkpoint whose template is OLMo 3's: `flowlm generate --tools` reads its `<function_calls>`, runs
    them and appends `environment` turns; `flowlm train --objective sft` trains on rows in OLMo 3's schema
    (Dolci's), with labels on exactly the assistant turns' tokens."""
    from flowlm.model.hf import save_pretrained
    from tests.flow.test_post_flow import flowlm

    ckpt = tmp_path / "olmo3"
    save_pretrained(olmo3_caller(otok), otok, ckpt)
    assert "function_calls" in load_tokenizer(ckpt).chat_template
    rows = tmp_path / "q.jsonl"
    rows.write_text(json.dumps({"messages": [{"role": "user", "content": QUESTION}]}) + "\n")
    flowlm("generate", "--model", str(ckpt), "--file", str(rows), "--tools", "calculator", "--temperature", "0",
           "--max-new-tokens", "200", "--out", str(tmp_path / "o.jsonl"))
    comp = json.loads((tmp_path / "o.jsonl").read_text())["completions"][0]
    assert comp["tool_calls"] == 1 and comp["tool_errors"] == 0 and comp["text"] == "It is 440040051."
    assert [m["role"] for m in comp["trajectory"]] == ["assistant", "tool", "assistant"]
    assert comp["trajectory"][0]["tool_calls"][0]["function"] == {"name": "calculator",
                                                                  "arguments": {"expression": "48213 * 9127"}}
    data = tmp_path / "dolci.jsonl"
    data.write_text("\n".join(json.dumps({**DOLCI_ROW, "id": f"d{i}"}) for i in range(8)) + "\n")
    common = ["--no-progress", "eval.max_items=2", "eval.heldout_docs=1", "eval.tasks=[prose]", "threads=1",
              "stages.sft.seq_len=256", "stages.sft.batch_size=2"]
    flowlm("train", "--objective", "sft", "--init", str(ckpt), "--data", str(data), "--run-dir", str(tmp_path / "s"),
           *common)
    steps = [json.loads(line) for line in (tmp_path / "s" / "sft" / "metrics.jsonl").read_text().splitlines()
             if line.strip() and "loss" in json.loads(line)]
    labelled = otok.encode("<function_calls>get_weather(city='Paris')</function_calls><|im_end|>It is 18C.<|endoftext|>",
                           add_special_tokens=False)
    assert steps and sum(s["loss_tokens"] for s in steps) == 2 * 8 * len(labelled)  # 2 epochs of 8 rows


def test_llama3_json_calls_are_read_run_and_answered_in_the_templates_ipython_turn(tok, tmp_path):
    """A Llama-3-style template (`tests/model/test_chat_templates.py`: `<|eot_id|>` turns, calls as a bare
    JSON object, answers in `ipython` turns): the loop reads a reply of JSON calls, appends the template's
    own tool turn, and the trajectory is the template's rendering; the verifier reads such replies too."""
    from flowlm.verify import verify_row
    from tests.model.test_chat_templates import LLAMA_STYLE

    tok.save_pretrained(tmp_path / "l")
    llama = load_tokenizer(tmp_path / "l")
    llama.add_special_tokens({"extra_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    llama.chat_template = LLAMA_STYLE
    assert tool_format(llama) == "llama3_json"

    def script(text, j, turn):
        return '{"name": "calculator", "parameters": {"expression": "6 * 7"}}' if turn == 0 else "It is 42."

    prompt = [{"role": "user", "content": "6 * 7?"}]
    engine = ToolEngine(ScriptedEngine(llama, script), {"calculator": CALCULATOR}, workers=0)
    res = engine.generate([prompt], [SamplingParams(max_new_tokens=300)])[0]
    comp = res.completions[0]
    assert engine.format.name == "llama3_json" and comp.tool_calls == 1 and comp.text == "It is 42."
    assert comp.trajectory[0]["tool_calls"] == [{"type": "function", "function": {
        "name": "calculator", "arguments": {"expression": "6 * 7"}}}] and comp.trajectory[0]["content"] == ""
    tool_text = llama.decode([t for t, m in zip(comp.tokens, comp.tool_mask) if m], skip_special_tokens=False)
    assert tool_text == "<|start_header_id|>ipython<|end_header_id|>\n\n42<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    whole = render_ids(llama, prompt + comp.trajectory, tools=[CALCULATOR.schema])
    assert whole == res.prompt_ids + comp.tokens
    row = {"dataset": "tool_call", "ground_truth": {"name": "calculator", "arguments": {"expression": "6 * 7"}}}
    assert verify_row(row, '<|python_tag|>{"name": "calculator", "parameters": {"expression": "6 * 7"}}').score == 1.0
    assert verify_row(row, "The answer is 42.").score == 0.0


# After the format of Qwen3-Coder's chat template (written for these tests, not copied): calls as
# `<function=NAME>` XML with one newline-framed `<parameter=KEY>` per argument (strings as they are, other
# values as JSON), answers as `<tool_response>` blocks in a user turn.
QWEN3_XML_STYLE = (
    "{%- if tools -%}{{- '<|im_start|>system\\nYou may call these functions:\\n<tools>' -}}"
    "{%- for t in tools -%}{{- '\\n' + (t.function | tojson) -}}{%- endfor -%}{{- '\\n</tools><|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'user' or m.role == 'system' -%}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' -}}"
    "{%- elif m.role == 'assistant' -%}{{- '<|im_start|>assistant\\n' + (m.content or '') -}}"
    "{%- for c in (m.tool_calls or []) -%}{%- set f = c.function if c.function is defined else c -%}"
    "{%- if not loop.first or (m.content or '') | trim -%}{{- '\\n' -}}{%- endif -%}"
    "{{- '<tool_call>\\n<function=' + f.name + '>\\n' -}}"
    "{%- for k, v in f.arguments | items -%}"
    "{{- '<parameter=' + k + '>\\n' + (v if v is string else v | tojson) + '\\n</parameter>\\n' -}}{%- endfor -%}"
    "{{- '</function>\\n</tool_call>' -}}{%- endfor -%}{{- '<|im_end|>\\n' -}}"
    "{%- elif m.role == 'tool' -%}{%- if loop.first or loop.previtem.role != 'tool' -%}{{- '<|im_start|>user' -}}"
    "{%- endif -%}{{- '\\n<tool_response>\\n' + m.content + '\\n</tool_response>' -}}"
    "{%- if loop.last or loop.nextitem.role != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}")

BOOKING = {"type": "function", "function": {"name": "book", "description": "Book a table", "parameters": {
    "type": "object", "properties": {"zip": {"type": "string"}, "people": {"type": "integer"}, "budget": {"type": "number"},
                                     "terrace": {"type": "boolean"}, "dishes": {"type": "array"},
                                     "contact": {"type": "object"}, "note": {"type": ["string", "null"]}}}}}


@pytest.fixture(scope="module")
def xtok(tok, tmp_path_factory):
    """The same tokenizer with the Qwen3-Coder-style template."""
    return with_template(tok, tmp_path_factory.mktemp("xtok") / "tok", QWEN3_XML_STYLE)


def test_qwen3_xml_calls_are_typed_by_the_listed_functions_and_never_raise():
    from flowlm.tools.formats import QWEN3_XML, format_in, parse_qwen3_xml

    text = ("Booking it.\n<tool_call>\n<function=book>\n<parameter=zip>\n07030\n</parameter>\n<parameter=people>\n4\n"
            "</parameter>\n<parameter=budget>\n120\n</parameter>\n<parameter=terrace>\nTrue\n</parameter>\n"
            "<parameter=dishes>\n['soup', 'bread']\n</parameter>\n<parameter=contact>\n{\"tel\": \"555\"}\n</parameter>\n"
            "<parameter=note>\nline one\nline two\n</parameter>\n</function>\n</tool_call>")
    assert format_in(text) is QWEN3_XML and QWEN3_XML.text_before_calls(text) == "Booking it."
    calls, problems = QWEN3_XML.parse(text, [BOOKING])
    assert problems == [] and calls == [{"name": "book", "arguments": {
        "zip": "07030", "people": 4, "budget": 120, "terrace": True, "dishes": ["soup", "bread"],
        "contact": {"tel": "555"}, "note": "line one\nline two"}}]
    # without the schema: JSON where the text is JSON, else the text (vLLM's rule)
    untyped, _ = parse_qwen3_xml(text)
    assert untyped[0]["arguments"]["people"] == 4 and untyped[0]["arguments"]["zip"] == "07030"
    assert untyped[0]["arguments"]["terrace"] == "True" and untyped[0]["arguments"]["dishes"] == "['soup', 'bread']"
    # a value that is not of its declared type stays text (the caller's type check reports it)
    assert parse_qwen3_xml("<function=book><parameter=people>four</parameter></function>", [BOOKING])[0] == [
        {"name": "book", "arguments": {"people": "four"}}]
    # tolerated: no <tool_call> wrapper, no </parameter>; refused: no name, no </function>
    assert parse_qwen3_xml("<function=book>\n<parameter=people>\n2\n</function>") == (
        [{"name": "book", "arguments": {"people": 2}}], [])
    assert parse_qwen3_xml("<tool_call>\n<function=>\n</function></tool_call>") == ([], ["call 1 has no function name"])
    assert parse_qwen3_xml("<tool_call>\n<function=book>\n<parameter=people>\n2") == (
        [], ["call 1 (book) is not closed with </function>"])
    for junk in ("<function=" * 50, "<function=a><parameter=" * 30 + "x", "\x00<function=\x00>", ""):
        parse_qwen3_xml(junk, [BOOKING])  # never raises


def test_calls_written_by_a_qwen3_xml_template_read_back_the_same(xtok):
    from flowlm.tools.formats import QWEN3_XML

    assert tool_format(xtok) == "qwen3_xml"
    args = {"zip": "07030", "people": 4, "budget": 99.5, "terrace": False, "dishes": ["soup"], "contact": {"tel": "5"},
            "note": None}
    convo = [{"role": "user", "content": "Book for 4."},
             {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "book", "arguments": args}},
                                                                 {"type": "function", "function": {"name": "book", "arguments": {"people": 2}}}]}]
    text = xtok.decode(render_ids(xtok, convo, tools=[BOOKING]), skip_special_tokens=False)
    reply = text.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
    assert reply.startswith("<tool_call>\n<function=book>\n<parameter=zip>\n07030\n</parameter>")
    assert QWEN3_XML.parse(reply, [BOOKING]) == ([{"name": "book", "arguments": args},
                                                  {"name": "book", "arguments": {"people": 2}}], [])


def test_the_tool_loop_reads_and_answers_qwen3_xml_calls_token_for_token(xtok):
    def script(text, j, turn):
        if turn == 0:
            return "Let me compute.\n<tool_call>\n<function=calculator>\n<parameter=expression>\n6 * 7\n</parameter>\n</function>\n</tool_call>"
        return "It is 42."

    prompt = [{"role": "user", "content": "What is 6 * 7?"}]
    engine = ToolEngine(ScriptedEngine(xtok, script), {"calculator": CALCULATOR}, workers=0)
    assert engine.format.name == "qwen3_xml"
    res = engine.generate([prompt], [SamplingParams(max_new_tokens=300)])[0]
    comp = res.completions[0]
    assert comp.tool_calls == 1 and comp.tool_errors == 0 and comp.text == "It is 42."
    assert comp.trajectory[0]["content"] == "Let me compute." and comp.trajectory[0]["tool_calls"] == [
        {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "6 * 7"}}}]
    tool_text = xtok.decode([t for t, m in zip(comp.tokens, comp.tool_mask) if m], skip_special_tokens=False)
    assert tool_text == "\n<|im_start|>user\n<tool_response>\n42\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    # the trajectory is the template's own rendering of the conversation (which adds a newline after the end)
    whole, got = render_ids(xtok, prompt + comp.trajectory, tools=[CALCULATOR.schema]), res.prompt_ids + comp.tokens
    assert whole[:len(got)] == got and xtok.decode(whole[len(got):]) == "\n"


def test_the_tool_call_verifier_types_xml_calls_by_the_rows_functions():
    from flowlm.verify import verify_row

    call = "<tool_call>\n<function=book>\n<parameter=zip>\n07030\n</parameter>\n<parameter=people>\n4\n</parameter>\n</function>\n</tool_call>"
    truth = {"book": {"zip": ["07030"], "people": [4]}}
    assert verify_row({"dataset": "tool_call", "ground_truth": truth, "functions": [BOOKING["function"]]}, call).score == 1.0
    assert verify_row({"dataset": "tool_call", "ground_truth": truth, "tools": [BOOKING]}, call).score == 1.0
    wrong = verify_row({"dataset": "tool_call", "ground_truth": truth, "functions": [BOOKING["function"]]},
                       call.replace("\n4\n", "\nfour\n"))
    assert wrong.score == 0.0 and "not of type integer" in wrong.reason
