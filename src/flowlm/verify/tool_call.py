"""`tool_call` verifier: did the model call the right functions with acceptable arguments (BFCL's AST check)?

A call is written the way chat templates write assistant tool calls (`flowlm.tools.formats`), in the answer
part of the completion (after `</think>`): Qwen3's / Hermes's
`<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>` (`arguments` may also be a
JSON string, OpenAI's wire format), OLMo 3's `<function_calls>get_weather(city="Paris")</function_calls>`
(one Python call per line, literal values), Qwen3-Coder's `<tool_call><function=get_weather><parameter=city>Paris
</parameter></function></tool_call>` (values typed by the row's `functions` when it has them), Llama 3's
reply of JSON calls `{"name": "get_weather", "parameters": {"city": "Paris"}}` (Llama 4's too), Llama's Python
list `[get_weather(city="Paris")]`, Mistral's `[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}` (any of its
layouts) or DeepSeek's `<｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜>`. `parse_tool_calls(text)` returns the calls and the problems
found, and never raises.

Ground truth, either form (one call, or a list for parallel calls, matched in any order):
- plain: `{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}`: every argument must be
  given with that value, and no other;
- BFCL's possible answers: `{"get_weather": {"city": ["Paris", "paris"], "unit": ["c", ""]}}`: each
  argument takes one of the listed values, `""` in the list makes it optional, and an argument not
  listed is an error. An object among the accepted values is itself a map to accepted values, and so
  are the objects of an accepted list of objects.

Values compare after BFCL's normalisation: strings lower-cased, without spaces and `,./-_*^`, with `'`
read as `"` (`"New York"` equals `"new-york."`); numbers by value (`2 == 2.0`; booleans are not numbers);
lists element by element; objects key by key. When the row carries the function signatures
(`functions`: BFCL's `function` list or OpenAI tools), argument types are checked as BFCL does at the top
level: an `integer` argument must be an int, a `float` one an int or a float, `string`, `boolean`,
`array` and `dict` their own types. The score is 1 when every expected call is matched by exactly one
call, and there are no other calls; else 0, with the first mismatch as the reason.
"""

from __future__ import annotations

import re
from typing import Any

from flowlm.tools.formats import format_in
from flowlm.verify.base import GroundTruthError, Verdict, register
from flowlm.verify.thinking import extract_answer

_BFCL_STRIP = re.compile(r"[ \,\.\/\-\_\*\^]")  # BFCL's `standardize_string`
TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "integer": (int,), "float": (float, int), "number": (float, int),
                                      "boolean": (bool,), "array": (list,), "tuple": (list,), "dict": (dict,),
                                      "object": (dict,)}


def parse_tool_calls(text: str, functions: Any = None) -> tuple[list[dict[str, Any]], list[str]]:
    """([{"name", "arguments"}], [problems]) of the calls in `text`, in the format it is written in
    (`flowlm.tools.formats.format_in`: `<function_calls>`, `<tool_call>` JSON or XML, `[TOOL_CALLS]`, DeepSeek's
    blocks, or a reply of JSON calls or of a Python list of calls);
    `functions` (the row's signatures: BFCL's `functions`, else its own `tools`) types the values of calls
    written as XML. Never raises."""
    return format_in(text).parse(text, functions)


def _norm(v: Any) -> Any:
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        return _BFCL_STRIP.sub("", v).lower().replace("'", '"')
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _norm(x) for k, x in v.items()}
    return v


def same_value(got: Any, want: Any) -> bool:
    """BFCL's value check: normalised equality, numbers by value, booleans only equal booleans."""
    if isinstance(got, bool) != isinstance(want, bool):
        return False
    return _norm(got) == _norm(want)


def accepted(got: Any, want: Any, strict: bool) -> bool:
    """`got` matches the accepted value `want`. In BFCL's possible answers an object's values, and those of
    the objects in a list, are themselves lists of accepted values (`""`: the key may be left out)."""
    if strict or not isinstance(want, (dict, list)):
        return same_value(got, want)
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) - set(want) or not all(isinstance(o, list) for o in want.values()):
            return False
        return all(any(accepted(got[key], a, False) for a in opts if a != "") if key in got else "" in opts
                   for key, opts in want.items())
    if want and all(isinstance(w, dict) for w in want):
        return isinstance(got, list) and len(got) == len(want) and all(
            accepted(g, w, False) for g, w in zip(got, want))
    return same_value(got, want)


