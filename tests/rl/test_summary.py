"""`flowlm.rl.summary.rl_summary` on hand-made metric rows: quarters, domains, nulls, resumed steps, evals."""

from __future__ import annotations

import pytest

from flowlm.rl.summary import quarters, rl_summary


def test_quarters_split_near_equal_with_the_remainder_first():
    assert quarters(8) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert quarters(6) == [(0, 2), (2, 4), (4, 5), (5, 6)]
    assert quarters(3) == [(0, 1), (1, 2), (2, 3)]
    assert quarters(0) == []


def test_by_quarter_means_domains_nulls_and_a_resumed_step():
    rows = [{"step": 0, "eval/bpb": 2.0, "eval/builtin/pass@1": 0.1, "eval/builtin/counting/pass@1": 0.5}]
    for s in range(1, 7):  # reward = step - 1: 0..5; the math domain only on odd steps
        row = {"step": s, "reward": float(s - 1), "informative_share": 1.0, "entropy": None if s == 1 else 2.0}
        if s % 2:
            row["reward/math"] = float(s)
        rows.append(row)
    rows.insert(4, {"step": 4, "reward": 99.0})  # logged before a crash; the resumed run's row (later) wins
    rows += [{"step": 6, "eval/builtin/pass@1": 0.3}, {"step": 6}, {"note": "no step"}]
    out = rl_summary(rows)
    assert out["steps"] == 6
    q = out["by_quarter"]
    assert q["reward"] == pytest.approx([0.5, 2.5, 4.0, 5.0])  # parts of 2, 2, 1, 1 steps
    assert q["reward/math"] == [1.0, 3.0, 5.0, None]  # steps 1, 3, 5 only
    assert q["entropy"] == pytest.approx([2.0, 2.0, 2.0, 2.0])  # the null of step 1 is skipped, not a 0
    assert q["informative_share"] == [1.0] * 4 and "truncated_share" not in q  # never logged: no curve
    assert out["generation_eval"] == {"builtin": {"first": [0, 0.1], "last": [6, 0.3]}}  # per category: no
    assert "mismatch_abs_diff_max" not in out


def test_mismatch_max_and_a_short_run():
    rows = [{"step": 1, "reward": 0.0, "mismatch/abs_diff_max": 1e-5}, {"step": 2, "reward": 1.0,
                                                                         "mismatch/abs_diff_max": 3e-5}]
    out = rl_summary(rows)
    assert out["by_quarter"]["reward"] == [0.0, 1.0] and out["mismatch_abs_diff_max"] == 3e-5
    assert rl_summary([]) == {"steps": 0, "by_quarter": {}}
