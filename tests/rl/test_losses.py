"""Policy-gradient loss: hand-computed small cases for every loss type, normalisation, KL estimator and
mismatch weighting, gradient checks, and the same numbers (loss and gradient) as TRL 1.16's GRPO loss.

How TRL is called: `GRPOTrainer._compute_loss` (trl/trainer/grpo_trainer.py, lines 3020-3300 of the
installed 1.16.0) is a trainer method, so it is called unbound with a stub `self` (a `SimpleNamespace`
carrying exactly the attributes it reads) whose `_get_per_token_logps_and_entropies` returns our
log-probs; autograd then carries TRL's gradient back to them (same approach as
`tests/train/test_post_losses.py`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from flowlm.rl.losses import (
    KL_ESTIMATORS,
    kl_estimate,
    loss_type_names,
    masked_mean,
    policy_loss,
    token_entropy,
)

# The hand example: 2 completions of up to 3 tokens; the last token of completion 1 is padding.
#   completion 0 (A = +1): p_old = [0.5, 0.4, 0.2], p_new = [0.6, 0.6, 0.1] -> r = [1.2, 1.5, 0.5]
#   completion 1 (A = -2): p_old = [0.5, 0.5, pad], p_new = [0.25, 0.6, pad] -> r = [0.5, 1.2]
P_OLD = [[0.5, 0.4, 0.2], [0.5, 0.5, 0.3]]
P_NEW = [[0.6, 0.6, 0.1], [0.25, 0.6, 0.3]]
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
ADV = torch.tensor([1.0, -2.0])
# PPO-clip, band [1 - 0.2, 1 + 0.272] = [0.8, 1.272], ℓ = -min(r·A, clip(r)·A):
#   c0: -min(1.2, 1.2) = -1.2 ; -min(1.5, 1.272) = -1.272 (high clip) ; -min(0.5, 0.8) = -0.5 (A > 0: no clip)
#   c1: -min(-1.0, -1.6) = 1.6 (low clip) ; -min(-2.4, -2.4) = 2.4
PPO_TOKENS = [[-1.2, -1.272, -0.5], [1.6, 2.4, 0.0]]
PPO_TOTAL = 1.028  # -1.2 - 1.272 - 0.5 + 1.6 + 2.4


def hand(requires_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    logps = torch.tensor(P_NEW).log().requires_grad_(requires_grad)
    return logps, torch.tensor(P_OLD).log()


def test_registered_loss_types():
    assert loss_type_names() == ["cispo", "gspo", "ppo"]
    with pytest.raises(ValueError, match="did you mean 'gspo'"):
        policy_loss(*hand(), ADV, MASK, loss_type="gspoo")


def test_ppo_clip_higher_token_normalisation_by_hand():
    logps, old = hand()
    out = policy_loss(logps, old, ADV, MASK)  # OLMo 3 defaults: ppo, 0.2 / 0.272, token
    assert out.total.item() == pytest.approx(PPO_TOTAL, abs=1e-6)
    assert out.denominator.item() == 5  # valid tokens
    assert out.loss.item() == pytest.approx(1.028 / 5, abs=1e-6)  # 0.2056
    m = out.metrics
    assert m.tokens.item() == 5
    assert m.clip_high.item() == pytest.approx(1 / 5)  # r = 1.5 with A > 0
    assert m.clip_low.item() == pytest.approx(1 / 5)  # r = 0.5 with A < 0 (not r = 0.5 with A > 0)
    assert m.ratio_mean.item() == pytest.approx((1.2 + 1.5 + 0.5 + 0.5 + 1.2) / 5)  # 0.98
    assert (m.ratio_min.item(), m.ratio_max.item()) == pytest.approx((0.5, 1.5))
    assert m.pg_loss.item() == pytest.approx(out.loss.item())
    assert m.kl is None and m.entropy is None and m.is_weight_mean is None


def test_normalisations_by_hand():
    logps, old = hand()
    seq = policy_loss(logps, old, ADV, MASK, norm="sequence")
    # per-completion means: c0 (-1.2 - 1.272 - 0.5) / 3 = -0.990667, c1 (1.6 + 2.4) / 2 = 2.0; / 2 completions
    assert seq.total.item() == pytest.approx(-2.972 / 3 + 2.0, abs=1e-6)
    assert (seq.denominator.item(), seq.loss.item()) == pytest.approx((2, 0.5046667), abs=1e-6)
    const = policy_loss(logps, old, ADV, MASK, norm="constant", max_len=4)
    assert (const.denominator.item(), const.loss.item()) == pytest.approx((8, 1.028 / 8), abs=1e-6)  # 2 · 4
    # Token normalisation weighs completion 0's three tokens more than the sequence mean does, so the
    # three differ: 0.2056 (token) < 0.5047 (sequence); constant = token · 5 / 8.
    tok = policy_loss(logps, old, ADV, MASK, norm="token")
    assert tok.loss.item() < seq.loss.item() and const.loss.item() == pytest.approx(tok.loss.item() * 5 / 8)
    glob = policy_loss(logps, old, ADV, MASK, total_tokens=10)  # e.g. another rank holds 5 more tokens
    assert glob.loss.item() == pytest.approx(1.028 / 10, abs=1e-6)
    with pytest.raises(ValueError, match="max_len"):
        policy_loss(logps, old, ADV, MASK, norm="constant")
    with pytest.raises(ValueError, match="norm"):
        policy_loss(logps, old, ADV, MASK, norm="tokens")


@pytest.mark.parametrize("norm, kwargs", [("token", {"total_tokens": 5}), ("sequence", {"total_sequences": 2}),
                                          ("constant", {"total_sequences": 2, "max_len": 4})])
def test_micro_batches_with_global_denominator_sum_to_the_full_batch(norm, kwargs):
    logps, old = hand()
    full = policy_loss(logps, old, ADV, MASK, norm=norm, **{k: v for k, v in kwargs.items() if k == "max_len"})
    (g_full,) = torch.autograd.grad(full.loss, logps)
    parts = [policy_loss(logps[i:i + 1], old[i:i + 1], ADV[i:i + 1], MASK[i:i + 1], norm=norm, **kwargs).loss
             for i in range(2)]
    (g_parts,) = torch.autograd.grad(sum(parts), logps)
    assert sum(parts).item() == pytest.approx(full.loss.item(), abs=1e-6)
    torch.testing.assert_close(g_parts, g_full)


def test_ppo_clip_stops_gradient_outside_the_band():
    logps, old = hand()
    policy_loss(logps, old, ADV, MASK).total.backward()
    # dℓ/dlogp = -A·r where the unclipped branch is taken, 0 where the clip is active or masked:
    #   c0: -1.2, 0 (r = 1.5 > 1.272, A > 0), -0.5 ; c1: 0 (r = 0.5 < 0.8, A < 0), 2·1.2 = 2.4, 0 (pad)
    torch.testing.assert_close(logps.grad, torch.tensor([[-1.2, 0.0, -0.5], [0.0, 2.4, 0.0]]))


def test_on_policy_without_old_logps():
    logps, _ = hand()
    out = policy_loss(logps, None, ADV, MASK)
    # r = 1 everywhere: ℓ = -A per token: c0 3·(-1), c1 2·(+2) -> total 1, 5 tokens
    assert out.loss.item() == pytest.approx(1 / 5)
    out.total.backward()
    torch.testing.assert_close(logps.grad, torch.tensor([[-1.0, -1.0, -1.0], [2.0, 2.0, 0.0]]))  # -A


def test_cispo_by_hand_gradient_only_through_logps():
    logps, old = hand()
    old.requires_grad_()
    out = policy_loss(logps, old, ADV, MASK, loss_type="cispo")
    # weight = sg(min(r, 1.272)): c0 [1.2, 1.272, 0.5], c1 [0.5, 1.2]; ℓ = -w·A·log p_new
    #   c0: -1.2·ln 0.6 = 0.6129907 ; -1.272·ln 0.6 = 0.6497702 ; -0.5·ln 0.1 = 1.1512925
    #   c1: 2·0.5·ln 0.25 = -1.3862944 ; 2·1.2·ln 0.6 = -1.2259815
    total = 0.6129907 + 0.6497702 + 1.1512925 - 1.3862944 - 1.2259815  # -0.1982225
    assert out.total.item() == pytest.approx(total, abs=1e-6)
    assert out.loss.item() == pytest.approx(total / 5, abs=1e-6)
    assert (out.metrics.clip_high.item(), out.metrics.clip_low.item()) == pytest.approx((0.2, 0.0))
    out.total.backward()
    # dℓ/dlogp = -w·A: the capped token (r = 1.5) still gets a gradient, unlike PPO; none reaches old_logps
    torch.testing.assert_close(logps.grad, torch.tensor([[-1.2, -1.272, -0.5], [1.0, 2.4, 0.0]]))
    assert old.grad is None


def test_gspo_sequence_ratio_by_hand():
    logps, old = hand()
    # sequence ratio = exp(mean log r): c0 (1.2·1.5·0.5)^(1/3) = 0.9^(1/3) = 0.9654894 (inside the band),
    # c1 (0.5·1.2)^(1/2) = 0.7745967 < 0.8 with A < 0: clipped, ℓ = 2·0.8 = 1.6 at each token
    s0 = 0.9 ** (1 / 3)
    seq = policy_loss(logps, old, ADV, MASK, loss_type="gspo", norm="sequence")
    assert seq.loss.item() == pytest.approx((-s0 + 1.6) / 2, abs=1e-6)  # 0.3172553
    tok = policy_loss(logps, old, ADV, MASK, loss_type="gspo")
    assert tok.loss.item() == pytest.approx((3 * -s0 + 2 * 1.6) / 5, abs=1e-6)  # 0.0607064
    assert tok.metrics.clip_low.item() == pytest.approx(2 / 5)  # both tokens of c1
    seq.loss.backward()
    # d(-A·s0)/dlogp_t = -s0 / 3 for each token of c0, over 2 sequences; c1 clipped: 0
    g = -s0 / 3 / 2
    torch.testing.assert_close(logps.grad, torch.tensor([[g, g, g], [0.0, 0.0, 0.0]]))


def test_kl_estimators_by_hand():
    # p = [0.6, 0.6, 0.1], p_ref = [0.3, 0.6, 0.2]: log r = log(p_ref / p) = [-ln 2, 0, ln 2]
    logps = torch.tensor([[0.6, 0.6, 0.1]]).log()
    ref = torch.tensor([[0.3, 0.6, 0.2]]).log()
    ln2 = math.log(2)
    torch.testing.assert_close(kl_estimate(logps, ref, "k1"), torch.tensor([[ln2, 0.0, -ln2]]))  # -log r
    torch.testing.assert_close(kl_estimate(logps, ref, "k2"), torch.tensor([[ln2**2 / 2, 0.0, ln2**2 / 2]]))
    # k3 = (r - 1) - log r: (0.5 - 1 + ln 2) = 0.1931472, 0, (2 - 1 - ln 2) = 0.3068528
    torch.testing.assert_close(kl_estimate(logps, ref, "k3"), torch.tensor([[ln2 - 0.5, 0.0, 1 - ln2]]))
    assert sorted(KL_ESTIMATORS) == ["k1", "k2", "k3"]
    with pytest.raises(ValueError, match="KL estimator"):
        kl_estimate(logps, ref, "k4")


def test_kl_term_and_is_weights_by_hand():
    logps, old = hand()
    ref = torch.tensor([[0.3, 0.6, 0.2], [0.25, 0.6, 0.9]]).log()  # c1: equal to p_new on its valid tokens
    # k3 over valid tokens: 0.1931472 + 0 + 0.3068528 + 0 + 0 = 0.5; mean 0.1; with kl_coef 0.1: +0.01
    out = policy_loss(logps, old, ADV, MASK, ref_logps=ref, kl_coef=0.1)
    assert out.loss.item() == pytest.approx(1.028 / 5 + 0.01, abs=1e-6)
    assert out.metrics.kl.item() == pytest.approx(0.1, abs=1e-6)
    assert out.metrics.pg_loss.item() == pytest.approx(1.028 / 5, abs=1e-6)
    # mismatch weights multiply the policy term only: w = [[2, 1, 1], [1, 0.5, 9 (pad)]]
    #   pg·w: c0 [-2.4, -1.272, -0.5], c1 [1.6, 1.2] -> -1.372 / 5 = -0.2744; KL unweighted: +0.01
    w = torch.tensor([[2.0, 1.0, 1.0], [1.0, 0.5, 9.0]])
    out = policy_loss(logps, old, ADV, MASK, ref_logps=ref, kl_coef=0.1, is_weights=w)
    assert out.loss.item() == pytest.approx(-1.372 / 5 + 0.01, abs=1e-6)
    assert out.metrics.is_weight_mean.item() == pytest.approx(5.5 / 5)  # (2 + 1 + 1 + 1 + 0.5) / 5
    assert out.metrics.is_weight_max.item() == 2.0


def test_zero_kl_coefficient_needs_no_reference():
    logps, old = hand()
    out = policy_loss(logps, old, ADV, MASK, ref_logps=None, kl_coef=0.0)
    assert out.metrics.kl is None
    with pytest.raises(ValueError, match="ref_logps"):
        policy_loss(logps, old, ADV, MASK, kl_coef=0.05)


@pytest.mark.parametrize("loss_type", ["ppo", "gspo", "cispo"])
def test_masked_positions_may_hold_anything(loss_type):
    logps, old = hand(requires_grad=False)
    clean = policy_loss(logps, old, ADV, MASK, loss_type=loss_type)
    logps[1, 2], old[1, 2] = float("inf"), float("nan")  # padding garbage
    logps.requires_grad_()
    ref = torch.tensor(P_NEW).log()
    ref[1, 2] = float("-inf")
    adv = ADV[:, None].expand(2, 3).clone()
    adv[1, 2] = float("nan")
    garbage = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, float("inf")]])
    out = policy_loss(logps, old, adv, MASK, loss_type=loss_type, ref_logps=ref, kl_coef=0.1, is_weights=garbage,
                      entropy=torch.full((2, 3), float("nan")))
    # the KL of the valid tokens is 0 (ref = p_new there), so only the padding could change the loss
    assert out.total.item() == pytest.approx(clean.total.item(), abs=1e-6)
    out.total.backward()
    assert torch.isfinite(logps.grad).all() and logps.grad[1, 2] == 0


def test_token_entropy_by_hand_and_trl():
    from trl.trainer.utils import entropy_from_logits

    # uniform over 4: ln 4 = 1.3862944 ; p = [0.25, 0.75]: -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.5623351
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3), -math.inf, -math.inf]]])
    torch.testing.assert_close(token_entropy(logits), torch.tensor([[math.log(4), 0.5623351]]))
    assert masked_mean(token_entropy(logits), torch.tensor([[1, 0]])).item() == pytest.approx(math.log(4))
    big = torch.randn(3, 5, 11, generator=torch.Generator().manual_seed(0)) * 3
    torch.testing.assert_close(token_entropy(big, chunk_rows=4), token_entropy(big))
    torch.testing.assert_close(token_entropy(big), entropy_from_logits(big))
    logps, old = hand()
    ent = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]])
    assert policy_loss(logps, old, ADV, MASK, entropy=ent).metrics.entropy.item() == pytest.approx(3.0)


def test_entropy_bonus_by_hand():
    logps, old = hand()
    ent = torch.tensor([[1.0, 0.5, 2.0], [0.2, 0.4, 9.0]], requires_grad=True)  # 9.0: padding
    # ℓ_t = pg_t - 0.1 · H_t; Σ H over the 5 valid tokens = 1 + 0.5 + 2 + 0.2 + 0.4 = 4.1 -> 1.028 - 0.41
    out = policy_loss(logps, old, ADV, MASK, entropy=ent, entropy_coef=0.1)
    assert out.total.item() == pytest.approx(0.618, abs=1e-6)
    assert out.loss.item() == pytest.approx(0.618 / 5, abs=1e-6)
    assert out.metrics.pg_loss.item() == pytest.approx(1.028 / 5, abs=1e-6)  # without the bonus
    assert out.metrics.entropy.item() == pytest.approx(4.1 / 5)
    out.loss.backward()
    # dloss/dH_t = -0.1 / 5 on valid tokens, 0 on padding; the policy term's gradient is unchanged
    torch.testing.assert_close(ent.grad, torch.tensor([[-0.02, -0.02, -0.02], [-0.02, -0.02, 0.0]]))
    torch.testing.assert_close(logps.grad * 5, torch.tensor([[-1.2, 0.0, -0.5], [0.0, 2.4, 0.0]]))
    # sequence norm: c0 (-2.972 - 0.1 · 3.5) / 3 = -1.1073333, c1 (4.0 - 0.1 · 0.6) / 2 = 1.97; / 2 sequences
    seq = policy_loss(*hand(), ADV, MASK, norm="sequence", entropy=ent.detach(), entropy_coef=0.1)
    assert seq.loss.item() == pytest.approx((-3.322 / 3 + 1.97) / 2, abs=1e-6)
    # not weighted by the mismatch weights (as KL): w = 2 on c0's first token changes only its pg term
    w = torch.tensor([[2.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    weighted = policy_loss(*hand(), ADV, MASK, entropy=ent.detach(), entropy_coef=0.1, is_weights=w)
    assert weighted.total.item() == pytest.approx(0.618 - 1.2, abs=1e-6)
    with pytest.raises(ValueError, match="entropy_coef != 0 needs entropy"):
        policy_loss(*hand(), ADV, MASK, entropy_coef=0.1)


def test_adaptive_entropy_coefficient_moves_towards_the_target():
    from flowlm.rl.losses import adapt_entropy_coef

    # below the target: the bonus grows by lr · gap = 0.1 · (0.5 - 0.2) = 0.03
    assert adapt_entropy_coef(0.01, 0.2, 0.5, 0.1) == pytest.approx(0.04)
    # above: it shrinks (0.05 - 0.1 · 0.1 = 0.04), and never below 0 (0.01 - 0.04 -> 0)
    assert adapt_entropy_coef(0.05, 0.6, 0.5, 0.1) == pytest.approx(0.04)
    assert adapt_entropy_coef(0.01, 0.9, 0.5, 0.1) == 0.0
    assert adapt_entropy_coef(0.03, 0.5, 0.5, 0.1) == pytest.approx(0.03)  # on target: unchanged
    assert adapt_entropy_coef(0.03, float("nan"), 0.5, 0.1) == 0.03  # a non-finite entropy: unchanged
    coef, entropy = 0.0, 0.1
    for _ in range(3):  # a collapsing entropy keeps raising it
        new = adapt_entropy_coef(coef, entropy, 0.5, 0.1)
        assert new > coef
        coef, entropy = new, entropy * 0.5


# --- TRL 1.16 GRPOTrainer._compute_loss on the same tensors ------------------------------------------

def _identity(x, *args, **kwargs):
    return x


def trl_grpo_loss(logps, old, adv, mask, *, loss_type, eps_low=0.2, eps_high=0.272, level="token", beta=0.0,
                  ref=None, is_ratio=None, max_completion_length=None):
    """TRL's loss and gradient wrt `logps` (one process, no accumulation), and its logged metrics."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    logps = logps.detach().clone().requires_grad_()
    b, t = logps.shape
    stub = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros(b, t), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level=level, beta=beta,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high, use_vllm=is_ratio is not None,
        vllm_importance_sampling_correction=True, model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, max_completion_length=max_completion_length,
        accelerator=SimpleNamespace(num_processes=1, gather=_identity, reduce=_identity, gather_for_metrics=_identity),
        _metrics={"train": defaultdict(list)}, _entropy_bonus_enabled=False, aux_loss_enabled=False)
    inputs = {"prompt_ids": torch.zeros(b, 1, dtype=torch.long), "prompt_mask": torch.ones(b, 1, dtype=torch.long),
              "completion_ids": torch.zeros(b, t, dtype=torch.long), "completion_mask": mask,
              "advantages": adv, "old_per_token_logps": old, "num_items_in_batch": mask.sum().float()}
    if ref is not None:
        inputs["ref_per_token_logps"] = ref
    if is_ratio is not None:
        inputs["importance_sampling_ratio"] = is_ratio
    loss = GRPOTrainer._compute_loss(stub, None, inputs)
    (grad,) = torch.autograd.grad(loss, logps)
    return loss.detach(), grad, stub._metrics["train"]


