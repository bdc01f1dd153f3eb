"""Code verifier: test formats, reward modes, failure reasons, sandbox backends."""

from __future__ import annotations

import pytest

from flowlm.verify import verify
from flowlm.verify.code_verifier import extract_code, parse_tests
from flowlm.verify.sandbox import BACKENDS

ADD = "```python\ndef add(a, b):\n    return a + b\n```"


def test_extract_code_takes_last_fenced_block():
    text = "first\n```python\nx = 1\n```\nthen\n```py\ny = 2\n```"
    assert extract_code(text).strip() == "y = 2"
    assert extract_code("no fences") == "no fences"


def test_assert_tests_all_pass_and_pass_rate():
    tests = ["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(0, 0) == 1"]
    v = verify("code", ADD, tests)
    assert v.score == 0.0 and "2/3 tests passed" in v.reason and "test 3 failed" in v.reason
    assert "AssertionError" in v.reason
    assert verify("code", ADD, tests, reward="pass_rate").score == pytest.approx(2 / 3)
    assert verify("code", ADD, tests[:2]).score == 1.0
    assert v.meta["sandbox"] in BACKENDS


def test_mbpp_style_imports_and_humaneval_check():
    code = "def root(x):\n    return math.sqrt(x)\n"
    assert verify("mbpp", code, {"tests": ["assert root(4) == 2"], "imports": ["import math"]}).score == 1.0
    check = "def check(candidate):\n    assert candidate(2) == 4\n"
    body = "    return x * x\n"
    row = {"prompt": "def sq(x):\n    \"\"\"square\"\"\"\n", "entry_point": "sq"}
    assert verify("humaneval", body, {"test": check, "entry_point": "sq"}, **row).score == 1.0
    assert verify("humaneval", "    return None\n", check, **row).score == 0.0


def test_stdio_cases():
    prog = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    gt = {"stdio": [{"input": "1 2\n", "output": "3\n"}, {"input": "5 5\n", "output": "10"}]}
    assert verify("code_stdio", prog, gt).score == 1.0
    bad = verify("code_stdio", prog, {"inputs": ["1 2\n"], "outputs": ["4\n"]})
    assert bad.score == 0.0 and "wrong output" in bad.reason


def test_early_exit_cannot_fake_a_pass():
    prog = "import os\nos._exit(0)\n"
    assert verify("code", prog, ["assert False"]).score == 0.0


def test_syntax_error_and_empty_answer():
    assert "SyntaxError" in verify("code", "def f(:\n", ["assert f()"]).reason
    assert verify("code", "   ", ["assert True"]).score == 0.0


def test_bad_ground_truth_is_reported_as_error():
    v = verify("code", ADD, 42)
    assert v.score == 0.0 and v.reason.startswith("error: bad ground truth")
    with pytest.raises(Exception):
        parse_tests({"test": "def check(c): pass"}, {})  # no entry_point
