"""Exact, MinHash and substring dedup on a corpus with planted duplicates."""

from __future__ import annotations

import numpy as np

from flowlm.data.dedup.exact import ExactDedupCfg, find_exact_duplicates
from flowlm.data.dedup.minhash import (MinHashCfg, WordHasher, describe, jaccard, lsh_threshold,
                                       minhash_dedup, permutations, shingle_hashes, signatures)
from flowlm.data.dedup.substring import SubstringCfg, apply_substring_dedup, merge_spans

from .planted import planted_corpus, score_removed


def test_exact_recall_is_total_and_policies_pick_the_right_copy() -> None:
    docs, gt = planted_corpus(400)
    removed = find_exact_duplicates(((d["id"], d) for d in docs), ExactDedupCfg())
    recall, precision = score_removed(set(removed), gt["exact"])
    print(f"\nexact dedup: recall {recall:.3f} precision {precision:.3f}")
    assert recall == 1.0 and precision == 1.0
    a = {"id": "a", "text": "same", "metadata": {"date": "2020-01-01"}}
    b = {"id": "b", "text": "same", "metadata": {"date": "2023-05-01"}}
    c = {"id": "c", "text": "same", "metadata": {}}
    assert find_exact_duplicates([("a", a), ("b", b), ("c", c)], ExactDedupCfg()) == {"b": "a", "c": "a"}
    newest = find_exact_duplicates([("a", a), ("b", b), ("c", c)], ExactDedupCfg(policy="newest"))
    assert newest == {"a": "b", "c": "b"}
    x = {"id": "x", "text": "Same  Text", "metadata": {}}
    y = {"id": "y", "text": "same text", "metadata": {}}
    assert find_exact_duplicates([("x", x), ("y", y)], ExactDedupCfg()) == {}
    assert find_exact_duplicates([("x", x), ("y", y)], ExactDedupCfg(normalize=True)) == {"y": "x"}


