"""Reading JSON-lines files: one JSON object per line, plain or compressed (`.gz`, `.zst`) by suffix.

Two readers share the line handling here (`iter_lines`, `parse_object`):

- strict, for files a user hands a verb (request files, benchmark files, reference results):
  `iter_json_objects` / `read_json_objects`. The first bad line stops the run with a one-line
  `FlowError` naming FILE:LINE.
- lenient, for corpora: `flowlm.data.docs.read_jsonl`. A bad line is quarantined with its FILE:LINE
  and reason and counted as dropped `malformed`; the run goes on.

Blank lines are skipped by both. A directory, or a `.gz` / `.zst` file that does not decompress, is a
one-line `FlowError` naming the file for both.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from flowlm.errors import FlowError


class BadLine(ValueError):
    """A line that is not one JSON object; the message is the reason (no location)."""


def compression(path: str | Path) -> str | None:
    """`gzip` or `zstd` when the name of `path` says the file is compressed, else None."""
    name = Path(path).name
    return "gzip" if name.endswith(".gz") else "zstd" if name.endswith(".zst") else None


def open_binary(path: str | Path) -> IO[bytes]:
    """`path` opened for reading bytes, decompressed when its name ends in `.gz` or `.zst`.

    A directory is a FlowError here; a file that does not decompress fails when read, so read it inside
    `decoding(path)` (as `iter_lines` and `read_bytes` do) to get the FlowError naming it.
    """
    if Path(path).is_dir():
        raise FlowError(f"{path}: is a directory, not a JSONL file")
    name = Path(path).name
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".zst"):
        return io.BufferedReader(_ZstdReader(path), buffer_size=1 << 20)
    return open(path, "rb")


class _ZstdReader(io.RawIOBase):
    """The decompressed bytes of every frame of a `.zst` file, read as a stream.

    Unlike `zstandard`'s own stream reader, a file that ends inside a frame (truncated) is an error
    (`zstandard.ZstdError`), not a silent early end.
    """

    def __init__(self, path: str | Path) -> None:
        import zstandard

        super().__init__()
        self._zstd = zstandard
        self._raw = open(path, "rb")
        self._frame = zstandard.ZstdDecompressor().decompressobj()
        self._in_frame = False  # bytes of the current frame were fed and it has not ended
        self._buf = memoryview(b"")  # decompressed bytes not yet handed out

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            chunk = self._raw.read(1 << 16)
            if not chunk:
                if self._in_frame:
                    raise self._zstd.ZstdError("the file ends inside a frame (truncated)")
                return 0
            self._feed(chunk)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]  # a view: no copy
        return n

    def _feed(self, chunk: bytes) -> None:
        parts = []
        while chunk:
            if self._frame.eof:  # the previous frame ended: the next one starts here
                self._frame = self._zstd.ZstdDecompressor().decompressobj()
            parts.append(self._frame.decompress(chunk))
            self._in_frame = not self._frame.eof
            chunk = self._frame.unused_data if self._frame.eof else b""
        self._buf = memoryview(b"".join(parts))

    def close(self) -> None:
        self._raw.close()
        super().close()


@contextlib.contextmanager
def decoding(path: str | Path) -> Iterator[None]:
    """Turn a decompression failure while reading `path` into `FlowError: PATH: not a valid gzip file (...)`."""
    kind = compression(path)
    errors: tuple[type[BaseException], ...] = ()
    if kind == "gzip":
        errors = (gzip.BadGzipFile, EOFError, zlib.error)
    elif kind == "zstd":
        import zstandard

        errors = (zstandard.ZstdError,)
    try:
        yield
    except errors as exc:
        reason = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FlowError(f"{path}: not a valid {kind} file ({reason})") from None


def read_bytes(path: str | Path) -> bytes:
    """The whole (decompressed) content of `path`; FlowError for a directory or a corrupt compressed file."""
    with decoding(path), open_binary(path) as fh:
        return fh.read()


def iter_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """`(line number, raw line)` for every non-blank line of `path` (numbers count blank lines too)."""
    with decoding(path), open_binary(path) as fh:
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
    except RecursionError:  # json raises this, not JSONDecodeError, on nesting past its limit
        raise BadLine("invalid JSON (nested too deeply)") from None
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
