"""Mistral's, Llama 4's and DeepSeek's tool-call formats (`flowlm.tools.formats`), beside the four of
`test_tool_formats.py`.

- The parsers on hand-written replies: every layout of each format, ids kept where the model wrote them, and
  every way a call can be wrong is a problem, never an exception.
- Templates written here after each family's published layout (not copied): Mistral's three (v3's JSON list
  with ids, v7's `[CALL_ID]`, v11's `[ARGS]` only), Llama 4's own (the turn's text between
  `<|python_start|>` and `<|python_end|>`, then JSON calls), a Llama Python-list template, and DeepSeek
  V3.1's. Each is probed to its format, and the tool loop reads a scripted reply in it, answers in the
  template's own tool turn, token for token, and leaves a trajectory the template renders back to the same
  tokens. Mistral's templates refuse calls without 9-character ids: the loop keeps the model's ids, and
  conversations without ids (SFT rows) get them, so they render and mask.
"""

from __future__ import annotations

import json

import pytest

from flowlm.errors import FlowError
from flowlm.generate.params import SamplingParams
from flowlm.model.tokenizer import load_tokenizer, render_chat, render_ids, tool_format, turn_end_ids
from flowlm.tools.builtin import CALCULATOR
from flowlm.tools.engine import ToolEngine
from flowlm.tools.formats import (DEEPSEEK, LLAMA3_JSON, MISTRAL, PYTHONIC, format_in, parse_deepseek, parse_json_calls,
                                  parse_mistral, parse_python_list)
from flowlm.tools.messages import with_call_ids
from tests.tools.test_tool_formats import with_template
from tests.tools.test_tool_rollouts import ScriptedEngine

MISTRAL_TOKENS = ["[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_CALLS]", "[CALL_ID]", "[ARGS]",
                  "[TOOL_RESULTS]", "[TOOL_CONTENT]", "[/TOOL_RESULTS]", "</s>"]
LLAMA4_TOKENS = ["<|header_start|>", "<|header_end|>", "<|eot|>", "<|python_start|>", "<|python_end|>"]
DS_TOKENS = ["<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>", "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>",
             "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>", "<｜tool▁output▁begin｜>",
             "<｜tool▁output▁end｜>"]

_MISTRAL_HEAD = (
    "{%- set ns = namespace(last=-1) -%}"
    "{%- for m in messages -%}{%- if m.role == 'user' -%}{%- set ns.last = loop.index0 -%}{%- endif -%}{%- endfor -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'user' -%}"
    "{%- if tools and loop.index0 == ns.last -%}{{- '[AVAILABLE_TOOLS]' + (tools | tojson) + '[/AVAILABLE_TOOLS]' -}}{%- endif -%}"
    "{{- '[INST]' + m.content + '[/INST]' -}}"
    "{%- elif m.role == 'assistant' -%}{{- m.content or '' -}}")
_NEEDS_ID = ("{%- if c.id is not defined or c.id is not string or c.id | length != 9 -%}"
             "{{- raise_exception('Tool call IDs should be alphanumeric strings with length 9!') -}}{%- endif -%}")
# v7's layout: one [TOOL_CALLS]NAME[CALL_ID]ID[ARGS]{...} per call, answers carry their call's id
MISTRAL_V7_STYLE = (
    _MISTRAL_HEAD + "{%- for c in (m.tool_calls or []) -%}" + _NEEDS_ID
    + "{{- '[TOOL_CALLS]' + c.function.name + '[CALL_ID]' + c.id + '[ARGS]' + (c.function.arguments | tojson) -}}"
    "{%- endfor -%}{{- '</s>' -}}"
    "{%- elif m.role == 'tool' -%}"
    "{{- '[TOOL_RESULTS]' + m.tool_call_id + '[TOOL_CONTENT]' + (m.content | string) + '[/TOOL_RESULTS]' -}}"
    "{%- endif -%}{%- endfor -%}")
# v3's layout: [TOOL_CALLS] then a JSON list of {name, arguments, id}; answers as {"content", "call_id"}
MISTRAL_V3_STYLE = (
    _MISTRAL_HEAD + "{%- if m.tool_calls -%}{{- '[TOOL_CALLS] [' -}}{%- for c in m.tool_calls -%}" + _NEEDS_ID
    + "{{- {'name': c.function.name, 'arguments': c.function.arguments, 'id': c.id} | tojson -}}"
    "{%- if not loop.last -%}{{- ', ' -}}{%- endif -%}{%- endfor -%}{{- ']' -}}{%- endif -%}{{- '</s>' -}}"
    "{%- elif m.role == 'tool' -%}"
    "{{- '[TOOL_RESULTS] {\"content\": ' + (m.content | string) + ', \"call_id\": \"' + m.tool_call_id + '\"}[/TOOL_RESULTS]' -}}"
    "{%- endif -%}{%- endfor -%}")
