"""The `tool_call` verifier (BFCL's AST check) on hand-written calls, both ground-truth forms, and
completions that are not calls at all."""

from __future__ import annotations

import json
import random

import pytest

from flowlm.verify import verify
from flowlm.verify.base import GroundTruthError, validate
from flowlm.verify.tool_call import match_calls, parse_tool_calls, same_value


def call(name, **args):
    return f'<tool_call>{json.dumps({"name": name, "arguments": args})}</tool_call>'


WEATHER = {"name": "get_weather", "arguments": {"city": "New York", "unit": "celsius"}}


def test_parse_calls_and_their_problems():
    text = call("a", x=1) + "\n" + '<tool_call>{"name": "b", "arguments": "{\\"y\\": 2}"}</tool_call>'
    assert parse_tool_calls(text) == ([{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {"y": 2}}], [])
    assert parse_tool_calls("<tool_call>{not json}</tool_call>")[1][0].startswith("call 1 is not JSON")
    assert parse_tool_calls('<tool_call>{"arguments": {}}</tool_call>')[1] == ["call 1 has no function name"]
    assert parse_tool_calls('<tool_call>{"name": "a"')[1] == ["call 1 is not closed with </tool_call>"]
    assert parse_tool_calls('<tool_call>{"name": "a", "arguments": [1]}</tool_call>')[1] == [
        "call 1 (a): arguments are not an object"]
    assert parse_tool_calls("no call here") == ([], [])


def test_plain_ground_truth():
    assert verify("tool_call", call("get_weather", city="new york.", unit="Celsius"), WEATHER).score == 1.0
    v = verify("tool_call", call("get_weather", city="Boston", unit="celsius"), WEATHER)
    assert v.score == 0.0 and "city='Boston' is not an accepted value" in v.reason
    assert "missing argument 'unit'" in verify("tool_call", call("get_weather", city="New York"), WEATHER).reason
    assert "unexpected argument 'days'" in verify(
        "tool_call", call("get_weather", city="New York", unit="celsius", days=3), WEATHER).reason
    assert "called 'get_time'" in verify("tool_call", call("get_time"), WEATHER).reason
    assert verify("tool_call", "It is sunny.", WEATHER).reason == "0 call(s), expected 1"
    # the call is in the answer, not in the reasoning
    thought = f"<think>{call('get_weather', city='New York', unit='celsius')}</think>No call."
    assert verify("tool_call", thought, WEATHER).score == 0.0
    assert verify("tool_call", "<think>" + call("get_weather"), WEATHER).reason == "no answer after </think>"


def test_bfcl_possible_answers_optional_arguments_and_numbers():
    gt = {"calc_area": {"base": [10], "height": [5], "unit": ["cm", ""]}}
    assert verify("tool_call", call("calc_area", base=10.0, height=5), gt).score == 1.0  # unit optional, 10 == 10.0
    assert verify("tool_call", call("calc_area", base=10, height=5, unit="CM"), gt).score == 1.0
    assert verify("tool_call", call("calc_area", base=10, height=5, unit="m"), gt).score == 0.0
    assert verify("tool_call", call("calc_area", base=True, height=5), {"calc_area": {"base": [1], "height": [5]}}).score == 0.0


def test_bfcl_nested_possible_answers_and_signature_types():
    # an object's values in BFCL's possible answers are lists of accepted values, "" = the key may be absent
    gt = {"update_user": {"user_id": [7], "info": [{"name": ["John Doe"], "email": ["j@x.com", ""]}]}}
    assert verify("tool_call", call("update_user", user_id=7, info={"name": "john doe"}), gt).score == 1.0
    assert verify("tool_call", call("update_user", user_id=7, info={"name": "Jane"}), gt).score == 0.0
    assert verify("tool_call", call("update_user", user_id=7, info={"name": "John Doe", "age": 3}), gt).score == 0.0
    rows = {"query": {"conditions": [[{"field": ["age"], "value": ["25"]}, {"field": ["job"], "value": ["x"]}]]}}
    good = call("query", conditions=[{"field": "age", "value": "25"}, {"field": "job", "value": "x"}])
    assert verify("tool_call", good, rows).score == 1.0
    assert verify("tool_call", call("query", conditions=[{"field": "age", "value": "25"}]), rows).score == 0.0
    # with the signatures in the row, types are checked: an integer argument given as a float is wrong
    functions = [{"name": "area", "parameters": {"type": "dict", "properties": {
        "base": {"type": "integer"}, "scale": {"type": "float"}, "label": {"type": "string"}}}}]
    gt = {"area": {"base": [10], "scale": [2.0, ""], "label": ["", True]}}
    assert verify("tool_call", call("area", base=10, scale=2), gt, functions=functions).score == 1.0  # int for float
    v = verify("tool_call", call("area", base=10.0), gt, functions=functions)
    assert v.score == 0.0 and "base='10.0' is not of type integer" in v.reason
    assert verify("tool_call", call("area", base=10.0), gt).score == 1.0  # without signatures: values only
    # BFCL's "variable" rule: a value of an accepted value's own type passes a mismatched signature
    assert verify("tool_call", call("area", base=10, label=True), gt, functions=functions).score == 1.0


def test_parallel_calls_match_in_any_order():
    gt = [{"get_weather": {"city": ["Paris", "London"]}}, {"get_weather": {"city": ["Paris"]}}]
    both = call("get_weather", city="Paris") + call("get_weather", city="London")
    assert verify("tool_call", both, gt).score == 1.0  # greedy first-fit would give Paris to the first and fail
    swapped = call("get_weather", city="London") + call("get_weather", city="Paris")
    assert verify("tool_call", swapped, gt).score == 1.0
    twice = call("get_weather", city="Paris") + call("get_weather", city="Paris")
    assert verify("tool_call", twice, gt).score == 1.0
    assert verify("tool_call", call("get_weather", city="Paris"), gt).reason == "1 call(s), expected 2"
    assert match_calls([[True, False], [True, False]]) == 1


def test_values_compare_by_bfcl_rules():
    assert same_value("San Francisco, CA", "san francisco ca") and same_value(3, 3.0)
    assert not same_value(True, 1) and not same_value("1", 1)
    assert same_value([1, "A b"], [1.0, "ab"]) and same_value({"k": "X"}, {"k": "x"})


def test_malformed_ground_truth_is_a_data_error():
    for bad in ({"name": "f", "arguments": [1]}, {"f": {"x": 3}}, [], "f(x=1)"):
        with pytest.raises(GroundTruthError):
            validate("tool_call", bad, {})


def test_never_raises_on_garbage():
    rng = random.Random(0)
    pieces = ["<tool_call>", "</tool_call>", "{", "}", '"name"', ":", '"arguments"', "[", "]", "\\", "</think>",
              "<think>", "null", '"a"', ",", "1e999", "\x00"]
    for _ in range(300):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        v = verify("tool_call", text, WEATHER)
        assert v.score in (0.0, 1.0)
