"""datatrove-comparable MinHash signatures (`MinHashCfg(hash_family="datatrove")`).

Independent hash functions make every pair near the LSH threshold a coin flip for each tool, so two
correct MinHash implementations disagree on those pairs even with the same bands x rows. This module
computes signatures the way datatrove 0.10.1's `MinhashDedupSignature` defines them (its behaviour,
re-implemented here from the documented algorithm), so that with the same seed both tools draw the
same permutations and make the same LSH decisions:

- normalisation (`simplify_text` defaults): lowercase; numbers, with an optional decimal part, -> "0";
  punctuation -> space (ASCII punctuation, C0/C1 controls except tab/newline, a list of CJK and
  typographic marks); whitespace collapsed; NFD with non-spacing marks (Mn) removed;
- words: whitespace split, or spaCy's blank English tokenizer (`word_split="spacy"`, datatrove's
  English default: it also splits "cannot" -> "can not", "id" -> "i d", "0km" -> "0 km", ...). spaCy
  tokenises each whitespace-separated chunk on its own, so it is consulted once per distinct chunk,
  and not at all for plain ASCII words that are not special cases;
- shingles: the hash of the n words joined by one space: xxh64 / xxh32 (default) or the first 8 / 4
  bytes of SHA-1 (little endian); documents with fewer than n words have no shingle (never dups);
- permutations: `np.random.RandomState(seed)` draws a in [1, p) then b in [0, p) (p = 2^61 - 1), one
  per hash; h(x) = ((a * x + b) mod 2^64) mod p (uint64 arithmetic wraps before the reduction), masked
  to 32 bits at precision 32; the signature is the per-permutation minimum.
Band keys and clustering stay flowlm's (a band key stands for the band's tuple of rows).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any, Callable

import numpy as np

from flowlm.extras import require

MERSENNE_61 = np.uint64((1 << 61) - 1)
_TYPOGRAPHIC = "—”％１〈、━【「」，】；“《„’∶´．（–？！：～«〉》）。…►»"


def _punct_to_space() -> dict[int, str]:
    chars = {chr(c) for c in range(0x21, 0x7F) if not chr(c).isalnum()}  # ASCII punctuation
    chars |= {chr(c) for c in [*range(0, 9), *range(11, 32), *range(127, 160)]}  # controls, NBSP
    chars |= set(_TYPOGRAPHIC)
    return {ord(c): " " for c in chars}


_PUNCT = _punct_to_space()
_NUMBER = re.compile(r"\d+(?:[.,،٫⎖⎗⎘]\d+)?")  # str patterns: \d is every Unicode decimal digit (Nd)


def normalize(text: str, norm_numbers: bool = True) -> str:
    text = text.lower()
    if norm_numbers:
        text = _NUMBER.sub("0", text)
    text = " ".join(text.translate(_PUNCT).split())
    if not text.isascii():
        text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    return text.strip()


class SpacySplitter:
    """spaCy blank-English word tokenisation, decided once per distinct whitespace chunk.

    A chunk of ASCII letters that is not one of spaCy's special cases ("cannot", "id", "dont", ...)
    cannot be split by its prefix / suffix / infix rules (they all need digits or punctuation), so it
    is kept without asking spaCy; other new chunks are tokenised by spaCy once and remembered. A
    document whose chunks are all known to stay whole is returned as `text.split()` directly."""

    def __init__(self, max_cache: int = 1_000_000) -> None:
        spacy = require("spacy", "data", "MinHash word_split 'spacy'")
        self.tokenizer = spacy.blank("en").tokenizer
        self.special = frozenset(self.tokenizer.rules)
        self.whole: set[str] = set()  # chunks spaCy keeps as one token
        self.split: dict[str, list[str]] = {}  # chunks spaCy splits
        self.max_cache = max_cache

    def _learn(self, chunk: str) -> None:
        if chunk.isascii() and chunk.isalpha() and chunk not in self.special:
            self.whole.add(chunk)
            return
        toks = [t.text.strip() for t in self.tokenizer(chunk) if t.text.strip()]
        if toks == [chunk]:
            self.whole.add(chunk)
        else:
            self.split[chunk] = toks

    def __call__(self, text: str) -> list[str]:
        if len(self.whole) + len(self.split) > self.max_cache:
            self.whole.clear()
            self.split.clear()
        chunks = text.split()
        uniq = set(chunks)
        for chunk in uniq - self.whole - self.split.keys():
            self._learn(chunk)
        if uniq.isdisjoint(self.split):
            return chunks
        out: list[str] = []
        for chunk in chunks:
            toks = self.split.get(chunk)
            if toks is None:
                out.append(chunk)
            else:
                out.extend(toks)
        return out


def make_splitter(kind: str) -> Callable[[str], list[str]]:
    return SpacySplitter() if kind == "spacy" else str.split


def hash_function(hash_fc: str, precision: int) -> Callable[[str], int]:
    if hash_fc == "xxhash":
        xxhash = require("xxhash", "data", "MinHash hash_family 'datatrove' with hash_fc 'xxhash'")
        return xxhash.xxh64_intdigest if precision == 64 else xxhash.xxh32_intdigest
    n = precision // 8
    return lambda s: int.from_bytes(hashlib.sha1(s.encode("utf-8")).digest()[:n], "little")


def shingles(text: str, cfg: Any, split: Callable[[str], list[str]], hfn: Callable[[str], int]) -> np.ndarray:
    """Sorted unique shingle hashes (uint64); empty when the document has fewer than n words."""
    words = split(normalize(text, cfg.norm_numbers))
    n = cfg.ngram
    if len(words) < n:
        return np.zeros(0, dtype=np.uint64)
    grams = [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]
    return np.unique(np.fromiter(map(hfn, grams), dtype=np.uint64, count=len(grams)))


def permutations(seed: int, n_hashes: int) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.RandomState(seed)
    a = gen.randint(1, MERSENNE_61, dtype=np.uint64, size=n_hashes)
    b = gen.randint(0, MERSENNE_61, dtype=np.uint64, size=n_hashes)
    return a, b


def signatures(sh: list[np.ndarray], a: np.ndarray, b: np.ndarray, precision: int) -> np.ndarray:
    """(docs x hashes) uint64 minima of ((a*x + b) mod 2^64) mod (2^61 - 1) [& 0xFFFFFFFF].

    The Mersenne reduction is done without division: v = hi * 2^61 + lo == hi + lo (mod p), and
    hi + lo < 2p, so one conditional subtraction finishes it."""
    out = np.empty((len(sh), a.size), dtype=np.uint64)
    buf = np.empty((max([s.size for s in sh] + [1]), a.size), dtype=np.uint64)
    tmp = np.empty_like(buf)
    s61, mask32 = np.uint64(61), np.uint64(0xFFFFFFFF)
    for i, s in enumerate(sh):
        if s.size == 0:
            out[i] = np.iinfo(np.uint64).max
            continue
        v, t = buf[: s.size], tmp[: s.size]
        np.multiply(s[:, None], a, out=v)
        v += b
        np.right_shift(v, s61, out=t)
        v &= MERSENNE_61
        v += t
        np.subtract(v, MERSENNE_61, out=t)
        np.minimum(v, t, out=v)  # v >= p wraps t below v only when v >= p: min picks the reduced value
        if precision == 32:
            v &= mask32
        v.min(axis=0, out=out[i])
    return out