# v11's layout: [TOOL_CALLS]NAME[ARGS]{...}, no ids anywhere
MISTRAL_V11_STYLE = (
    _MISTRAL_HEAD + "{%- for c in (m.tool_calls or []) -%}"
    "{{- '[TOOL_CALLS]' + c.function.name + '[ARGS]' + (c.function.arguments | tojson) -}}{%- endfor -%}{{- '</s>' -}}"
    "{%- elif m.role == 'tool' -%}{{- '[TOOL_RESULTS]' + (m.content | string) + '[/TOOL_RESULTS]' -}}"
    "{%- endif -%}{%- endfor -%}")
# Llama 4's own layout: the turn's text between <|python_start|> and <|python_end|>, then JSON calls
_LLAMA4_HEAD = (
    "{%- if tools -%}{{- '<|header_start|>system<|header_end|>\\n\\nFunctions: ' + (tools | tojson) + '<|eot|>' -}}{%- endif -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'tool' -%}{{- '<|header_start|>ipython<|header_end|>\\n\\n' + m.content + '<|eot|>' -}}"
    "{%- elif m.tool_calls -%}{{- '<|header_start|>assistant<|header_end|>\\n\\n' -}}")
LLAMA4_STYLE = (
    _LLAMA4_HEAD + "{{- '<|python_start|>' + (m.content or '') + '<|python_end|>' -}}"
    "{%- for c in m.tool_calls -%}"
    "{{- '{\"name\": \"' + c.function.name + '\", \"parameters\": ' + (c.function.arguments | tojson) + '}' -}}"
    "{%- endfor -%}{{- '<|eot|>' -}}"
    "{%- else -%}{{- '<|header_start|>' + m.role + '<|header_end|>\\n\\n' + m.content + '<|eot|>' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|header_start|>assistant<|header_end|>\\n\\n' -}}{%- endif -%}")
# a Llama Python-list layout: [name(key=value, ...), ...]
PYTHONIC_STYLE = (
    _LLAMA4_HEAD + "{{- '[' -}}{%- for c in m.tool_calls -%}{{- c.function.name + '(' -}}"
    "{%- for k, v in c.function.arguments | items -%}{{- k + '=' + (v | tojson) -}}{%- if not loop.last -%}{{- ', ' -}}"
    "{%- endif -%}{%- endfor -%}{{- ')' -}}{%- if not loop.last -%}{{- ', ' -}}{%- endif -%}{%- endfor -%}{{- ']<|eot|>' -}}"
    "{%- else -%}{{- '<|header_start|>' + m.role + '<|header_end|>\\n\\n' + m.content + '<|eot|>' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|header_start|>assistant<|header_end|>\\n\\n' -}}{%- endif -%}")
# DeepSeek V3.1's layout: NAME<｜tool▁sep｜>{...} per call; answers in <｜tool▁output▁begin｜> blocks, and the
# assistant's next text follows them without a header
DEEPSEEK_STYLE = (
    "{%- if tools -%}{{- 'Tools: ' + (tools | tojson) + '\\n' -}}{%- endif -%}"
    "{%- set ns = namespace(after_user=false) -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'user' -%}{{- '<｜User｜>' + m.content -}}{%- set ns.after_user = true -%}"
    "{%- elif m.role == 'assistant' -%}{%- if ns.after_user -%}{{- '<｜Assistant｜>' -}}{%- endif -%}"
    "{%- set ns.after_user = false -%}{{- m.content or '' -}}"
    "{%- if m.tool_calls -%}{{- '<｜tool▁calls▁begin｜>' -}}{%- for c in m.tool_calls -%}"
    "{{- '<｜tool▁call▁begin｜>' + c.function.name + '<｜tool▁sep｜>' + (c.function.arguments | tojson) + '<｜tool▁call▁end｜>' -}}"
    "{%- endfor -%}{{- '<｜tool▁calls▁end｜>' -}}{%- endif -%}{{- '<｜end▁of▁sentence｜>' -}}"
    "{%- elif m.role == 'tool' -%}{{- '<｜tool▁output▁begin｜>' + m.content + '<｜tool▁output▁end｜>' -}}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt and ns.after_user -%}{{- '<｜Assistant｜>' -}}{%- endif -%}")


def templated(tok, path, template, special):
    """A copy of `tok` with `template` and the family's markup as special tokens (as their tokenizers have it)."""
    out = with_template(tok, path, template)
    out.add_special_tokens({"additional_special_tokens": special})
    return out


