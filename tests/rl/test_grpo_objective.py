"""Objective `grpo`: its loss is `policy_loss` (with the mismatch weights) on the learner's per-token
log-probs; the chunked head equals full logits; micro-batches sum to the big batch; no reference model
is loaded when `kl_coef` is 0; non-finite losses are skipped, then stop the run."""

from __future__ import annotations

import pytest
import torch

from flowlm.errors import FlowError
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


def test_non_finite_loss_is_skipped_then_stops_the_run(capsys):
    model = micro()
    good = with_rollout(model, hand_batch())
    bad = {**good, "advantages": torch.tensor([float("nan"), 0.0, 1.0, -1.0])}
    obj = GRPOObjective(max_nonfinite=2)
    out = obj.loss(model, bad)
    assert out.loss.item() == 0 and out.metrics["nonfinite_skipped"].value == 1
    out.loss.backward()
    assert model.lm_head.weight.grad is None  # nothing reaches the parameters
    assert "non-finite loss" in capsys.readouterr().err
    assert obj.loss(model, good).metrics["nonfinite_skipped"].value == 0  # a finite loss resets the count
    obj.loss(model, bad)
    assert obj.state_dict() == {"nonfinite_in_a_row": 1}
    with pytest.raises(FlowError, match="2 non-finite losses in a row"):
        obj.loss(model, bad)
