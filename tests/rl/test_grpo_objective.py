"""Objective `grpo`: its loss is `policy_loss` (with the mismatch weights) on the learner's per-token
log-probs; the chunked head equals full logits; micro-batches sum to the big batch; no reference model
is loaded when `kl_coef` is 0; `old_logps` (minibatches > 1) make the ratio and the clip act; the entropy
bonus and its adaptive coefficient; a non-finite loss is returned for the engine to skip the step."""

from __future__ import annotations

import pytest
import torch

from flowlm.rl.losses import policy_loss
from flowlm.rl.mismatch import mismatch_weights
from flowlm.train.objectives import build_objective
from flowlm.train.objectives.grpo import GRPOConfig, GRPOObjective, token_mask

V, B, T = 50, 4, 9


def micro(seed: int = 0):
    from flowlm.model.config import ModelConfig
    from flowlm.model.olmo3 import Olmo3

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    return Olmo3(ModelConfig(vocab_size=V, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                             intermediate_size=64, max_seq_len=32, sliding_window=16, init_std=0.2))


def hand_batch() -> dict:
    """4 rows (2 groups of 2): prompts of 3 tokens, completions of 5, 6, 4, 2 tokens (labels at the
    positions that predict them); rollout log-probs are the learner's plus a known offset."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (B, T), generator=g)
    labels = torch.full((B, T), -100)
    for r, n in enumerate([5, 6, 4, 2]):
        labels[r, 2:2 + n] = ids[r, 3:3 + n]
    offset = torch.tensor([0.0, 0.05, -1.2, 0.9, 0.0, 0.3, 0.0, 0.0, 0.0])  # ratios exp(-Δ): some beyond the cap
    return {"input_ids": ids, "labels": labels, "offset": offset,
            "advantages": torch.tensor([0.5, -0.5, 1.0, -1.0]), "loss_rows": torch.tensor([True, True, True, False]),
            "masked_rows": torch.tensor([False, True, False, False]), "group_ids": torch.tensor([0, 0, 1, 1])}


def full_logps(model, batch) -> torch.Tensor:
    logits = model(batch["input_ids"]).float()
    lp = torch.log_softmax(logits, -1).gather(-1, batch["labels"].clamp_min(0)[..., None]).squeeze(-1)
    return torch.where(batch["labels"] != -100, lp, 0.0)


def with_rollout(model, batch) -> dict:
    with torch.no_grad():
        lp = full_logps(model, batch)
    rollout = torch.where(batch["labels"] != -100, lp + batch["offset"], float("nan"))
    return {**{k: v for k, v in batch.items() if k != "offset"}, "rollout_logps": rollout}


def test_mask_counts_trained_tokens_of_trained_rows():
    batch = hand_batch()
    mask = token_mask(batch)
    assert mask.sum(dim=1).tolist() == [5, 0, 4, 0]  # row 1 masked as truncated, row 3 padding
    assert GRPOObjective().count_units(batch) == 9 and GRPOObjective(norm="sequence").count_units(batch) == 3


@pytest.mark.parametrize("fields", [{}, {"norm": "sequence"}, {"loss_type": "gspo", "is_mode": "mask"},
                                    {"norm": "constant", "max_len": 7, "is_level": "sequence"}, {"is_mode": "off"}])
def test_loss_is_policy_loss_of_the_learner_logps(fields):
    model = micro()
    batch = with_rollout(model, hand_batch())
    obj = GRPOObjective(**fields)
    cfg = obj.cfg
    out = obj.loss(model, batch)
    mask = token_mask(batch)
    lp = full_logps(model, batch)
    mm = mismatch_weights(lp.detach(), batch["rollout_logps"], mask, mode="truncate" if cfg.is_mode == "off"
                          else cfg.is_mode, level=cfg.is_level, cap=2.0)
    ref = policy_loss(lp, None, batch["advantages"], mask, loss_type=cfg.loss_type, norm=cfg.norm,
                      max_len=cfg.max_len, is_weights=None if cfg.is_mode == "off" else mm.weights)
    expected = ref.total / cfg.max_len if cfg.norm == "constant" else ref.total
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
    g_obj = torch.autograd.grad(out.loss, model.lm_head.weight)[0]
    g_ref = torch.autograd.grad(expected, model.lm_head.weight)[0]
    assert torch.allclose(g_obj, g_ref, rtol=1e-4, atol=1e-7)
    m = out.metrics
    assert m["mismatch/out_of_band"].total / m["mismatch/out_of_band"].count == pytest.approx(
        mm.metrics.out_of_band.item())
    assert m["mismatch/abs_diff_max"].value.item() == pytest.approx(1.2, abs=1e-5)
    assert "kl" not in m and m["clip_frac_high"].total == 0  # one step on-policy: ratio 1, no clip
    if cfg.is_mode == "truncate" and cfg.is_level == "token":
        assert m["is_weight_max"].value.item() == pytest.approx(2.0)  # exp(1.2) capped at 2.0


def test_chunked_head_and_fp32_head_equal_full_logits():
    model = micro()
    batch = with_rollout(model, hand_batch())
    mask = token_mask(batch)
    obj = GRPOObjective(fp32_lm_head=True)
    obj.chunk_rows = 3
    lp, ent = obj.token_logps(model, batch, mask)
    assert torch.allclose(lp, full_logps(model, batch) * mask, atol=1e-5)
    logits = model(batch["input_ids"]).float()
    p = torch.softmax(logits, -1)
    assert torch.allclose(ent[mask], -(p * torch.log(p)).sum(-1)[mask], atol=1e-4)


@pytest.mark.parametrize("chunk", [3, 64])  # backward recomputes chunks / keeps the one chunk's probabilities
def test_fused_head_gradient_equals_autograd_over_full_logits(chunk):
    model = micro()
    batch = with_rollout(model, hand_batch())
    mask = token_mask(batch)
    obj = GRPOObjective()
    obj.chunk_rows = chunk
    coef = torch.randn(mask.shape, generator=torch.Generator().manual_seed(1))
    fused = torch.autograd.grad((obj.token_logps(model, batch, mask)[0] * coef).sum(), list(model.parameters()))
    plain = torch.autograd.grad((full_logps(model, batch) * mask * coef).sum(), list(model.parameters()))
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_micro_batches_sum_to_the_whole_batch():
    model = micro()
    batch = with_rollout(model, hand_batch())
    obj = GRPOObjective()
    whole = obj.loss(model, batch).loss / obj.count_units(batch)
    halves = [{k: v[i:i + 2] for k, v in batch.items()} for i in (0, 2)]
    parts = sum(obj.loss(model, h).loss for h in halves) / sum(obj.count_units(h) for h in halves)
    assert parts.item() == pytest.approx(whole.item(), rel=1e-5)


def test_no_reference_is_loaded_without_kl(monkeypatch):
    import flowlm.model.adapter as adapter
    from flowlm.train.parallel import World

    loaded = []
    monkeypatch.setattr(adapter, "load_causal_lm", lambda path, **kw: loaded.append(path) or micro(1))
    obj = build_objective("grpo")
    obj.setup(micro(), World())
    assert obj.reference is None and loaded == []
    with pytest.raises(ValueError, match="only used with kl_coef > 0"):
        GRPOConfig(reference="somewhere")
    obj = build_objective({"name": "grpo", "kl_coef": 0.1, "reference": "ref_dir"})
    obj.setup(micro(), World())
    assert loaded == ["ref_dir"] and obj.reference is not None


def test_kl_term_against_the_reference():
    model, ref_model = micro(0), micro(1)
    batch = with_rollout(model, hand_batch())
    obj = GRPOObjective(kl_coef=0.1, reference="unused", kl_estimator="k3")
    obj.reference = ref_model
    out = obj.loss(model, batch)
    mask = token_mask(batch)
    lp = full_logps(model, batch)
    with torch.no_grad():
        ref_lp = full_logps(ref_model, batch)
    mm = mismatch_weights(lp.detach(), batch["rollout_logps"], mask)
    expected = policy_loss(lp, None, batch["advantages"], mask, is_weights=mm.weights, ref_logps=ref_lp, kl_coef=0.1)
    assert out.loss.item() == pytest.approx(expected.total.item(), rel=1e-5)
    assert out.metrics["kl"].total / out.metrics["kl"].count == pytest.approx(expected.metrics.kl.item(), rel=1e-5)


def test_non_finite_loss_is_left_to_the_engine_to_skip():
    model = micro()
    good = with_rollout(model, hand_batch())
    bad = {**good, "advantages": torch.tensor([float("nan"), 0.0, 1.0, -1.0])}
    obj = GRPOObjective()
    out = obj.loss(model, bad)
    # returned as it is (the engine skips the whole step on a non-finite loss or gradient norm), counted
    assert out.loss.isnan() and out.loss.requires_grad and out.metrics["nonfinite_micro_batches"].value == 1
    assert "clip_frac_low" not in out.metrics  # no loss statistics from a non-finite micro-batch
    assert obj.loss(model, good).metrics["nonfinite_micro_batches"].value == 0
    assert obj.state_dict() == {}
    obj.load_state_dict({"nonfinite_in_a_row": 1})  # an older checkpoint's objective state still loads
    with pytest.raises(ValueError, match="max_nonfinite moved to the stage: max_nonfinite_steps"):
        GRPOConfig(max_nonfinite=2)


def test_old_logps_make_the_ratio_and_clip_act_by_hand():
    """minibatches > 1: the PPO ratio is taken against the batch's `old_logps`. Trained tokens: row 0
    (A = 0.5, label positions 2-6) and row 2 (A = 1, positions 2-5). old = learner - d, so r = exp(d):
    row 0 r = [1, 1.5, 0.5, 1, 1.1], row 2 r = [1, 1.5, 0.5, 1]; band [0.8, 1.272], ℓ = -min(r·A, clip(r)·A):
    row 0: -0.5, -min(0.75, 0.636) = -0.636, -min(0.25, 0.4) = -0.25, -0.5, -0.55 -> -2.436;
    row 2: -1, -1.272, -0.5, -1 -> -3.772; total -6.208 (a sum: the engine divides by 9 tokens)."""
    model = micro()
    batch = with_rollout(model, hand_batch())
    mask = token_mask(batch)
    with torch.no_grad():
        lp = full_logps(model, batch)
    d = torch.log(torch.tensor([1.0, 1.0, 1.0, 1.5, 0.5, 1.0, 1.1, 1.0, 1.0]))  # by position (label at 2..6)
    old = torch.where(mask, lp - d, float("nan"))
    out = GRPOObjective(is_mode="off").loss(model, {**batch, "old_logps": old})
    assert out.loss.item() == pytest.approx(-6.208, abs=1e-4)
    m = out.metrics
    assert m["clip_frac_high"].total / m["clip_frac_high"].count == pytest.approx(2 / 9)  # r = 1.5 with A > 0
    assert m["clip_frac_low"].total == 0  # r = 0.5 only where A > 0: the lower clip needs A < 0
    assert m["ratio_mean"].total / m["ratio_mean"].count == pytest.approx(9.1 / 9, abs=1e-5)
    assert m["ratio_max"].value.item() == pytest.approx(1.5, abs=1e-5)
    # the mismatch weights compare old_logps (not the current learner) with the engine's log-probs
    on = GRPOObjective().loss(model, {**batch, "old_logps": old}).metrics
    ref = mismatch_weights(old, batch["rollout_logps"], mask).metrics
    assert on["mismatch/abs_diff_max"].value.item() == pytest.approx(ref.abs_diff_max.item(), abs=1e-5)
    assert on["mismatch/out_of_band"].total / on["mismatch/out_of_band"].count == pytest.approx(
        ref.out_of_band.item())


def test_entropy_bonus_and_its_adaptive_coefficient():
    model = micro()
    batch = with_rollout(model, hand_batch())
    mask = token_mask(batch)
    obj = GRPOObjective(entropy_coef=0.3, is_mode="off")
    out = obj.loss(model, batch)
    logits = model(batch["input_ids"]).float()
    p = torch.softmax(logits, -1)
    ent = -(p * torch.log(p)).sum(-1)
    lp = full_logps(model, batch)
    expected = policy_loss(lp, None, batch["advantages"], mask, entropy=ent, entropy_coef=0.3).total
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    g_obj = torch.autograd.grad(out.loss, model.lm_head.weight)[0]
    g_ref = torch.autograd.grad(expected, model.lm_head.weight)[0]
    assert torch.allclose(g_obj, g_ref, rtol=1e-4, atol=1e-6)  # the bonus's gradient flows through H
    assert out.metrics["entropy_coef"].value == 0.3
    # the bonus alone (zero advantages) raises the entropy: one gradient step lowers -H
    flat = {**batch, "advantages": torch.zeros(4)}
    before = (ent * mask).sum().item()
    loss = GRPOObjective(entropy_coef=1.0, is_mode="off").loss(model, flat).loss
    grads = torch.autograd.grad(loss, list(model.parameters()))
    with torch.no_grad():
        for q, g in zip(model.parameters(), grads):
            q -= 0.05 * g
        p = torch.softmax(model(batch["input_ids"]).float(), -1)
        after = (-(p * torch.log(p)).sum(-1) * mask).sum().item()
    assert after > before
    # adaptive: below the target the coefficient grows, above it shrinks (not below 0); saved for resume
    obj = GRPOObjective(entropy_coef=0.01, entropy_target=1.0, entropy_coef_lr=0.1)
    obj.end_step({"entropy": 0.6})
    assert obj.entropy_coef == pytest.approx(0.05)
    obj.end_step({"entropy": 1.2})
    assert obj.entropy_coef == pytest.approx(0.03)
    obj.end_step({"entropy": 3.0})
    assert obj.entropy_coef == 0.0
    obj.end_step({"entropy": 0.5})
    state = obj.state_dict()
    assert state == {"entropy_coef": pytest.approx(0.05)}
    again = GRPOObjective(entropy_coef=0.01, entropy_target=1.0, entropy_coef_lr=0.1)
    again.load_state_dict(state)
    assert again.entropy_coef == obj.entropy_coef
    fixed = GRPOObjective(entropy_coef=0.2)
    fixed.end_step({"entropy": 0.1})  # no target: a fixed coefficient, nothing in the state
    assert fixed.entropy_coef == 0.2 and fixed.state_dict() == {}
    with pytest.raises(ValueError, match="entropy_coef_lr only applies with entropy_target"):
        GRPOConfig(entropy_coef_lr=0.5)


def test_the_rl_stage_old_policy_pass_matches_the_learner_precision():
    """With minibatches > 1 the first minibatch's ratio is learner / old-policy log-probs of the same weights:
    exactly 1 only when the old-policy pass runs with the learner's autocast and LM-head precision. The rl
    stage hands both to the source (`flowlm.flow.stages.rl.old_logps_fn`)."""
    from flowlm.flow.stages.rl import RLStageConfig, old_logps_fn
    from flowlm.rl.source import old_policy_logps

    model = micro()
    batch = with_rollout(model, hand_batch())
    mask = token_mask(batch)
    cfg = RLStageConfig(steps=1, seq_len=32, precision="bf16", objective={"name": "grpo", "fp32_lm_head": True},
                        rollout={"prompts_per_step": 2, "group_size": 2, "minibatches": 2})
    obj = GRPOObjective(fp32_lm_head=True)
    with torch.no_grad(), torch.autocast(device_type="cpu", dtype=torch.bfloat16):  # as the trainer runs bf16
        learner = obj.token_logps(model, batch, mask)[0]
    stage = old_logps_fn(cfg)(model, batch)
    assert torch.equal(stage[mask], learner[mask])  # ratio exactly 1
    plain = old_policy_logps(model, batch)  # fp32 without autocast: the learner's bf16 numbers differ
    assert not torch.equal(plain[mask], learner[mask])
    assert old_logps_fn(RLStageConfig(steps=1, seq_len=32)).keywords == {"fp32_lm_head": False, "bf16": False,
                                                                       "shared_prefix": True}


def test_shared_prompt_forward_equals_row_forward_in_loss_and_gradients():
    """Rows of a group share their prompt: with `shared_prefix` the learner computes it once per group
    (`flowlm.model.tree`); loss, metrics and gradients equal the row-by-row forward's."""
    from flowlm.data.pairs import causal_lengths
    from flowlm.model.tree import group_rows, share_prefixes

    model = micro()
    batch = hand_batch()
    batch["input_ids"][1, :3] = batch["input_ids"][0, :3]
    batch["input_ids"][3, :3] = batch["input_ids"][2, :3]
    batch = with_rollout(model, batch)
    tree = share_prefixes(batch["input_ids"], batch["labels"], causal_lengths(batch["labels"]),
                          group_rows(batch["group_ids"])).tree
    assert tree.trunk_len.tolist() == [2, 2]  # the prompt but its last token (it predicts the first label)
    params = list(model.parameters())
    out = {}
    for shared in (False, True):
        loss = GRPOObjective(shared_prefix=shared).loss(model, batch)
        out[shared] = (loss, torch.autograd.grad(loss.loss, params))
    torch.testing.assert_close(out[True][0].loss, out[False][0].loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(out[False][1], out[True][1]):
        assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max())
    mask = token_mask(batch)
    logps = {s: GRPOObjective(shared_prefix=s).token_logps(model, batch, mask)[0] for s in (False, True)}
    torch.testing.assert_close(logps[True], logps[False], rtol=1e-5, atol=1e-6)
    assert (logps[True][mask] != 0).all() and (logps[True][~mask] == 0).all()