def test_mistral_calls_parse_in_every_layout_keep_the_models_ids_and_never_raise():
    v3 = 'Sure.[TOOL_CALLS] [{"name": "add", "arguments": {"a": 1}, "id": "abcdefghi"}, {"name": "f", "arguments": "{}"}]'
    assert parse_mistral(v3) == ([{"name": "add", "arguments": {"a": 1}, "id": "abcdefghi"},
                                  {"name": "f", "arguments": {}}], [])
    assert format_in(v3) is MISTRAL and MISTRAL.text_before_calls(v3) == "Sure."
    v7 = '[TOOL_CALLS]add[CALL_ID]abc123XYZ[ARGS]{"a": 1}[TOOL_CALLS]mul[CALL_ID]Q1w2E3r4T[ARGS]{"b": [2]}'
    assert parse_mistral(v7) == ([{"name": "add", "arguments": {"a": 1}, "id": "abc123XYZ"},
                                  {"name": "mul", "arguments": {"b": [2]}, "id": "Q1w2E3r4T"}], [])
    # v11, and as it reads with the special [ARGS] left out of the text (vLLM's tests write it so)
    assert parse_mistral('[TOOL_CALLS]add[ARGS]{"a": 1}[TOOL_CALLS]mul{"b": 2}') == (
        [{"name": "add", "arguments": {"a": 1}}, {"name": "mul", "arguments": {"b": 2}}], [])
    assert parse_mistral("No tools needed.") == ([], [])
    assert parse_mistral("[TOOL_CALLS]add[ARGS]{\"a\": ") == ([], ['call 1 (add): arguments are not JSON (Expecting value)'])
    assert parse_mistral("[TOOL_CALLS]") == ([], ["call 1 has no function name"])
    assert parse_mistral('[TOOL_CALLS] [{"arguments": {}}, {"name": "ok", "arguments": [1]}]') == (
        [], ["call 1 has no function name", "call 2 (ok): arguments are not an object"])
    assert parse_mistral('[TOOL_CALLS]ok[ARGS]{}[TOOL_CALLS]add[ARGS]nope') == (
        [{"name": "ok", "arguments": {}}], ["call 2 (add): arguments are not JSON (Expecting value)"])
    for junk in ("[TOOL_CALLS]" * 40, "[TOOL_CALLS][" * 30, "[TOOL_CALLS]a[ARGS]" + "[" * 5000, "\x00[TOOL_CALLS]\x00"):
        parse_mistral(junk)  # never raises


def test_llama_and_deepseek_calls_parse_and_never_raise():
    llama4 = '<|python_start|>Let me.<|python_end|>{"name": "a", "parameters": {"x": 1}}{"name": "b", "parameters": {}}'
    assert parse_json_calls(llama4) == ([{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}], [])
    assert format_in(llama4) is LLAMA3_JSON and LLAMA3_JSON.text_before_calls(llama4) == "Let me."
    assert parse_json_calls("<|python_start|>Just text.<|python_end|>") == ([], [])
    listed = '[get_weather(city="Paris", days=3), get_time(zone=\'CET\', exact=True)]'
    assert format_in(listed) is PYTHONIC and PYTHONIC.text_before_calls(listed) == ""
    assert parse_python_list(listed) == ([{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}},
                                          {"name": "get_time", "arguments": {"zone": "CET", "exact": True}}], [])
    assert parse_python_list("<|python_start|>[f(a=null)]<|python_end|>") == ([{"name": "f", "arguments": {"a": None}}], [])
    assert format_in("[1, 2, 3] are the numbers.") is not PYTHONIC  # a list that is not calls is text
    assert parse_python_list("[f(a=open('/etc/passwd').read())]") == (
        [], ["call 1 (f): argument 'a' is not a literal value"])
    assert parse_python_list("[f(a=1), g(b=") == ([], ["call 1 is not a Python list of calls"])
    v31 = ("Sure.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Paris\"}<｜tool▁call▁end｜>"
           "<｜tool▁calls▁end｜>")
    assert format_in(v31) is DEEPSEEK and DEEPSEEK.text_before_calls(v31) == "Sure."
    assert parse_deepseek(v31) == ([{"name": "get_weather", "arguments": {"city": "Paris"}}], [])
    r1 = ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Rome\"}\n```"
          "<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>now\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>")
    assert parse_deepseek(r1) == ([{"name": "get_weather", "arguments": {"city": "Rome"}}, {"name": "now", "arguments": {}}], [])
    assert parse_deepseek("<｜tool▁call▁begin｜>f<｜tool▁sep｜>{\"a\": 1}") == ([], ["call 1 is not closed with <｜tool▁call▁end｜>"])
    assert parse_deepseek("<｜tool▁call▁begin｜>f{}<｜tool▁call▁end｜>") == ([], ["call 1 has no <｜tool▁sep｜>"])
    assert parse_deepseek("<｜tool▁call▁begin｜>f<｜tool▁sep｜>{x<｜tool▁call▁end｜>")[1] == [
        "call 1 (f): arguments are not JSON (Expecting property name enclosed in double quotes)"]
    for junk in ("<｜tool▁call▁begin｜>" * 40, "[" * 3000 + "f(", "<|python_start|>" * 20, "<｜tool▁sep｜>" * 10):
        parse_deepseek(junk), parse_python_list(junk), parse_json_calls(junk), format_in(junk)  # never raise


