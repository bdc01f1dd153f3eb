"""Token store: a directory of memory-mapped token ids, document offsets and an optional label mask.

Layout (see docs/interfaces.md):

- `tokens.npy`      all documents' ids concatenated; uint16 when the vocabulary fits (≤ 65,536) else
                    uint32; opened with `np.load(mmap_mode="r")` so a store larger than RAM is fine.
- `offsets.npy`     int64, `n_docs + 1` entries; document `i` is `tokens[offsets[i]:offsets[i+1]]`.
- `label_mask.npy`  optional uint8, same length as tokens; 1 = this token is a training *target*
                    (SFT: tokens inside assistant turns).
- `meta.json`       format, dtype, vocab_size, tokenizer_hash, n_docs, n_tokens, max_token_id, sources
                    (documents per source), has_label_mask, free `meta`.

Writes stream documents into a temporary sibling directory and rename it into place at the end
(`flowlm.atomic.atomic_dir`), so a crash or an exception never leaves a half-written store behind.
`open()` validates everything it can cheaply and raises a one-line `FlowError` naming the offending file.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from flowlm.atomic import atomic_dir
from flowlm.data.chat import AssistantLoss, is_chat_row, render_chat_example
from flowlm.errors import FlowError

FORMAT = "flowlm.tokens/1"
UINT16_MAX_VOCAB = 65_536
# Stores up to this many tokens get a full max-id scan on open (≈ 0.1 s per 100M uint16 ids); larger ones
# are checked on 64 evenly spaced 1M-token blocks plus the max id recorded at write time.
FULL_SCAN_TOKENS = 1 << 27
_SAMPLE_BLOCKS, _SAMPLE_BLOCK = 64, 1 << 20
_WRITE_CHUNK = 1 << 20


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in 16 bits, else uint32."""
    if vocab_size <= 0:
        raise FlowError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size <= UINT16_MAX_VOCAB else np.dtype(np.uint32)


class _NpyStreamWriter:
    """Appends 1-D chunks to a raw file, then turns it into a `.npy` once the length is known."""

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self.path, self.dtype, self.n = path, dtype, 0
        self.raw_path = path.with_suffix(".raw")
        self.fh = open(self.raw_path, "wb")
        self.buf: list[np.ndarray] = []
        self.buffered = 0

    def append(self, arr: np.ndarray) -> None:
        self.buf.append(arr)
        self.buffered += len(arr)
        if self.buffered >= _WRITE_CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self.buf:
            np.concatenate(self.buf).astype(self.dtype, copy=False).tofile(self.fh)
            self.n += self.buffered
            self.buf, self.buffered = [], 0

    def finish(self) -> None:
        self._flush()
        self.fh.close()
        out = np.lib.format.open_memmap(self.path, mode="w+", dtype=self.dtype, shape=(self.n,))
        if self.n:
            src = np.memmap(self.raw_path, dtype=self.dtype, mode="r", shape=(self.n,))
            for i in range(0, self.n, _WRITE_CHUNK * 16):
                out[i : i + _WRITE_CHUNK * 16] = src[i : i + _WRITE_CHUNK * 16]
            del src
        out.flush()
        del out
        self.raw_path.unlink()


def _write_pairs(
    tmp: Path,
    pairs: Iterable[tuple[np.ndarray, np.ndarray | None]],
    vocab_size: int,
    keep_mask: bool | None,
) -> dict[str, Any]:
    """Stream `(ids, mask)` pairs into `tmp`. `keep_mask=None` keeps the mask only if one was given."""
    dtype = dtype_for_vocab(vocab_size)
    toks = _NpyStreamWriter(tmp / "tokens.npy", dtype)
    masks = _NpyStreamWriter(tmp / "label_mask.npy", np.dtype(np.uint8))
    offsets, max_id, saw_mask = [0], -1, False
    for i, (ids, mask) in enumerate(pairs):
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise FlowError(f"tokens.npy: document {i} is not a 1-D id sequence")
        if len(ids):
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= vocab_size:
                bad = hi if hi >= vocab_size else lo
                raise FlowError(f"tokens.npy: document {i} has id {bad} outside [0, {vocab_size})")
            max_id = max(max_id, hi)
        if mask is not None:
            saw_mask = True
            mask = np.asarray(mask, dtype=np.uint8)
            if mask.shape != ids.shape:
                raise FlowError(f"label_mask.npy: document {i} mask length {len(mask)} != {len(ids)} tokens")
        toks.append(ids)
        masks.append(np.ones(len(ids), np.uint8) if mask is None else mask)
        offsets.append(offsets[-1] + len(ids))
    toks.finish()
    masks.finish()
    if not (saw_mask if keep_mask is None else keep_mask):
        (tmp / "label_mask.npy").unlink()
    np.save(tmp / "offsets.npy", np.asarray(offsets, dtype=np.int64))
    return {"dtype": dtype.name, "n_docs": len(offsets) - 1, "n_tokens": offsets[-1], "max_token_id": max_id,
            "has_label_mask": (tmp / "label_mask.npy").exists()}


