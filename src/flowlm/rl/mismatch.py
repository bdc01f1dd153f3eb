"""Training-inference mismatch correction: importance weights between the learner and the rollout engine.

The rollout engine (vLLM, or our own generator in bf16) samples with log-probs that differ from what the
learner computes for the same tokens (kernels, precision, batch shapes; `rl-anchors-update.md`, "Trainer
and inference logprobs disagree"). The policy-gradient loss assumes samples from the learner's old
policy, so each token's loss is reweighted by `w = π_learner_old / π_rollout = exp(learner_old - rollout)`.

`mismatch_weights` computes `w` per token or per sequence and corrects it:
- `mode="truncate"` (TIS, Yao et al. 2025 "Your efficient RL framework secretly brings you off-policy
  RL training"): `w = clamp(w, lower, cap)`, by default only capped above at 2.0, which is OLMo 3's
  setting (`--truncated_importance_sampling_ratio_cap 2.0`, a per-token cap: `rl-anchors.md` §0 and
  open-instruct `compute_tis_weights`); TRL `token_truncate` / `sequence_truncate`.
- `mode="mask"` (IcePop; TRL `token_mask` / `sequence_mask`): `w` where `lower <= w <= cap`, else 0;
  at sequence level a whole sequence is dropped.

The result goes to `flowlm.rl.losses.policy_loss(..., is_weights=weights)`, which multiplies the
per-token policy-gradient term (not the KL term) by it; weights are detached and 0 outside the mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

from flowlm.rl.losses import masked_mean

Mode = Literal["truncate", "mask"]
Level = Literal["token", "sequence"]

# exp(±20) lies far outside any sensible cap or band, so clamping the log-ratio there changes no
# corrected weight; it keeps a sequence's sum of thousands of token log-ratios finite.
_LOG_CLAMP = 20.0


@dataclass(frozen=True)
class MismatchMetrics:
    """Detached 0-dim tensors over the valid tokens (`tokens`) of this call; token-weight to combine."""

    tokens: torch.Tensor
    out_of_band: torch.Tensor  # share of valid tokens whose *token* ratio lies outside `band`
    abs_diff_mean: torch.Tensor  # mean |learner_old - rollout| (nats)
    abs_diff_max: torch.Tensor
    ratio_mean: torch.Tensor  # mean token ratio exp(learner_old - rollout), before correction
    weight_mean: torch.Tensor  # mean corrected weight (at sequence level, the sequence's, per token)
    corrected: torch.Tensor  # share of valid tokens whose weight the correction changed (capped or zeroed)


class Mismatch(NamedTuple):
    weights: torch.Tensor  # [B, T] fp32, detached, 0 outside the mask
    metrics: MismatchMetrics


def sequence_log_ratio(token_log_r: torch.Tensor, valid: torch.Tensor,
                       agg: Literal["sum", "mean"] = "sum") -> torch.Tensor:
    """`[B, 1]` sequence log-ratio from token log-ratios (0 outside `valid`).

    `"sum"`: `Σ_t log r_t`, the log of the product of token ratios, the exact likelihood ratio of the
    sequence (TRL `sequence_*` modes). `"mean"`: `Σ_t log r_t / n`, the log of their geometric mean,
    length-normalised (as GSPO's ratio, and SkyRL's geometric sequence mask).
    """
    total = torch.where(valid, token_log_r, 0.0).sum(dim=1, keepdim=True)
    if agg == "sum":
        return total
    if agg == "mean":
        return total / valid.sum(dim=1, keepdim=True).clamp_min(1)
    raise ValueError(f"agg must be 'sum' or 'mean', got {agg!r}")


def correct_weights(w: torch.Tensor, mode: Mode, cap: float, lower: float = 0.0) -> torch.Tensor:
    """`"truncate"`: `clamp(w, lower, cap)`; `"mask"`: `w` where `lower <= w <= cap`, else 0."""
    if mode == "truncate":
        return torch.clamp(w, min=lower, max=cap)
    if mode == "mask":
        return torch.where((w >= lower) & (w <= cap), w, 0.0)
    raise ValueError(f"mode must be 'truncate' or 'mask', got {mode!r}")


@torch.no_grad()
def mismatch_weights(learner_logps: torch.Tensor, rollout_logps: torch.Tensor, mask: torch.Tensor, *,
                     mode: Mode = "truncate", level: Level = "token", cap: float = 2.0, lower: float = 0.0,
                     seq_agg: Literal["sum", "mean"] = "sum", band: tuple[float, float] = (0.9, 1.1)
                     ) -> Mismatch:
    """Corrected importance weights `[B, T]` for the per-token PG loss, and mismatch metrics.

    `learner_logps`: the learner's log-probs of the sampled tokens under the policy that generated them
    (its "old" pass); `rollout_logps`: the engine's. Token level: `w_t = exp(learner_t - rollout_t)`;
    sequence level: `w = exp(sequence_log_ratio(..., seq_agg))` (default the sum, i.e. the product of
    token ratios), the same at every token of the sequence. Then `correct_weights(w, mode, cap, lower)`.
    Tokens where the engine gave no log-prob (NaN) get ratio 1 and are left out of the |Δ| metrics,
    as TRL does. `band` only sets the `out_of_band` metric (TRL#6789 reports [0.9, 1.1] shares).
    """
    if cap <= 0 or lower < 0 or lower >= cap:
        raise ValueError(f"need 0 <= lower < cap, got lower={lower}, cap={cap}")
    valid = mask.bool()
    scored = valid & ~torch.isnan(rollout_logps)
    diff = torch.where(scored, learner_logps.float() - rollout_logps.float(), 0.0)
    if level == "token":
        log_w = diff
    elif level == "sequence":
        log_w = sequence_log_ratio(diff, valid, seq_agg).expand_as(diff)
    else:
        raise ValueError(f"level must be 'token' or 'sequence', got {level!r}")
    raw = torch.exp(log_w.clamp(-_LOG_CLAMP, _LOG_CLAMP))
    weights = torch.where(valid, correct_weights(raw, mode, cap, lower), 0.0)
    token_ratio = torch.exp(diff.clamp(-_LOG_CLAMP, _LOG_CLAMP))
    abs_diff = diff.abs()
    metrics = MismatchMetrics(
        tokens=valid.sum(),
        out_of_band=masked_mean((token_ratio < band[0]) | (token_ratio > band[1]), valid),
        abs_diff_mean=masked_mean(abs_diff, scored),
        abs_diff_max=torch.where(scored.any(), abs_diff.masked_fill(~scored, 0.0).amax(), 0.0),
        ratio_mean=masked_mean(token_ratio, valid),
        weight_mean=masked_mean(weights, valid),
        corrected=masked_mean(weights != raw, valid))
    return Mismatch(weights, metrics)
