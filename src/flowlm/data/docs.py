"""Document I/O: streamed, sharded jsonl (plain / .gz / .zst) and parquet readers and writers.

A document is a dict with the schema `id, text, source, metadata`. Readers never raise on a bad line:
bad JSON, bad UTF-8, a non-object, or a missing/non-string `text` goes to the `Quarantine` with
`file:line` and a reason, and is counted by the caller's `StepStats` as dropped `malformed`. A file that
cannot be read at all (a directory, a `.gz` / `.zst` / parquet file that does not decode) is a one-line
`FlowError` naming it.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from flowlm.atomic import temp_sibling
from flowlm.errors import FlowError
from flowlm.jsonlines import iter_lines, parse_object

Doc = dict[str, Any]
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst", ".json")
PARQUET_SUFFIXES = (".parquet",)


@dataclass
class Quarantine:
    """Collects malformed input records (location + reason) instead of silently skipping them."""

    items: list[dict[str, Any]] = field(default_factory=list)

    def add(self, where: str, reason: str, raw: str | None = None) -> None:
        self.items.append({"where": where, "reason": reason, "raw": (raw or "")[:200]})


def normalize_doc(obj: Any, default_id: str, default_source: str) -> Doc:
    """Validate one record and fill the optional schema fields; raises ValueError with the reason."""
    if not isinstance(obj, dict):
        raise ValueError("record is not a JSON object")
    text = obj.get("text")
    if not isinstance(text, str):
        raise ValueError("missing or non-string 'text'")
    meta = obj.get("metadata") or {}
    if not isinstance(meta, dict):
        raise ValueError("'metadata' is not an object")
    return {"id": str(obj.get("id", default_id)), "text": text,
            "source": str(obj.get("source") or default_source), "metadata": meta}


def read_jsonl(path: str | Path, quarantine: Quarantine | None = None) -> Iterator[Doc]:
    """Stream documents from a jsonl file; malformed lines go to `quarantine` (or raise FlowError).

    The lenient reader (see `flowlm.jsonlines` for the strict one it shares line decoding with).
    """
    path = Path(path)
    if not path.exists():
        raise FlowError(f"{path}: input file not found")
    for lineno, raw in iter_lines(path):
        try:
            doc = normalize_doc(parse_object(raw), f"{path.name}:{lineno}", path.stem)
        except ValueError as e:  # BadLine (not one JSON object) or a schema error
            _bad(quarantine, f"{path}:{lineno}", str(e), raw.decode("utf-8", "replace"))
            continue
        yield doc


def _bad(quarantine: Quarantine | None, where: str, reason: str, raw: str) -> None:
    if quarantine is None:
        raise FlowError(f"{where}: {reason}")
    quarantine.add(where, reason, raw)


def read_parquet(path: str | Path, quarantine: Quarantine | None = None,
                 batch_size: int = 1024) -> Iterator[Doc]:
    """Stream documents from a parquet file in record batches (row index stands in for the line)."""
    path = Path(path)
    if not path.exists():
        raise FlowError(f"{path}: input file not found")
    row = 0
    for rec in _parquet_records(path, batch_size):
        row += 1
        if isinstance(rec.get("metadata"), str):
            # Parquet writers store metadata as a JSON string so heterogeneous dicts round-trip.
            try:
                rec["metadata"] = json.loads(rec["metadata"])
            except (json.JSONDecodeError, RecursionError):
                _bad(quarantine, f"{path}:{row}", "metadata is not JSON", rec["metadata"])
                continue
        try:
            yield normalize_doc(rec, f"{path.name}:{row}", path.stem)
        except ValueError as e:
            _bad(quarantine, f"{path}:{row}", str(e), str(rec)[:200])


def _parquet_records(path: Path, batch_size: int) -> Iterator[dict[str, Any]]:
    """The rows of a parquet file as dicts; a directory or a file pyarrow cannot read is a FlowError."""
    import pyarrow.parquet as pq

    if path.is_dir():
        raise FlowError(f"{path}: is a directory, not a parquet file")
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=batch_size)
        for batch in batches:
            yield from batch.to_pylist()
    except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError, ArrowIOError an OSError
        reason = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        raise FlowError(f"{path}: not a valid parquet file ({reason})") from None


def read_docs(path: str | Path, quarantine: Quarantine | None = None) -> Iterator[Doc]:
    """Dispatch on suffix: parquet or (compressed) jsonl."""
    p = Path(path)
    if p.name.endswith(PARQUET_SUFFIXES):
        return read_parquet(p, quarantine)
    return read_jsonl(p, quarantine)


def expand_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """Expand directories and globs into a sorted list of document files (deterministic shard order)."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file()
                              and f.name.endswith(JSONL_SUFFIXES + PARQUET_SUFFIXES)))
        elif any(ch in str(p) for ch in "*?["):
            out.extend(sorted(Path(x) for x in _glob(str(p))))
        elif p.exists():
            out.append(p)
        else:
            raise FlowError(f"{p}: input path not found")
    if not out:
        raise FlowError("no input files matched: " + ", ".join(map(str, paths)))
    return out