class TokenStore:
    """A read-only view of a token store directory (arrays are memory-mapped)."""

    def __init__(self, path: Path, tokens: np.ndarray, offsets: np.ndarray, label_mask: np.ndarray | None,
                 meta: dict[str, Any]) -> None:
        self.path, self.tokens, self.offsets, self.label_mask, self.meta = path, tokens, offsets, label_mask, meta

    # -- writing ------------------------------------------------------------------------------------
    @classmethod
    def write(
        cls,
        out_dir: str | Path,
        docs: Iterable[Sequence[int] | np.ndarray],
        *,
        vocab_size: int,
        tokenizer_hash: str,
        label_masks: Iterable[Sequence[int] | np.ndarray] | None = None,
        meta: Mapping[str, Any] | None = None,
        sources: Mapping[str, int] | None = None,
    ) -> "TokenStore":
        """Write `docs` (token id sequences) atomically to `out_dir` and return the opened store.

        `label_masks`, when given, must yield one 0/1 sequence per document (same lengths).
        `sources` is an optional `{source: n_docs}` tally recorded in meta.json.
        """
        if label_masks is None:
            pairs: Iterable[tuple[Any, Any]] = ((d, None) for d in docs)
        else:
            pairs = _zip_strict(docs, label_masks)
        return cls._write(Path(out_dir), pairs, vocab_size=vocab_size, tokenizer_hash=tokenizer_hash,
                          keep_mask=label_masks is not None, meta=meta, sources=sources)

    @classmethod
    def _write(cls, out_dir: Path, pairs: Iterable[tuple[Any, Any]], *, vocab_size: int, tokenizer_hash: str,
               keep_mask: bool | None, meta: Mapping[str, Any] | None,
               sources: Mapping[str, int] | Iterable[str] | None) -> "TokenStore":
        with atomic_dir(out_dir) as tmp:
            info = _write_pairs(tmp, pairs, vocab_size, keep_mask)
            tally = dict(sources) if isinstance(sources, Mapping) else dict(Counter(sources or ()))
            record = {"format": FORMAT, **info, "vocab_size": int(vocab_size), "tokenizer_hash": tokenizer_hash,
                      "sources": tally, "meta": dict(meta or {})}
            (tmp / "meta.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        return cls.open(out_dir)

    # -- reading ------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, expect_vocab_size: int | None = None,
             expect_tokenizer_hash: str | None = None, full_scan: bool | None = None) -> "TokenStore":
        """Open and validate a store. `full_scan=None` scans every id for stores ≤ 2^27 tokens, else samples."""
        path = Path(path)
        if not path.is_dir():
            raise FlowError(f"{path}: token store directory not found")
        meta = _read_meta(path / "meta.json")
        tokens = _load_npy(path / "tokens.npy")
        offsets = _load_npy(path / "offsets.npy")
        mask = _load_npy(path / "label_mask.npy") if meta.get("has_label_mask") else None
        _check_tokens(path, tokens, meta, expect_vocab_size, full_scan)
        _check_offsets(path, offsets, len(tokens), meta)
        if mask is not None and (mask.dtype != np.uint8 or mask.shape != tokens.shape):
            raise FlowError(f"{path / 'label_mask.npy'}: expected uint8 of length {len(tokens)}, "
                            f"got {mask.dtype} {mask.shape}")
        if expect_tokenizer_hash is not None and meta.get("tokenizer_hash") != expect_tokenizer_hash:
            raise FlowError(f"{path / 'meta.json'}: tokenizer_hash {meta.get('tokenizer_hash')!r} does not match "
                            f"the tokenizer in use ({expect_tokenizer_hash!r}); re-tokenize the data")
        return cls(path, tokens, offsets, mask, meta)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def tokenizer_hash(self) -> str:
        return str(self.meta["tokenizer_hash"])

    @property
    def doc_lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def doc(self, i: int) -> np.ndarray:
        """Token ids of document `i` (a memmap slice; copy before mutating)."""
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def doc_mask(self, i: int) -> np.ndarray | None:
        """Label mask of document `i`, or None when the store has no mask."""
        if self.label_mask is None:
            return None
        return self.label_mask[self.offsets[i] : self.offsets[i + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.doc(i) for i in range(len(self)))


def _zip_strict(docs: Iterable[Any], masks: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
    # zip(strict=True) raises a ValueError without naming the file; re-raise as a FlowError.
    try:
        yield from zip(docs, masks, strict=True)
    except ValueError as e:
        if "zip()" in str(e):
            raise FlowError("label_mask.npy: label_masks and docs have different lengths") from None
        raise


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e).strip() else type(e).__name__


def _read_meta(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise FlowError(f"{path}: missing (not a token store, or an interrupted write)")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FlowError(f"{path}: corrupt JSON ({_first_line(e)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise FlowError(f"{path}: not a {FORMAT} meta file")
    for key in ("dtype", "vocab_size", "tokenizer_hash", "n_docs", "n_tokens"):
        if key not in meta:
            raise FlowError(f"{path}: missing key {key!r}")
    return meta


def _load_npy(path: Path) -> np.ndarray:
    if not path.exists():
        raise FlowError(f"{path}: missing")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise FlowError(f"{path}: corrupt .npy ({_first_line(e)})") from None
    if arr.ndim != 1:
        raise FlowError(f"{path}: expected a 1-D array, got shape {arr.shape}")
    return arr


def _check_tokens(path: Path, tokens: np.ndarray, meta: dict[str, Any], expect_vocab: int | None,
                  full_scan: bool | None) -> None:
    f = path / "tokens.npy"
    vocab = int(meta["vocab_size"])
    if expect_vocab is not None and vocab != expect_vocab:
        raise FlowError(f"{path / 'meta.json'}: vocab_size {vocab} != expected {expect_vocab}")
    want = dtype_for_vocab(vocab)
    if tokens.dtype != want or meta["dtype"] != want.name:
        raise FlowError(f"{f}: dtype {tokens.dtype} (meta says {meta['dtype']}) but vocab_size {vocab} "
                        f"needs {want.name}")
    if len(tokens) != int(meta["n_tokens"]):
        raise FlowError(f"{f}: {len(tokens)} tokens but meta.json says {meta['n_tokens']} (truncated file?)")
    if not len(tokens):
        return
    scan = len(tokens) <= FULL_SCAN_TOKENS if full_scan is None else full_scan
    if scan:
        hi = max(int(tokens[i : i + (1 << 24)].max()) for i in range(0, len(tokens), 1 << 24))
    else:
        starts = np.linspace(0, max(len(tokens) - _SAMPLE_BLOCK, 0), _SAMPLE_BLOCKS).astype(np.int64)
        hi = max(int(tokens[s : s + _SAMPLE_BLOCK].max()) for s in starts)
        hi = max(hi, int(meta.get("max_token_id", -1)))
    if hi >= vocab:
        raise FlowError(f"{f}: token id {hi} >= vocab_size {vocab} ({'full scan' if scan else 'sampled'})")


def _check_offsets(path: Path, offsets: np.ndarray, n_tokens: int, meta: dict[str, Any]) -> None:
    f = path / "offsets.npy"
    if offsets.dtype != np.int64:
        raise FlowError(f"{f}: dtype {offsets.dtype}, expected int64")
    if len(offsets) != int(meta["n_docs"]) + 1:
        raise FlowError(f"{f}: {len(offsets)} entries but meta.json says n_docs={meta['n_docs']} (expected n_docs+1)")
    if offsets[0] != 0 or offsets[-1] != n_tokens:
        raise FlowError(f"{f}: must start at 0 and end at n_tokens={n_tokens}, got {offsets[0]}..{offsets[-1]}")
    if np.any(np.diff(offsets) < 0):
        raise FlowError(f"{f}: offsets are not monotone non-decreasing")


def _doc_text(doc: Any, i: int) -> str:
    if isinstance(doc, str):
        return doc
    if isinstance(doc, Mapping) and isinstance(doc.get("text"), str):
        return doc["text"]
    raise FlowError(f"document {i}: expected a string or a dict with 'text' (or 'messages'), got {type(doc).__name__}")


def _encoded_pairs(tokenizer: Any, docs: Iterable[Any], append_eos: bool, batch: int, sources: Counter,
                   enable_thinking: bool, assistant_loss: AssistantLoss,
                   source: str | None = None) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Yield `(ids, mask)`: plain text in batches through the Rust encoder, chat examples one by one."""
    eos = tokenizer.eos_token_id
    backend = tokenizer.backend_tokenizer
    # encode_batch_fast skips offset bookkeeping (tokenizers ≥ 0.20); ids are identical.
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    tail = np.asarray([eos] if append_eos else [], dtype=np.int64)
    pending: list[str] = []

    def flush() -> Iterator[tuple[np.ndarray, None]]:
        for enc in encode(pending, add_special_tokens=False):
            yield np.concatenate([np.asarray(enc.ids, dtype=np.int64), tail]), None
        pending.clear()

    for i, doc in enumerate(docs):
        sources[doc.get("source", "unknown") if isinstance(doc, Mapping) else "text"] += 1
        if isinstance(doc, Mapping) and is_chat_row(doc):
            yield from flush()
            ids, mask = render_chat_example(tokenizer, doc, assistant_loss=assistant_loss,
                                            enable_thinking=enable_thinking,
                                            where=f"{source}:{i + 1}" if source else f"document {i}")
            # The appended EOS is not a target: SFT stops at <|im_end|>, which the mask already covers.
            yield (np.concatenate([np.asarray(ids, np.int64), tail]),
                   np.concatenate([np.asarray(mask, np.uint8), np.zeros(len(tail), np.uint8)]))
            continue
        pending.append(_doc_text(doc, i))
        if len(pending) >= batch:
            yield from flush()
    yield from flush()


def tokenize_to_store(
    tokenizer: Any,
    docs: Iterable[str | Mapping[str, Any]],
    out_dir: str | Path,
    *,
    append_eos: bool = True,
    batch: int = 1024,
    meta: Mapping[str, Any] | None = None,
    enable_thinking: bool = True,
    assistant_loss: AssistantLoss = "all",
    source: str | None = None,
) -> TokenStore:
    """Tokenize documents into a new store at `out_dir` (atomic) and return it opened.

    A document is a string, a dict with `text` (its `source` is tallied in meta.json), or a chat example
    (a dict with `messages`, or another schema of `flowlm.data.chat`), which is rendered by
    `render_chat_example` and gets a label mask covering the assistant turns: all of them, or the final
    one with `assistant_loss="last"`. `enable_thinking` is the mode of conversations without a `/think`
    or `/no_think` flag. If any chat example is present the store has `label_mask.npy` (plain-text
    documents are all-ones there). `append_eos` appends `<|endoftext|>` so packed documents end cleanly.
    `source`: the JSONL file the documents are the lines of, so an error names `FILE:LINE`.
    """
    from flowlm.model.tokenizer import tokenizer_hash

    sources: Counter = Counter()
    pairs = _encoded_pairs(tokenizer, docs, append_eos, batch, sources, enable_thinking, assistant_loss, source)
    full_meta = {"eos_id": tokenizer.eos_token_id, "pad_id": tokenizer.pad_token_id, **dict(meta or {})}
    return TokenStore._write(Path(out_dir), pairs, vocab_size=len(tokenizer), tokenizer_hash=tokenizer_hash(tokenizer),
                             keep_mask=None, meta=full_meta, sources=sources)