def expected_calls(ground_truth: Any) -> list[tuple[str, dict[str, list[Any]], bool]]:
    """(name, {argument: acceptable values}, strict) per expected call; `strict` (the plain form) means
    every argument is required. Raises GroundTruthError for a malformed ground truth (a data error)."""
    items = ground_truth if isinstance(ground_truth, list) else [ground_truth]
    out = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            args = item.get("arguments", {})
            if not isinstance(args, dict):
                raise GroundTruthError(f"tool_call ground truth: arguments of {item['name']!r} must be an object")
            out.append((item["name"], {k: [v] for k, v in args.items()}, True))
        elif isinstance(item, dict) and len(item) == 1 and isinstance(next(iter(item.values())), dict):
            name, params = next(iter(item.items()))
            if not all(isinstance(v, list) for v in params.values()):  # BFCL has some empty lists: nothing accepted
                raise GroundTruthError(f"tool_call ground truth: each argument of {name!r} lists its acceptable values")
            out.append((name, params, False))
        else:
            raise GroundTruthError(f"tool_call ground truth must be {{'name', 'arguments'}} or BFCL's "
                                   f"{{name: {{arg: [values]}}}}, got {str(item)[:80]!r}")
    if not out:
        raise GroundTruthError("tool_call ground truth lists no call")
    return out


def _validate(ground_truth: Any, row: dict[str, Any]) -> None:
    expected_calls(ground_truth)


def signatures(functions: Any) -> dict[str, dict[str, str]]:
    """{function name: {argument: declared type}} from BFCL's `function` list or OpenAI tools (else {})."""
    out: dict[str, dict[str, str]] = {}
    for f in functions if isinstance(functions, list) else []:
        f = f.get("function", f) if isinstance(f, dict) else None
        props = ((f or {}).get("parameters") or {}).get("properties") if isinstance(f, dict) else None
        if isinstance(f, dict) and isinstance(f.get("name"), str) and isinstance(props, dict):
            out[f["name"]] = {k: v.get("type") for k, v in props.items() if isinstance(v, dict)}
    return out


def type_problem(value: Any, declared: Any) -> bool:
    """True when `value` is not of the declared BFCL / JSON-schema type (an unknown type is not checked)."""
    allowed = TYPES.get(declared) if isinstance(declared, str) else None
    if allowed is None:
        return False
    if isinstance(value, bool) and bool not in allowed:
        return True
    return not isinstance(value, allowed)


def call_problem(call: dict[str, Any], name: str, params: dict[str, list[Any]], strict: bool,
                 types: dict[str, str] | None = None) -> str | None:
    """Why `call` does not match the expected one, or None."""
    if call["name"] != name:
        return f"called {call['name']!r}, expected {name!r}"
    args = call["arguments"]
    for param, value in args.items():
        # BFCL takes a value of an accepted value's own type as meant (its "variable" rule), whatever the
        # signature says
        if types and param in types and type_problem(value, types[param]) and not any(
                type(value) is type(a) for a in params.get(param, []) if a != ""):
            return f"{name}: {param}={str(value)[:40]!r} is not of type {types[param]}"
    extra = sorted(set(args) - set(params))
    if extra:
        return f"{name}: unexpected argument {extra[0]!r}"
    for param, allowed in params.items():
        optional = not strict and "" in allowed
        if param not in args:
            if optional:
                continue
            return f"{name}: missing argument {param!r}"
        if not any(accepted(args[param], a, strict) for a in allowed if not (a == "" and not strict)):
            return f"{name}: {param}={str(args[param])[:40]!r} is not an accepted value"
    return None


@register("tool_call", "function_call", validator=_validate)
def verify_tool_call(completion: str, ground_truth: Any, **row: Any) -> Verdict:
    """1 when the answer's calls are exactly the expected ones (any order), else 0 with the reason."""
    expected = expected_calls(ground_truth)
    answer = extract_answer(completion)
    if not answer:
        return Verdict(0.0, "no answer after </think>")
    calls, problems = parse_tool_calls(answer, row.get("functions") or row.get("tools"))
    if problems:
        return Verdict(0.0, problems[0], {"calls": len(calls)})
    if len(calls) != len(expected):
        return Verdict(0.0, f"{len(calls)} call(s), expected {len(expected)}", {"calls": len(calls)})
    sigs = signatures(row.get("functions"))
    why = [[call_problem(c, name, params, strict, sigs.get(name)) for c in calls] for name, params, strict in expected]
    unmatched = match_calls([[w is None for w in row] for row in why])
    if unmatched is not None:
        first = why[unmatched][0] if len(calls) == 1 else f"no call matches {expected[unmatched][0]!r} ({why[unmatched][0]})"
        return Verdict(0.0, first, {"calls": len(calls)})
    return Verdict(1.0, f"correct: {', '.join(c['name'] for c in calls)}", {"calls": len(calls)})


def match_calls(ok: list[list[bool]]) -> int | None:
    """A one-to-one assignment of expected calls (rows) to made calls (columns) where `ok[e][c]` (Kuhn's
    augmenting paths, so parallel calls to one function match in any order); None when every expected call
    is matched, else the first expected call left over."""
    owner: dict[int, int] = {}

    def place(e: int, seen: set[int]) -> bool:
        for c, good in enumerate(ok[e]):
            if good and c not in seen:
                seen.add(c)
                if c not in owner or place(owner[c], seen):
                    owner[c] = e
                    return True
        return False

    for e in range(len(ok)):
        if not place(e, set()):
            return e
    return None
