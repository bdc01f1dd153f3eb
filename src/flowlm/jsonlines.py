"""Strict reading of JSON-lines input files for the CLI verbs: one object per line, errors name FILE:LINE.

Unlike `flowlm.data.docs.read_jsonl` (corpora: a bad line is quarantined and counted, the run goes on),
a user's request file is all-or-nothing: the first bad line stops the verb with a one-line `FlowError`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flowlm.errors import FlowError


def iter_json_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """`(line number, object)` for every non-blank line of `path`; FlowError on invalid JSON or a non-object."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise FlowError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise FlowError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row
