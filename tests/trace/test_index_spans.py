"""The trace index against brute-force counting, and OLMoTrace's span rules and BM25 on hand-worked examples."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from flowlm.data.store import TokenStore
from flowlm.errors import FlowError
from flowlm.trace.index import TraceIndex
from flowlm.trace.spans import bm25, keep_rarest, maximal_spans, merge_spans, span_logprob, token_edges


def store(path, docs, vocab=10, thash="t"):
    return TokenStore.write(path, docs, vocab_size=vocab, tokenizer_hash=thash).path


def naive_count(docs, query):
    return sum(1 for d in docs for i in range(len(d) - len(query) + 1) if list(d[i:i + len(query)]) == list(query))


def test_counts_matches_and_locations_on_a_hand_checked_corpus(tmp_path):
    a = store(tmp_path / "a", [[1, 2, 3, 4], [2, 3, 5]])
    b = store(tmp_path / "b", [[1, 2, 3]])
    index = TraceIndex.build(tmp_path / "idx", [a, b])
    assert index.count([2, 3]) == 3 and index.count([1, 2, 3]) == 2 and index.count([3, 4]) == 1
    assert index.count([4, 2]) == 0  # the end of document 0 and the start of document 1: no match across documents
    assert index.count([3, 5, 1]) == 0 and index.count([9]) == 0
    assert index.longest_prefix([1, 2, 3, 5]) == 3 and index.longest_prefix([2, 3, 5, 9]) == 3
    assert index.longest_prefix([9, 1]) == 0 and index.longest_prefix([4]) == 1
    assert index.n_tokens == 10 and index.meta["n_docs"] == 3
    assert index.unigram.tolist() == [0, 2, 3, 3, 1, 1, 0, 0, 0, 0]
    found = sorted(index.locate(int(p))[1:] for p in index.positions(*index.find([2, 3]), limit=10))
    assert found == [(0, 0), (0, 1), (1, 0)]  # (store, document in that store)
    assert index.document(1).tolist() == [2, 3, 5]
    assert len(index.positions(*index.find([2, 3]), limit=2)) == 2


def test_counts_and_longest_matches_equal_brute_force_on_a_random_corpus(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 6, size=int(rng.integers(1, 40))).tolist() for _ in range(60)]
    index = TraceIndex.build(tmp_path / "idx", [store(tmp_path / "s", docs, vocab=6)])
    for _ in range(300):
        q = rng.integers(0, 6, size=int(rng.integers(1, 6))).tolist()
        assert index.count(q) == naive_count(docs, q), q
        longest = max(k for k in range(len(q) + 1) if k == 0 or naive_count(docs, q[:k]) > 0)
        assert index.longest_prefix(q) == longest, q


def test_stores_of_two_tokenizers_are_refused_and_a_broken_index_is_named(tmp_path):
    a, b = store(tmp_path / "a", [[1, 2]], thash="x"), store(tmp_path / "b", [[1, 2]], thash="y")
    with pytest.raises(FlowError, match="different tokenizers"):
        TraceIndex.build(tmp_path / "idx", [a, b])
    assert not (tmp_path / "idx").exists()
    TraceIndex.build(tmp_path / "ok", [a])
    (tmp_path / "ok" / "sa.npy").unlink()
    with pytest.raises(FlowError, match=r"sa\.npy: cannot read"):
        TraceIndex.open(tmp_path / "ok")
    meta = json.loads((tmp_path / "ok" / "meta.json").read_text())
    (tmp_path / "ok" / "meta.json").write_text(json.dumps({**meta, "format": "other"}))
    with pytest.raises(FlowError, match="meta.json: format 'other'"):
        TraceIndex.open(tmp_path / "ok")


def test_word_edges_and_sentence_breaks():
    text = "Hi there.\nOk"
    edge, brk = token_edges(text, [(0, 2), (2, 8), (8, 9), (9, 10), (10, 12)])
    assert edge.tolist() == [True] * 6
    assert brk.tolist() == [False, False, True, True, False]  # the period before a newline, the newline
    edge, brk = token_edges("hello", [(0, 3), (3, 5)])
    assert edge.tolist() == [True, False, True] and brk.tolist() == [False, False]  # not inside a word
    edge, _ = token_edges("é!", [(0, 1), (0, 1), (1, 2)])
    assert edge.tolist() == [True, False, True, True]  # not inside a character split into two byte tokens
    _, brk = token_edges("3.14 x", [(0, 4), (4, 6)])
    assert brk.tolist() == [False, False]  # a decimal point is no sentence end


def test_maximal_self_contained_spans():
    edges, no_breaks = np.ones(7, dtype=bool), np.zeros(6, dtype=bool)
    lengths = [3, 2, 4, 1, 0, 1]
    assert maximal_spans(lengths, edges, no_breaks) == [(0, 3), (2, 6)]  # (1,3), (3,4), (5,6) lie inside them
    assert maximal_spans(lengths, edges, no_breaks, min_tokens=4) == [(2, 6)]
    brk = no_breaks.copy()
    brk[1] = True  # a sentence ends at token 1: a span from 0 stops there (token 1 kept as its last)
    assert maximal_spans(lengths, edges, brk) == [(0, 2), (2, 6)]
    mid = edges.copy()
    mid[2] = False  # tokens 1 and 2 are one word: no span starts at 2, and the span from 1 cannot end at 2
    assert maximal_spans(lengths, mid, no_breaks) == [(0, 3), (3, 4), (5, 6)]
    mid = edges.copy()
    mid[3] = False
    assert maximal_spans([3, 0, 0, 0, 0, 0], mid, no_breaks) == [(0, 2)]  # cut back to a word edge


def test_rarest_spans_are_kept_in_output_order():
    unigram = np.array([10, 1, 1, 10])  # add-one smoothed over 22 + 4
    ids = [0, 1, 2, 3, 0]
    assert span_logprob([0, 1], unigram) == pytest.approx(math.log(11 / 26) + math.log(2 / 26))
    spans = [(0, 2), (1, 3), (3, 5)]
    assert keep_rarest(spans, ids, unigram, n_tokens=40) == [(0, 2), (1, 3)]  # ceil(0.05 * 40) = 2
    assert keep_rarest(spans, ids, unigram, n_tokens=10) == [(1, 3)]  # ceil(0.5) = 1: the rarest
    assert merge_spans([(3, 5), (0, 2), (1, 3), (7, 8)]) == [(0, 5), (7, 8)]


def test_bm25_hand_computed():
    idf = math.log(1 + (2 - 1 + 0.5) / (1 + 0.5))  # each query term is in one of the two documents
    d0 = idf * 2 * 2.2 / (2 + 1.2 * (0.25 + 0.75 * 3 / 2.5))  # term 1 twice in a 3-token document
    d1 = idf * 1 * 2.2 / (1 + 1.2 * (0.25 + 0.75 * 2 / 2.5))  # term 3 once in a 2-token document
    assert bm25([1, 3, 3], [[1, 1, 2], [2, 3]]) == pytest.approx([d0, d1])
    assert bm25([1], []) == []


def test_trace_stage_summary_hand_checked():
    from flowlm.flow.stages.trace import summarize

    def trace(cov, longest, spans):
        return {"match_coverage": cov, "longest_match": longest, "docs": [{"store": "s"}],
                "spans": [{"text": t, "tokens": n, "count": 1, "docs": [0]} for t, n in spans]}

    sm = summarize([trace(0.5, 3, [("a b", 3)]), trace(1.0, 20, [("long one", 12), ("x", 1)])], long_span=12)
    assert sm["outputs"] == 2 and sm["match_coverage"] == 0.75 and sm["long_share"] == 0.5 and sm["longest"] == 20
    assert [t["tokens"] for t in sm["top"]] == [12, 3, 1] and sm["top"][0]["store"] == "s"
    assert summarize([], 12) == {"outputs": 0, "match_coverage": None, "long_share": None, "longest": 0, "top": []}
