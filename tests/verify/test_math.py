"""Math verifier: extraction, normalisation, equivalence (unit tests)."""

from __future__ import annotations

import pytest

from flowlm.verify import verify
from flowlm.verify.math_extract import extract, final_answer, gsm8k_answer, last_boxed, last_number
from flowlm.verify.math_normalize import is_equiv, normalize


@pytest.mark.parametrize("text,inner", [
    ("x \\boxed{1} then \\boxed{\\frac{a}{b}}", "\\frac{a}{b}"),
    ("\\boxed{\\left\\{1, {2}\\right\\}}", "\\left\\{1, {2}\\right\\}"),
    ("\\boxed 7 is it", "7"),
    ("\\fbox{3}", "3"),
    ("\\boxed{unclosed", None),
    ("none", None),
])
def test_last_boxed_nested(text, inner):
    assert last_boxed(text) == inner


def test_other_extractors():
    assert final_answer("Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.") == "\\frac{1}{2}"
    assert gsm8k_answer("so 3 + 4\n#### 1,234") == "1234"
    assert last_number("it costs $1,500.50 or 3/4.") == "3/4"
    assert last_number("no digits") is None


def test_strictness_levels():
    text = "I computed it. The result is 12."
    assert extract(text, "strict") == (None, "none")
    assert extract(text, "standard") == (None, "none")
    assert extract(text, "lenient") == ("12", "last_number")
    with pytest.raises(ValueError):
        extract(text, "bogus")


@pytest.mark.parametrize("a,b", [
    ("\\dfrac{1}{2}", "\\frac12"), ("0.5", "\\frac{1}{2}"), ("1/2", "\\frac{1}{2}"), ("x = 5", "5"),
    ("90^\\circ", "90"), ("\\left( 1, 2 \\right)", "(1,2)"), ("\\sqrt3", "\\sqrt{3}"), ("5\\%", "5"),
    ("10\\text{ cm}", "10"), (".5", "0.5"),
])
def test_hendrycks_normalisation_equivalences(a, b):
    assert normalize(a) == normalize(b) and is_equiv(a, b)


@pytest.mark.parametrize("pred,gold,ok", [
    ("\\frac{2}{4}", "\\frac{1}{2}", True),  # needs math-verify (not string equal)
    ("1+x^2", "x^2+1", True),
    ("(1, 2)", "(1,2)", True),
    ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}", True),
    ("3", "\\frac{1}{2}", False),
    ("2112_7", "2112_6", False),  # base subscripts are compared (math-verify drops them)
    ("x^2", "x^3", False),
])
def test_equivalence(pred, gold, ok):
    assert (verify("math", f"\\boxed{{{pred}}}", gold).score == 1.0) is ok


def test_gsm8k_ground_truth_forms():
    for gt in ("#### 72", "Natalia sold 48/2 = 24 clips...\n#### 72", 72, "72"):
        assert verify("gsm8k", "so the total is \\boxed{72}", gt).score == 1.0
    assert verify("gsm8k", "#### 71", "#### 72").score == 0.0


def test_reason_names_the_wrong_answer():
    v = verify("math", "\\boxed{7}", "8")
    assert v.score == 0.0 and "7" in v.reason and "8" in v.reason
    assert verify("math", "I give up", "8").reason.startswith("no final answer")


def test_sympy_fallback_when_math_verify_cannot_parse(monkeypatch):
    from flowlm.verify import math_equiv

    monkeypatch.setattr(math_equiv, "math_verify_equal", lambda p, g, t=5.0: None)
    res = math_equiv.equivalent("\\frac{6}{4}", "\\frac{3}{2}")
    assert res.equal and res.method == "sympy"
    assert not math_equiv.equivalent("\\frac{7}{4}", "\\frac{3}{2}").equal


def _assert_counted_timeout(answer: str, stage: str, capfd: pytest.CaptureFixture) -> None:
    for _ in range(2):  # the second time math-verify's parses come from its cache: the same verdict
        v = verify("math", f"\\boxed{{{answer}}}", "4", timeout=1)
        assert v.score == 0.0 and v.reason.startswith("timeout: could not compare"), v.reason
        assert v.meta["equivalence"] == "timeout" and v.meta["math_verify"].startswith(stage), v.meta
    out, err = capfd.readouterr()
    assert "Timeout" not in out + err