def test_no_parser_raises_on_json_nested_past_the_recursion_limit():
    """json.loads raises RecursionError, not ValueError, on deep nesting: model output like that crashed
    `parse_hermes` (the tool loop's and the tool_call verifier's parser for flowlm's and Qwen3's templates)."""
    from flowlm.tools.formats import FORMATS

    deep = "[" * 100_000
    replies = ["<tool_call>" + deep + "</tool_call>", '<tool_call>{"name": "f", "arguments": "' + deep + '"}</tool_call>',
               '{"name": "f", "parameters": ' + deep, "[TOOL_CALLS]" + deep, "[TOOL_CALLS]f[ARGS]" + deep,
               "<｜tool▁call▁begin｜>f<｜tool▁sep｜>" + deep + "<｜tool▁call▁end｜>", "[f(a=" + deep + ")]",
               "<function_calls>f(a=" + deep + ")</function_calls>"]
    for reply in replies:
        calls, problems = format_in(reply).parse(reply)
        assert calls == [] and problems, reply[:40]
    xml = "<function=f><parameter=a>" + deep + "</parameter></function>"  # (an XML value that is not JSON is text)
    assert format_in(xml).parse(xml) == ([{"name": "f", "arguments": {"a": deep}}], [])
    for reply in [*replies, xml]:
        for fmt in FORMATS.values():
            fmt.parse(reply)  # never raises


def test_call_ids_are_given_once_and_answers_take_their_calls_ids():
    convo = [{"role": "user", "content": "q"},
             {"role": "assistant", "content": "", "tool_calls": [
                 {"type": "function", "function": {"name": "a", "arguments": {}}},
                 {"id": "xyzXYZ123", "type": "function", "function": {"name": "b", "arguments": {}}}]},
             {"role": "tool", "content": "1"}, {"role": "tool", "content": "2"}, {"role": "tool", "content": "3"},
             {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "a", "arguments": {}}}]},
             {"role": "tool", "tool_call_id": "call00002", "content": "4"}]
    out = with_call_ids(convo)
    assert [c["id"] for c in out[1]["tool_calls"]] == ["call00000", "xyzXYZ123"]
    assert [m["tool_call_id"] for m in out[2:5]] == ["call00000", "xyzXYZ123", "call00002"]
    assert out[5]["tool_calls"][0]["id"] == "call00003" and out[6]["tool_call_id"] == "call00002"
    assert with_call_ids(out) == out and "id" not in convo[1]["tool_calls"][0]  # idempotent; the input is left alone


def calculator_script(first, final="It is 42."):
    def script(text, j, turn):
        return first if turn == 0 else final
    return script


def run_loop(t, first, final="It is 42.", roundtrip=True):
    """One question through the tool loop on `t` with scripted replies (the first calls the calculator, the
    second answers); (engine, completion, tool turn text). `roundtrip`: the trajectory renders back to the
    tokens the loop made (sampled ids, then the template's own tool turn)."""
    prompt = [{"role": "user", "content": "6 * 7?"}]
    engine = ToolEngine(ScriptedEngine(t, calculator_script(first, final)), {"calculator": CALCULATOR}, workers=0)
    res = engine.generate([prompt], [SamplingParams(max_new_tokens=300)])[0]
    comp = res.completions[0]
    assert comp.tool_calls == 1 and comp.tool_errors == 0 and comp.text == "It is 42.", (comp.text, comp.trajectory)
    assert comp.finish_reason == "stop"
    tool_text = t.decode([x for x, m in zip(comp.tokens, comp.tool_mask) if m], skip_special_tokens=False)
    if roundtrip:
        assert render_ids(t, prompt + comp.trajectory, tools=[CALCULATOR.schema]) == res.prompt_ids + comp.tokens
    return engine, comp, tool_text


