"""OlmoBaseEval tools on hand-made score matrices: Ward clustering (vs hand-computed merges and SciPy) and
signal-to-noise (vs hand-computed values), including the noisy-task flag."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flowlm.eval.analysis import cluster_tasks, cut_tree, signal_to_noise, snr_table, ward_linkage


def test_ward_hand_computed_merges():
    # points on a line at 0, 1, 5, 6: {0,1} and {5,6} merge at height 1, then the two pairs:
    # sqrt(2 * 2 * 2 / 4) * |0.5 - 5.5| = sqrt(2) * 5
    z = ward_linkage([[0.0], [1.0], [5.0], [6.0]])
    assert z[:2, 2].tolist() == [1.0, 1.0]
    assert sorted(map(tuple, z[:2, :2].astype(int).tolist())) == [(0, 1), (2, 3)]
    assert z[2, 2] == pytest.approx(math.sqrt(2) * 5)
    assert z[2, 3] == 4 and cut_tree(z, 2) == [1, 1, 2, 2] and cut_tree(z, 4) == [1, 2, 3, 4]


def test_ward_equals_scipy_on_random_matrix():
    hierarchy = pytest.importorskip("scipy.cluster.hierarchy")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(23, 7))
    ours, ref = ward_linkage(x), hierarchy.linkage(x, method="ward")
    assert np.allclose(ours[:, 2], ref[:, 2], atol=1e-9) and np.array_equal(ours[:, 3], ref[:, 3])
    for k in (2, 3, 5, 9):
        a, b = cut_tree(ours, k), hierarchy.fcluster(ref, k, criterion="maxclust")
        assert len({(i, j) for i, j in zip(a, b)}) == k  # the same partition, whatever the numbering


def test_tasks_that_rank_models_alike_cluster_together():
    # 6 models; math-like tasks rise with model index, knowledge-like tasks follow another order;
    # scales differ wildly (standardisation makes only the ranking shape count).
    up = np.array([1, 2, 3, 4, 5, 6], dtype=float)
    other = np.array([6, 1, 5, 2, 4, 3], dtype=float)
    scores = {"gsm8k": 0.1 * up, "math": 10 * up + 0.3 * np.sin(up), "arith": up**1.1,
              "trivia": other, "qa": 100 * other + 1, "facts": other + 0.05 * up}
    c = cluster_tasks(scores, k=2)
    assert c["gsm8k"] == c["math"] == c["arith"] != c["trivia"] == c["qa"] == c["facts"]


def test_signal_to_noise_hand_computed():
    # finals 0.4 and 0.6 -> signal = 0.2 / 0.5 = 0.4; model a last 3: [0.38, 0.42, 0.4] (mean 0.4,
    # std sqrt(2/3)*0.02), model b: constant -> noise = (std_a / 0.4 + 0) / 2
    r = signal_to_noise({"a": [0.1, 0.38, 0.42, 0.4], "b": [0.2, 0.6, 0.6, 0.6]}, last_n=3)
    std_a = math.sqrt(((0.02) ** 2 + (0.02) ** 2 + 0) / 3)
    assert r["signal"] == pytest.approx(0.4)
    assert r["noise"] == pytest.approx(std_a / 0.4 / 2)
    assert r["snr"] == pytest.approx(0.4 / (std_a / 0.4 / 2))
    mean_spread = signal_to_noise({"a": [1.0], "b": [2.0], "c": [4.0]}, spread="mean")
    assert mean_spread["signal"] == pytest.approx((1 + 3 + 2) / 3 / (7 / 3))
    assert mean_spread["snr"] == math.inf  # one checkpoint each: no noise measured


def test_noisy_task_is_flagged():
    rng = np.random.default_rng(1)
    steady = {m: list(base + 0.001 * rng.normal(size=10)) for m, base in (("a", 0.3), ("b", 0.5), ("c", 0.7))}
    # a BoolQ-like task: models oscillate between classes far more than they differ
    flip = {m: list(0.5 + 0.15 * np.where(np.arange(10) % 2 == 0, 1, -1) + d) for m, d in (("a", 0), ("b", 0.01), ("c", 0.02))}
    table = snr_table({"steady": steady, "flip": flip}, last_n=6)
    assert not table["steady"]["noisy"] and table["steady"]["snr"] > 10
    assert table["flip"]["noisy"] and table["flip"]["snr"] < 1
    with pytest.raises(ValueError):
        signal_to_noise({"a": [1.0, 2.0]}, last_n=2)


def test_scores_from_run_reads_in_loop_eval_history(tmp_path):
    import json

    from flowlm.eval.analysis import scores_from_run

    for stage, vals in (("midtrain", [3.0, 2.5, 2.4]), ("midtrain_2", [3.1, 2.6, 2.3])):
        (tmp_path / stage).mkdir()
        lines = [{"step": 0, "loss": 4.0}] + [{"step": i, "eval/prose/bpb": v, "eval/bpb": v + 1} for i, v in enumerate(vals)]
        (tmp_path / stage / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    got = scores_from_run(tmp_path, ["midtrain", "midtrain_2"])
    assert got["prose/bpb"] == {"midtrain": [3.0, 2.5, 2.4], "midtrain_2": [3.1, 2.6, 2.3]} and set(got) == {"prose/bpb", "bpb"}
    assert snr_table(got, last_n=2)["prose/bpb"]["signal"] == pytest.approx(0.1 / 2.35)
