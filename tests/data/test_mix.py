"""Swarm -> per-task log-linear laws -> constrained solve, against a synthetic proxy with a known optimum."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from flowlm.data import mix as M

NAMES = ["code", "math", "web"]
TRUE = {"t1": (0.6, -0.2, np.array([-1.5, -0.3, 0.4])), "t2": (0.9, -0.5, np.array([0.2, -1.8, 0.1]))}


def synthetic_proxy(noise: float = 0.002):
    def run(mix: dict[str, float], seed: int) -> dict[str, float]:
        w = np.array([mix.get(k, 0.0) for k in NAMES])
        rng = np.random.default_rng(seed)
        return {t: float(c + np.exp(b + w @ tt) + rng.normal(0, noise)) for t, (c, b, tt) in TRUE.items()}
    return run


def true_mean(mix: dict[str, float]) -> float:
    return float(np.mean(list(synthetic_proxy(0.0)(mix, 0).values())))


def test_swarm_regression_and_solver_recover_known_optimum() -> None:
    prior = {"code": 0.2, "math": 0.1, "web": 0.7}
    res = M.run_swarm(M.dirichlet_swarm(prior, 5 * len(NAMES), seed=1), synthetic_proxy())
    laws = M.fit_laws(res)
    avail = {"code": 100.0, "math": 100.0, "web": 1000.0}
    got = M.solve_mix(laws, budget_tokens=200.0, available=avail, max_repeat=1.0)
    # ground truth: the same solver on the exact laws
    exact = {t: M.LogLinearLaw(NAMES, c, b, tt) for t, (c, b, tt) in TRUE.items()}
    best = M.solve_mix(exact, budget_tokens=200.0, available=avail, max_repeat=1.0)
    assert abs(sum(got.values()) - 1) < 1e-6 and max(got[k] * 200 - avail[k] for k in NAMES) <= 1e-6
    assert true_mean(got) - true_mean(best) < 0.01
    assert true_mean(got) < true_mean(prior) - 0.05  # the optimised mix beats the prior
    print(f"\nmix: prior {true_mean(prior):.4f} -> optimised {true_mean(got):.4f} (opt {true_mean(best):.4f})")


def test_repetition_cap_binds() -> None:
    exact = {t: M.LogLinearLaw(NAMES, c, b, tt) for t, (c, b, tt) in TRUE.items()}
    got = M.solve_mix(exact, budget_tokens=1000.0, available={"code": 50, "math": 25, "web": 1e6},
                      max_repeat=4.0)
    assert got["code"] <= 0.2 + 1e-6 and got["math"] <= 0.1 + 1e-6


def test_conditional_mixing_and_microanneal() -> None:
    frozen = {"code": 0.25, "web": 0.75}
    prior = M.conditional_prior(frozen, 0.8, {"math": 1.0})
    assert prior == pytest.approx({M.FROZEN: 0.8, "math": 0.2})
    assert M.expand_conditional({M.FROZEN: 0.6, "math": 0.4}, frozen) == pytest.approx(
        {"code": 0.15, "web": 0.45, "math": 0.4})
    out = M.microanneal(synthetic_proxy(0.0), target="math")
    assert out["delta"]["t2"] < 0 and out["mean_delta"] < 0  # math helps the math-like task


def test_make_proxy_runner_without_engine_is_a_clear_error(monkeypatch) -> None:
    from flowlm.errors import FlowError

    monkeypatch.setitem(sys.modules, "flowlm.train.proxy", None)  # as if the engine were not there
    with pytest.raises(FlowError, match="flowlm.train.proxy"):
        M.make_proxy_runner()


def test_make_proxy_runner_binds_options_to_the_engine_proxy(monkeypatch) -> None:
    import flowlm.train.proxy as proxy
    calls = []
    monkeypatch.setattr(proxy, "run_proxy", lambda mix, seed, **kw: calls.append((mix, seed, kw)) or {"t/bpb": 1.0})
    run = M.make_proxy_runner(domains={"a": []}, steps=3)
    assert run({"a": 1.0}, 5) == {"t/bpb": 1.0}
    assert calls == [({"a": 1.0}, 5, {"domains": {"a": []}, "steps": 3})]