@pytest.mark.parametrize("layout,template,reply,tool_turn,call_id", [
    ("v7", MISTRAL_V7_STYLE, '[TOOL_CALLS]calculator[CALL_ID]k9Xr2Lm4Q[ARGS]{"expression": "6 * 7"}',
     "[TOOL_RESULTS]k9Xr2Lm4Q[TOOL_CONTENT]42[/TOOL_RESULTS]", "k9Xr2Lm4Q"),
    ("v3", MISTRAL_V3_STYLE, '[TOOL_CALLS] [{"name": "calculator", "arguments": {"expression": "6 * 7"}, "id": "k9Xr2Lm4Q"}]',
     '[TOOL_RESULTS] {"content": 42, "call_id": "k9Xr2Lm4Q"}[/TOOL_RESULTS]', "k9Xr2Lm4Q"),
    ("v11", MISTRAL_V11_STYLE, '[TOOL_CALLS]calculator[ARGS]{"expression": "6 * 7"}',
     "[TOOL_RESULTS]42[/TOOL_RESULTS]", "call00000"),
])
def test_the_tool_loop_reads_and_answers_mistral_calls_with_their_ids(tok, tmp_path, layout, template, reply, tool_turn,
                                                                     call_id):
    t = templated(tok, tmp_path / layout, template, MISTRAL_TOKENS)
    assert tool_format(t) == "mistral" and turn_end_ids(t) == (t.convert_tokens_to_ids("</s>"),)
    engine, comp, tool_text = run_loop(t, reply)
    assert engine.format is MISTRAL and tool_text == tool_turn
    assert comp.trajectory[0]["tool_calls"] == [{"id": call_id, "type": "function", "function": {
        "name": "calculator", "arguments": {"expression": "6 * 7"}}}]
    assert comp.trajectory[1] == {"role": "tool", "name": "calculator", "content": "42", "tool_call_id": call_id}


def test_sft_rows_without_call_ids_render_and_mask_in_mistrals_template(tok, tmp_path):
    """A row written for OpenAI's schema (no ids) renders in an id-requiring template, and the mask covers the
    assistant turns (calls included) and not the tool answers."""
    t = templated(tok, tmp_path / "v7", MISTRAL_V7_STYLE, MISTRAL_TOKENS)
    row = [{"role": "user", "content": "6 * 7?"},
           {"role": "assistant", "content": "", "tool_calls": [
               {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "6 * 7"}}}]},
           {"role": "tool", "name": "calculator", "content": "42"},
           {"role": "assistant", "content": "It is 42."}]
    ids, mask = render_chat(t, row, tools=[CALCULATOR.schema])
    labelled = t.decode([x for x, m in zip(ids, mask) if m], skip_special_tokens=False)
    assert labelled == '[TOOL_CALLS]calculator[CALL_ID]call00000[ARGS]{"expression": "6 * 7"}</s>It is 42.</s>'
    assert "[TOOL_RESULTS]call00000[TOOL_CONTENT]42[/TOOL_RESULTS]" in t.decode(ids, skip_special_tokens=False)
    with pytest.raises(Exception, match="Tool call IDs"):  # the template itself refuses the row as written
        t.apply_chat_template(row, tokenize=False)


@pytest.mark.parametrize("name,template,reply,tool_turn", [
    ("llama4", LLAMA4_STYLE, '<|python_start|>Computing.<|python_end|>{"name": "calculator", "parameters": {"expression": "6 * 7"}}',
     "<|header_start|>ipython<|header_end|>\n\n42<|eot|><|header_start|>assistant<|header_end|>\n\n"),
    ("pythonic", PYTHONIC_STYLE, '[calculator(expression="6 * 7")]',
     "<|header_start|>ipython<|header_end|>\n\n42<|eot|><|header_start|>assistant<|header_end|>\n\n"),
])
def test_the_tool_loop_reads_llama_4s_json_and_python_list_calls(tok, tmp_path, name, template, reply, tool_turn):
    t = templated(tok, tmp_path / name, template, LLAMA4_TOKENS)
    assert tool_format(t) == ("llama3_json" if name == "llama4" else "pythonic")
    engine, comp, tool_text = run_loop(t, reply)
    assert tool_text == tool_turn and "id" not in comp.trajectory[0]["tool_calls"][0]
    assert comp.trajectory[0]["content"] == ("Computing." if name == "llama4" else "")


def test_the_tool_loop_reads_deepseek_calls_and_the_verifier_scores_them(tok, tmp_path):
    from flowlm.verify import verify_row

    t = templated(tok, tmp_path / "ds", DEEPSEEK_STYLE, DS_TOKENS)
    assert tool_format(t) == "deepseek"
    reply = ("Let me.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>calculator<｜tool▁sep｜>{\"expression\": \"6 * 7\"}"
             "<｜tool▁call▁end｜><｜tool▁calls▁end｜>")
    engine, comp, tool_text = run_loop(t, reply)
    assert engine.format is DEEPSEEK and tool_text == "<｜tool▁output▁begin｜>42<｜tool▁output▁end｜>"
    assert comp.trajectory[0]["content"] == "Let me."
    row = {"dataset": "tool_call", "ground_truth": {"name": "calculator", "arguments": {"expression": "6 * 7"}}}
    assert verify_row(row, reply).score == 1.0
    assert verify_row(row, '[TOOL_CALLS]calculator[ARGS]{"expression": "6 * 7"}').score == 1.0
    assert verify_row(row, '[calculator(expression="6 * 7")]').score == 1.0
    assert verify_row(row, '[TOOL_CALLS]calculator[ARGS]{"expression": "6 * 8"}').score == 0.0


