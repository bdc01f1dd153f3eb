"""Reading JSON-lines files: one JSON object per line, plain or compressed (`.gz`, `.zst`) by suffix.

Two readers share the line handling here (`iter_lines`, `parse_object`):

- strict, for files a user hands a verb (request files, benchmark files, reference results):
  `iter_json_objects` / `read_json_objects`. The first bad line stops the run with a one-line
  `FlowError` naming FILE:LINE.
- lenient, for corpora: `flowlm.data.docs.read_jsonl`. A bad line is quarantined with its FILE:LINE
  and reason and counted as dropped `malformed`; the run goes on.

Blank lines are skipped by both.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from flowlm.errors import FlowError


class BadLine(ValueError):
    """A line that is not one JSON object; the message is the reason (no location)."""


def open_binary(path: str | Path) -> IO[bytes]:
    """`path` opened for reading bytes, decompressed when its name ends in `.gz` or `.zst`."""
    name = Path(path).name
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".zst"):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
    return open(path, "rb")


def iter_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """`(line number, raw line)` for every non-blank line of `path` (numbers count blank lines too)."""
    with open_binary(path) as fh:
        reader = fh if isinstance(fh, io.BufferedReader) else io.BufferedReader(fh)  # type: ignore[arg-type]
        for lineno, raw in enumerate(reader, start=1):
            if raw.strip():
                yield lineno, raw


def parse_object(raw: bytes) -> dict[str, Any]:
    """Decode one raw line into a JSON object; `BadLine` says why it is not one."""
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadLine("invalid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise BadLine(f"invalid JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise BadLine(f"expected a JSON object, got {type(row).__name__}")
    return row


def iter_json_objects(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """`(line number, object)` for every non-blank line of `path`; FlowError FILE:LINE on a bad line."""
    path = Path(path)
    if not path.exists():  # exists, not is_file: /dev/stdin is a fine request file
        raise FlowError(f"{path}: file not found")
    for lineno, raw in iter_lines(path):
        try:
            row = parse_object(raw)
        except BadLine as exc:
            raise FlowError(f"{path}:{lineno}: {exc}") from None
        yield lineno, row


def read_json_objects(path: str | Path) -> list[dict[str, Any]]:
    """All objects of `path` as a list (strict, like `iter_json_objects`)."""
    return [row for _, row in iter_json_objects(path)]