def random_batch(seed=0, b=4, t=6):
    g = torch.Generator().manual_seed(seed)
    old = -2 * torch.rand(b, t, generator=g)
    logps = (old + 0.3 * torch.randn(b, t, generator=g)).clamp(max=0.0)
    mask = (torch.arange(t)[None, :] < torch.tensor([6, 4, 2, 5])[:, None]).long()
    adv = torch.randn(b, generator=g)
    ref = old + 0.2 * torch.randn(b, t, generator=g)
    is_ratio = torch.exp(0.2 * torch.randn(b, t, generator=g)).clamp(max=2.0)
    return logps, old, adv, mask, ref, is_ratio


# (flowlm policy_loss kwargs, TRL kwargs): TRL loss types map to our loss_type × norm; TRL's cispo caps the
# weight at epsilon_high itself, ours at 1 + clip_high.
TRL_CASES = {
    "dapo": ({"norm": "token"}, {"loss_type": "dapo"}),
    "bnpo": ({"norm": "token"}, {"loss_type": "bnpo"}),
    "grpo": ({"norm": "sequence"}, {"loss_type": "grpo"}),
    "dr_grpo": ({"norm": "constant", "max_len": 6}, {"loss_type": "dr_grpo", "max_completion_length": 6}),
    "cispo": ({"loss_type": "cispo", "clip_high": 4.0}, {"loss_type": "cispo", "eps_high": 5.0}),
    "gspo": ({"loss_type": "gspo", "norm": "sequence", "clip_low": 0.01, "clip_high": 0.02},
             {"loss_type": "grpo", "level": "sequence", "eps_low": 0.01, "eps_high": 0.02}),
    "dapo_kl_is": ({"kl_coef": 0.04, "kl_estimator": "k3", "is": True},
                   {"loss_type": "dapo", "beta": 0.04, "is": True}),
}


