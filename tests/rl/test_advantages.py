"""Group-relative advantages, zero-std groups, the soft overlong penalty and truncation masking: hand-computed
small cases, and the same numbers as TRL 1.16 (its formula where it is not callable on its own)."""

from __future__ import annotations

import pytest
import torch

from flowlm.rl.advantages import (
    oversample,
    advantage_estimator,
    advantage_estimator_names,
    group_advantages,
    hit_length_limit,
    informative_groups,
    mask_truncated,
    overlong_penalty,
)
from flowlm.rl.losses import policy_loss

# Two prompts, three completions each: group 0 = [1, 0, 0], group 1 = [1, 1, 1] (all solved).
REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
# group 0: mean 1/3, deviations [2/3, -1/3, -1/3], unbiased var (4/9 + 1/9 + 1/9) / 2 = 1/3, std 0.5773503
# group 1: mean 1, deviations 0, std 0
CENTRED = [2 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0]


def test_centred_group_std_batch_std_by_hand():
    torch.testing.assert_close(group_advantages(REWARDS, 3), torch.tensor(CENTRED))  # default: centred
    # group_std: [2/3, -1/3, -1/3] / (0.5773503 + eps) = [1.1547005, -0.5773503, -0.5773503]; group 1: 0 / eps = 0
    torch.testing.assert_close(group_advantages(REWARDS, 3, scale="group_std", eps=0.0)[:3],
                               torch.tensor([1.1547005, -0.5773503, -0.5773503]))
    assert group_advantages(REWARDS, 3, scale="group_std")[3:].abs().max() == 0
    # batch_std: all six rewards, mean 2/3, deviations [1/3, -2/3, -2/3, 1/3, 1/3, 1/3],
    # var (1 + 4 + 4 + 1 + 1 + 1) / 9 / 5 = 4/15, std 0.5163978 -> [1.2909944, -0.6454972, -0.6454972, 0, 0, 0]
    torch.testing.assert_close(group_advantages(REWARDS, 3, scale="batch_std", eps=0.0),
                               torch.tensor([1.2909944, -0.6454972, -0.6454972, 0.0, 0.0, 0.0]))
    # leave-one-out: 1 - mean(0, 0) = 1, 0 - mean(1, 0) = -0.5, 0 - mean(1, 0) = -0.5
    torch.testing.assert_close(group_advantages(REWARDS, 3, baseline="leave_one_out"),
                               torch.tensor([1.0, -0.5, -0.5, 0.0, 0.0, 0.0]))


def test_shapes_and_errors():
    grouped = REWARDS.view(2, 3)
    out = group_advantages(grouped, scale="group_std")
    assert out.shape == (2, 3)
    torch.testing.assert_close(out.reshape(-1), group_advantages(REWARDS, 3, scale="group_std"))
    assert group_advantages(torch.tensor([[0.3]]), scale="group_std").item() == 0  # a group of one: std 0
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(REWARDS)
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(REWARDS, 4)
    with pytest.raises(ValueError, match="disagrees"):
        group_advantages(grouped, 2)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(REWARDS, 3, scale="std")
    with pytest.raises(ValueError, match="leave-one-out"):
        group_advantages(torch.tensor([[1.0]]), baseline="leave_one_out")


def test_registry():
    assert advantage_estimator_names() == ["centered", "dr_grpo", "grpo", "grpo_batch_std", "rloo"]
    torch.testing.assert_close(advantage_estimator("grpo")(REWARDS, 3, eps=0.0)[:3],
                               torch.tensor([1.1547005, -0.5773503, -0.5773503]))
    torch.testing.assert_close(advantage_estimator("centered")(REWARDS, 3), torch.tensor(CENTRED))
    assert advantage_estimator("dr_grpo") is advantage_estimator("centered")
    torch.testing.assert_close(advantage_estimator("rloo")(REWARDS, 3), torch.tensor([1.0, -0.5, -0.5, 0, 0, 0]))
    with pytest.raises(ValueError, match="did you mean 'rloo'"):
        advantage_estimator("rlo")


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_matches_trl_advantages(scale):
    # TRL computes advantages inside `_generate_and_score_completions`, not as a function of its own; this is
    # its formula, trl/trainer/grpo_trainer.py lines 2763-2787 (1.16.0): group mean, `nanstd` per group
    # ("group", "none") or over the batch ("batch"), `(rewards - mean) / (std + 1e-4)` unless "none".
    from trl.trainer.utils import nanstd

    n = 4
    rewards = torch.rand(5 * n, generator=torch.Generator().manual_seed(0)).round()  # binary, some zero-std
    mean = rewards.view(-1, n).mean(dim=1).repeat_interleave(n)
    std = nanstd(rewards).expand_as(rewards) if scale == "batch" else \
        nanstd(rewards.view(-1, n), dim=1).repeat_interleave(n)
    trl = rewards - mean if scale == "none" else (rewards - mean) / (std + 1e-4)
    ours = {"group": "grpo", "batch": "grpo_batch_std", "none": "dr_grpo"}[scale]
    torch.testing.assert_close(advantage_estimator(ours)(rewards, n, eps=1e-4), trl)
    # TRL's zero-std flag (is_std_zero, per completion) agrees with informative_groups
    if scale == "group":
        torch.testing.assert_close(~informative_groups(rewards, n).repeat_interleave(n),
                                   torch.isclose(std, torch.zeros_like(std)))