def test_a_mistral_template_keeps_its_markup_in_completion_text(tok, tmp_path):
    """`[TOOL_CALLS]` and `[ARGS]` are special tokens in Mistral's tokenizers: a completion's text keeps them,
    so the verifiers see the calls (other control tokens are still left out)."""
    from flowlm.model.tokenizer import decode_reply

    t = templated(tok, tmp_path / "v11", MISTRAL_V11_STYLE, MISTRAL_TOKENS)
    ids = t.encode('[TOOL_CALLS]calculator[ARGS]{"expression": "1"}</s>', add_special_tokens=False)
    assert decode_reply(t, ids) == '[TOOL_CALLS]calculator[ARGS]{"expression": "1"}'


def test_a_template_that_writes_calls_another_way_is_still_refused_by_name(tok, tmp_path):
    t = templated(tok, tmp_path / "x", "{%- for m in messages -%}{{- m.role + ': ' + (m.content or '') -}}"
                  "{%- for c in (m.tool_calls or []) -%}{{- '<<' + c.function.name + '>>' -}}{%- endfor -%}"
                  "{%- endfor -%}", [])
    assert tool_format(t) == "other"
    with pytest.raises(FlowError, match="Mistral's"):
        ToolEngine(ScriptedEngine(t, calculator_script("")), {"calculator": CALCULATOR})


QUESTION = "What is 48213 * 9127?"


def generate_with_calculator(ckpt, tmp_path):
    """`flowlm generate --tools calculator` on QUESTION, greedy: the one completion."""
    from tests.flow.test_post_flow import flowlm

    rows = tmp_path / "q.jsonl"
    rows.write_text(json.dumps({"messages": [{"role": "user", "content": QUESTION}]}) + "\n")
    flowlm("generate", "--model", str(ckpt), "--file", str(rows), "--tools", "calculator", "--temperature", "0",
           "--max-new-tokens", "200", "--out", str(tmp_path / "o.jsonl"))
    return json.loads((tmp_path / "o.jsonl").read_text())["completions"][0]


def test_a_mistral_checkpoint_calls_tools_with_ids_and_trains_on_rows_without_them_through_the_cli(tok, tmp_path):
    """A checkpoint whose template is Mistral's v7 layout (ids required): `flowlm generate --tools` reads the
    call it learnt, keeps its id on the answer, and `flowlm train --objective sft` trains on OpenAI-schema rows
    with no ids, with labels on exactly the assistant turns (calls and their given ids included)."""
    from flowlm.model.hf import save_pretrained
    from tests.flow.test_post_flow import flowlm
    from tests.tools.memorize import memorize

    t = templated(tok, tmp_path / "tok", MISTRAL_V7_STYLE, MISTRAL_TOKENS)
    enc = lambda s: t.encode(s, add_special_tokens=False)  # noqa: E731
    prompt = render_ids(t, [{"role": "user", "content": QUESTION}], add_generation_prompt=True, tools=[CALCULATOR.schema])
    model = memorize(len(t), [(prompt, False), (enc('[TOOL_CALLS]calculator[CALL_ID]k9Xr2Lm4Q[ARGS]{"expression": '
                                                    '"48213 * 9127"}</s>'), True),
                              (enc("[TOOL_RESULTS]k9Xr2Lm4Q[TOOL_CONTENT]440040051[/TOOL_RESULTS]"), False),
                              (enc("It is 440040051.</s>"), True)])
    ckpt = tmp_path / "mistral"
    save_pretrained(model, t, ckpt)
    assert load_tokenizer(ckpt).convert_tokens_to_ids("[TOOL_CALLS]") == t.convert_tokens_to_ids("[TOOL_CALLS]")
    comp = generate_with_calculator(ckpt, tmp_path)
    assert comp["tool_calls"] == 1 and comp["tool_errors"] == 0 and comp["text"] == "It is 440040051."
    assert comp["trajectory"][0]["tool_calls"] == [{"id": "k9Xr2Lm4Q", "type": "function", "function": {
        "name": "calculator", "arguments": {"expression": "48213 * 9127"}}}]
    assert comp["trajectory"][1] == {"role": "tool", "name": "calculator", "content": "440040051",
                                     "tool_call_id": "k9Xr2Lm4Q"}
    row = {"tools": [CALCULATOR.schema], "messages": [
        {"role": "user", "content": "6 * 7?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "6 * 7"}}}]},
        {"role": "tool", "name": "calculator", "content": "42"},
        {"role": "assistant", "content": "It is 42."}]}
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps({**row, "id": f"r{i}"}) for i in range(8)) + "\n")
    flowlm("train", "--objective", "sft", "--init", str(ckpt), "--data", str(data), "--run-dir", str(tmp_path / "s"),
           "--no-progress", "eval.max_items=2", "eval.heldout_docs=1", "eval.tasks=[prose]", "threads=1",
           "stages.sft.seq_len=256", "stages.sft.batch_size=2")
    steps = [json.loads(line) for line in (tmp_path / "s" / "sft" / "metrics.jsonl").read_text().splitlines()
             if line.strip() and "loss" in json.loads(line)]
    labelled = enc('[TOOL_CALLS]calculator[CALL_ID]call00000[ARGS]{"expression": "6 * 7"}</s>It is 42.</s>')
    assert steps and sum(s["loss_tokens"] for s in steps) == 2 * 8 * len(labelled)  # 2 epochs of 8 rows