def test_minhash_finds_planted_near_duplicates(tmp_path) -> None:
    docs, gt = planted_corpus(600)
    shards = [docs[: len(docs) // 2], docs[len(docs) // 2:]]
    removed_ids = minhash_dedup(shards, tmp_path, MinHashCfg(), verbose=False)
    removed = {shards[i >> 32][i & 0xFFFFFFFF]["id"] for i in removed_ids}
    pairs = {**gt["exact"], **gt["near"]}
    recall, precision = score_removed(removed, pairs)
    near_recall, _ = score_removed(removed, gt["near"])
    print(f"\nminhash 26x11 + J>=0.8: recall {recall:.3f} (near {near_recall:.3f}) "
          f"precision {precision:.3f}, removed {len(removed)}")
    assert score_removed(removed, gt["exact"])[0] == 1.0
    assert near_recall >= 0.95
    assert precision >= 0.98
    assert not removed & set(gt["hosts"])  # a shared block is not a document-level duplicate


def test_signatures_estimate_jaccard_and_threshold_is_reported() -> None:
    h = WordHasher()
    rng = np.random.default_rng(0)
    words = [f"w{chr(97 + i % 26)}{chr(97 + i // 26 % 26)}{chr(97 + i // 676)}" for i in range(3000)]
    a = " ".join(rng.choice(words, 400))
    b_words = a.split()
    b_words[100:160] = rng.choice(words, 60)
    b = " ".join(b_words)
    sa, sb = shingle_hashes(a, 5, h), shingle_hashes(b, 5, h)
    cfg = MinHashCfg()
    sig = signatures([sa, sb], *permutations(cfg))
    est = float((sig[0] == sig[1]).mean())
    assert abs(est - jaccard(sa, sb)) < 0.08
    assert abs(lsh_threshold(26, 11) - 0.744) < 1e-3
    assert "0.744" in describe(cfg)


def test_substring_dedup_removes_boilerplate_keeps_one_copy() -> None:
    docs, gt = planted_corpus(200, seed=3)
    res = apply_substring_dedup(docs, SubstringCfg())
    block = gt["boilerplate"]
    hosts = [i for i, d in enumerate(docs) if d["id"] in gt["hosts"]]
    kept_with_block = [i for i in hosts if res[i][0] is not None and block in res[i][0]["text"]]
    assert len(kept_with_block) == 1  # exactly one copy survives
    for i in hosts:
        assert res[i][0] is not None and len(res[i][0]["text"]) > 200  # unique text survives
    # untouched documents: every base doc with no repeated span is unchanged
    exact_ids = set(gt["exact"]) | set(gt["exact"].values())
    for d, (new, removed) in zip(docs, res):
        if d["id"].startswith("base") and d["id"] not in exact_ids and d["id"] not in \
                set(gt["near"].values()):
            assert removed == 0 and new is not None and new["text"] == d["text"]


def test_fuzzy_merge_joins_small_gaps_only() -> None:
    assert merge_spans([(0, 500), (510, 1000)], 0.95) == [(0, 1000)]
    assert merge_spans([(0, 500), (800, 1000)], 0.95) == [(0, 500), (800, 1000)]
    assert merge_spans([(0, 500), (400, 900)], 0.95) == [(0, 900)]


def test_datatrove_family_normalisation_and_permutations() -> None:
    from flowlm.data.dedup import dtcompat

    assert dtcompat.normalize("Don't  PAY $3.50, cafe\u0301!\n\tNow") == "don t pay 0 cafe now"
    assert dtcompat.normalize("x 3.50", norm_numbers=False) == "x 3 50"
    cfg = MinHashCfg(hash_family="datatrove")
    h = dtcompat.hash_function("xxhash", 64)
    assert dtcompat.shingles("only four words here", cfg, str.split, h).size == 0  # < n words: none
    sh = dtcompat.shingles("a b c d e f a b c d e", cfg, str.split, h)
    assert sh.size == 6 and np.all(np.diff(sh.astype(np.float64)) > 0)  # 7 grams, one repeated
    a, b = dtcompat.permutations(1, 286)
    p = int(dtcompat.MERSENNE_61)
    assert a.min() >= 1 and int(a.max()) < p and int(b.max()) < p
    sig = dtcompat.signatures([sh], a, b, 64)[0]
    want = [min(((int(x) * int(ai) + int(bi)) % 2 ** 64) % p for x in sh) for ai, bi in zip(a, b)]
    assert sig.tolist() == want  # the division-free Mersenne reduction equals the definition
    want32 = [min(((int(x) * int(ai) + int(bi)) % 2 ** 64) % p & 0xFFFFFFFF for x in sh) for ai, bi in zip(a, b)]
    assert dtcompat.signatures([sh], a, b, 32)[0].tolist() == want32  # masked before the minimum


def test_datatrove_family_matches_datatrove_signatures() -> None:
    import datatrove.pipeline.dedup.minhash as dt_minhash
    from datatrove.utils.hashing import HashConfig

    from flowlm.data.dedup.minhash import shingles_and_signatures

    docs, _ = planted_corpus(40, seed=5)
    texts = [d["text"] for d in docs[:40]] + [
        "I'd say we cannot Dont  pay 3.14 or 1,000 for a Café — «naïve» 0km 1990s ＡＢ１ walk " * 2, "too short"]
    for fc, prec in (("xxhash", 64), ("sha1", 32)):
        step = dt_minhash.MinhashDedupSignature("/tmp/unused-dt-sig", config=dt_minhash.MinhashConfig(
            n_grams=5, num_buckets=26, hashes_per_bucket=11, hash_config=HashConfig(precision=prec, hash_fc=fc)))
        cfg = MinHashCfg(hash_family="datatrove", word_split="spacy", hash_fc=fc, precision=prec)
        sh, sig = shingles_and_signatures(texts, cfg)
        for i, t in enumerate(texts):
            theirs = step.get_shingles(t)
            assert np.array_equal(np.unique(theirs), sh[i]), (fc, prec, t[:60])
            if theirs.size:
                assert sig[i].tolist() == [x for band in step.get_signature(theirs) for x in band]


def test_datatrove_family_dedups_planted_corpus(tmp_path) -> None:
    docs, gt = planted_corpus(300, seed=2)
    shards = [docs[: len(docs) // 2], docs[len(docs) // 2:]]
    cfg = MinHashCfg(hash_family="datatrove", word_split="whitespace", jaccard_threshold=None)
    removed = {shards[i >> 32][i & 0xFFFFFFFF]["id"] for i in minhash_dedup(shards, tmp_path, cfg, verbose=False)}
    assert score_removed(removed, gt["exact"])[0] == 1.0
    recall, precision = score_removed(removed, {**gt["exact"], **gt["near"]})
    assert recall >= 0.95 and precision >= 0.98
