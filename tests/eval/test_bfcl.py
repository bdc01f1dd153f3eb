"""BFCL files as an eval suite: questions with their functions, possible answers from `possible_answer/`,
the functions listed by the chat template, calls scored by the `tool_call` verifier."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flowlm.errors import ConfigError, FlowError
from flowlm.eval.benchmarks import read_benchmark
from flowlm.eval.prompting import PromptFormat, render
from flowlm.verify import verify_row

AREA = {"name": "calculate_triangle_area", "description": "Area of a triangle.",
        "parameters": {"type": "dict", "properties": {"base": {"type": "integer"}, "height": {"type": "integer"},
                                                      "unit": {"type": "string"}}, "required": ["base", "height"]}}
WEATHER = {"name": "get_weather", "description": "Weather in a city.",
           "parameters": {"type": "dict", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
QUESTIONS = [
    {"id": "simple_python_0", "question": [[{"role": "user", "content": "Area of a triangle, base 10, height 5?"}]],
     "function": [AREA]},
    {"id": "parallel_0", "question": [[{"role": "user", "content": "Weather in Paris and in London?"}]],
     "function": [WEATHER]},
]
ANSWERS = [
    {"id": "simple_python_0", "ground_truth": [{"calculate_triangle_area": {"base": [10], "height": [5],
                                                                            "unit": ["units", ""]}}]},
    {"id": "parallel_0", "ground_truth": [{"get_weather": {"city": ["Paris"]}}, {"get_weather": {"city": ["London"]}}]},
]


def write_bfcl(root: Path, questions=QUESTIONS, answers=ANSWERS, name="BFCL_v4_simple_python.json") -> Path:
    (root / "possible_answer").mkdir(parents=True, exist_ok=True)
    (root / name).write_text("".join(json.dumps(q) + "\n" for q in questions))  # JSON lines under .json, as BFCL
    (root / "possible_answer" / name).write_text("".join(json.dumps(a) + "\n" for a in answers))
    return root / name


def call(name, **args):
    return f'<tool_call>{json.dumps({"name": name, "arguments": args})}</tool_call>'


def test_items_carry_messages_tools_and_the_possible_answers(tmp_path):
    suite = read_benchmark("bfcl", write_bfcl(tmp_path).parent)  # a folder: its published file name
    first, second = suite.items
    assert first.id == "simple_python_0" and first.category == "simple_python" and second.category == "parallel"
    assert first.messages == tuple(QUESTIONS[0]["question"][0])
    assert first.tools == ({"type": "function", "function": AREA},)
    assert first.row == {"dataset": "tool_call", "ground_truth": ANSWERS[0]["ground_truth"], "functions": [AREA]}
    assert verify_row(first.row, call("calculate_triangle_area", base=10, height=5)).score == 1.0
    assert verify_row(first.row, call("calculate_triangle_area", base=10.0, height=5)).score == 0.0  # integer
    both = call("get_weather", city="london") + call("get_weather", city="Paris")
    assert verify_row(second.row, both).score == 1.0


def test_the_chat_prompt_lists_the_functions_and_plain_is_refused(tmp_path, tmp_path_factory):
    from flowlm.model.tokenizer import train_tokenizer

    tok = train_tokenizer(["Area of a triangle and the weather in Paris."] * 20, 300, tmp_path_factory.mktemp("t") / "t")
    suite = read_benchmark("bfcl", write_bfcl(tmp_path))
    text = tok.decode(render(suite.items[0], suite, PromptFormat(), tok).ids, skip_special_tokens=False)
    assert '"name": "calculate_triangle_area"' in text and "<tools>" in text and text.count("<|im_start|>user") == 1
    with pytest.raises(ConfigError, match="only the chat format lists"):
        render(suite.items[0], suite, PromptFormat(style="plain"), tok)


def test_bad_bfcl_files_are_one_line_errors(tmp_path):
    q = write_bfcl(tmp_path / "a")
    (q.parent / "possible_answer" / q.name).unlink()
    with pytest.raises(FlowError, match="no possible answers at .*possible_answer"):
        read_benchmark("bfcl", q)
    multi = {"id": "x_0", "question": [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]],
             "function": [AREA]}
    with pytest.raises(FlowError, match="multi-turn"):
        read_benchmark("bfcl", write_bfcl(tmp_path / "b", [multi], [{"id": "x_0", "ground_truth": ANSWERS[0]["ground_truth"]}]))
    java = {**QUESTIONS[0], "id": "simple_java_0"}
    with pytest.raises(FlowError, match="Java and JavaScript"):
        read_benchmark("bfcl", write_bfcl(tmp_path / "c", [java], [{**ANSWERS[0], "id": "simple_java_0"}]))
    with pytest.raises(FlowError, match=r"BFCL_v4_simple_python.json:1: no possible answer for simple_python_0"):
        read_benchmark("bfcl", write_bfcl(tmp_path / "d", QUESTIONS[:1], ANSWERS[1:]))