# gpt-oss's harmony layout (written here after it): channel messages; the reasoning in `thinking`; a call is a
# commentary message to `functions.NAME` ending with <|call|>; answers come from `functions.NAME` as JSON strings
HARMONY_TOKENS = ["<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|return|>", "<|call|>", "<|constrain|>"]
HARMONY_STYLE = (
    "{{- '<|start|>system<|message|>Reasoning: medium\\n# Valid channels: analysis, commentary, final.<|end|>' -}}"
    "{%- if tools -%}{{- '<|start|>developer<|message|># Tools\\n' + (tools | tojson) + '<|end|>' -}}{%- endif -%}"
    "{%- set ns = namespace(last_call='') -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'user' -%}{{- '<|start|>user<|message|>' + m.content + '<|end|>' -}}"
    "{%- elif m.role == 'assistant' -%}"
    "{%- if m.thinking -%}{{- '<|start|>assistant<|channel|>analysis<|message|>' + m.thinking + '<|end|>' -}}{%- endif -%}"
    "{%- if m.tool_calls -%}{%- set c = m.tool_calls[0].function -%}"
    "{{- '<|start|>assistant to=functions.' + c.name + '<|channel|>commentary json<|message|>' + (c.arguments | tojson) + '<|call|>' -}}"
    "{%- set ns.last_call = c.name -%}"
    "{%- else -%}{{- '<|start|>assistant<|channel|>final<|message|>' + m.content -}}"
    "{%- if loop.last and not add_generation_prompt -%}{{- '<|return|>' -}}{%- else -%}{{- '<|end|>' -}}{%- endif -%}"
    "{%- endif -%}"
    "{%- elif m.role == 'tool' -%}"
    "{{- '<|start|>functions.' + ns.last_call + ' to=assistant<|channel|>commentary<|message|>' + (m.content | tojson) + '<|end|>' -}}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start|>assistant' -}}{%- endif -%}")


@pytest.fixture(scope="module")
def htok(tok, tmp_path_factory):
    return templated(tok, tmp_path_factory.mktemp("harmony") / "tok", HARMONY_STYLE, HARMONY_TOKENS)


def test_harmony_replies_read_as_think_block_answer_and_calls():
    from flowlm.model.harmony import canonical

    answer = ("<|channel|>analysis<|message|>6 times 7.<|end|><|start|>assistant<|channel|>final<|message|>It is 42."
              "<|return|>")
    assert canonical(answer) == "<think>\n6 times 7.\n</think>\n\nIt is 42."
    call = ("<|channel|>analysis<|message|>Use the tool.<|end|><|start|>assistant<|channel|>commentary "
            "to=functions.calculator <|constrain|>json<|message|>{\"expression\": \"6 * 7\"}<|call|>")
    assert canonical(call) == ('<think>\nUse the tool.\n</think>\n\n<tool_call>{"name": "calculator", '
                               '"arguments": {"expression": "6 * 7"}}</tool_call>')
    # the template's header order, a preamble in commentary, arguments that are not JSON (a problem later)
    other = ("<|start|>assistant<|channel|>commentary<|message|>Checking.<|end|><|start|>assistant to=functions.f"
             "<|channel|>commentary json<|message|>{oops<|call|>")
    assert canonical(other) == 'Checking.<tool_call>{"name": "f", "arguments": "{oops"}</tool_call>'
    assert canonical("<|channel|>analysis<|message|>Still thinking") == "<think>\nStill thinking"  # cut mid-thought
    assert canonical("plain text") == "plain text" and canonical("plain<|return|>") == "plain"
    for junk in ("<|start|>" * 50, "<|message|>" * 20, "<|channel|><|message|><|call|>", "",
                 "<|channel|>commentary to=functions.f<|message|>" + "[" * 100000 + "<|call|>"):
        canonical(junk)  # never raises


def test_a_harmony_template_is_probed_and_its_replies_end_at_return_or_call(htok):
    from flowlm.model.harmony import is_harmony
    from flowlm.model.tokenizer import decode_reply

    assert is_harmony(htok) and tool_format(htok) == "harmony"
    assert turn_end_ids(htok) == (htok.convert_tokens_to_ids("<|return|>"), htok.convert_tokens_to_ids("<|call|>"))
    ids = htok.encode("<|channel|>analysis<|message|>Hm.<|end|><|start|>assistant<|channel|>final<|message|>Done."
                      "<|return|>", add_special_tokens=False)
    assert decode_reply(htok, ids) == "<think>\nHm.\n</think>\n\nDone."
    assert not is_harmony(load_tokenizer_like(htok))