def _glob(pattern: str) -> list[str]:
    import glob

    return glob.glob(pattern, recursive=True)


class JsonlWriter:
    """Write documents to one jsonl file (.gz / .zst by suffix), atomically renamed on close."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temp_sibling(self.path)
        raw = open(self.tmp, "wb")
        if self.path.name.endswith(".gz"):
            self._fh: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0)
        elif self.path.name.endswith(".zst"):
            import zstandard

            self._fh = zstandard.ZstdCompressor().stream_writer(raw, closefd=True)
        else:
            self._fh = raw
        self._raw = raw
        self.count = 0

    def write(self, doc: Doc) -> None:
        self._fh.write(json.dumps(doc, ensure_ascii=False).encode("utf-8") + b"\n")
        self.count += 1

    def close(self) -> None:
        self._fh.close()
        if not self._raw.closed:
            self._raw.close()
        self.tmp.replace(self.path)

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_jsonl(path: str | Path, docs: Iterable[Doc]) -> int:
    """Write documents to one jsonl file, compressed by suffix, atomically; returns the count.

    (`flowlm.atomic.write_jsonl` is the plain-text writer for rows that are not corpus documents.)
    """
    with JsonlWriter(path) as w:
        for d in docs:
            w.write(d)
        return w.count


def write_parquet(path: str | Path, docs: Iterable[Doc]) -> int:
    """Write docs to parquet; metadata is stored as a JSON string (heterogeneous dicts)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": d["id"], "text": d["text"], "source": d.get("source", ""),
             "metadata": json.dumps(d.get("metadata") or {})} for d in docs]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), str(path))
    return len(rows)


class ShardedWriter:
    """Round-robin-free sharded writer: starts a new shard every `docs_per_shard` documents."""

    def __init__(self, out_dir: str | Path, prefix: str = "part", docs_per_shard: int = 50_000,
                 suffix: str = ".jsonl.gz") -> None:
        self.out_dir = Path(out_dir)
        self.prefix, self.suffix, self.per = prefix, suffix, docs_per_shard
        self.paths: list[Path] = []
        self._w: JsonlWriter | None = None
        self._n = 0

    def write(self, doc: Doc) -> None:
        if self._w is None or self._n >= self.per:
            self._roll()
        assert self._w is not None
        self._w.write(doc)
        self._n += 1

    def _roll(self) -> None:
        if self._w is not None:
            self._w.close()
        path = self.out_dir / f"{self.prefix}-{len(self.paths):05d}{self.suffix}"
        self.paths.append(path)
        self._w = JsonlWriter(path)
        self._n = 0

    def close(self) -> list[Path]:
        if self._w is not None:
            self._w.close()
            self._w = None
        return self.paths
