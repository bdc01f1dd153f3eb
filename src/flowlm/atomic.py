"""Atomic writes: a reader sees the previous version of a file or directory, or the complete new one.

Every temporary lives beside its destination (same directory, hence same filesystem, so the final
`rename` is one atomic step) and is named `.tmp-<name>-<pid>…`: hidden, and recognisable by cleanups
(`flowlm.train.checkpoint.prune`, the run record's artifact hashes skip `.tmp*`).

- Files (`atomic_write_text` / `_bytes` / `_json`, `write_jsonl`, or `replacing` around a writer of
  one's own): written to the temporary, then `os.replace`d over the destination. No fsync: this
  guards against torn files from a crash or a concurrent reader, not against power loss
  (`train.checkpoint` fsyncs where that matters).
- Directories (`atomic_dir`): filled in a fresh temporary directory; on success an existing destination
  is renamed aside to `.old-<name>-…`, the new one renamed in, and the old one deleted. A crash
  between those two renames leaves the previous version complete under its `.old-` name.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

StrPath = str | os.PathLike[str]


def make_dir(path: StrPath, label: str) -> Path:
    """Create directory `path` (and its parents); a file in the way, or a path that cannot be made, is a
    one-line `FlowError` that starts with `label` (e.g. `--run-dir runs/x`)."""
    from flowlm.errors import FlowError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FlowError(f"{label}: is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FlowError(f"{label}: cannot create ({exc.strerror or exc})") from None
    return path


def temp_sibling(path: StrPath) -> Path:
    """The temporary file name used for `path` by this process: `.tmp-<name>-<pid>` beside it."""
    path = Path(path)
    return path.with_name(f".tmp-{path.name}-{os.getpid()}")


@contextlib.contextmanager
def atomic_dir(dest: StrPath) -> Iterator[Path]:
    """Yield a fresh, empty temporary directory beside `dest`; on normal exit it becomes `dest`.

    On an exception the temporary directory is removed and `dest` is left untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{dest.name}-{os.getpid()}-{secrets.token_hex(4)}"  # unique even for two threads
    tmp = dest.with_name(f".tmp-{tag}")
    tmp.mkdir()  # not tempfile.mkdtemp: that makes it 0700, and checkpoints are shared read-only
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = dest.with_name(f".old-{tag}")
    if dest.exists():  # moved aside first: a rename cannot replace a non-empty directory
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def replacing(path: StrPath) -> Iterator[Path]:
    """Yield the temporary sibling of `path` to write; on normal exit it replaces `path`, on an
    exception it is removed and `path` is left untouched (parent directories are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: StrPath, data: bytes) -> None:
    """Write `data` to `path` atomically (parent directories are created)."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: StrPath, text: str) -> None:
    """Write `text` to `path` atomically as UTF-8 (parent directories are created)."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: StrPath, obj: Any, indent: int | None = 1) -> None:
    """Write `obj` as JSON to `path` atomically (`indent=None`: one line)."""
    atomic_write_text(path, json.dumps(obj, indent=indent))


def write_jsonl(path: StrPath, rows: Iterable[dict[str, Any]]) -> int:
    """Write one JSON object per line (UTF-8, not ASCII-escaped) to `path` atomically; returns the count.

    Plain text only; `flowlm.data.docs.write_jsonl` writes corpus documents, compressed by suffix.
    """
    n = 0
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n