def test_informative_groups():
    rewards = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [0.2, 0.7, 0.2]])
    assert informative_groups(rewards).tolist() == [True, False, False, True]
    assert informative_groups(rewards.reshape(-1), 3).tolist() == [True, False, False, True]
    # non-binary rewards whose group mean is neither 0 nor 1 still count as informative (OpenRLHF#1270)
    assert informative_groups(torch.tensor([[0.5, 0.5001]]), atol=1e-3).tolist() == [False]


def test_overlong_penalty_by_hand_and_trl():
    from trl.rewards import get_soft_overlong_punishment

    lengths = torch.tensor([70, 80, 90, 100, 101])
    # max_len 100, buffer 20: no penalty up to 80; (80 - 90) / 20 = -0.5; (80 - 100) / 20 = -1; beyond: -1
    torch.testing.assert_close(overlong_penalty(lengths, 100, 20), torch.tensor([0.0, 0.0, -0.5, -1.0, -1.0]))
    torch.testing.assert_close(overlong_penalty(lengths, 100, 20, factor=0.5),
                               torch.tensor([0.0, 0.0, -0.25, -0.5, -0.5]))
    torch.testing.assert_close(overlong_penalty(lengths, 100, 0), torch.tensor([0.0, 0.0, 0.0, 0.0, -1.0]))
    for buffer in (0, 7, 20):
        trl = get_soft_overlong_punishment(100, buffer)([[1] * int(n) for n in lengths])
        torch.testing.assert_close(overlong_penalty(lengths, 100, buffer), torch.tensor(trl))
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(lengths, 100, 101)


def test_truncated_completions_add_nothing_to_the_loss():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    truncated = hit_length_limit(torch.tensor([3, 2]), max_len=3)
    assert truncated.tolist() == [True, False]
    kept = mask_truncated(mask, truncated)
    assert kept.tolist() == [[0, 0, 0], [1, 1, 0]]
    assert mask_truncated(mask.bool(), truncated).dtype == torch.bool
    # The hand example of test_losses.py: completion 1 alone gives ℓ = [1.6, 2.4] (PPO-clip, A = -2).
    logps = torch.tensor([[0.6, 0.6, 0.1], [0.25, 0.6, 0.3]]).log().requires_grad_()
    old = torch.tensor([[0.5, 0.4, 0.2], [0.5, 0.5, 0.3]]).log()
    adv = torch.tensor([1.0, -2.0])
    assert policy_loss(logps, old, adv, kept).loss.item() == pytest.approx(4.0 / 2)  # 2 tokens left
    seq = policy_loss(logps, old, adv, kept, norm="sequence")
    assert seq.loss.item() == pytest.approx((0.0 + 2.0) / 2)  # the truncated one still counts as a sequence
    seq.loss.backward()
    assert logps.grad[0].abs().max() == 0
    with pytest.raises(ValueError, match="truncated"):
        mask_truncated(mask, torch.tensor([True]))


def test_oversample_draws_the_shortfall_over_the_smoothed_informative_share_within_the_cap():
    # share = (informative + 1) / (seen + 2), by hand:
    assert oversample(2, 0, 2, 4.0) == 8      # 1/4 -> 2 / 0.25 = 8, cap 8
    assert oversample(1, 1, 4, 4.0) == 3      # 2/6 -> 1 / (1/3) = 3
    assert oversample(3, 9, 10, 4.0) == 4     # 10/12 -> ceil(3.6) = 4
    assert oversample(2, 0, 100, 4.0) == 8    # 1/102 -> 204, capped at 4 x 2
    assert oversample(3, 0, 5, 2.5) == 7      # 1/7 -> 21, capped at floor(7.5)
    assert oversample(2, 0, 2, 1.0) == 2      # cap 1: the shortfall only
    assert oversample(2, 50, 50, 4.0) == 3    # 51/52 -> 2.04, rounded up
    assert oversample(5, 0, 0, 1.0) == 5
    assert oversample(0, 3, 5, 4.0) == 0
