"""Post-training losses: hand-checked small cases, and the same numbers (and gradients) as TRL 1.16.

How TRL is called. TRL computes these losses inside trainer methods that read a few attributes of the
trainer, so each comparison calls the unbound method with a stub `self` (a `SimpleNamespace` carrying
exactly the attributes the method reads) instead of building a trainer (which needs datasets,
`TrainingArguments` and an accelerator):
- DPO: `DPOTrainer._compute_loss(stub, model, inputs, return_outputs=False)` with `precompute_ref_logps`
  on (the reference log-probs ride in the inputs) and a stub model whose "fused LM head" output carries
  per-token log-probs spread evenly over each row's completion tokens, so their row sums are our
  sequence log-probs and autograd carries TRL's gradient back to them.
- Reward model: `RewardTrainer.compute_loss(stub, model, inputs)` with a stub model returning the rewards
  as its `logits`.
- SFT: `SFTTrainer.compute_loss(stub, model, inputs)` on a tiny random Qwen3 patched with TRL's own
  `add_fused_lm_head`, on a packed row (TRL: unshifted labels, `position_ids` restarting per document;
  flowlm: shifted labels and `doc_ids`).
- Distillation: `GKDTrainer.generalized_jsd_loss` is a static method; called directly.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from flowlm.train.post_losses import (
    DPO_LOSSES,
    bradley_terry_loss,
    dpo_loss,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    sequence_logps,
)

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
trl = pytest.importorskip("trl")


def _accelerator() -> SimpleNamespace:
    return SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x,
                           parallelism_config=None, num_processes=1)


def _trainer_stub(**attrs) -> SimpleNamespace:
    """The attributes every TRL `compute_loss` reads for its mode, metrics and token count."""
    return SimpleNamespace(model=SimpleNamespace(training=True), accelerator=_accelerator(), _tp_size=1,
                           _total_train_tokens=0, _metrics=defaultdict(lambda: defaultdict(list)), **attrs)


# -- hand-checked cases ----------------------------------------------------------------------------

def test_dpo_hand_checked():
    pc, pr, rc, rr = (torch.tensor([x]) for x in (-1.0, -2.0, -1.5, -1.5))
    # dpo: log-ratios 0.5 and -0.5, β = 0.5 -> -log σ(0.5 · 1.0) = log(1 + e^-0.5) = 0.474077
    out = dpo_loss(pc, pr, rc, rr, 0.5)
    assert out.losses.item() == pytest.approx(0.474077, abs=1e-6)
    assert (out.chosen_rewards.item(), out.rejected_rewards.item()) == (0.25, -0.25)
    # dpo_norm, 2 chosen / 4 rejected tokens: 0.5/2 - (-0.5/4) = 0.375 -> log(1 + e^-0.1875) = 0.603785
    out = dpo_loss(pc, pr, rc, rr, 0.5, loss_type="dpo_norm", chosen_lengths=torch.tensor([2]),
                   rejected_lengths=torch.tensor([4]))
    assert out.losses.item() == pytest.approx(0.603785, abs=1e-6)
    assert (out.chosen_rewards.item(), out.rejected_rewards.item()) == (0.125, -0.0625)
    with pytest.raises(ValueError, match="chosen_lengths"):
        dpo_loss(pc, pr, rc, rr, 0.5, loss_type="dpo_norm")


def test_more_preference_losses_hand_checked():
    pc, pr, rc, rr = (torch.tensor([x]) for x in (-1.0, -2.0, -1.5, -1.5))  # log-ratios 0.5 / -0.5, Δ = 1
    two, four = torch.tensor([2]), torch.tensor([4])
    # hinge, β = 0.5: max(0, 1 - 0.5) = 0.5; β = 2: max(0, 1 - 2) = 0
    assert dpo_loss(pc, pr, rc, rr, 0.5, loss_type="hinge").losses.item() == pytest.approx(0.5)
    assert dpo_loss(pc, pr, rc, rr, 2.0, loss_type="hinge").losses.item() == 0.0
    # ipo, β = 0.5, 2 / 4 tokens: Δ = 0.25 + 0.125 = 0.375; (0.375 - 1)² = 0.390625
    out = dpo_loss(pc, pr, rc, rr, 0.5, loss_type="ipo", chosen_lengths=two, rejected_lengths=four)
    assert out.losses.item() == pytest.approx(0.390625)
    # robust, β = 0.5, ε = 0.25: (0.75 · log(1 + e^-0.5) - 0.25 · log(1 + e^0.5)) / 0.5
    #   = (0.75 · 0.474077 - 0.25 · 0.974077) / 0.5 = 0.224077
    out = dpo_loss(pc, pr, rc, rr, 0.5, loss_type="robust", label_smoothing=0.25)
    assert out.losses.item() == pytest.approx(0.224077, abs=1e-6)
    # apo_zero, β = 2: 1 - σ(1) + σ(-1) = 2 σ(-1) = 0.537883
    assert dpo_loss(pc, pr, rc, rr, 2.0, loss_type="apo_zero").losses.item() == pytest.approx(0.537883, abs=1e-6)
    # simpo, β = 2, γ = 0.5, 2 / 4 tokens, no reference: 2 · (-0.5 - -0.5) - 0.5 = -0.5 -> log(1 + e^0.5) = 0.974077
    out = dpo_loss(pc, pr, rc, rr, 2.0, loss_type="simpo", chosen_lengths=two, rejected_lengths=four)
    assert out.losses.item() == pytest.approx(0.974077, abs=1e-6) and out.chosen_rewards.item() == -1.0
    # orpo, β = 1, 2 / 4 tokens: p = -0.5 both sides, so the odds ratio is 1: log(1 + e^0) = ln 2 = 0.693147,
    # plus the NLL per chosen token 0.5
    out = dpo_loss(pc, pr, rc, rr, 1.0, loss_type="orpo", chosen_lengths=two, rejected_lengths=four)
    assert out.losses.item() == pytest.approx(1.193147, abs=1e-6)
    # the sft term, weight 0.5: NLL per chosen token 1 / 2 -> 0.474077 + 0.25
    out = dpo_loss(pc, pr, rc, rr, 0.5, chosen_lengths=two, rejected_lengths=four, sft_weight=0.5)
    assert out.losses.item() == pytest.approx(0.724077, abs=1e-6)
    with pytest.raises(ValueError, match="flip probability"):
        dpo_loss(pc, pr, rc, rr, 0.5, loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match="exo_pair"):
        dpo_loss(pc, pr, rc, rr, 0.5, loss_type="exo_pair")
    with pytest.raises(ValueError, match="loss_type must be one of"):
        dpo_loss(pc, pr, rc, rr, 0.5, loss_type="kto")


def test_bradley_terry_hand_checked():
    # -log σ(1 - 0) = log(1 + e^-1) = 0.313262; centring 0.1 · (1 + 0)² = 0.1
    c, r = torch.tensor([1.0]), torch.tensor([0.0])
    assert bradley_terry_loss(c, r).item() == pytest.approx(0.313262, abs=1e-6)
    assert bradley_terry_loss(c, r, 0.1).item() == pytest.approx(0.413262, abs=1e-6)


def test_divergences_hand_checked():
    # student s = (1/2, 1/2), teacher t = (3/4, 1/4)
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3), 0.0]])
    # KL(t‖s) = .75 ln 1.5 + .25 ln .5 = 0.130812;  KL(s‖t) = .5 ln(2/3) + .5 ln 2 = 0.143841
    assert forward_kl(s, t).item() == pytest.approx(0.130812, abs=1e-6)
    assert reverse_kl(s, t).item() == pytest.approx(0.143841, abs=1e-6)
    # β = .5: m = (5/8, 3/8); .5 [.75 ln(1.2) + .25 ln(2/3)] + .5 [.5 ln .8 + .5 ln(4/3)] = 0.033822
    assert generalized_jsd(s, t, 0.5).item() == pytest.approx(0.033822, abs=1e-6)
    assert generalized_jsd(s, t, 0.0).item() == forward_kl(s, t).item()
    # the mask zeroes positions
    assert generalized_jsd(s.repeat(2, 1), t.repeat(2, 1), 0.5, labels_mask=torch.tensor([True, False]))[1] == 0


def test_top_k_teacher_support_hand_checked():
    # student uniform over 3; teacher (6/9, 2/9, 1/9) -> top-2 renormalised (3/4, 1/4)
    s, t = torch.zeros(1, 3), torch.tensor([[math.log(6), math.log(2), 0.0]])
    # forward KL against the full student: .75 ln(.75·3) + .25 ln(.25·3) = 0.536277
    assert forward_kl(s, t, top_k=2).item() == pytest.approx(0.536277, abs=1e-6)
    # reverse KL with the student renormalised on the support, (1/2, 1/2): as above, 0.143841
    assert reverse_kl(s, t, top_k=2).item() == pytest.approx(0.143841, abs=1e-6)
    # top_k ≥ V is the full computation
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    for beta in (0.0, 0.5, 1.0):
        torch.testing.assert_close(generalized_jsd(a, b, beta, top_k=7), generalized_jsd(a, b, beta))


def test_sequence_logps_hand_checked_and_chunked_head_equals_logits():
    # uniform over 2 tokens: every target has log-prob ln .5; 3 targets -> -2.079442
    logps, n = sequence_logps(torch.zeros(1, 4, 2), torch.tensor([[1, 0, -100, 1]]))
    assert logps.item() == pytest.approx(-2.079442, abs=1e-6) and n.tolist() == [3]
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 6, 8, generator=g, requires_grad=True)
    w = torch.randn(11, 8, generator=g, requires_grad=True)
    labels = torch.randint(0, 11, (3, 6), generator=g)
    labels[0, :2] = labels[2] = -100
    fused, n1 = sequence_logps(h, labels, w, chunk_rows=3)  # 4 + 6 targets in chunks of 3 rows
    plain, n2 = sequence_logps(h @ w.t(), labels)
    torch.testing.assert_close(fused, plain)
    assert n1.tolist() == n2.tolist() == [4, 6, 0] and fused[2].item() == 0.0
    weights = torch.tensor([1.0, -2.0, 3.0])
    g1 = torch.autograd.grad(fused @ weights, (h, w))
    g2 = torch.autograd.grad(plain @ weights, (h, w))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


# -- DPO against TRL -------------------------------------------------------------------------------

def _trl_dpo(loss_type: str, beta: float, pc, pr, rc, rr, chosen_len, rejected_len, *, label_smoothing=0.0,
             discopop_tau=0.05, sft_weight=0.0) -> torch.Tensor:
    """TRL's DPO loss (mean over pairs) for given sequence log-probs, through `DPOTrainer._compute_loss`."""
    from trl import DPOTrainer

    P = len(pc)
    lengths = torch.cat([chosen_len, rejected_len])
    T = int(lengths.max()) + 2
    completion_mask = (torch.arange(T)[None, :] >= 1) & (torch.arange(T)[None, :] <= lengths[:, None])
    shift = completion_mask[:, 1:].float()
    # per-token log-probs whose row sums are the sequence log-probs (and carry gradients back to them)
    per_token = torch.cat([pc, pr])[:, None] * shift / lengths[:, None].float()
    zeros = torch.zeros_like(shift)
    model = lambda **kw: SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros,  # noqa: E731
                                         is_top1=zeros.bool())
    types, weights = ([loss_type, "sft"], [1.0, sft_weight]) if sft_weight else ([loss_type], [1.0])
    stub = _trainer_stub(aux_loss_enabled=False, precompute_ref_logps=True, ld_alpha=None,
                         f_divergence_type="reverse_kl", loss_types=types, loss_weights=weights, beta=beta,
                         use_weighting=False, label_smoothing=label_smoothing,
                         args=SimpleNamespace(discopop_tau=discopop_tau))
    ones = torch.ones(2 * P, T, dtype=torch.long)
    inputs = {"input_ids": 0 * ones, "attention_mask": ones,
              "completion_mask": completion_mask.long(), "ref_chosen_logps": rc, "ref_rejected_logps": rr}
    return DPOTrainer._compute_loss(stub, model, inputs, return_outputs=False)


