"""Equivalence of two math answers: MATH string canonicalisation, math-verify, and a
sympy cross-check used when math-verify cannot parse one side (and recorded as an audit).

Decision rule (binary): equal if the Hendrycks-normalised strings are identical (checked first: it is
cheap and exact), or math-verify says equal, or — only when math-verify parsed nothing for one side —
sympy proves `simplify(a - b) == 0`. `audit` records what each method said, for disagreement logs.

math-verify reports its own timeouts only as log warnings (quoting the whole input) and then answers
"not equal" / "nothing parsed". Its loggers are routed here instead of stderr: a comparison that timed
out is method `timeout` (undecided, scored 0, counted as a verifier timeout), not a wrong answer.

Off the main thread (the async RL actor's verify thread, a threaded server) no SIGALRM limit exists, and
sympy's exact integer arithmetic holds the GIL: `\boxed{9^{9^{9^{9}}}}` froze the whole process, the
learner included, and parsing `\binom{100000000}{50000000}` never returned. So there every comparison
that the string check does not settle runs in one helper process (a forked `VerifyPool` worker, on its
main thread where the limits work, SIGKILLed and replaced past `3 x timeout + 5` seconds): the same
decision rule and verdicts as on the main thread, bounded in time. Forked, not from a forkserver: a
forkserver child re-imports the caller's `__main__`, which re-runs an unguarded script. A fork taken
while another thread holds a lock can deadlock the child; the hard limit kills such a child, and the
comparison counts as a timeout.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any, Iterator

from flowlm.verify import math_normalize
from flowlm.verify.timeouts import CheckTimeout, alarm, on_main_thread


@dataclass
class EquivResult:
    """Outcome of an equivalence check and which method decided it."""

    equal: bool
    method: str
    audit: dict[str, Any]


class _TimeoutLog(logging.Handler):
    """Collects math-verify's warnings for the calling thread while `_captured()` is open."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        messages = getattr(self.local, "messages", None)
        if messages is not None:
            messages.append(record.getMessage()[:60])


_LOG = _TimeoutLog()


@contextlib.contextmanager
def _captured() -> Iterator[list[str]]:
    """The math-verify warnings logged in the block (and none on stderr)."""
    logger = logging.getLogger("math_verify")
    if _LOG not in logger.handlers:
        logger.addHandler(_LOG)
        logger.propagate = False
    outer = getattr(_LOG.local, "messages", None)
    _LOG.local.messages = messages = []
    try:
        yield messages
    finally:
        _LOG.local.messages = outer


def _note(message: str) -> None:
    """Add `message` to the innermost open `_captured()` block, if any."""
    messages = getattr(_LOG.local, "messages", None)
    if messages is not None:
        messages.append(message)


@functools.lru_cache(maxsize=4096)
def _mv_parse_cached(text: str, timeout: int | None) -> tuple[tuple, bool]:
    from math_verify import parse

    # Parsed answers are immutable sympy objects, so caching is safe; the same gold answer is
    # usually checked against many sampled completions. Whether the parse timed out is cached with
    # it, so a repeated input gets the same verdict.
    with _captured() as logged:
        parsed = tuple(parse(text, parsing_timeout=timeout))
    return parsed, any(m.startswith("Timeout") for m in logged)


def _mv_parse(text: str, timeout: int | None) -> list:
    parsed, timed_out = _mv_parse_cached(text, timeout)
    if timed_out:
        _note("Timeout during parsing")
    return list(parsed)


_BASE_RE = re.compile(r"_\{?(\d+)\}?")


def _bases(s: str) -> list[str]:
    """Number-base subscripts (`2112_6`, `25_{7}`): math-verify drops them, so we compare them."""
    return _BASE_RE.findall(s)


def math_verify_equal(pred: str, gold: str, timeout: float = 5.0) -> bool | None:
    """math-verify's verdict, or None when either side could not be parsed."""
    from math_verify import verify

    # math-verify's own timeouts use SIGALRM: only usable on the main thread.
    t = max(1, int(timeout)) if on_main_thread() else None
    gold_p = _mv_parse(f"${gold}$", t) or _mv_parse(f"\\boxed{{{gold}}}", t)
    pred_p = _mv_parse(f"\\boxed{{{pred}}}", t) or _mv_parse(pred, t)
    if not gold_p or not pred_p:
        return None
    return bool(verify(gold_p, pred_p, timeout_seconds=t))