def test_a_math_verify_comparison_timeout_is_a_counted_timeout_not_a_wrong_answer_and_stays_off_stderr(capfd):
    # math-verify answers "not equal" when its comparison runs out of time, and logs a warning. (Its alarm
    # can land where it is swallowed, e.g. in a `__del__`; then flowlm's own outer alarm ends the check,
    # which is also a timeout, hence `startswith`.)
    _assert_counted_timeout("2^{2^{2^{2^{100}}}}", "timeout", capfd)
    assert verify("math", "\\boxed{4}", "4", timeout=1).score == 1.0  # the check still decides ordinary answers


def test_a_math_verify_parse_timeout_is_a_counted_timeout_and_stays_off_stderr(monkeypatch, capfd):
    # A parse timeout, as math-verify reports it (a warning quoting the input, then nothing parsed), made
    # deterministic: a real one depends on where its SIGALRM lands.
    import logging

    import math_verify

    from flowlm.verify import math_equiv

    real = math_verify.parse

    def parse(text, **kw):
        if "(((" in text:
            logging.getLogger("math_verify.parser").warning(f"Timeout during parsing: {text}")
            return []
        return real(text, **kw)

    monkeypatch.setattr(math_verify, "parse", parse)
    monkeypatch.setattr(math_equiv, "sympy_equal", lambda *a, **k: None)  # sympy cannot decide it either
    math_equiv._mv_parse_cached.cache_clear()
    try:
        _assert_counted_timeout("(" * 30 + "1" + ")" * 30, "timeout during parsing", capfd)
    finally:
        math_equiv._mv_parse_cached.cache_clear()


def _in_a_thread(fn):
    """Run `fn()` in a worker thread; return its result and how often the main thread woke meanwhile."""
    import threading
    import time

    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    beats, t0 = 0, time.perf_counter()
    while thread.is_alive() and time.perf_counter() - t0 < 120:
        time.sleep(0.2)
        beats += 1
    assert not thread.is_alive(), "the comparison did not finish within 120 s"
    return out[0], beats


def test_off_the_main_thread_a_power_tower_times_out_and_the_process_keeps_running():
    # Off the main thread there is no SIGALRM: sympy's exact 9^(9^(9^9)) used to hold the GIL for good,
    # freezing every thread (an async RL run's learner included). It now runs in the helper process.
    tower = "The answer is \\boxed{9^{9^{9^{9}}}}"
    on_main = verify("math", tower, "7")
    off_main, beats = _in_a_thread(lambda: verify("math", tower, "7"))
    assert on_main.score == off_main.score == 0.0
    assert on_main.reason == off_main.reason == "timeout: could not compare '9^{9^{9^{9}}}' with '7' within 5s"
    assert beats >= 10  # the main thread ran throughout (0.2 s naps over the ~5 s comparison)


@pytest.mark.parametrize("completion,truth", [
    ("\\boxed{\\sqrt{4}}", "2"),  # math-verify decides
    ("\\boxed{\\frac{2}{4}}", "0.5"),
    ("\\boxed{3}", "2"),  # wrong
    ("\\boxed{x^2+2x+1}", "(x+1)^2"),
    ("\\boxed{\\text{banana}}", "\\frac{\\pi}{3}"),
    ("\\boxed{1/2}", "\\frac12"),  # the string check, before any helper
])
def test_off_the_main_thread_verdicts_equal_the_main_threads(completion, truth):
    on_main = verify("math", completion, truth)
    off_main, _ = _in_a_thread(lambda: verify("math", completion, truth))
    assert (off_main.score, off_main.reason, off_main.meta) == (on_main.score, on_main.reason, on_main.meta)


def _last_boxed_by_rescanning(text):
    """The former quadratic `last_boxed` (each `\\boxed{` scanned to its closing brace), as the reference."""
    import re

    for m in reversed(list(re.finditer(r"\\(?:boxed|fbox)\s*", text))):
        end = m.end()
        if end < len(text) and text[end] == "{":
            depth = 0
            for i in range(end, len(text)):
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                if depth == 0:
                    return text[end + 1:i].strip()
        elif m.group(0)[-1] in " \t":
            tok = re.match(r"[^\s$]+", text[end:])
            if tok:
                return tok.group(0).strip()
    return None


def test_last_boxed_pairs_braces_once_as_the_rescanning_version_did():
    import random

    r = random.Random(0)
    pieces = ["\\boxed{", "\\boxed ", "\\fbox{", "{", "}", "}", "1", "x ", "\\frac{a}{b}", "$"]
    for _ in range(3000):
        text = "".join(r.choice(pieces) for _ in range(r.randint(0, 30)))
        assert last_boxed(text) == _last_boxed_by_rescanning(text), text
    assert last_boxed("\\boxed{7}" + "\\boxed{" * 20000) == "7"  # 20,000 unclosed after it: n² scans before
