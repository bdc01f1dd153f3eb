"""How models write tool calls, and how chat templates want them written: the formats flowlm reads.

- `hermes` (flowlm's template, Qwen3, Hermes; vLLM's `hermes` parser): each call is a JSON object
  `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`. Messages use OpenAI's schema: an assistant
  turn's structured `tool_calls`, answers in `tool` turns, the functions in the template's `tools` argument.
- `llama3_json` (Llama 3.1-3.3's templates; vLLM's `llama3_json` parser): a reply that is calls is JSON
  objects `{"name": ..., "parameters": {...}}` separated by `;`, optionally after `<|python_tag|>`. Messages
  use OpenAI's schema, as for `hermes` (the template writes the answers as its `ipython` turns).
- `qwen3_xml` (Qwen3-Coder's and later Qwen templates; vLLM's `qwen3_coder` parser): each call is XML in a
  `<tool_call>` block, `<function=get_weather>` then `<parameter=city>\nParis\n</parameter>` per argument.
  Values are written as text (strings as they are, the rest as JSON), so they are typed back by the function's
  schema when the caller knows it (`typed_value`), else read as JSON where they parse as JSON. Messages use
  OpenAI's schema (the template writes the answers in a user turn's `<tool_response>` blocks).
- `olmo3` (OLMo 3 Instruct; vLLM's `olmo3` parser): the calls are Python calls, one per line, inside one
  `<function_calls>...</function_calls>` block, `get_weather(city="Paris", days=3)`. Argument values are
  literals: Python's or JSON's (`true` / `false` / `null`). Messages use the Dolci schema: the assistant
  turn's `function_calls` is that text, answers are `environment` turns, and the functions are a JSON
  string in the system turn's `functions` field.

- `mistral` (Mistral's templates; vLLM's `mistral` parser), in any of its three layouts: after
  `[TOOL_CALLS]`, a JSON list of `{"name", "arguments", "id"}` objects (v3 tokenizers: Mistral 7B v0.3,
  Mixtral), or one `[TOOL_CALLS]NAME[CALL_ID]ID[ARGS]{...}` per call (v7: Mistral Large 2411, Small 3), or
  `[TOOL_CALLS]NAME[ARGS]{...}` (v11+: Small 3.1/3.2, Magistral, Devstral). The templates that write call ids
  require one of 9 letters and digits on every call and the same id on its answer (`tool_call_id`), so
  `flowlm.tools.messages.with_call_ids` gives them to calls that have none and the tool loop keeps the ones
  the model wrote.
- `pythonic` (Llama 3.2's and Llama 4's Python-list templates; vLLM's `pythonic` / `llama4_pythonic` parsers):
  a reply that is one Python list of calls, `[get_weather(city="Paris"), get_time()]`, optionally between
  `<|python_start|>` and `<|python_end|>`. Values are literals, as for `olmo3`.
- `deepseek` (DeepSeek V3, V3.1 and R1's templates, R1's distilled models; vLLM's `deepseek_v3` / `v31`
  parsers): calls between `<｜tool▁call▁begin｜>` and `<｜tool▁call▁end｜>`, each
  `NAME<｜tool▁sep｜>{...}` (V3.1) or `function<｜tool▁sep｜>NAME` then a fenced JSON block (V3, R1).
- `llama3_json` also reads Llama 4's own template, which writes the turn's text between `<|python_start|>` and
  `<|python_end|>`, then the calls as JSON objects.

Everything else in flowlm keeps messages in OpenAI's schema (`flowlm.tools.messages` converts). Templates get
their own schema when rendered (`flowlm.model.tokenizer.fit_to_template`), and the tool loop reads calls with
the parser of the template's format (`flowlm.tools.engine.template_tool_format`). `parse_pythonic` parses with `ast` and reads values node by node: nothing the model
wrote is evaluated, and every parser here returns `(calls, problems)` rather than raising.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any, Callable

Calls = list[dict[str, Any]]

HERMES_CALL = re.compile(r"<tool_call>(.*?)(</tool_call>|$)", re.DOTALL)
# (names are bounded so that a reply full of unclosed `<function=` markers is read in linear time)
XML_CALL = re.compile(r"(?:<tool_call>\s*)?<function=([^>\n]{0,256})>(.*?)"
                      r"(</function>\s*(?:</tool_call>)?|$)", re.DOTALL)
XML_PARAM = re.compile(r"<parameter=([^>\n]{0,256})>(.*?)(?:</parameter>|(?=<parameter=)|$)", re.DOTALL)
PYTHON_TAG = "<|python_tag|>"
JSON_CALLS = re.compile(r"^\s*(?:<\|python_tag\|>)?\s*\{.*", re.DOTALL)  # a reply that is calls, whole
# Llama 4's template: the turn's text between these, then the calls (JSON objects, or a Python list)
LLAMA4_TEXT = re.compile(r"^\s*<\|python_start\|>(.*?)(?:<\|python_end\|>|$)", re.DOTALL)
PY_LIST = re.compile(r"^\s*(?:<\|python_start\|>\s*)?\[\s*[A-Za-z_][\w.]*\s*\(.*", re.DOTALL)
MISTRAL_CALLS = "[TOOL_CALLS]"
MISTRAL_BLOCKS = re.compile(r"\[TOOL_CALLS\].*", re.DOTALL)
MISTRAL_NAME = re.compile(r"\s*([^\[\]{}\s]{1,256})\s*(?:\[CALL_ID\]\s*([^\[\]{}\s]{0,256})\s*)?(?:\[ARGS\])?\s*")
MISTRAL_ID = re.compile(r"^[A-Za-z0-9]{9}$")
DS_BEGIN, DS_SEP, DS_END = "<｜tool▁call▁begin｜>", "<｜tool▁sep｜>", "<｜tool▁call▁end｜>"
DS_CALLS = re.compile(r"<｜tool▁calls▁begin｜>.*|<｜tool▁call▁begin｜>.*", re.DOTALL)
DS_CALL = re.compile(r"<｜tool▁call▁begin｜>(.*?)(<｜tool▁call▁end｜>|(?=<｜tool▁call▁begin｜>)|$)", re.DOTALL)
DS_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*(?:```\s*)?$", re.DOTALL)
OLMO3_CALLS = re.compile(r"<function_calls>(.*?)(</function_calls>|$)", re.DOTALL)
_NAMES = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}


def _call_or_problem(name: Any, args: Any, k: int) -> dict[str, Any] | str:
    """A call `{name, arguments}`, or the problem with it (arguments may be a JSON string, OpenAI's wire form)."""
    if not isinstance(name, str) or not name:
        return f"call {k} has no function name"
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except (ValueError, RecursionError):
            return f"call {k} ({name}): arguments are a string that is not JSON"
    if not isinstance(args, dict):
        return f"call {k} ({name}): arguments are not an object"
    return {"name": name, "arguments": args}


def parse_hermes(text: str) -> tuple[Calls, list[str]]:
    """([{"name", "arguments"}], [problems]) of the `<tool_call>` blocks in `text`; never raises."""
    calls, problems = [], []
    for k, m in enumerate(HERMES_CALL.finditer(text or ""), 1):
        if not m.group(2):
            problems.append(f"call {k} is not closed with </tool_call>")
            continue
        try:
            obj = json.loads(m.group(1).strip())
        except (ValueError, RecursionError) as exc:  # (nesting deeper than the parser's recursion limit)
            problems.append(f"call {k} is not JSON ({getattr(exc, 'msg', type(exc).__name__)})")
            continue
        got = _call_or_problem(obj.get("name"), obj.get("arguments", {}), k) if isinstance(obj, dict) \
            else f"call {k} has no function name"
        (calls if isinstance(got, dict) else problems).append(got)
    return calls, problems


def _schemas(functions: Any) -> dict[str, dict[str, Any]]:
    """{function name: {argument: its schema}} from OpenAI tools, bare functions or BFCL's `function` list."""
    out: dict[str, dict[str, Any]] = {}
    for f in functions if isinstance(functions, list) else []:
        f = f.get("function", f) if isinstance(f, dict) else None
        props = (f.get("parameters") or {}).get("properties") if isinstance(f, dict) else None
        if isinstance(f, dict) and isinstance(f.get("name"), str) and isinstance(props, dict):
            out[f["name"]] = {k: v for k, v in props.items() if isinstance(v, dict)}
    return out


def typed_value(raw: str, schema: dict[str, Any] | None) -> Any:
    """An XML call's argument text as a value: by the declared type when there is one (`string` as written;
    `integer`, `number`, `boolean`; `object` / `array` as JSON or a Python literal, as templates that write
    `| string` leave them; `null` for a nullable type), else as JSON when it parses as JSON, else as written
    (vLLM's `qwen3_coder` rules). A value that does not read as its declared type stays text, for the
    caller's type check."""
    kind = (schema or {}).get("type")
    nullable = isinstance(kind, list) and "null" in kind
    kind = next((t for t in kind if t != "null"), None) if isinstance(kind, list) else kind
    text = raw.strip()
    if text.lower() in ("null", "none") and (nullable or (kind is not None and kind not in ("string", "str"))):
        return None
    if kind in ("string", "str") or (kind is None and schema is not None and "enum" in schema):
        return raw
    try:
        if kind in ("integer", "int"):
            return int(text)
        if kind in ("number", "float"):
            value = float(text)
            return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value
        if kind in ("boolean", "bool"):
            if text.lower() in ("true", "false"):
                return text.lower() == "true"
            return raw
        if kind in ("object", "dict", "array", "list", "tuple"):
            try:
                return json.loads(text)
            except ValueError:
                return _literal(ast.parse(text, mode="eval").body)
        return json.loads(text)
    except (ValueError, SyntaxError, RecursionError, MemoryError):
        return raw


def parse_qwen3_xml(text: str, functions: Any = None) -> tuple[Calls, list[str]]:
    """([{"name", "arguments"}], [problems]) of the `<function=...>` calls in `text` (each usually in a
    `<tool_call>` block); argument values typed by `functions` (the listed functions' schemas) when given
    (`typed_value`). Never raises."""
    schemas = _schemas(functions) if functions is not None else None
    calls: Calls = []
    problems: list[str] = []
    for k, m in enumerate(XML_CALL.finditer(text or ""), 1):
        name = m.group(1).strip()
        if not name:
            problems.append(f"call {k} has no function name")
            continue
        if not m.group(3):
            problems.append(f"call {k} ({name}) is not closed with </function>")
            continue
        args: dict[str, Any] = {}
        for p in XML_PARAM.finditer(m.group(2)):
            key, raw = p.group(1).strip(), p.group(2)
            raw = raw[1:] if raw.startswith("\n") else raw  # the template frames each value with newlines
            raw = raw[:-1] if raw.endswith("\n") else raw
            declared = None if schemas is None else schemas.get(name, {}).get(key, {})
            args[key] = typed_value(raw, declared)
        calls.append({"name": name, "arguments": args})
    return calls, problems


class _NotLiteral(ValueError):
    pass


def _literal(node: ast.AST) -> Any:
    """The value of a literal node (numbers, strings, lists, tuples, dicts, sets; Python's and JSON's
    constants); `_NotLiteral` for anything that would need running code."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float, type(None))):
        return node.value
    if isinstance(node, ast.Name) and node.id in _NAMES:
        return _NAMES[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Dict) and None not in node.keys:
        keys = [_literal(k) for k in node.keys]  # type: ignore[arg-type]
        if all(isinstance(k, (str, int, float, bool)) or k is None for k in keys):
            return dict(zip(keys, (_literal(v) for v in node.values)))
    raise _NotLiteral(type(node).__name__)


def _dotted(node: ast.AST) -> str | None:
    """`a.b.c` for a name or an attribute chain of names (OLMo 3's tools may be namespaced), else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return None if head is None else f"{head}.{node.attr}"
    return None


def _pythonic_call(node: ast.AST, k: int) -> dict[str, Any] | str:
    if not isinstance(node, ast.Call):
        return f"call {k} is not a function call"
    name = _dotted(node.func)
    if name is None:
        return f"call {k} does not call a function by name"
    if node.args:
        return f"call {k} ({name}): positional arguments (write name=value)"
    args: dict[str, Any] = {}
    for kw in node.keywords:
        if kw.arg is None:
            return f"call {k} ({name}): **arguments are not allowed"
        try:
            args[kw.arg] = _literal(kw.value)
        except _NotLiteral:
            return f"call {k} ({name}): argument {kw.arg!r} is not a literal value"
    return {"name": name, "arguments": args}


def _statements(body: str) -> list[ast.AST] | None:
    """The call expressions in `body` (one per statement; a `[f(), g()]` list counts as its elements)."""
    try:
        tree = ast.parse(body.strip(), mode="exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    out: list[ast.AST] = []
    for stmt in tree.body:
        value = stmt.value if isinstance(stmt, ast.Expr) else stmt
        out += value.elts if isinstance(value, (ast.List, ast.Tuple)) else [value]
    return out


def parse_pythonic(body: str, first: int = 1) -> tuple[Calls, list[str]]:
    """The calls in a block of Python calls (one per line, or a list of them); calls numbered from `first`.
    A block that does not parse as a whole is read line by line, so its good calls are kept. Never raises."""
    nodes = _statements(body)
    if nodes is None:  # some line is broken: keep what the others say
        calls, problems = [], []
        for k, line in enumerate((ln for ln in body.splitlines() if ln.strip()), first):
            got = _statements(line)
            if got is None or len(got) != 1:
                problems.append(f"call {k} is not Python call syntax")
                continue
            c, p = parse_pythonic(line, k)
            calls += c
            problems += p
        return calls, problems
    calls, problems = [], []
    for k, node in enumerate(nodes, first):
        try:
            got = _pythonic_call(node, k)
        except (RecursionError, MemoryError):
            got = f"call {k} is nested too deeply"
        (calls if isinstance(got, dict) else problems).append(got)
    return calls, problems


def parse_olmo3(text: str) -> tuple[Calls, list[str]]:
    """([{"name", "arguments"}], [problems]) of the `<function_calls>` blocks in `text`; never raises."""
    calls: Calls = []
    problems: list[str] = []
    for m in OLMO3_CALLS.finditer(text or ""):
        k = len(calls) + len(problems) + 1
        if not m.group(2):
            problems.append(f"call {k} is in a block not closed with </function_calls>")
            continue
        if not m.group(1).strip():
            problems.append(f"call {k}: an empty <function_calls> block")
            continue
        c, p = parse_pythonic(m.group(1), k)
        calls += c
        problems += p
    return calls, problems


def _json_body(text: str) -> str:
    """Where a reply's JSON calls would start: after `<|python_tag|>`, or after Llama 4's `<|python_start|>`
    text `<|python_end|>`."""
    body = (text or "").strip()
    if body.startswith(PYTHON_TAG):
        return body[len(PYTHON_TAG):].lstrip()
    if (m := LLAMA4_TEXT.match(body)) and "<|python_end|>" in body:  # Llama 4: the turn's text, then the calls
        return body[m.end():].lstrip()
    return body


def parse_json_calls(text: str) -> tuple[Calls, list[str]]:
    """Llama 3's calls: a reply that is JSON objects `{"name": ..., "parameters": {...}}` (or `arguments`),
    separated by `;`, optionally after `<|python_tag|>`. A reply that does not open with `{` makes no call;
    one that does and is not such objects is a malformed call. Never raises."""
    body = _json_body(text)
    if not body.startswith("{"):
        return [], []
    calls: Calls = []
    problems: list[str] = []
    decoder, at, k = json.JSONDecoder(), 0, 1
    while at < len(body):
        try:
            obj, end = decoder.raw_decode(body, at)
        except (ValueError, RecursionError) as exc:
            problems.append(f"call {k} is not JSON ({getattr(exc, 'msg', type(exc).__name__)})")
            break
        args = obj.get("parameters", obj.get("arguments", {})) if isinstance(obj, dict) else None
        got = _call_or_problem(obj.get("name"), args, k) if isinstance(obj, dict) else f"call {k} has no function name"
        (calls if isinstance(got, dict) else problems).append(got)
        at, k = end, k + 1
        while at < len(body) and (body[at].isspace() or body[at] == ";"):
            at += 1
    return calls, problems


def _llama_text(content: str) -> str:
    """The turn's own text in a reply of JSON calls: Llama 4's `<|python_start|>` text, else none."""
    m = LLAMA4_TEXT.match(content or "")
    return m.group(1).strip() if m else ""


def parse_python_list(text: str) -> tuple[Calls, list[str]]:
    """Llama's Python-list calls: a reply that is `[f(a=1), g(b="x")]` (optionally between `<|python_start|>`
    and `<|python_end|>`), values read as literals (`parse_pythonic`). A reply that does not open with such a
    list makes no call. Never raises."""
    body = (text or "").strip()
    if not PY_LIST.match(body):
        return [], []
    body = body.replace("<|python_start|>", "", 1).replace("<|python_end|>", "", 1).strip()
    nodes = _statements(body)
    if nodes is None:
        return [], ["call 1 is not a Python list of calls"]
    return parse_pythonic(body)


def _mistral_json(body: str, k: int) -> tuple[Calls, list[str], int]:
    """The v3 layout: the JSON list (or object) that opens `body`; (calls, problems, the next call's number)."""
    try:
        obj, _ = json.JSONDecoder().raw_decode(body)
    except (ValueError, RecursionError) as exc:
        return [], [f"call {k} is not JSON ({getattr(exc, 'msg', type(exc).__name__)})"], k + 1
    calls, problems = [], []
    for item in obj if isinstance(obj, list) else [obj]:
        args = item.get("arguments", item.get("parameters", {})) if isinstance(item, dict) else None
        got = _call_or_problem(item.get("name"), args, k) if isinstance(item, dict) else f"call {k} has no function name"
        if isinstance(got, dict) and isinstance(item.get("id"), str) and item["id"]:
            got["id"] = item["id"]
        (calls if isinstance(got, dict) else problems).append(got)
        k += 1
    return calls, problems, k


def parse_mistral(text: str) -> tuple[Calls, list[str]]:
    """([{"name", "arguments"[, "id"]}], [problems]) of the calls after `[TOOL_CALLS]` in `text`, in any of
    Mistral's layouts (module docstring); a call's `id` is kept where the model wrote one. Never raises."""
    calls: Calls = []
    problems: list[str] = []
    parts = (text or "").split(MISTRAL_CALLS)[1:]
    k = 1
    for part in parts:
        body = part.lstrip()
        if body.startswith(("[", "{")):
            c, p, k = _mistral_json(body, k)
            calls, problems = calls + c, problems + p
            continue
        m = MISTRAL_NAME.match(part)
        if not m:
            problems.append(f"call {k} has no function name")
            k += 1
            continue
        name, call_id, rest = m.group(1), m.group(2), part[m.end():]
        try:
            args, _ = json.JSONDecoder().raw_decode(rest)
        except (ValueError, RecursionError) as exc:
            problems.append(f"call {k} ({name}): arguments are not JSON ({getattr(exc, 'msg', type(exc).__name__)})")
            k += 1
            continue
        got = _call_or_problem(name, args, k)
        if isinstance(got, dict) and call_id:
            got["id"] = call_id
        (calls if isinstance(got, dict) else problems).append(got)
        k += 1
    return calls, problems


def parse_deepseek(text: str) -> tuple[Calls, list[str]]:
    """([{"name", "arguments"}], [problems]) of DeepSeek's `<｜tool▁call▁begin｜>` calls in `text`: V3.1's
    `NAME<｜tool▁sep｜>{...}`, or V3's and R1's `function<｜tool▁sep｜>NAME` and a fenced JSON block. Never raises."""
    calls: Calls = []
    problems: list[str] = []
    for k, m in enumerate(DS_CALL.finditer(text or ""), 1):
        if not m.group(2):
            problems.append(f"call {k} is not closed with {DS_END}")
            continue
        head, sep, rest = m.group(1).partition(DS_SEP)
        if not sep:
            problems.append(f"call {k} has no {DS_SEP}")
            continue
        name = head.strip()
        if name == "function" and rest.strip():  # V3 / R1: the name on the first line, then fenced JSON
            name, _, rest = rest.strip().partition("\n")
            name = name.strip()
        fenced = DS_FENCE.match(rest)
        body = (fenced.group(1) if fenced else rest).strip()
        try:
            args = json.loads(body) if body else {}
        except (ValueError, RecursionError) as exc:
            problems.append(f"call {k} ({name or '?'}): arguments are not JSON ({getattr(exc, 'msg', type(exc).__name__)})")
            continue
        got = _call_or_problem(name, args, k)
        (calls if isinstance(got, dict) else problems).append(got)
    return calls, problems


@dataclass(frozen=True)
class ToolFormat:
    """One way of writing calls: its name, its parser (`(calls, problems)`, never raises) and the regex of
    its call blocks (what comes before the first is the turn's text, unless `own_text` says what it is).
    `typed`: the parser takes the listed functions to type the argument values (formats that write values
    as text). `ids`: the template writes call ids, on the calls and on their answers (Mistral's)."""
    name: str
    parser: Callable[..., tuple[Calls, list[str]]]
    blocks: re.Pattern[str]
    marker: str
    typed: bool = False
    ids: bool = False
    own_text: Callable[[str], str] | None = None

    def parse(self, text: str, functions: Any = None) -> tuple[Calls, list[str]]:
        """The calls in `text` and the problems found; `functions` (the functions the prompt listed, OpenAI
        tools or bare) types the values of formats that write them as text. Never raises."""
        return self.parser(text, functions) if self.typed else self.parser(text)

    def text_before_calls(self, content: str) -> str:
        """The turn's own text: what comes before its first call block."""
        if self.own_text is not None:
            return self.own_text(content or "")
        return self.blocks.split(content or "")[0].strip()


HERMES = ToolFormat("hermes", parse_hermes, HERMES_CALL, "<tool_call>")
QWEN3_XML = ToolFormat("qwen3_xml", parse_qwen3_xml, re.compile(r"(?:<tool_call>\s*)?<function=.*", re.DOTALL),
                       "<function=", typed=True)
OLMO3 = ToolFormat("olmo3", parse_olmo3, OLMO3_CALLS, "<function_calls>")
LLAMA3_JSON = ToolFormat("llama3_json", parse_json_calls, JSON_CALLS, "{", own_text=_llama_text)
MISTRAL = ToolFormat("mistral", parse_mistral, MISTRAL_BLOCKS, MISTRAL_CALLS, ids=True)
PYTHONIC = ToolFormat("pythonic", parse_python_list, PY_LIST, "[", own_text=lambda content: "")
DEEPSEEK = ToolFormat("deepseek", parse_deepseek, DS_CALLS, DS_BEGIN)
FORMATS = {f.name: f for f in (HERMES, QWEN3_XML, OLMO3, LLAMA3_JSON, MISTRAL, PYTHONIC, DEEPSEEK)}


def format_in(text: str) -> ToolFormat:
    """The format a completion writes its calls in: by its markers (`[TOOL_CALLS]`, `<｜tool▁call▁begin｜>`,
    `<function=`, `<tool_call>`, `<function_calls>`), else Llama's bare JSON when the reply opens with `{`,
    `<|python_tag|>` or Llama 4's `<|python_start|>` text, else Llama's Python list when it opens with a list of
    calls, else `hermes` (no calls)."""
    text = text or ""
    if MISTRAL.marker in text:
        return MISTRAL
    if DEEPSEEK.marker in text:
        return DEEPSEEK
    if QWEN3_XML.marker in text:
        return QWEN3_XML
    if OLMO3.marker in text and HERMES.marker not in text:
        return OLMO3
    if HERMES.marker not in text and PY_LIST.match(text):
        return PYTHONIC
    if HERMES.marker not in text and _json_body(text).startswith("{"):
        return LLAMA3_JSON
    return HERMES
