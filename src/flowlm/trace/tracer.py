"""Trace one model output to the training data: its maximal verbatim spans and the documents they occur in.

`trace_text(index, tok, text)` tokenizes the output with the tokenizer the data was tokenized with, asks
the index for the longest match at every position, keeps OLMoTrace's spans (`flowlm.trace.spans`) and
returns a JSON-ready dict:

- `spans`: character range, text, token length, occurrences in the data, unigram log-probability and
  the documents (numbers into `docs`) where it was found;
- `docs`: up to `max_docs` occurrences per span, one entry per document, with the store it comes from,
  its number there, a snippet around the first match, and its BM25 relevance to the prompt and output
  (highest first);
- `highlight`: the character ranges of the kept spans, overlapping ones fused;
- `coverage`: the share of the output's characters inside a kept span; `match_coverage`: the share of
  tokens inside any maximal span of at least `min_tokens` tokens, before the unigram filter (how much of
  the output the data contains at all); `longest_match`: the longest run of output tokens found verbatim
  in the data, before the span rules trim it to words and sentences.

A span with no letter or digit (whitespace, punctuation) is never kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from flowlm.trace.index import TraceIndex
from flowlm.trace.spans import bm25, keep_rarest, maximal_spans, merge_spans, span_logprob, token_edges


@dataclass(frozen=True)
class TraceSettings:
    density: float = 0.05  # keep ceil(density * output tokens) spans (OLMoTrace)
    min_tokens: int = 1  # shortest span considered
    max_docs: int = 10  # documents retrieved per span (OLMoTrace: 10)
    context: int = 32  # tokens of document shown on each side of a match


def match_lengths(index: TraceIndex, ids: np.ndarray) -> list[int]:
    """For every position i, the length of the longest prefix of `ids[i:]` found in the index."""
    return [index.longest_prefix(ids[i:]) for i in range(len(ids))]


def _covered(spans: list[tuple[int, int]], n: int) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    for start, end in spans:
        mask[start:end] = True
    return mask


def trace_text(index: TraceIndex, tok: Any, text: str, prompt: str = "",
               settings: TraceSettings = TraceSettings()) -> dict[str, Any]:
    """The trace of `text` (see the module docstring); `prompt` only weighs the document ranking."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    if len(ids) == 0:
        return {"n_tokens": 0, "spans": [], "docs": [], "highlight": [], "coverage": 0.0, "match_coverage": 0.0,
                "longest_match": 0}
    lengths = match_lengths(index, ids)
    edge, breaks = token_edges(text, offsets)
    found = [(a, b) for a, b in maximal_spans(lengths, edge, breaks, settings.min_tokens)
             if any(ch.isalnum() for ch in text[offsets[a][0]: offsets[b - 1][1]])]  # no whitespace-only spans
    kept = keep_rarest(found, ids, index.unigram, len(ids), settings.density) if found else []
    spans, docs, doc_slot = [], [], {}
    for start, end in kept:
        lo, hi = index.find(ids[start:end])
        a, b = offsets[start][0], offsets[end - 1][1]
        entry = {"start": a, "end": b, "text": text[a:b], "tokens": end - start, "count": hi - lo,
                 "unigram_logprob": round(span_logprob(ids[start:end], index.unigram), 3), "docs": []}
        for pos in index.positions(lo, hi, settings.max_docs):
            doc, store, local = index.locate(int(pos))
            if doc not in doc_slot:
                doc_slot[doc] = len(docs)
                docs.append({"doc": doc, "store": index.stores[store]["path"], "store_doc": local, "spans": [],
                             "snippet": _snippet(index, tok, doc, int(pos), end - start, settings.context)})
            slot = doc_slot[doc]
            if len(spans) not in docs[slot]["spans"]:
                docs[slot]["spans"].append(len(spans))
            if slot not in entry["docs"]:
                entry["docs"].append(slot)
        spans.append(entry)
    query = tok(prompt + "\n" + text if prompt else text, add_special_tokens=False)["input_ids"]
    for d, score in zip(docs, bm25(query, [index.document(d["doc"]) for d in docs])):
        d["bm25"] = round(score, 3)
    order = sorted(range(len(docs)), key=lambda i: -docs[i]["bm25"])
    renumber = {old: new for new, old in enumerate(order)}
    for s in spans:
        s["docs"] = sorted(renumber[i] for i in s["docs"])
    char_mask = np.zeros(len(text), dtype=bool)
    for s in spans:
        char_mask[s["start"]: s["end"]] = True
    return {"n_tokens": int(len(ids)), "spans": spans, "docs": [docs[i] for i in order],
            "highlight": [[offsets[a][0], offsets[b - 1][1]] for a, b in merge_spans(kept)],
            "coverage": round(float(char_mask.mean()), 4),
            "match_coverage": round(float(_covered(found, len(ids)).mean()), 4), "longest_match": int(max(lengths))}


def _snippet(index: TraceIndex, tok: Any, doc: int, pos: int, length: int, context: int) -> dict[str, str]:
    """The matched tokens of document `doc` at token position `pos`, with `context` tokens each side."""
    first, last = int(index.docs[doc]), int(index.docs[doc + 1]) - 1
    a, b = max(first, pos - context), min(last, pos + length + context)

    def text(x: int, y: int) -> str:
        return tok.decode(np.asarray(index.tokens[x:y]).tolist(), skip_special_tokens=False)

    return {"before": text(a, pos), "match": text(pos, pos + length), "after": text(pos + length, b)}
