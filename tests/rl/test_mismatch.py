"""Training-inference mismatch weights: hand-computed token and sequence cases for truncation (TIS) and
masking (IcePop), the metrics, how `policy_loss` consumes the weights, and TRL 1.16's formula."""

from __future__ import annotations

import math

import pytest
import torch

from flowlm.rl.losses import policy_loss
from flowlm.rl.mismatch import correct_weights, mismatch_weights, sequence_log_ratio

# learner / rollout probabilities of the sampled tokens; completion 1's last token is padding
#   c0: 0.6 / 0.2 = 3.0, 0.4 / 0.5 = 0.8, 0.2 / 0.2 = 1.0
#   c1: 0.42 / 0.4 = 1.05, 0.3 / 0.6 = 0.5, (pad)
LEARNER = torch.tensor([[0.6, 0.4, 0.2], [0.42, 0.3, 0.9]]).log()
ROLLOUT = torch.tensor([[0.2, 0.5, 0.2], [0.4, 0.6, 0.1]]).log()
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


def test_token_truncate_by_hand():
    out = mismatch_weights(LEARNER, ROLLOUT, MASK)  # OLMo 3: token level, truncate at 2.0
    torch.testing.assert_close(out.weights, torch.tensor([[2.0, 0.8, 1.0], [1.05, 0.5, 0.0]]))
    m = out.metrics
    assert m.tokens.item() == 5
    assert m.out_of_band.item() == pytest.approx(3 / 5)  # 3.0, 0.8 and 0.5 lie outside [0.9, 1.1]
    # |Δ| = ln 3, -ln 0.8, 0, ln 1.05, -ln 0.5 = 1.0986123, 0.2231436, 0, 0.0487902, 0.6931472
    assert m.abs_diff_mean.item() == pytest.approx((1.0986123 + 0.2231436 + 0.0487902 + 0.6931472) / 5, abs=1e-6)
    assert m.abs_diff_max.item() == pytest.approx(math.log(3), abs=1e-6)
    assert m.ratio_mean.item() == pytest.approx((3.0 + 0.8 + 1.0 + 1.05 + 0.5) / 5, abs=1e-6)  # 1.27
    assert m.weight_mean.item() == pytest.approx((2.0 + 0.8 + 1.0 + 1.05 + 0.5) / 5, abs=1e-6)  # 1.07
    assert m.corrected.item() == pytest.approx(1 / 5)  # only the 3.0 was capped


def test_token_mask_by_hand():
    out = mismatch_weights(LEARNER, ROLLOUT, MASK, mode="mask", lower=0.6, cap=2.0)
    # keep w inside [0.6, 2.0]: 3.0 and 0.5 are zeroed, the rest keep their ratio
    torch.testing.assert_close(out.weights, torch.tensor([[0.0, 0.8, 1.0], [1.05, 0.0, 0.0]]))
    assert out.metrics.corrected.item() == pytest.approx(2 / 5)


def test_sequence_level_by_hand():
    # sum of log-ratios = log of the product: c0 3.0·0.8·1.0 = 2.4, c1 1.05·0.5 = 0.525
    lr = (LEARNER - ROLLOUT).masked_fill(~MASK.bool(), 123.0)  # padding ignored
    torch.testing.assert_close(sequence_log_ratio(lr, MASK.bool()).exp(), torch.tensor([[2.4], [0.525]]))
    trunc = mismatch_weights(LEARNER, ROLLOUT, MASK, level="sequence")
    torch.testing.assert_close(trunc.weights, torch.tensor([[2.0, 2.0, 2.0], [0.525, 0.525, 0.0]]))
    # mask band [0.5, 2.0]: c0 (2.4) dropped whole, c1 (0.525) kept whole
    masked = mismatch_weights(LEARNER, ROLLOUT, MASK, mode="mask", level="sequence", lower=0.5)
    torch.testing.assert_close(masked.weights, torch.tensor([[0.0, 0.0, 0.0], [0.525, 0.525, 0.0]]))
    assert masked.metrics.corrected.item() == pytest.approx(3 / 5)
    # mean: geometric means 2.4^(1/3) = 1.3388659, 0.525^(1/2) = 0.7245688, both inside the cap
    geo = mismatch_weights(LEARNER, ROLLOUT, MASK, level="sequence", seq_agg="mean")
    torch.testing.assert_close(geo.weights, torch.tensor([[1.3388659] * 3, [0.7245688, 0.7245688, 0.0]]))
    # the metrics stay per token whatever the level
    assert geo.metrics.out_of_band.item() == pytest.approx(3 / 5)


