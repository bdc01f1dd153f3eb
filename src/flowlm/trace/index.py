"""A suffix-array index over token stores: where a token sequence occurs verbatim in training data.

This is infini-gram's structure (the engine behind OLMoTrace) at one-machine scale. The index directory
holds:

- `tokens.npy`  every document of every indexed store, each followed by a separator id that no
                tokenizer produces (the dtype's maximum), so no match ever runs across two documents;
- `sa.npy`      the suffix array of `tokens.npy` in numeric token order (libdivsufsort through
                `pydivsufsort`, which sorts the big-endian byte view); int32 while that view fits in
                2^31 bytes, else int64;
- `docs.npy`    int64 start of each document in `tokens.npy`, plus the end;
- `doc_store.npy`, `doc_local.npy`  which store a document comes from and its index there;
- `unigram.npy` int64 count of each token id (the span filter's unigram probabilities);
- `meta.json`   format, the stores (path, documents, tokens), tokenizer hash, sizes.

A lookup is a binary search over the suffix array: O(m log N) token comparisons for an m-token query,
read from memory-mapped arrays, so a query touches a few pages and not the corpus. The index needs about
2 bytes per token (uint16 ids) + 4 or 8 for the suffix array; building it holds the suffix array of
the byte view in memory (8 bytes per token for int32), so one index is meant for up to a few hundred
million tokens. Larger corpora are several indexes (one per store), as infini-gram shards its own.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from flowlm.atomic import atomic_dir
from flowlm.errors import FlowError

FORMAT = "flowlm.trace/1"


@dataclass
class TraceIndex:
    """An opened index (arrays are memory-mapped). `stores` lists the indexed token stores in order."""

    path: Path
    tokens: np.ndarray
    sa: np.ndarray
    docs: np.ndarray
    doc_store: np.ndarray
    doc_local: np.ndarray
    unigram: np.ndarray
    meta: dict[str, Any]

    @property
    def stores(self) -> list[dict[str, Any]]:
        return list(self.meta["stores"])

    @property
    def n_tokens(self) -> int:
        """Indexed training tokens (separators not counted)."""
        return int(self.meta["n_tokens"])

    # -- building -----------------------------------------------------------------------------------
    @classmethod
    def build(cls, out_dir: str | Path, stores: Sequence[str | Path],
              extra: dict[str, Any] | None = None) -> "TraceIndex":
        """Index the documents of `stores` (token store directories, one tokenizer) into `out_dir`, atomically;
        `extra` is added to meta.json."""
        from flowlm.data.store import TokenStore

        if not stores:
            raise FlowError("trace index: no token stores to index")
        opened = [TokenStore.open(p) for p in stores]
        hashes = {st.tokenizer_hash for st in opened}
        if len(hashes) > 1:
            raise FlowError("trace index: the stores were tokenized with different tokenizers: "
                            + ", ".join(f"{st.path} ({st.tokenizer_hash[:12]})" for st in opened))
        vocab = max(st.vocab_size for st in opened)
        dtype = np.dtype(np.uint16) if vocab < np.iinfo(np.uint16).max else np.dtype(np.uint32)
        sep = np.iinfo(dtype).max
        lengths = np.concatenate([st.doc_lengths for st in opened]).astype(np.int64)
        n_docs, n_tok = len(lengths), int(lengths.sum())
        docs = np.zeros(n_docs + 1, dtype=np.int64)
        np.cumsum(lengths + 1, out=docs[1:])  # each document is followed by one separator
        tokens = np.full(n_tok + n_docs, sep, dtype=dtype)
        keep = np.ones(len(tokens), dtype=bool)
        keep[docs[1:] - 1] = False
        tokens[keep] = np.concatenate([np.asarray(st.tokens[: st.n_tokens]) for st in opened]).astype(dtype)
        import pydivsufsort

        sa = pydivsufsort.divsufsort(tokens)
        with atomic_dir(Path(out_dir)) as tmp:
            np.save(tmp / "tokens.npy", tokens)
            np.save(tmp / "sa.npy", sa)
            np.save(tmp / "docs.npy", docs)
            np.save(tmp / "doc_store.npy", np.repeat(np.arange(len(opened), dtype=np.int32),
                                                     [len(st) for st in opened]))
            np.save(tmp / "doc_local.npy", np.concatenate([np.arange(len(st), dtype=np.int64) for st in opened]))
            np.save(tmp / "unigram.npy", np.bincount(tokens[keep], minlength=vocab).astype(np.int64))
            meta = {"format": FORMAT, "tokenizer_hash": opened[0].tokenizer_hash, "vocab_size": int(vocab),
                    "n_tokens": n_tok, "n_docs": n_docs, "dtype": dtype.name,
                    "stores": [{"path": str(st.path), "n_docs": len(st), "n_tokens": st.n_tokens} for st in opened],
                    **(extra or {})}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        return cls.open(out_dir)

    @classmethod
    def open(cls, path: str | Path) -> "TraceIndex":
        path = Path(path)
        meta_path = path / "meta.json"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise FlowError(f"{meta_path}: not a trace index ({exc})") from None
        if meta.get("format") != FORMAT:
            raise FlowError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
        arrays = {}
        for name in ("tokens", "sa", "docs", "doc_store", "doc_local", "unigram"):
            try:
                arrays[name] = np.load(path / f"{name}.npy", mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise FlowError(f"{path / (name + '.npy')}: cannot read ({exc})") from None
        if len(arrays["sa"]) != len(arrays["tokens"]) or len(arrays["docs"]) != meta["n_docs"] + 1:
            raise FlowError(f"{path}: index arrays do not match meta.json (a partial copy?); rebuild it")
        return cls(path, meta=meta, **arrays)

    # -- lookups ------------------------------------------------------------------------------------
    def _compare(self, i: int, query: np.ndarray) -> tuple[int, int]:
        """(shared prefix length, sign of suffix `sa[i]` against `query`), where a suffix that starts with
        the whole query compares equal (0)."""
        pos = int(self.sa[i])
        seg = np.asarray(self.tokens[pos: pos + len(query)])
        diff = np.flatnonzero(seg != query[: len(seg)])
        if diff.size:
            k = int(diff[0])
            return k, -1 if seg[k] < query[k] else 1
        return (len(seg), -1) if len(seg) < len(query) else (len(query), 0)

    def _bound(self, query: np.ndarray, upper: bool) -> int:
        lo, hi = 0, len(self.sa)
        while lo < hi:
            mid = (lo + hi) // 2
            sign = self._compare(mid, query)[1]
            if sign < 0 or (upper and sign == 0):
                lo = mid + 1
            else:
                hi = mid
        return lo

    def find(self, query: Sequence[int] | np.ndarray) -> tuple[int, int]:
        """The suffix-array range [lo, hi) of the suffixes that start with `query` (empty: lo == hi)."""
        q = np.asarray(query, dtype=np.int64)
        if q.size == 0:
            return 0, len(self.sa)
        return self._bound(q, upper=False), self._bound(q, upper=True)

    def count(self, query: Sequence[int] | np.ndarray) -> int:
        """How many times `query` occurs in the indexed documents."""
        lo, hi = self.find(query)
        return hi - lo

    def longest_prefix(self, query: Sequence[int] | np.ndarray) -> int:
        """The length of the longest prefix of `query` that occurs somewhere in the indexed documents.

        The suffixes sharing the most with `query` sit next to where `query` would be inserted in the
        suffix array, so one binary search and two comparisons give it."""
        q = np.asarray(query, dtype=np.int64)
        if q.size == 0:
            return 0
        at = self._bound(q, upper=False)
        return max([self._compare(i, q)[0] for i in (at - 1, at) if 0 <= i < len(self.sa)] or [0])

    def positions(self, lo: int, hi: int, limit: int) -> np.ndarray:
        """Up to `limit` token positions from the range [lo, hi), evenly spread over it, in corpus order."""
        take = np.unique(np.linspace(lo, hi - 1, num=min(limit, hi - lo)).round().astype(np.int64)) if hi > lo else []
        return np.sort(np.asarray(self.sa[take], dtype=np.int64)) if len(take) else np.zeros(0, dtype=np.int64)

    def locate(self, pos: int) -> tuple[int, int, int]:
        """(document number in the index, store number, document number in that store) of a token position."""
        doc = int(np.searchsorted(self.docs, pos, side="right")) - 1
        return doc, int(self.doc_store[doc]), int(self.doc_local[doc])

    def document(self, doc: int) -> np.ndarray:
        """The token ids of indexed document `doc` (its separator excluded)."""
        return np.asarray(self.tokens[int(self.docs[doc]): int(self.docs[doc + 1]) - 1])


def require_tokenizer(index: TraceIndex, tok: Any, what: str) -> None:
    """FlowError unless `tok` (whose origin `what` names) is the tokenizer the indexed data was made with."""
    from flowlm.model.tokenizer import tokenizer_hash

    if index.meta["tokenizer_hash"] != tokenizer_hash(tok):
        raise FlowError(f"trace: the tokenizer of {what} is not the one the data was tokenized with "
                        f"({index.stores[0]['path']})")


def store_key(stores: Sequence[Path]) -> str:
    """What identifies an index's data: the stores' resolved paths, `meta.json` bytes, and the sizes and
    modification times of `meta.json` and `tokens.npy` (a store rewritten by a re-run stage gets a new key)."""
    h = hashlib.sha256()
    for s in stores:
        if not (Path(s) / "meta.json").is_file() or not (Path(s) / "tokens.npy").is_file():
            raise FlowError(f"{s}: not a token store (no meta.json / tokens.npy)")
        h.update(str(Path(s).resolve()).encode())
        for name in ("meta.json", "tokens.npy"):
            st = (Path(s) / name).stat()
            h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
        h.update((Path(s) / "meta.json").read_bytes())
    return h.hexdigest()[:16]


def cached_index(stores: Sequence[Path], where: Path) -> TraceIndex:
    """The index of `stores` kept at `where`: opened when it was built from the same stores (`store_key`),
    built there when missing; an index of other stores there is an error, never silently reused."""
    key = store_key(stores)
    if (where / "meta.json").is_file():
        index = TraceIndex.open(where)
        if index.meta.get("key") != key:
            raise FlowError(f"--index {where}: built from other stores ({', '.join(s['path'] for s in index.stores)}); "
                            "remove it or choose another directory")
        return index
    print(f"trace: indexing {len(stores)} token store(s) into {where}", file=sys.stderr)
    return TraceIndex.build(where, stores, extra={"key": key})