@pytest.mark.parametrize("shared", [False, True])
def test_batch_temperature_divides_the_logits_in_logps_entropy_and_gradients(shared):
    """A batch's `temperature` [B] (the rollout's sampling temperature, `tempered_logprobs`): the learner's
    log-probs, entropy and gradients are those of `log_softmax(logits / t)`, as TRL, open-instruct and veRL
    compute them; row by row and with the shared prompt alike; temperature 1 is the batch without it."""
    model = micro()
    batch = hand_batch()
    batch["input_ids"][1, :3] = batch["input_ids"][0, :3]
    batch["input_ids"][3, :3] = batch["input_ids"][2, :3]
    batch = with_rollout(model, batch)
    t = torch.tensor([0.7, 0.7, 1.6, 1.6])
    hot = {**batch, "temperature": t}
    mask = token_mask(batch)
    obj = GRPOObjective(shared_prefix=shared)
    obj.chunk_rows = 3
    logits = model(batch["input_ids"]).float() / t[:, None, None]
    want = torch.log_softmax(logits, -1).gather(-1, batch["labels"].clamp_min(0)[..., None]).squeeze(-1) * mask
    p = torch.softmax(logits, -1)
    lp, ent = obj.token_logps(model, hot, mask)
    torch.testing.assert_close(lp, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent[mask], -(p * torch.log(p)).sum(-1)[mask], atol=1e-4, rtol=1e-4)
    coef = torch.randn(mask.shape, generator=torch.Generator().manual_seed(2))
    params = list(model.parameters())
    got = torch.autograd.grad((obj.token_logps(model, hot, mask)[0] * coef).sum(), params)
    ref = torch.autograd.grad((want * coef).sum(), params)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    unit = obj.token_logps(model, {**batch, "temperature": torch.ones(4)}, mask)[0]
    assert torch.equal(unit, obj.token_logps(model, batch, mask)[0])
    assert not torch.allclose(lp, unit, atol=1e-3)