@pytest.mark.parametrize(("ours", "theirs"), [("dpo", "sigmoid"), ("dpo_norm", "sigmoid_norm")])
def test_dpo_loss_and_gradients_equal_trl(ours, theirs):
    g = torch.Generator().manual_seed(1)
    P = 6
    chosen_len, rejected_len = torch.randint(1, 30, (P,), generator=g), torch.randint(1, 30, (P,), generator=g)
    base = [-(torch.rand(P, generator=g) * 40 + 1) for _ in range(4)]
    rc, rr = base[2], base[3]
    beta = 0.1 if ours == "dpo" else 5.0
    pc1, pr1 = base[0].clone().requires_grad_(), base[1].clone().requires_grad_()
    out = dpo_loss(pc1, pr1, rc, rr, beta, loss_type=ours, chosen_lengths=chosen_len, rejected_lengths=rejected_len)
    mine = out.losses.sum() / P  # the engine divides the sum over pairs by the number of pairs
    mine.backward()
    pc2, pr2 = base[0].clone().requires_grad_(), base[1].clone().requires_grad_()
    theirs_loss = _trl_dpo(theirs, beta, pc2, pr2, rc, rr, chosen_len, rejected_len)
    theirs_loss.backward()
    assert mine.item() == pytest.approx(theirs_loss.item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(pc1.grad, pc2.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(pr1.grad, pr2.grad, rtol=1e-5, atol=1e-7)
    assert 0 < mine.item() < 10


TRL_LOSSES = [(ours, theirs) for ours, theirs in DPO_LOSSES.items()
              if ours not in ("dpo", "dpo_norm", "simpo", "orpo")]


@pytest.mark.parametrize(("ours", "theirs"), TRL_LOSSES)
def test_every_preference_loss_and_its_gradients_equal_trls_namesake(ours, theirs):
    """Each loss type against `DPOTrainer`'s, on log-probs spread around the reference so every branch of the
    bounded losses (hinge's kink, the sigmoids' tails) is exercised; with label smoothing where it applies."""
    g = torch.Generator().manual_seed(2)
    P = 8
    chosen_len, rejected_len = torch.randint(1, 30, (P,), generator=g), torch.randint(1, 30, (P,), generator=g)
    rc, rr = -(torch.rand(P, generator=g) * 40 + 1), -(torch.rand(P, generator=g) * 40 + 1)
    pc0, pr0 = rc + torch.randn(P, generator=g) * 6, rr + torch.randn(P, generator=g) * 6
    beta = 0.1 if ours != "ipo" else 0.5
    smoothing = {"robust": 0.2, "exo_pair": 1e-3}.get(ours, 0.0)
    pc1, pr1 = pc0.clone().requires_grad_(), pr0.clone().requires_grad_()
    mine = dpo_loss(pc1, pr1, rc, rr, beta, loss_type=ours, chosen_lengths=chosen_len, rejected_lengths=rejected_len,
                    label_smoothing=smoothing).losses.sum() / P
    mine.backward()
    pc2, pr2 = pc0.clone().requires_grad_(), pr0.clone().requires_grad_()
    theirs_loss = _trl_dpo(theirs, beta, pc2, pr2, rc, rr, chosen_len, rejected_len, label_smoothing=smoothing)
    theirs_loss.backward()
    assert mine.item() == pytest.approx(theirs_loss.item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(pc1.grad, pc2.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(pr1.grad, pr2.grad, rtol=1e-5, atol=1e-7)
    assert pc1.grad.abs().sum() > 0


def test_the_sft_term_equals_trls_sft_loss_type_in_a_weighted_combination():
    g = torch.Generator().manual_seed(3)
    P = 5
    chosen_len, rejected_len = torch.randint(1, 30, (P,), generator=g), torch.randint(1, 30, (P,), generator=g)
    base = [-(torch.rand(P, generator=g) * 40 + 1) for _ in range(4)]
    pc1, pr1 = base[0].clone().requires_grad_(), base[1].clone().requires_grad_()
    mine = dpo_loss(pc1, pr1, base[2], base[3], 0.1, chosen_lengths=chosen_len, rejected_lengths=rejected_len,
                    sft_weight=0.3).losses.sum() / P
    mine.backward()
    pc2, pr2 = base[0].clone().requires_grad_(), base[1].clone().requires_grad_()
    theirs = _trl_dpo("sigmoid", 0.1, pc2, pr2, base[2], base[3], chosen_len, rejected_len, sft_weight=0.3)
    theirs.backward()
    assert mine.item() == pytest.approx(theirs.item(), rel=1e-5)
    torch.testing.assert_close(pc1.grad, pc2.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_simpo_equals_trls_cpo_trainer_and_ignores_the_reference(smoothing):
    from trl.experimental.cpo import CPOTrainer

    g = torch.Generator().manual_seed(4)
    P = 6
    chosen_len, rejected_len = torch.randint(1, 30, (P,), generator=g), torch.randint(1, 30, (P,), generator=g)
    pc, pr = -(torch.rand(P, generator=g) * 40 + 1), -(torch.rand(P, generator=g) * 40 + 1)
    pc1, pr1 = pc.clone().requires_grad_(), pr.clone().requires_grad_()
    out = dpo_loss(pc1, pr1, torch.full((P,), 123.0), torch.full((P,), -9.0), 2.0, loss_type="simpo",
                   chosen_lengths=chosen_len, rejected_lengths=rejected_len, simpo_gamma=0.7, label_smoothing=smoothing)
    out.losses.mean().backward()
    pc2, pr2 = pc.clone().requires_grad_(), pr.clone().requires_grad_()
    stub = SimpleNamespace(alpha=0.0, loss_type="simpo", beta=2.0, simpo_gamma=0.7, label_smoothing=smoothing,
                           accelerator=_accelerator())
    # CPOTrainer averages log-probs over the answer tokens before its loss when loss_type is simpo
    losses, chosen_rewards, _ = CPOTrainer.cpo_loss(stub, pc2 / chosen_len, pr2 / rejected_len)
    losses.mean().backward()
    torch.testing.assert_close(out.losses, losses.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.chosen_rewards, chosen_rewards, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pc1.grad, pc2.grad, rtol=1e-5, atol=1e-7)


def test_orpo_equals_trls_orpo_trainer_with_its_nll_term():
    """ORPO: the chosen answers' NLL (per token over the batch) minus β · mean log σ(log odds ratio), as
    `ORPOTrainer.get_batch_loss_metrics` adds them, on per-token log-probabilities; no reference is read."""
    from trl.experimental.orpo import ORPOTrainer

    g = torch.Generator().manual_seed(5)
    P = 6
    chosen_len, rejected_len = torch.randint(1, 30, (P,), generator=g), torch.randint(1, 30, (P,), generator=g)
    # per-token log-probs between -3 and -0.05 (both sides of -ln 2, where log(1 - e^x) switches form)
    pc, pr = -(torch.rand(P, generator=g) * 3 + 0.05) * chosen_len, -(torch.rand(P, generator=g) * 3 + 0.05) * rejected_len
    pc1, pr1 = pc.clone().requires_grad_(), pr.clone().requires_grad_()
    out = dpo_loss(pc1, pr1, torch.full((P,), 7.0), torch.full((P,), 7.0), 0.1, loss_type="orpo",
                   chosen_lengths=chosen_len, rejected_lengths=rejected_len)
    mine = out.losses.sum() / P
    mine.backward()
    pc2, pr2 = pc.clone().requires_grad_(), pr.clone().requires_grad_()
    stub = SimpleNamespace(beta=0.1, accelerator=_accelerator())
    losses, chosen_rewards, *_ = ORPOTrainer.odds_ratio_loss(stub, pc2 / chosen_len, pr2 / rejected_len)
    nll = -pc2.sum() / chosen_len.sum()  # the NLL of the chosen tokens, averaged over the batch's tokens
    theirs = nll - losses.mean()
    theirs.backward()
    assert mine.item() == pytest.approx(theirs.item(), rel=1e-5)
    torch.testing.assert_close(out.chosen_rewards, chosen_rewards, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pc1.grad, pc2.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(pr1.grad, pr2.grad, rtol=1e-5, atol=1e-7)


# -- reward model against TRL ----------------------------------------------------------------------

@pytest.mark.parametrize("center", [None, 0.01])
def test_bradley_terry_equals_trl_reward_trainer(center):
    from trl import RewardTrainer

    g = torch.Generator().manual_seed(2)
    P = 5
    rc0, rr0 = torch.randn(P, generator=g) * 2, torch.randn(P, generator=g) * 2
    rc1, rr1 = rc0.clone().requires_grad_(), rr0.clone().requires_grad_()
    mine = bradley_terry_loss(rc1, rr1, center or 0.0).sum() / P
    mine.backward()
    rc2, rr2 = rc0.clone().requires_grad_(), rr0.clone().requires_grad_()
    model = lambda **kw: SimpleNamespace(logits=torch.cat([rc2, rr2])[:, None])  # noqa: E731
    stub = _trainer_stub(args=SimpleNamespace(center_rewards_coefficient=center))
    ones = torch.ones(2 * P, 4, dtype=torch.long)
    inputs = {"input_ids": 0 * ones, "attention_mask": ones}
    theirs = RewardTrainer.compute_loss(stub, model, inputs)
    theirs.backward()
    assert mine.item() == pytest.approx(theirs.item(), rel=1e-6)
    torch.testing.assert_close(rc1.grad, rc2.grad)
    torch.testing.assert_close(rr1.grad, rr2.grad)


# -- distillation against TRL ----------------------------------------------------------------------

@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_generalized_jsd_equals_trl_gkd(beta, temperature):
    from trl.experimental.gkd import GKDTrainer

    g = torch.Generator().manual_seed(3)
    s0, t = torch.randn(2, 5, 17, generator=g) * 2, torch.randn(2, 5, 17, generator=g) * 2
    labels = torch.randint(0, 17, (2, 5), generator=g)
    labels[0, :2] = -100
    s1, s2 = s0.clone().requires_grad_(), s0.clone().requires_grad_()
    per_token = generalized_jsd(s1, t, beta, temperature, labels_mask=labels != -100)
    mine = per_token.sum() / (labels != -100).sum()
    mine.backward()
    theirs = GKDTrainer.generalized_jsd_loss(s2, t, labels=labels, beta=beta, temperature=temperature)
    theirs.backward()
    assert mine.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-7)
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-5, atol=1e-7)


# -- SFT against TRL -------------------------------------------------------------------------------

def test_sft_loss_and_gradients_equal_trl_on_a_packed_assistant_only_batch():
    from transformers import Qwen3Config, Qwen3ForCausalLM
    from trl import SFTTrainer
    from trl.trainer.utils import add_fused_lm_head

    from flowlm.model.adapter import HFCausalLM
    from flowlm.train.objectives.sft import SFTObjective

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
    hf = Qwen3ForCausalLM(cfg).train()
    # one packed row, three chat documents: (prompt tokens, assistant tokens)
    g = torch.Generator().manual_seed(4)
    docs = [(5, 6), (3, 9), (4, 4)]
    ids, assistant, doc_ids, pos = [], [], [], []
    for k, (n_prompt, n_answer) in enumerate(docs):
        ids += torch.randint(1, 96, (n_prompt + n_answer,), generator=g).tolist()
        assistant += [0] * n_prompt + [1] * n_answer
        doc_ids += [k] * (n_prompt + n_answer)
        pos += list(range(n_prompt + n_answer))
    input_ids = torch.tensor([ids])
    assistant_t = torch.tensor([assistant], dtype=torch.bool)
    # TRL: labels = input_ids on assistant tokens (the model shifts them); position_ids restart per document
    trl_labels = input_ids.masked_fill(~assistant_t, -100)
    # flowlm: labels[t] = target of position t, within a document (PackedDataset's convention)
    labels = torch.full_like(input_ids, -100)
    same_doc = torch.tensor([doc_ids[1:]]) == torch.tensor([doc_ids[:-1]])
    labels[:, :-1] = trl_labels[:, 1:].masked_fill(~same_doc, -100)

    obj = SFTObjective()
    positions = torch.tensor([pos])
    batch = {"input_ids": input_ids, "labels": labels, "doc_ids": torch.tensor([doc_ids]), "position_ids": positions}
    out = obj.loss(HFCausalLM(hf), batch)
    mine = out.loss / obj.count_units(batch)
    mine.backward()
    mine_grads = {n: p.grad.clone() for n, p in hf.named_parameters()}
    hf.zero_grad(set_to_none=True)

    add_fused_lm_head(hf, outputs=("log_probs", "entropy", "is_top1"))
    stub = _trainer_stub(aux_loss_enabled=False, compute_loss_func=None, label_smoother=None,
                         args=SimpleNamespace(loss_type="nll", average_tokens_across_devices=False))
    theirs = SFTTrainer.compute_loss(stub, hf, {"input_ids": input_ids, "labels": trl_labels, "position_ids": positions})
    theirs.backward()
    assert obj.count_units(batch) == int(assistant_t.sum())  # every assistant token has a target
    assert mine.item() == pytest.approx(theirs.item(), rel=1e-5)
    for n, p in hf.named_parameters():
        torch.testing.assert_close(mine_grads[n], p.grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{n}: {m}")
    # SFT metrics: 3 documents with assistant tokens, (6 + 9 + 4) / 3 per document
    assert out.metrics["sequences"].value.item() == 3
    m = out.metrics["assistant_tokens_per_seq"]
    assert float(m.total) / float(m.count) == pytest.approx(19 / 3)
