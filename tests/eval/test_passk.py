"""pass@k against hand-computed values and the exact binomial form; suite summaries on hand-made samples."""

from __future__ import annotations

from fractions import Fraction
from math import comb

import pytest

from flowlm.eval.passk import majority_correct, pass_at_k, pass_at_ks, summarize


def exact(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(comb(n - c, k), comb(n, k))


def test_hand_computed_cases():
    assert pass_at_k(5, 0, 1) == 0.0 and pass_at_k(5, 0, 5) == 0.0      # c = 0: never
    assert pass_at_k(5, 5, 1) == 1.0 and pass_at_k(5, 5, 3) == 1.0      # c = n: always
    assert pass_at_k(4, 1, 4) == 1.0                                     # k = n and c >= 1
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)                     # pass@1 = c / n
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)                # 1 - C(2,2)/C(4,2)
    assert pass_at_k(10, 3, 2) == pytest.approx(1 - 21 / 45)             # 1 - C(7,2)/C(10,2)
    assert pass_at_k(10, 7, 4) == 1.0                                    # n - c < k


def test_matches_exact_binomials_including_large_n():
    for n in (1, 2, 7, 16, 200):
        for c in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            for k in sorted(k for k in {1, 2, n // 4 or 1, n // 2 or 1, n} if k <= n):
                assert pass_at_k(n, c, k) == pytest.approx(float(exact(n, c, k)), abs=1e-12), (n, c, k)
    # n = 200 where the binomials themselves are ~1e58: the product form stays finite and exact
    assert pass_at_k(200, 1, 100) == pytest.approx(0.5)
    assert pass_at_k(200, 3, 1) == pytest.approx(3 / 200)


def test_invalid_arguments_raise():
    for n, c, k in ((3, 4, 1), (3, 1, 0), (3, 1, 4), (3, -1, 1)):
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_mean_over_items_and_every_k():
    got = pass_at_ks([0, 2, 4], n=4)
    assert list(got) == [1, 2, 3, 4]
    assert got[1] == pytest.approx((0 + 0.5 + 1) / 3)
    assert got[4] == pytest.approx(2 / 3)


def test_majority_vote():
    assert majority_correct(["4", "5", "4", None], [1.0, 0.0, 1.0, 0.0]) == 1.0
    assert majority_correct(["5", "4", "5"], [0.0, 1.0, 0.0]) == 0.0
    assert majority_correct(["5", "4"], [0.0, 1.0]) == 0.0   # tie: the answer seen first wins
    assert majority_correct([None, None], [0.0, 0.0]) == 0.0


def _s(score, tokens=10, finish="stop", unclosed=False, answer=None):
    return {"score": score, "tokens": tokens, "finish_reason": finish, "unclosed_think": unclosed, "answer": answer}


def test_summary_partial_credit_lengths_and_flags():
    items = [
        {"samples": [_s(1.0, 4, answer="1"), _s(0.5, 8, answer="2"), _s(1.0, 6, answer="1"), _s(0.0, 30, "length", True)]},
        {"samples": [_s(0.0, answer="3"), _s(0.0, answer="3"), _s(1.0, answer="9"), _s(0.0)]},
        {"samples": [], "error": "prompt too long"},
    ]
    s = summarize(items, n=4, majority=True)
    assert s["items"] == 3 and s["errors"] == 1
    assert s["mean_reward"] == pytest.approx((2.5 / 4 + 1 / 4 + 0) / 3)
    assert s["pass@1"] == pytest.approx((2 / 4 + 1 / 4 + 0) / 3)          # 0.5 is partial, not a pass
    assert s["pass@4"] == pytest.approx(2 / 3)
    assert s["maj@4"] == pytest.approx(1 / 3)                               # item 1 votes "1" (right), item 2 "3"
    assert s["truncated"] == pytest.approx(1 / 8) and s["unclosed_think"] == pytest.approx(1 / 8)
    assert s["mean_tokens"] == pytest.approx((4 + 8 + 6 + 30 + 40) / 8)


def test_summary_breaks_down_by_category_and_only_when_items_have_one():
    items = [
        {"category": "counting", "samples": [_s(1.0), _s(0.0)]},
        {"category": "sorting", "samples": [_s(0.0), _s(0.0)]},
        {"category": "counting", "samples": [_s(1.0), _s(1.0)]},
        {"category": "sorting", "samples": [_s(0.5), _s(1.0)]},
        {"category": None, "samples": [_s(1.0), _s(1.0)]},                  # in the suite, in no category
    ]
    by = summarize(items, n=2)["by_category"]
    assert list(by) == ["counting", "sorting"]
    assert by["counting"] == {"items": 2, "mean_reward": pytest.approx(0.75), "pass@1": pytest.approx(0.75),
                              "pass@2": pytest.approx(1.0)}
    assert by["sorting"] == {"items": 2, "mean_reward": pytest.approx((0 + 0.75) / 2), "pass@1": pytest.approx(0.25),
                             "pass@2": pytest.approx(0.5)}                  # 0.5 is partial: no pass
    assert set(summarize(items[:2], n=2)["by_category"]) == {"counting", "sorting"}
    assert "by_category" not in summarize([{"samples": [_s(1.0)]}], n=1)
    assert summarize(items[:1], n=2)["by_category"]["counting"]["pass@1"] == pytest.approx(0.5)
    assert set(summarize([{"category": "a", "samples": [_s(1.0)]}], n=1)["by_category"]["a"]) == {
        "items", "mean_reward", "pass@1"}
