"""Code verifiers: run the model's program against tests in the sandbox (`flowlm.verify.sandbox`).

Ground-truth formats (see docs/verify.md):

- assert tests: `{"tests": ["assert f(1) == 2", ...], "imports": ["import math"]}` or a plain list
  of assert strings (MBPP: the row's `test_list` / `test_imports` work too);
- HumanEval: `{"test": "def check(candidate): ...", "entry_point": "f"}` (or `test` as the ground
  truth string with `entry_point` in the row); runs `check(f)`;
- stdin/stdout: `{"stdio": [{"input": "1 2\\n", "output": "3\\n"}, ...]}` or
  `{"inputs": [...], "outputs": [...]}`; outputs compare after whitespace normalisation.

Each test runs in its own sandboxed process (when a row has several assert tests they first run
together in one process, and only on failure one by one, to name the failing test). Row options: `reward` = `all_pass` (default, OLMo 3) or
`pass_rate`; `timeout` (s per test), `memory_mb`.

Where no isolating sandbox works (and `FLOWLM_SANDBOX=unsafe` was not given), row validation raises
`SandboxUnavailable` (a `FlowError`: the CLIs stop at load time with one line naming the fix), and a
row scored without validation gets score 0 with a reason starting `error: no isolating sandbox`.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

from flowlm.verify.base import GroundTruthError, Verdict, register
from flowlm.verify.sandbox import Limits, SandboxResult, SandboxUnavailable, detect_backend, run_python
from flowlm.verify.thinking import extract_answer

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.S | re.I)


@dataclass(frozen=True)
class TestCase:
    """One test: either an assert-style snippet (`code`) or a stdin/stdout pair."""

    name: str
    code: str | None = None
    stdin: str = ""
    expected_stdout: str | None = None


def extract_code(text: str) -> str:
    """The last fenced code block of the answer, or the whole answer when there is none."""
    blocks = _FENCE.findall(text)
    return blocks[-1] if blocks else text


def _as_list(x: Any) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def parse_tests(ground_truth: Any, row: dict[str, Any]) -> tuple[list[TestCase], str]:
    """Normalise any supported ground-truth format into (tests, setup code run before each test)."""
    gt = ground_truth
    if isinstance(gt, str) and "def check(" in gt:
        gt = {"test": gt}
    if isinstance(gt, (list, tuple)):
        gt = {"tests": list(gt)}
    if not isinstance(gt, dict):
        raise GroundTruthError(f"unsupported code ground truth: {type(gt).__name__}")
    imports = _as_list(gt.get("imports", row.get("test_imports", [])) or [])
    if not all(isinstance(x, str) for x in imports):
        raise GroundTruthError(f"imports must be strings, got {_short(imports)}")
    setup = "\n".join(imports)
    if "test" in gt:
        entry = gt.get("entry_point", row.get("entry_point"))
        if not entry:
            raise GroundTruthError("HumanEval-style test needs an entry_point")
        if not isinstance(entry, str) or not isinstance(gt["test"], str):
            raise GroundTruthError(f"HumanEval-style test needs a `test` string and an entry_point string, "
                                   f"got test {_short(gt['test'])}, entry_point {entry!r}")
        return [TestCase("check", code=f"{gt['test']}\n\ncheck({entry})\n")], setup
    if "tests" in gt or "test_list" in gt:
        asserts = _as_list(gt.get("tests", gt.get("test_list")))
        return [TestCase(f"test {i + 1}", code=str(t)) for i, t in enumerate(asserts)], setup
    return [TestCase(f"case {i + 1}", stdin=stdin, expected_stdout=stdout)
            for i, (stdin, stdout) in enumerate(_stdio_cases(gt))], setup


def _stdio_cases(gt: dict[str, Any]) -> list[tuple[str, str]]:
    """The (stdin, expected stdout) strings of `{"stdio": [...]}` or `{"inputs": [...], "outputs": [...]}`;
    raises GroundTruthError naming the bad entry."""
    if "stdio" in gt:
        cases = gt["stdio"]
        if not isinstance(cases, list):
            raise GroundTruthError(f'stdio must be a list of {{"input", "output"}} objects, got {_short(cases)}')
        for i, c in enumerate(cases):
            if not (isinstance(c, dict) and isinstance(c.get("input"), str) and isinstance(c.get("output"), str)):
                raise GroundTruthError(f'stdio[{i}] needs "input" and "output" strings, got {_short(c)}')
        return [(c["input"], c["output"]) for c in cases]
    if "inputs" in gt:
        ins, outs = gt["inputs"], gt.get("outputs")
        for key, xs in (("inputs", ins), ("outputs", outs)):
            if not isinstance(xs, list) or not all(isinstance(x, str) for x in xs):
                raise GroundTruthError(f"{key} must be a list of strings, got {_short(xs)}")
        if len(ins) != len(outs):
            raise GroundTruthError(f"{len(ins)} inputs but {len(outs)} outputs")
        return list(zip(ins, outs))
    raise GroundTruthError("code ground truth needs tests, test, stdio or inputs/outputs")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _validate(ground_truth: Any, row: dict[str, Any]) -> None:
    tests, _ = parse_tests(ground_truth, row)
    if not tests:
        raise GroundTruthError("no tests")
    if row.get("reward", "all_pass") not in ("all_pass", "pass_rate"):
        raise GroundTruthError("reward must be all_pass or pass_rate")
    for key in ("timeout", "memory_mb"):
        value = row.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise GroundTruthError(f"{key} must be a number > 0, got {value!r}")
    detect_backend()  # raises SandboxUnavailable: refuse at load time rather than score every row 0


def build_program(completion: str, row: dict[str, Any]) -> str:
    """Model code, plus the HumanEval prompt when the model only wrote the function body."""
    code = extract_code(extract_answer(completion, strip=False))
    entry, prompt = row.get("entry_point"), row.get("prompt")
    if entry and isinstance(prompt, str) and not re.search(rf"def\s+{re.escape(entry)}\s*\(", code):
        return prompt + code
    if isinstance(prompt, str) and entry:
        # A full function still needs the prompt's imports (e.g. `from typing import List`).
        imports = [ln for ln in prompt.splitlines() if re.match(r"(import|from)\s+\w", ln)]
        return "\n".join(imports) + "\n" + code
    return code


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


def _why(res: SandboxResult, limits: Limits) -> str:
    if res.timed_out:
        return f"timeout after {limits.timeout:g}s"
    if res.output_truncated:
        return f"output over {limits.output_bytes} bytes"
    if res.returncode is not None and res.returncode < 0:
        return f"killed by signal {-res.returncode}" + (f" ({_last_line(res.stderr)})" if res.stderr else "")
    return _last_line(res.stderr) or f"exit code {res.returncode}"


def run_test(program: str, setup: str, test: TestCase, limits: Limits) -> tuple[bool, str, str]:
    """Run one test; returns (passed, why, backend)."""
    if test.code is not None:
        # The token is printed only if every line before it ran: a program that exits early
        # (`sys.exit(0)` at import) cannot pass by exit code alone.
        token = secrets.token_hex(16)
        source = f"{program}\n\n{setup}\n{test.code}\nprint({token!r})\n"
        res = run_python(source, limits=limits)
        ok = res.returncode == 0 and not res.output_truncated and res.stdout.rstrip().endswith(token)
        return ok, ("passed" if ok else _why(res, limits)), res.backend
    res = run_python(program, stdin=test.stdin, limits=limits)
    if res.returncode != 0 or res.timed_out or res.output_truncated:
        return False, _why(res, limits), res.backend
    got, want = res.stdout.split(), (test.expected_stdout or "").split()
    if got == want:
        return True, "passed", res.backend
    return False, f"wrong output: got {' '.join(got)[:80]!r}, expected {' '.join(want)[:80]!r}", res.backend


# The verifier names that run model-written code in the sandbox (CLIs report the sandbox when one is used).
SANDBOXED = ("code", "code_stdio", "humaneval", "mbpp")


@register(*SANDBOXED, validator=_validate)
def verify_code(completion: str, ground_truth: Any, **row: Any) -> Verdict:
    """Run all tests; score = 1/0 (all_pass) or the pass rate (pass_rate)."""
    tests, setup = parse_tests(ground_truth, row)
    if not tests:
        raise GroundTruthError("no tests")
    program = build_program(completion, row)
    if not program.strip():
        return Verdict(0.0, "no code in the answer")
    limits = Limits(timeout=float(row.get("timeout", 10.0)), cpu_seconds=int(row.get("timeout", 10.0)) + 1,
                    memory_bytes=int(row.get("memory_mb", 1024)) << 20)
    try:
        detect_backend()
    except SandboxUnavailable as exc:  # a setup error, not the model's: say so in the reason
        return Verdict(0.0, f"error: {exc}", {"sandbox": None})
    results, backend = [], ""
    asserts = [t for t in tests if t.code is not None]
    if len(asserts) > 1 and len(asserts) == len(tests):
        # Fast path: one sandboxed process runs every assert; only on failure do we rerun each
        # test alone to say which one failed (and to compute the pass rate).
        combined = TestCase("all", code="\n".join(t.code or "" for t in asserts))
        ok, _, backend = run_test(program, setup, combined, limits)
        if ok:
            results = [{"test": t.name, "passed": True, "why": "passed"} for t in tests]
    if not results:
        for test in tests:
            ok, why, backend = run_test(program, setup, test, limits)
            results.append({"test": test.name, "passed": ok, "why": why})
    n_pass = sum(r["passed"] for r in results)
    rate = n_pass / len(results)
    mode = row.get("reward", "all_pass")
    score = rate if mode == "pass_rate" else float(n_pass == len(results))
    failed = [r for r in results if not r["passed"]]
    reason = f"{n_pass}/{len(results)} tests passed"
    if failed:
        reason += f"; {failed[0]['test']} failed: {failed[0]['why']}"
    return Verdict(score, reason, {"sandbox": backend, "tests": results})