def test_missing_rollout_logprobs_and_garbage_padding():
    rollout = ROLLOUT.clone()
    rollout[0, 0] = float("nan")  # the engine gave no log-prob for this token: ratio 1
    rollout[1, 2] = float("-inf")  # padding
    out = mismatch_weights(LEARNER, rollout, MASK)
    torch.testing.assert_close(out.weights, torch.tensor([[1.0, 0.8, 1.0], [1.05, 0.5, 0.0]]))
    # |Δ| over the 4 scored tokens only
    assert out.metrics.abs_diff_mean.item() == pytest.approx((0.2231436 + 0.0487902 + 0.6931472) / 4, abs=1e-6)
    long = mismatch_weights(torch.zeros(1, 4000), torch.full((1, 4000), -1.0), torch.ones(1, 4000), level="sequence")
    assert torch.isfinite(long.weights).all() and long.weights[0, 0] == 2.0  # exp(4000) capped, not inf


def test_errors():
    with pytest.raises(ValueError, match="mode"):
        correct_weights(torch.ones(1), "clip", 2.0)
    with pytest.raises(ValueError, match="level"):
        mismatch_weights(LEARNER, ROLLOUT, MASK, level="prompt")
    with pytest.raises(ValueError, match="lower < cap"):
        mismatch_weights(LEARNER, ROLLOUT, MASK, lower=2.0, cap=2.0)
    with pytest.raises(ValueError, match="agg"):
        sequence_log_ratio(LEARNER, MASK.bool(), "max")


def test_policy_loss_consumes_the_weights():
    # on-policy PPO (ratio 1): ℓ_t = -A·w_t; A = [1, -2]; w = [[2.0, 0.8, 1.0], [1.05, 0.5, 0]]
    #   total = -(2.0 + 0.8 + 1.0) + 2·(1.05 + 0.5) = -3.8 + 3.1 = -0.7; 5 tokens
    w = mismatch_weights(LEARNER, ROLLOUT, MASK).weights
    logps = LEARNER.clone().requires_grad_()
    out = policy_loss(logps, None, torch.tensor([1.0, -2.0]), MASK, is_weights=w)
    assert out.loss.item() == pytest.approx(-0.7 / 5, abs=1e-6)
    out.total.backward()
    torch.testing.assert_close(logps.grad, torch.tensor([[-2.0, -0.8, -1.0], [2.1, 1.0, 0.0]]))  # -A·w


@pytest.mark.parametrize("trl_mode", ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"])
def test_matches_trl_formula(trl_mode):
    # TRL computes the vLLM IS ratio inside `_generate_and_score_completions`; this is its formula,
    # trl/trainer/grpo_trainer.py lines 2660-2705 (1.16.0), with clip_min None and clip_max 3.0 (its defaults).
    g = torch.Generator().manual_seed(0)
    old = -2 * torch.rand(4, 6, generator=g)
    sampling = old + 0.5 * torch.randn(4, 6, generator=g)
    mask = (torch.arange(6)[None, :] < torch.tensor([6, 4, 2, 5])[:, None]).float()
    diff = torch.nan_to_num((old - sampling) * mask, nan=0.0)
    level, mode = trl_mode.split("_")
    ratio = torch.exp(diff.sum(dim=-1, keepdim=True) if level == "sequence" else diff)
    trl = torch.clamp(ratio, min=None, max=3.0) if mode == "truncate" else ratio.masked_fill(ratio > 3.0, 0.0)
    ours = mismatch_weights(old, sampling, mask, mode=mode, level=level, cap=3.0).weights
    torch.testing.assert_close(ours, torch.broadcast_to(trl, ours.shape) * mask)
