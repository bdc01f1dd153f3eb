"""The RLVR policy-gradient loss as small pure tensor functions: one general surrogate with PPO-clip
(clip-higher), GSPO and CISPO as registered loss types, three normalisations, KL estimators, entropy
(monitoring, an optional bonus) and the adaptive entropy coefficient's update rule.

Inputs, all `[B, T]` over completion positions: `logps` (new policy, carries the gradient), `old_logps`
(the policy that the ratio is taken against: the learner's log-probs before this update, or the rollout
engine's when there is no separate old pass), `mask` (1 on completion tokens that train). Advantages are
`[B]` (one per completion, broadcast over its tokens) or `[B, T]`. Positions outside `mask` may hold
anything in every input (padding, -inf, NaN): they are replaced by 0 before any arithmetic, so they
reach neither the loss nor the gradient. Arithmetic is in fp32 whatever the input dtype.

`policy_loss` returns `PolicyLoss(loss, total, denominator, metrics)` with `loss = total / denominator`:
`total` is a sum over this call's tokens or sequences and `denominator` is stated per normalisation in
`aggregate`, so a caller that splits a batch into micro-batches or ranks either passes the global
denominator (`total_tokens`, `total_sequences`) and sums the `loss`es, or sums the `total`s itself and
divides once (`flowlm.train` objectives return a sum over units).

Defaults are OLMo 3's (`/work/shared/reference/rl-anchors.md` §0 and `rl-anchors-update.md`,
open-instruct `grpo_utils.py`): `loss_type="ppo"` (open-instruct `dapo`), `clip_low=0.2`,
`clip_high=0.272` (`--clip_higher 0.272`, lower 0.2), `norm="token"` (`--loss_denominator token`),
`kl_coef=0.0` (`--beta 0.0`, no reference model loaded), `entropy_coef=0.0` (entropy only monitored).
Named configurations of other recipes: DAPO = ppo + token + clip_high 0.28; GRPO (TRL `grpo`) = ppo +
sequence; Dr GRPO = ppo + constant.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

Norm = Literal["token", "sequence", "constant"]
Number = float | int | torch.Tensor


@dataclass(frozen=True)
class Surrogate:
    """How a loss type forms its per-token loss from the importance ratio `r`.

    `ratio_level`: `"token"`, `r_t = π(y_t) / π_old(y_t)`; or `"sequence"` (GSPO, Zheng et al. 2025),
    `r = exp(mean_t log(π(y_t) / π_old(y_t)))` over the sequence's valid tokens (the length-normalised
    geometric mean of the token ratios), the same value at every token of the sequence.
    `form`: `"clip"`, PPO's `-min(r·A, clip(r, 1 - ε_low, 1 + ε_high)·A)`; or `"clipped_is"` (CISPO,
    MiniMax-M1 2025), `-sg(min(r, 1 + ε_high))·A·log π(y_t)`: the truncated ratio is a constant weight
    (stop-gradient) and every token keeps its gradient; no lower bound, as open-instruct's `cispo` and
    the paper's practice (TRL's `cispo` caps at `epsilon_high` itself: pass `clip_high = cap - 1`).
    """

    ratio_level: Literal["token", "sequence"]
    form: Literal["clip", "clipped_is"]


_LOSS_TYPES: dict[str, Surrogate] = {}


def register_loss_type(name: str, surrogate: Surrogate) -> None:
    """Make `surrogate` selectable as `policy_loss(..., loss_type=name)`."""
    _LOSS_TYPES[name] = surrogate


register_loss_type("ppo", Surrogate("token", "clip"))
register_loss_type("gspo", Surrogate("sequence", "clip"))
register_loss_type("cispo", Surrogate("token", "clipped_is"))


def _lookup(table: dict, name: str, what: str):
    if name not in table:
        hint = difflib.get_close_matches(name, list(table), n=1)
        extra = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise ValueError(f"unknown {what} '{name}'{extra}; known: {', '.join(sorted(table))}")
    return table[name]


def loss_type_names() -> list[str]:
    return sorted(_LOSS_TYPES)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`Σ x·mask / max(Σ mask, 1)` as a 0-dim fp32 tensor (0 when the mask is empty); NaN-safe outside it."""
    m = mask.bool()
    return torch.where(m, x.float(), 0.0).sum() / m.sum().clamp_min(1)


