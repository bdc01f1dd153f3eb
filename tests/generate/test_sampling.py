"""Sampling filters and inverse-CDF sampling against hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch

from flowlm.generate.params import SamplingParams
from flowlm.generate.sampling import filter_probs, sample

PROBS = torch.tensor([[0.15, 0.5, 0.05, 0.3]])


@pytest.mark.parametrize("top_k,top_p,min_p,kept", [
    (0, 1.0, 0.0, [0.15, 0.5, 0.05, 0.3]),
    (1, 1.0, 0.0, [0.0, 0.5, 0.0, 0.0]),
    (3, 1.0, 0.0, [0.15, 0.5, 0.0, 0.3]),
    (0, 0.7, 0.0, [0.0, 0.5, 0.0, 0.3]),   # mass before 0.3 is 0.5 < 0.7: kept; before 0.15 is 0.8: dropped
    (0, 0.5, 0.0, [0.0, 0.5, 0.0, 0.0]),   # mass before 0.3 is exactly 0.5, not < 0.5
    (0, 1.0, 0.5, [0.0, 0.5, 0.0, 0.3]),   # threshold 0.25
    (2, 0.95, 0.2, [0.0, 0.5, 0.0, 0.3]),
    (0, 0.01, 0.0, [0.0, 0.5, 0.0, 0.0]),  # never empty: the top token stays
])
def test_filter_probs_hand_computed(top_k: int, top_p: float, min_p: float, kept: list[float]) -> None:
    out = filter_probs(PROBS, torch.tensor([top_k]), torch.tensor([top_p]), torch.tensor([min_p]))
    assert torch.allclose(out, torch.tensor([kept]))


def test_inverse_cdf_frequencies_and_raw_logprobs() -> None:
    # A uniform grid of u gives exact frequencies: 1000 draws over the top-p=0.7 set {1: 0.5, 3: 0.3}.
    n = 1000
    logits = PROBS.log().expand(n, 4)
    u = (torch.arange(n) + 0.5) / n
    tokens, logp = sample(logits, temperature=torch.ones(n), top_k=torch.zeros(n, dtype=torch.long),
                          top_p=torch.full((n,), 0.7), min_p=torch.zeros(n), uniform=u, needs_filter=True)
    counts = torch.bincount(tokens, minlength=4).tolist()
    assert counts == [0, 625, 0, 375]
    # Logprobs are of the raw distribution, not of the renormalised filtered one.
    assert math.isclose(logp[tokens == 1][0].item(), math.log(0.5), rel_tol=1e-5)


def test_greedy_rows_and_temperature_rows_in_one_batch() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0], [0.0, 2.0, 1.0]])
    tokens, logp = sample(logits, temperature=torch.tensor([0.0, 100.0]), top_k=torch.zeros(2, dtype=torch.long),
                          top_p=torch.ones(2), min_p=torch.zeros(2), uniform=torch.tensor([0.99, 0.01]),
                          needs_filter=False)
    assert tokens.tolist() == [1, 0]  # greedy ignores u; a hot row at u=0.01 takes the first token
    assert torch.allclose(logp, torch.log_softmax(logits, -1)[[0, 1], [1, 0]])


def test_params_validation_messages() -> None:
    assert SamplingParams().validate() is None
    assert "top_p" in SamplingParams(top_p=0.0).validate()
    assert "min_p" in SamplingParams(min_p=1.0).validate()
    assert "seed" in SamplingParams(seed=1.5).validate()
    assert "stop strings" in SamplingParams(stop=("",)).validate()
    assert SamplingParams(stop="</s>").stop == ("</s>",)
    with pytest.raises(Exception, match="temperature"):
        SamplingParams.checked(temperature=float("nan"))


def test_unit_temperature_fast_path_samples_the_same_tokens() -> None:
    # The engine takes the fast path only when every row has temperature 1; a temperature-1 row must
    # get identical tokens either way, or a seeded request would depend on its batch-mates.
    torch.manual_seed(0)
    n = 512
    logits = torch.randn(n, 300) * 3
    common = dict(top_k=torch.zeros(n, dtype=torch.long), top_p=torch.ones(n), min_p=torch.zeros(n),
                  uniform=torch.rand(n), needs_filter=False)
    fast, lp_fast = sample(logits, temperature=torch.ones(n), all_unit_temperature=True, any_greedy=False, **common)
    temps = torch.ones(n)
    temps[::2] = 0.5  # other rows hot or cold: the temperature-1 rows must not notice
    general, lp_general = sample(logits, temperature=temps, **common)
    assert torch.equal(fast[1::2], general[1::2])
    assert torch.equal(lp_fast[1::2], lp_general[1::2])
    assert not torch.equal(fast[::2], general[::2])  # the 0.5 rows really took the other path