def load_tokenizer_like(t):
    """`t` with a plain ChatML template (not harmony)."""
    import copy

    other = copy.deepcopy(t)
    other.chat_template = ("{%- for m in messages -%}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' -}}"
                           "{%- endfor -%}")
    return other


def test_sft_rows_render_their_reasoning_in_harmonys_analysis_channel_and_are_masked(htok):
    row = [{"role": "user", "content": "6 * 7?"},
           {"role": "assistant", "content": "", "reasoning_content": "Use the tool.", "tool_calls": [
               {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "6 * 7"}}}]},
           {"role": "tool", "name": "calculator", "content": "42"},
           {"role": "assistant", "content": "It is 42.", "reasoning_content": "The tool said 42."}]
    ids, mask = render_chat(htok, row, tools=[CALCULATOR.schema])
    text = htok.decode(ids, skip_special_tokens=False)
    assert "<think>" not in text and '<|message|>"42"<|end|>' in text
    labelled = htok.decode([x for x, m in zip(ids, mask) if m], skip_special_tokens=False)
    assert labelled == ('<|channel|>analysis<|message|>Use the tool.<|end|><|start|>assistant to=functions.calculator'
                        '<|channel|>commentary json<|message|>{"expression": "6 * 7"}<|call|>'
                        '<|channel|>analysis<|message|>The tool said 42.<|end|><|start|>assistant<|channel|>final'
                        '<|message|>It is 42.<|return|>')


def test_the_tool_loop_reads_harmony_calls_and_answers_in_the_templates_json_turn(htok):
    reply = ('<|channel|>analysis<|message|>Use the tool.<|end|><|start|>assistant<|channel|>commentary '
             'to=functions.calculator <|constrain|>json<|message|>{"expression": "6 * 7"}<|call|>')
    # (the template writes the recipient before the channel, the model after it: no round trip)
    _, comp, tool_text = run_loop(htok, reply, "<|channel|>final<|message|>It is 42.<|return|>", roundtrip=False)
    assert comp.trajectory[0] == {"role": "assistant", "content": "", "reasoning_content": "Use the tool.",
                                  "tool_calls": [{"type": "function", "function": {
                                      "name": "calculator", "arguments": {"expression": "6 * 7"}}}]}
    assert comp.trajectory[1] == {"role": "tool", "name": "calculator", "content": "42"}
    assert tool_text == '<|start|>functions.calculator to=assistant<|channel|>commentary<|message|>"42"<|end|><|start|>assistant'


def test_a_harmony_checkpoint_reasons_calls_and_answers_through_flowlm_generate(tok, tmp_path):
    """A micro model that learnt one gpt-oss-style trajectory: the native engine stops its first reply at
    <|call|>, the call runs, the answer goes in as the template's JSON-string turn, and the completion reads
    as flowlm's text (the last reply's answer; each turn's analysis as its reasoning)."""
    from flowlm.model.hf import save_pretrained
    from tests.tools.memorize import memorize

    t = templated(tok, tmp_path / "tok", HARMONY_STYLE, HARMONY_TOKENS)
    enc = lambda s: t.encode(s, add_special_tokens=False)  # noqa: E731
    prompt = render_ids(t, [{"role": "user", "content": QUESTION}], add_generation_prompt=True, tools=[CALCULATOR.schema])
    model = memorize(len(t), [
        (prompt, False),
        (enc('<|channel|>analysis<|message|>Multiply exactly.<|end|><|start|>assistant<|channel|>commentary '
             'to=functions.calculator <|constrain|>json<|message|>{"expression": "48213 * 9127"}<|call|>'), True),
        (enc('<|start|>functions.calculator to=assistant<|channel|>commentary<|message|>"440040051"<|end|>'
             '<|start|>assistant'), False),
        (enc("<|channel|>final<|message|>It is 440040051.<|return|>"), True)])
    ckpt = tmp_path / "gptoss"
    save_pretrained(model, t, ckpt)
    comp = generate_with_calculator(ckpt, tmp_path)
    assert comp["tool_calls"] == 1 and comp["tool_errors"] == 0 and comp["text"] == "It is 440040051."
    assert comp["trajectory"][0]["reasoning_content"] == "Multiply exactly."
    assert comp["trajectory"][0]["tool_calls"][0]["function"] == {"name": "calculator",
                                                                  "arguments": {"expression": "48213 * 9127"}}
    assert comp["trajectory"][1]["content"] == "440040051" and comp["finish_reason"] == "stop"