def token_entropy(logits: torch.Tensor, *, chunk_rows: int | None = None) -> torch.Tensor:
    """Per-position entropy in nats, `H = -Σ_v p_v · log p_v` with `p = softmax(logits)`, shape
    `logits.shape[:-1]`; tokens with `p_v = 0` (logit -inf: top-k / top-p filtered) add 0.

    Computed in fp32, `chunk_rows` rows of `[rows, V]` at a time (all at once when None), so monitoring
    entropy costs one chunk of fp32 logits, not `[B, T, V]`. Call under `torch.no_grad()` when it is
    only logged; average with `masked_mean(entropy, mask)` or pass it to `policy_loss(entropy=...)`.
    """
    flat = logits.reshape(-1, logits.shape[-1])
    step = chunk_rows or max(flat.shape[0], 1)
    out = []
    for s in range(0, flat.shape[0], step):
        logp = torch.log_softmax(flat[s:s + step].float(), dim=-1)
        p = logp.exp()
        out.append(-(p * logp.masked_fill(p == 0, 0.0)).sum(dim=-1))
    if not out:
        return logits.new_zeros(logits.shape[:-1], dtype=torch.float32)
    return torch.cat(out).reshape(logits.shape[:-1])


# KL(π ‖ π_ref) estimators of Schulman, "Approximating KL divergence" (2020), on samples from π, with
# `log_r = log π_ref(y) - log π(y)` (r = π_ref / π): k1 = -log r (unbiased, high variance, can be
# negative), k2 = (log r)² / 2 (biased, low variance), k3 = (r - 1) - log r (unbiased, low variance,
# >= 0; TRL's `beta` term and open-instruct's default). The blog's k1 is `-log r`, not `log r`: with
# r = π_ref / π that is `log π - log π_ref`, whose mean under π is the KL.
KL_ESTIMATORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "k1": lambda log_r: -log_r,
    "k2": lambda log_r: log_r.square() / 2,
    "k3": lambda log_r: torch.expm1(log_r) - log_r,
}


def kl_estimate(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token KL(π ‖ π_ref) estimate `[B, T]` (see `KL_ESTIMATORS`); differentiable through `logps`."""
    return _lookup(KL_ESTIMATORS, estimator, "KL estimator")(ref_logps - logps)


def log_ratio(logps: torch.Tensor, old_logps: torch.Tensor, valid: torch.Tensor,
              level: Literal["token", "sequence"] = "token") -> torch.Tensor:
    """`[B, T]` log importance ratio `log π - log π_old`, 0 outside `valid`.

    `"sequence"`: the mean over each sequence's valid tokens, repeated at each of them (GSPO's
    `log s_i = (1/|y_i|) Σ_t log r_t`; TRL `importance_sampling_level="sequence"`).
    """
    lr = torch.where(valid, logps - old_logps, 0.0)
    if level == "token":
        return lr
    if level != "sequence":
        raise ValueError(f"ratio level must be 'token' or 'sequence', got {level!r}")
    seq = lr.sum(dim=1, keepdim=True) / valid.sum(dim=1, keepdim=True).clamp_min(1)
    return torch.where(valid, seq.expand_as(lr), 0.0)


def surrogate(log_r: torch.Tensor, logps: torch.Tensor, advantages: torch.Tensor, form: str,
              clip_low: float, clip_high: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token policy-gradient loss `[B, T]` and where the lower / upper clip is active (bool `[B, T]`).

    `"clip"`: `-min(r·A, clip(r, 1 - clip_low, 1 + clip_high)·A)`; the clip is active (zero gradient)
    where `r < 1 - clip_low` with `A < 0` (low) or `r > 1 + clip_high` with `A > 0` (high), as TRL's
    `clip_ratio/low_mean` and `high_mean`. `"clipped_is"`: `-sg(min(r, 1 + clip_high))·A·logps`; "high"
    marks every truncated weight (`r > 1 + clip_high`, either sign of A), "low" is never active.
    """
    r = torch.exp(log_r)
    if form == "clip":
        clipped = torch.clamp(r, 1.0 - clip_low, 1.0 + clip_high)
        loss = -torch.minimum(r * advantages, clipped * advantages)
        low = (r < 1.0 - clip_low) & (advantages < 0)
        high = (r > 1.0 + clip_high) & (advantages > 0)
        return loss, low, high
    if form == "clipped_is":
        weight = torch.clamp(r, max=1.0 + clip_high).detach()
        return -weight * advantages * logps, torch.zeros_like(r, dtype=torch.bool), r > 1.0 + clip_high
    raise ValueError(f"surrogate form must be 'clip' or 'clipped_is', got {form!r}")


