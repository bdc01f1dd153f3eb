"""The built-in tools a model may call while generating: `calculator` and `python`.

A tool is a name, a JSON-schema signature (OpenAI's function format, what the chat template lists in the
system turn) and a function from the call's arguments to the text the model reads back. Every tool
returns text and never raises on what the model wrote. A bad call gets `error: ...` as its result, the
way a real tool would answer it.

- `calculator(expression)`: arithmetic on numbers (`+ - * / // % **`, parentheses, unary signs). The
  expression is parsed with `ast` and evaluated node by node, never with `eval`. Exponents are capped,
  and so are the sizes of results, so `9**9**9` is refused rather than run.
- `python(code)`: the code runs in flowlm's sandbox (`flowlm.verify.sandbox`: bubblewrap, seccomp,
  Landlock, rlimits; 10 s). The result is its stdout, its stderr, and the exit status when it failed,
  cut at 2,000 characters. Without a sandbox the tool is not offered: `check_available` (and
  `usable_tools`, which every command offering tools calls) fails first.
"""

from __future__ import annotations

import ast
import math
import operator
from dataclasses import dataclass
from typing import Annotated, Any, Callable

from pydantic import AfterValidator

from flowlm.errors import ConfigError

MAX_RESULT = 2000


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[[dict[str, Any]], str]
    strict: bool = True  # check the arguments against `parameters` here (an MCP server checks its own)

    @property
    def schema(self) -> dict[str, Any]:
        """OpenAI's function-tool format, as chat templates list tools."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}

    def run(self, arguments: dict[str, Any]) -> str:
        """The tool's answer to a call; an argument problem or a failure is an `error: ...` answer."""
        if self.strict:
            required = self.parameters.get("required", [])
            missing = [k for k in required if k not in arguments]
            if missing:
                return f"error: missing argument {missing[0]!r}"
            extra = sorted(set(arguments) - set(self.parameters.get("properties", {})))
            if extra:
                return f"error: unknown argument {extra[0]!r}"
        try:
            out = self.fn(arguments)
        except Exception as exc:  # the call is model output: whatever it does, the model gets an answer
            out = f"error: {type(exc).__name__}: {exc}"
        return out if len(out) <= MAX_RESULT else out[:MAX_RESULT] + " ...(cut)"


_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_EXPONENT, MAX_DIGITS = 64, 400


def calculate(expression: str) -> int | float:
    """The value of an arithmetic expression; ValueError (with the reason) for anything else."""
    if not isinstance(expression, str) or len(expression) > 500:
        raise ValueError("expression must be a string of at most 500 characters")
    tree = ast.parse(expression.strip(), mode="eval")

    def ev(node: ast.AST) -> int | float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](ev(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
                raise ValueError(f"exponent {right} is larger than {MAX_EXPONENT}")
            value = _BINARY[type(node.op)](left, right)
            if isinstance(value, int) and abs(value).bit_length() > MAX_DIGITS * 3.33:
                raise ValueError(f"result has more than {MAX_DIGITS} digits")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError("result is not a finite number")
            return value
        raise ValueError(f"only numbers and + - * / // % ** are allowed, not {type(node).__name__}")

    return ev(tree)


def _calculator(args: dict[str, Any]) -> str:
    try:
        value = calculate(args["expression"])
    except ZeroDivisionError:
        return "error: division by zero"
    except (ValueError, SyntaxError, TypeError) as exc:
        return f"error: {exc}"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def _python(args: dict[str, Any]) -> str:
    from flowlm.verify.sandbox import Limits, run_python

    code = args["code"]
    if not isinstance(code, str):
        return "error: code must be a string"
    res = run_python(code, limits=Limits(timeout=10.0, cpu_seconds=10))
    out = res.stdout + (("\n" if res.stdout and res.stderr else "") + res.stderr if res.stderr else "")
    if res.timed_out:
        out += "\nerror: timed out after 10 s"
    elif res.returncode not in (0, None):
        out += f"\n(exit status {res.returncode})"
    return out.strip() or "(no output)"


CALCULATOR = Tool("calculator", "Evaluate an arithmetic expression exactly (+ - * / // % ** and parentheses).",
                  {"type": "object", "properties": {"expression": {"type": "string",
                                                                   "description": "e.g. (48213 * 9127) - 15"}},
                   "required": ["expression"]}, _calculator)
PYTHON = Tool("python", "Run Python code in a sandbox and return what it prints.",
              {"type": "object", "properties": {"code": {"type": "string", "description": "a Python program"}},
               "required": ["code"]}, _python)
TOOLS = {t.name: t for t in (CALCULATOR, PYTHON)}


def known_tools(names: list[str]) -> list[str]:
    """`names` without repeats; ValueError naming the built-in tools for an unknown one (config validators).
    An `mcp:SERVER` entry stands for the tools of an MCP server (`flowlm.tools.mcp`; checked, not started)."""
    from flowlm.tools.mcp import check_spec, is_mcp

    unknown = [n for n in names if n not in TOOLS and not is_mcp(n)]
    if unknown:
        raise ValueError(f"unknown tool {unknown[0]!r}; built-in tools: {', '.join(TOOLS)}, or mcp:SERVER "
                         "(an MCP server's command or URL)")
    for n in names:
        if is_mcp(n):
            check_spec(n)
    return list(dict.fromkeys(names))


ToolNames = Annotated[list[str], AfterValidator(known_tools)]
"""A config field of tool names (`rollout.tools`, `teacher.tools`, `on_policy.tools`), checked by `known_tools`."""


def select_tools(names: list[str]) -> dict[str, Tool]:
    """The named built-in tools, and the tools of each `mcp:` server (connected here); an unknown name,
    or two tools of one name, is a usage error."""
    from flowlm.tools.mcp import connect, is_mcp

    if not names:
        raise ConfigError(f"--tools: name at least one tool ({', '.join(TOOLS)}, or mcp:SERVER)")
    try:
        names = known_tools(names)
    except ValueError as exc:
        raise ConfigError(f"--tools: {exc}") from None
    out: dict[str, Tool] = {}
    where: dict[str, str] = {}
    for name in names:
        offered = connect(name).tools if is_mcp(name) else {name: TOOLS[name]}
        for tool in offered.values():
            if tool.name in out:
                raise ConfigError(f"--tools: two tools named {tool.name!r} (from {where[tool.name]} and {name})")
            out[tool.name], where[tool.name] = tool, name
    if not out:
        raise ConfigError(f"--tools: {', '.join(names)} offer no tools")
    return out


def check_available(tools: dict[str, Tool]) -> None:
    """Fail before any generation when a selected tool cannot run here (python without a sandbox)."""
    if "python" in tools:
        from flowlm.verify.sandbox import detect_backend

        detect_backend()  # raises SandboxUnavailable (a FlowError naming the fix) when nothing isolates


def usable_tools(names: list[str]) -> dict[str, Tool]:
    """`select_tools`, then `check_available`: the named tools, each able to run here."""
    tools = select_tools(names)
    check_available(tools)
    return tools