def sympy_equal(pred: str, gold: str, timeout: float = 5.0) -> bool | None:
    """True/False if sympy can parse both LaTeX strings and decide `simplify(a-b) == 0`, else None."""
    import sympy
    from latex2sympy2_extended import latex2sympy

    try:
        with alarm(timeout):
            a, b = latex2sympy(pred), latex2sympy(gold)
            diff = sympy.simplify(a - b)
            return bool(diff == 0)
    except CheckTimeout:
        return None
    except Exception:  # noqa: BLE001 - unparsable LaTeX is "unknown", not an error
        return None


def equivalent(pred: str, gold: str, timeout: float = 5.0) -> EquivResult:
    """Is the predicted answer `pred` equivalent to the reference `gold`?"""
    # Identical canonical strings are equal under every method; skipping the parsers here makes the
    # common exact-match case ~100x cheaper.
    if math_normalize.is_equiv(pred, gold):
        return EquivResult(True, "string-normalised", {"string_equal": True})
    if not on_main_thread():
        return _in_helper(pred, gold, timeout)
    return _parsed_equivalent(pred, gold, timeout)


_HELPER: Any = None  # flowlm.verify.pool.VerifyPool: the helper process of off-main-thread comparisons
_HELPER_LOCK = threading.Lock()


def _in_helper(pred: str, gold: str, timeout: float) -> EquivResult:
    """`_parsed_equivalent` in the helper process (see the module docstring); a comparison it does not
    finish in time is method `timeout`."""
    global _HELPER
    from flowlm.verify.pool import Task, VerifyPool

    limit = 3 * timeout + 5  # math-verify's parse, its comparison and the sympy fallback, each bounded by `timeout`
    task = Task("math-equivalence", pred, gold, {"timeout": timeout}, timeout=limit,
                fn="flowlm.verify.math_equiv:equivalence_verdict")
    with _HELPER_LOCK:
        if _HELPER is None:
            _HELPER = VerifyPool(workers=1, timeout=limit)  # fork (see the module docstring)
        verdict = _HELPER.map([task])[0]
    if "equal" not in verdict.meta:  # killed past its limit (or crashed)
        return EquivResult(False, "timeout", {"helper": verdict.reason})
    return EquivResult(bool(verdict.meta["equal"]), verdict.meta["method"], verdict.meta["audit"])


def equivalence_verdict(pred: str, gold: str, timeout: float = 5.0, **_: Any) -> Any:
    """(In the helper process.) `_parsed_equivalent` as a Verdict whose meta carries the EquivResult."""
    from flowlm.verify.base import Verdict

    try:
        res = _parsed_equivalent(pred, gold, float(timeout))
    except Exception as exc:  # noqa: BLE001 - as on the main thread: undecided, not a dead helper
        res = EquivResult(False, "error", {"helper_error": f"{type(exc).__name__}: {str(exc)[:200]}"})
    return Verdict(float(res.equal), res.method, {"equal": res.equal, "method": res.method, "audit": res.audit})


def _parsed_equivalent(pred: str, gold: str, timeout: float) -> EquivResult:
    """math-verify, then the sympy fallback (see the module docstring): on the main thread, where their
    SIGALRM limits work."""
    audit: dict[str, Any] = {}
    try:
        with alarm(timeout * 2), _captured() as logged:
            mv = math_verify_equal(pred, gold, timeout)
        timeouts = sorted({m.split(":")[0] for m in logged if m.startswith("Timeout")})
        if timeouts:
            audit["math_verify"] = "; ".join(t.lower() for t in timeouts)
            if "Timeout during comparison" in timeouts and not mv:
                audit["math_verify_equal"] = None
                return EquivResult(False, "timeout", audit)
    except CheckTimeout:
        mv = None
        audit["math_verify"] = "timeout"
    except Exception as exc:  # noqa: BLE001 - math-verify internals on odd input
        mv = None
        audit["math_verify"] = f"error {type(exc).__name__}"
    audit["math_verify_equal"] = mv
    if mv and _bases(gold) and _bases(pred) != _bases(gold):
        audit["guard"] = "number bases differ"
        return EquivResult(False, "base-subscript guard", audit)
    if mv:
        return EquivResult(True, "math-verify", audit)
    if mv is None:
        sp = sympy_equal(pred, gold, timeout)
        audit["sympy_equal"] = sp
        if sp:
            return EquivResult(True, "sympy", audit)
    if mv is None and audit.get("sympy_equal") is None and "timeout" in str(audit.get("math_verify", "")):
        return EquivResult(False, "timeout", audit)  # nothing decided, and math-verify ran out of time
    return EquivResult(False, "math-verify" if mv is not None else "no-parse", audit)