def aggregate(per_token: torch.Tensor, valid: torch.Tensor, norm: Norm, *, total_tokens: Number | None = None,
              total_sequences: Number | None = None, max_len: int | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """`(total, denominator)` of a per-token loss `[B, T]`; the normalised loss is `total / denominator`.

    - `"token"`: total = Σ over valid tokens; denominator = `total_tokens` (the valid tokens of the
      whole global batch: every micro-batch on every rank) or, when None, this call's valid tokens.
      Every token weighs the same (DAPO; OLMo 3 `--loss_denominator token`; TRL `dapo`/`bnpo`).
    - `"sequence"`: total = Σ_i (Σ_t loss_it / n_i), each sequence's mean over its `n_i >= 1` valid
      tokens (0 for a sequence with none); denominator = `total_sequences` or this call's `B`. Every
      sequence weighs the same (GRPO as in TRL `grpo`).
    - `"constant"`: total = Σ over valid tokens; denominator = (`total_sequences` or `B`) · `max_len`
      (Dr GRPO; TRL `dr_grpo` with `max_len = max_completion_length`; open-instruct
      `--loss_denominator <float>` is this with the product given directly).
    Denominators are clamped to at least 1.
    """
    rows = torch.where(valid, per_token, 0.0)
    n_seq = total_sequences if total_sequences is not None else per_token.shape[0]
    if norm == "token":
        total, denom = rows.sum(), total_tokens if total_tokens is not None else valid.sum()
    elif norm == "sequence":
        total, denom = (rows.sum(dim=1) / valid.sum(dim=1).clamp_min(1)).sum(), n_seq
    elif norm == "constant":
        if max_len is None:
            raise ValueError("norm='constant' needs max_len (Dr GRPO: the maximum completion length)")
        total, denom = rows.sum(), n_seq * max_len
    else:
        raise ValueError(f"norm must be 'token', 'sequence' or 'constant', got {norm!r}")
    denom = torch.as_tensor(denom, dtype=torch.float32, device=per_token.device).clamp_min(1)
    return total, denom


@dataclass(frozen=True)
class PolicyLossMetrics:
    """Detached 0-dim tensors. Means are over this call's valid tokens (`tokens`); combine calls with
    token-weighted means. Under GSPO the ratio is the sequence's, counted once per token."""

    tokens: torch.Tensor
    pg_loss: torch.Tensor  # the policy-gradient part of `loss` (without the KL term), same denominator
    clip_low: torch.Tensor  # share of valid tokens where the lower clip is active
    clip_high: torch.Tensor  # share where the upper clip (CISPO: the weight cap) is active
    ratio_mean: torch.Tensor
    ratio_min: torch.Tensor
    ratio_max: torch.Tensor
    is_weight_mean: torch.Tensor | None = None  # the mismatch weights passed as `is_weights`
    is_weight_max: torch.Tensor | None = None
    kl: torch.Tensor | None = None  # mean per-token KL estimate, when `kl_coef != 0`
    entropy: torch.Tensor | None = None  # mean per-token entropy, when passed


class PolicyLoss(NamedTuple):
    """`loss = total / denominator` (see `aggregate` for each normalisation) and its metrics."""

    loss: torch.Tensor
    total: torch.Tensor
    denominator: torch.Tensor
    metrics: PolicyLossMetrics


def _masked_extreme(x: torch.Tensor, valid: torch.Tensor, largest: bool) -> torch.Tensor:
    fill = float("-inf") if largest else float("inf")
    v = x.masked_fill(~valid, fill)
    v = v.amax() if largest else v.amin()
    return torch.where(valid.any(), v, 0.0)


@torch.no_grad()
def _metrics(log_r: torch.Tensor, valid: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
             pg_loss: torch.Tensor, is_weights: torch.Tensor | None, kl: torch.Tensor | None,
             entropy: torch.Tensor | None) -> PolicyLossMetrics:
    r = torch.exp(log_r)
    w = None if is_weights is None else torch.broadcast_to(is_weights.float(), valid.shape)
    return PolicyLossMetrics(
        tokens=valid.sum(), pg_loss=pg_loss.detach(),
        clip_low=masked_mean(low, valid), clip_high=masked_mean(high, valid),
        ratio_mean=masked_mean(r, valid), ratio_min=_masked_extreme(r, valid, False),
        ratio_max=_masked_extreme(r, valid, True),
        is_weight_mean=None if w is None else masked_mean(w, valid),
        is_weight_max=None if w is None else _masked_extreme(w, valid, True),
        kl=None if kl is None else masked_mean(kl, valid),
        entropy=None if entropy is None else masked_mean(entropy, valid))


def policy_loss(logps: torch.Tensor, old_logps: torch.Tensor | None, advantages: torch.Tensor,
                mask: torch.Tensor, *, loss_type: str = "ppo", clip_low: float = 0.2, clip_high: float = 0.272,
                norm: Norm = "token", total_tokens: Number | None = None, total_sequences: Number | None = None,
                max_len: int | None = None, is_weights: torch.Tensor | None = None,
                ref_logps: torch.Tensor | None = None, kl_coef: float = 0.0, kl_estimator: str = "k3",
                entropy: torch.Tensor | None = None, entropy_coef: float = 0.0) -> PolicyLoss:
    """The policy-gradient loss of one (micro-)batch: `PolicyLoss(loss, total, denominator, metrics)`.

    Per token: `ℓ_t = w_t · pg_t + kl_coef · KL_t - entropy_coef · H_t`, where `pg_t` is the
    `loss_type`'s surrogate (`Surrogate`, `surrogate`), `w_t` the training-inference mismatch weights
    `is_weights` (`[B, T]` from `flowlm.rl.mismatch.mismatch_weights`, or `[B, 1]`; detached, 1 when
    None), `KL_t` the `kl_estimator` estimate against `ref_logps` and `H_t` the entropy. The weights
    multiply the policy term only, not the KL term, as open-instruct `compute_grpo_loss` (`tis_weights`
    on both clip branches) and TRL `GRPOTrainer._compute_loss` (`importance_sampling_ratio` before
    `beta · per_token_kl` is added); tokens they zero still count in the denominator. `ℓ` is then
    normalised by `norm` (`aggregate`: `total_tokens` / `total_sequences` are the global-batch
    denominators, `max_len` Dr GRPO's constant).

    `old_logps=None` means on-policy (`old = logps.detach()`, ratio 1, gradient `-A·∇logπ`).
    `ref_logps` is needed only when `kl_coef != 0`. `entropy` (`[B, T]`, e.g. `token_entropy(logits)`)
    is averaged into the metrics; with `entropy_coef != 0` it is also the entropy bonus `H_t` and must
    carry the gradient (computed without `no_grad`). The bonus is normalised like the rest and is not
    multiplied by `w_t` (as the KL term; veRL `dp_actor.py`: `policy_loss = pg_loss - entropy_coeff ·
    agg_loss(entropy)` with the same aggregation). `metrics.pg_loss` leaves the KL and entropy terms out.
    """
    spec = _lookup(_LOSS_TYPES, loss_type, "loss type")
    if kl_coef != 0.0 and ref_logps is None:
        raise ValueError("kl_coef != 0 needs ref_logps (log-probs of the reference policy)")
    if entropy_coef != 0.0 and entropy is None:
        raise ValueError("entropy_coef != 0 needs entropy (per-token entropy carrying the gradient)")
    valid = mask.bool()
    lp = torch.where(valid, logps.float(), 0.0)
    old = lp.detach() if old_logps is None else torch.where(valid, old_logps.float(), 0.0)
    adv = advantages.float()
    adv = torch.where(valid, adv[:, None] if adv.dim() == 1 else adv, 0.0)
    log_r = log_ratio(lp, old, valid, spec.ratio_level)
    pg, low, high = surrogate(log_r, lp, adv, spec.form, clip_low, clip_high)
    if is_weights is not None:
        pg = pg * torch.where(valid, is_weights.detach().float(), 0.0)
    per_token, kl = pg, None
    if kl_coef != 0.0:
        kl = kl_estimate(lp, torch.where(valid, ref_logps.float(), 0.0), kl_estimator)
        per_token = per_token + kl_coef * kl
    if entropy_coef != 0.0:
        per_token = per_token - entropy_coef * torch.where(valid, entropy.float(), 0.0)
    norm_args = {"total_tokens": total_tokens, "total_sequences": total_sequences, "max_len": max_len}
    total, denom = aggregate(per_token, valid, norm, **norm_args)
    pg_total = total if per_token is pg else aggregate(pg, valid, norm, **norm_args)[0]
    metrics = _metrics(log_r, valid, low, high, pg_total / denom, is_weights, kl, entropy)
    return PolicyLoss(total / denom, total, denom, metrics)


def adapt_entropy_coef(coef: float, entropy: float, target: float, lr: float) -> float:
    """The adaptive entropy coefficient after one step: `max(0, coef + lr · (target - entropy))`.

    `entropy` is the step's mean per-token entropy (nats) over trained tokens. Below the target the
    bonus grows and pushes entropy up; above it the bonus shrinks to 0 and the loss is the plain policy
    gradient again (entropy is never pushed down). A proportional form of Skywork-OR1's adaptive entropy
    control (He et al. 2025), which moves the coefficient by a fixed step in the direction of
    `target - entropy`. A non-finite `entropy` leaves the coefficient unchanged.
    """
    if not math.isfinite(entropy):
        return coef
    return max(0.0, coef + lr * (target - entropy))
