"""Which spans of a model output to show, and how to rank their documents: OLMoTrace's rules as pure
functions over token-level facts (no index, no tokenizer here).

1. For every output position, the longest prefix that occurs in the training data (`TraceIndex`).
2. Spans are self-contained: they start and end on word edges, and do not run across a sentence end or a
   newline except at their last token. A span inside another kept span is dropped (maximal spans only).
3. Long, unusual spans are kept: the `ceil(density × L)` spans with the lowest unigram probability (the
   product of their tokens' corpus frequencies) for an output of L tokens, OLMoTrace's 0.05 by default.
4. The documents a span occurs in are ranked by BM25 against the whole output (and its prompt).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np


def token_edges(text: str, offsets: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """`(word_edge, breaks)` for a text and its tokens' character offsets.

    `word_edge[e]` (e = 0..L) says whether a span may start or end between token e-1 and token e: the
    text's ends, or two characters that are not both letters/digits, and never inside a character that
    byte-level BPE split across tokens. `breaks[t]` says token t holds a newline or a sentence end (a
    period followed by whitespace or the end of the text).
    """
    n = len(offsets)
    edge = np.zeros(n + 1, dtype=bool)
    edge[0] = edge[n] = True
    for e in range(1, n):
        c = offsets[e][0]
        if offsets[e][0] < offsets[e - 1][1] or c <= 0 or c >= len(text):
            continue  # inside one character (or an empty token at the ends)
        edge[e] = not (text[c - 1].isalnum() and text[c].isalnum())
    breaks = np.zeros(n, dtype=bool)
    for t, (a, b) in enumerate(offsets):
        piece = text[a:b]
        breaks[t] = "\n" in piece or any(
            ch == "." and (a + k + 1 >= len(text) or text[a + k + 1].isspace()) for k, ch in enumerate(piece))
    return edge, breaks


def maximal_spans(match_len: Sequence[int], word_edge: np.ndarray, breaks: np.ndarray,
                  min_tokens: int = 1) -> list[tuple[int, int]]:
    """Token spans [start, end) that occur in the data, are self-contained, and lie in no other such span.

    `match_len[i]` is the longest prefix of the output from token i that occurs in the data. A span from
    i is cut back to its first break (kept as its last token) and then to a word edge; any part of a
    matching span matches too, so every returned span occurs in the data.
    """
    cands = []
    for i, m in enumerate(match_len):
        if m <= 0 or not word_edge[i]:
            continue
        end = i + int(m)
        inner = np.flatnonzero(breaks[i: end - 1])
        if inner.size:
            end = i + int(inner[0]) + 1
        while end > i and not word_edge[end]:
            end -= 1
        if end - i >= min_tokens:
            cands.append((i, end))
    kept, reach = [], -1
    for start, end in sorted(cands, key=lambda s: (s[0], -s[1])):
        if end > reach:  # not inside a span that starts earlier (or at the same token and is longer)
            kept.append((start, end))
            reach = end
    return kept


def span_logprob(ids: Sequence[int], unigram: np.ndarray) -> float:
    """Log unigram probability of a token sequence under the corpus counts (add-one smoothed; an id beyond
    the counts counts 0)."""
    total = float(unigram.sum()) + len(unigram)
    return float(sum(math.log((float(unigram[t] if 0 <= t < len(unigram) else 0) + 1.0) / total) for t in ids))


def keep_rarest(spans: list[tuple[int, int]], ids: Sequence[int], unigram: np.ndarray, n_tokens: int,
                density: float = 0.05) -> list[tuple[int, int]]:
    """The `ceil(density × n_tokens)` spans of lowest unigram probability, in output order."""
    k = max(1, math.ceil(density * n_tokens))
    ranked = sorted(spans, key=lambda s: (span_logprob(ids[s[0]: s[1]], unigram), s[0]))[:k]
    return sorted(ranked)


def merge_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or touching spans fused into one (what the output highlights)."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def bm25(query: Sequence[int], docs: Sequence[Sequence[int]], k1: float = 1.2, b: float = 0.75) -> list[float]:
    """Okapi BM25 of each document for the query's distinct terms, with IDF over `docs` themselves
    (`log(1 + (N - n + 0.5) / (n + 0.5))`, never negative)."""
    if not docs:
        return []
    tfs = [Counter(int(t) for t in d) for d in docs]
    avg = sum(len(d) for d in docs) / len(docs) or 1.0
    terms = set(int(t) for t in query)
    df = {t: sum(1 for tf in tfs if t in tf) for t in terms}
    idf = {t: math.log(1.0 + (len(docs) - df[t] + 0.5) / (df[t] + 0.5)) for t in terms}
    scores = []
    for d, tf in zip(docs, tfs):
        norm = k1 * (1.0 - b + b * len(d) / avg)
        scores.append(sum(idf[t] * tf[t] * (k1 + 1.0) / (tf[t] + norm) for t in terms if t in tf))
    return scores