@pytest.mark.parametrize("case", sorted(TRL_CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_trl_grpo_loss(case, seed):
    ours_kw, trl_kw = (dict(d) for d in TRL_CASES[case])
    logps, old, adv, mask, ref, is_ratio = random_batch(seed)
    if ours_kw.pop("is", False):
        ours_kw |= {"is_weights": is_ratio, "ref_logps": ref}
    if trl_kw.pop("is", False):
        trl_kw |= {"is_ratio": is_ratio, "ref": ref}
    t_loss, t_grad, t_metrics = trl_grpo_loss(logps, old, adv, mask, **trl_kw)
    x = logps.clone().requires_grad_()
    out = policy_loss(x, old, adv, mask, **ours_kw)
    (grad,) = torch.autograd.grad(out.loss, x)
    assert out.loss.item() == pytest.approx(t_loss.item(), rel=1e-5, abs=1e-7)
    torch.testing.assert_close(grad, t_grad, rtol=1e-5, atol=1e-7)
    if case in ("dapo", "bnpo", "grpo", "dr_grpo", "dapo_kl_is"):  # token-level clip metrics
        assert out.metrics.clip_low.item() == pytest.approx(t_metrics["clip_ratio/low_mean"][0])
        assert out.metrics.clip_high.item() == pytest.approx(t_metrics["clip_ratio/high_mean"][0])
    if case == "dapo_kl_is":
        assert out.metrics.kl.item() == pytest.approx(t_metrics["kl"][0], rel=1e-5)
