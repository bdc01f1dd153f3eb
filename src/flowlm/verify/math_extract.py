"""Final-answer extraction from math completions.

Extractors, tried in the order the strictness level allows:

- `boxed`: content of the last `\\boxed{…}` / `\\fbox{…}` (balanced, nested braces) or `\\boxed 5`;
- `final`: Minerva style "The final answer is …" (up to ". I hope" / end of line, `$` removed);
- `gsm8k`: GSM8K's `#### 42`;
- `last_number`: the last number in the text (commas removed), the loosest fallback.

Strictness levels: `strict` = boxed only; `standard` = boxed, final, gsm8k; `lenient` = standard plus
last number.
"""

from __future__ import annotations

import re
from typing import Callable

STRICTNESS = ("strict", "standard", "lenient")

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*")
_FINAL_RE = re.compile(r"final answer is[:\s]*(.+?)(?:\.\s*I hope|\n|$)", re.I | re.S)
_GSM_RE = re.compile(r"####\s*\$?\s*([-+]?[\d,]*\.?\d+)")
_NUM_RE = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:/\d+)?|[-+]?\.\d+")


def _closing_braces(text: str) -> dict[int, int]:
    """Each `{` that closes -> the index of its `}` (depth counting, one pass; `\\{` is not special)."""
    opened: list[int] = []
    pairs: dict[int, int] = {}
    for i, ch in enumerate(text):
        if ch == "{":
            opened.append(i)
        elif ch == "}" and opened:
            pairs[opened.pop()] = i
    return pairs


def last_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{…}` (or `\\boxed x`) in `text`. Linear in the text: braces are
    paired once, not rescanned per `\\boxed` (a model's 6,000 unclosed `\\boxed{` took 9.5 s)."""
    pairs: dict[int, int] | None = None
    for m in reversed(list(_BOX_RE.finditer(text))):
        end = m.end()
        if end < len(text) and text[end] == "{":
            if pairs is None:
                pairs = _closing_braces(text)
            close = pairs.get(end)
            if close is not None:
                return text[end + 1:close].strip()
        elif m.group(0).endswith(" ") or m.group(0).endswith("\t"):
            # `\boxed 5` form: the argument is the next token.
            tok = re.match(r"[^\s$]+", text[end:])
            if tok:
                return tok.group(0).strip()
    return None


def final_answer(text: str) -> str | None:
    """Minerva-style "final answer is X" (last occurrence), `$`-delimiters and a final period removed."""
    matches = list(_FINAL_RE.finditer(text))
    if not matches:
        return None
    ans = matches[-1].group(1).strip()
    boxed = last_boxed(ans)
    if boxed is not None:
        return boxed
    ans = ans.strip().strip("$").strip()
    return ans.rstrip(".").strip() or None


def gsm8k_answer(text: str) -> str | None:
    """The number after the last `####`."""
    matches = _GSM_RE.findall(text)
    return matches[-1].replace(",", "") if matches else None


def last_number(text: str) -> str | None:
    """The last number (integer, decimal or simple fraction) in the text, commas removed."""
    matches = _NUM_RE.findall(text)
    if not matches:
        return None
    return matches[-1].replace(",", "").rstrip(".")


_ORDER: dict[str, list[tuple[str, Callable[[str], str | None]]]] = {
    "strict": [("boxed", last_boxed)],
    "standard": [("boxed", last_boxed), ("final", final_answer), ("gsm8k", gsm8k_answer)],
}
_ORDER["lenient"] = _ORDER["standard"] + [("last_number", last_number)]


def extract(text: str, strictness: str = "standard") -> tuple[str | None, str]:
    """(answer, method) using the extractors allowed by `strictness`; (None, "none") if nothing found."""
    if strictness not in _ORDER:
        raise ValueError(f"strictness must be one of {STRICTNESS}, got {strictness!r}")
    for method, fn in _ORDER[strictness]:
        ans = fn(text)
        if ans:
            return ans, method
    return None, "none"
