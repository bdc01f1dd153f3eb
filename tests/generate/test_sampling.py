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


@pytest.mark.parametrize("needs_filter", [False, True])
def test_tempered_logprobs_are_the_tempered_log_softmax_and_sample_the_same_tokens(needs_filter: bool) -> None:
    # 300 tokens: not a whole number of the sampler's 128-token blocks. Rows: hot, unit, greedy, cold, with
    # top-p, with top-k (the filters apply only with needs_filter). The tempered log-prob is taken before
    # any filter; a greedy row keeps the raw one.
    torch.manual_seed(0)
    logits = torch.randn(6, 300) * 3
    temperature = torch.tensor([1.7, 1.0, 0.0, 0.5, 0.7, 0.7])
    top_k = torch.tensor([0, 0, 0, 0, 0, 5]) if needs_filter else torch.zeros(6, dtype=torch.long)
    top_p = torch.tensor([1, 1, 1, 1, 0.9, 1.0]) if needs_filter else torch.ones(6)
    kw = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=torch.zeros(6),
              uniform=torch.tensor([0.3, 0.9, 0.5, 0.01, 0.6, 0.45]), needs_filter=needs_filter)
    raw_tokens, raw = sample(logits.clone(), **kw)
    tokens, tempered = sample(logits.clone(), tempered=True, **kw)
    assert tokens.tolist() == raw_tokens.tolist()
    rows = torch.arange(6)
    want_raw = torch.log_softmax(logits.double(), -1)[rows, tokens]
    safe = torch.where(temperature > 0, temperature, 1.0).double()
    want = torch.log_softmax(logits.double() / safe[:, None], -1)[rows, tokens]
    assert torch.allclose(raw.double(), want_raw, atol=1e-5)
    assert torch.allclose(tempered.double(), want, atol=1e-5)
    assert tempered[1] == raw[1] and tempered[2] == raw[2]  # temperature 1 and greedy: the raw log-prob
    assert not torch.allclose(tempered[[0, 3]], raw[[0, 3]], atol=1e-2)
    # without a greedy row the raw pass is skipped: the same numbers
    hot = [0, 1, 3, 4, 5]
    kw_hot = {k: (v[hot] if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    t2, lp2 = sample(logits[hot].clone(), tempered=True, any_greedy=False, **kw_hot)
    assert t2.tolist() == tokens[hot].tolist() and torch.equal(lp2, tempered[hot])
    # every row at temperature 1: tempered is raw, bit for bit
    kw_unit = {**kw, "temperature": torch.ones(6)}
    assert torch.equal(sample(logits.clone(), tempered=True, all_unit_temperature=True, **kw_unit)[1],
                       sample(logits.clone(), all_unit_temperature=True, **kw_unit)[1])


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


def test_two_level_inverse_cdf_hand_computed() -> None:
    # 300 tokens = blocks of 128, 128 and a padded 44. Weight only on tokens 5 (1.0), 200 (3.0), 299 (4.0).
    from flowlm.generate.sampling import _blocks, _inverse_cdf

    w = torch.zeros(7, 300)
    w[:, 5], w[:, 200], w[:, 299] = 1.0, 3.0, 4.0
    wb, cdf = _blocks(w)
    assert wb.shape == (7, 3, 128) and cdf[0].tolist() == [1.0, 4.0, 8.0]
    # targets u * 8: 0 and 0.99 -> token 5; exactly 1 (the cdf at token 5) -> the next token with weight;
    # 3.99 -> 200; 4.0 -> 299; just under 8 -> 299; u = 1 (a target at the total, as rounding can give) -> 299
    u = torch.tensor([0.0, 0.99 / 8, 1 / 8, 3.99 / 8, 0.5, 0.99999, 1.0])
    assert _inverse_cdf(wb, cdf, u).tolist() == [5, 5, 200, 200, 299, 299, 299]
    # a row whose last blocks are empty: a target at the total stays on the last token with weight
    w2 = torch.zeros(1, 300)
    w2[0, 3] = 2.0
    assert _inverse_cdf(*_blocks(w2), torch.tensor([1.0])).tolist() == [3]


def test_sampling_matches_a_full_vocabulary_cumsum_and_log_softmax() -> None:
    torch.manual_seed(1)
    n, vocab = 4000, 1000
    logits = torch.randn(n, vocab) * 4
    u = torch.rand(n)
    common = dict(temperature=torch.ones(n), top_k=torch.zeros(n, dtype=torch.long), top_p=torch.ones(n),
                  min_p=torch.zeros(n), uniform=u, needs_filter=False)
    tokens, logp = sample(logits, **common)
    probs = torch.softmax(logits.double(), -1)
    ref = torch.searchsorted(probs.cumsum(-1), u.double()[:, None], right=True).squeeze(-1)
    # the same draw up to rounding at a boundary between two tokens
    assert (tokens == ref).float().mean() > 0.999
    assert torch.allclose(logp.double(), torch.log_softmax(logits.double(), -1).gather(-1, tokens[:, None]).squeeze(-1),
                          atol=2e-6)


@pytest.mark.parametrize("vocab", [8192, 1000])
def test_a_row_samples_the_same_token_and_logprob_bits_alone_and_in_a_batch(vocab: int) -> None:
    torch.manual_seed(2)
    n = 64
    logits = torch.randn(n, vocab) * 3
    u = torch.rand(n)

    def draw(rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        m = logits[rows].shape[0]
        return sample(logits[rows], temperature=torch.ones(m), top_k=torch.zeros(m, dtype=torch.long),
                      top_p=torch.ones(m), min_p=torch.zeros(m), uniform=u[rows], needs_filter=False,
                      any_greedy=False, all_unit_temperature=True)

    batch_tokens, batch_logp = draw(slice(0, n))
    for i in (0, 17, 63):
        alone_tokens, alone_logp = draw(slice(i, i + 1))
        assert alone_tokens.item() == batch_tokens[i].item()
        assert torch.equal(alone_logp, batch_logp[i:i + 1])
