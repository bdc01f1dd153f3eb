"""Objective `grpo`: the RLVR policy-gradient loss on rollout batches (`flowlm.rl.source.RolloutSource`).

Per micro-batch: the learner's log-prob of every completion token (final hidden states projected through
the LM head in row chunks by `flowlm.train.post_losses.target_logps`, which writes the gradient out and
reports the entropy beside it, so no `[tokens, V]` logits exist beyond one chunk, in forward or
backward; the entropy bonus, which needs the entropy's gradient, takes autograd over `chunked_rows`),
the training-inference mismatch weights against the engine's
`rollout_logps` (`flowlm.rl.mismatch.mismatch_weights`, comparing the old policy's log-probs), and
`flowlm.rl.losses.policy_loss` with the config's knobs. Defaults are the OLMo 3 Think RL run
(`/work/shared/reference/rl-anchors.md` §0): PPO-clip with clip-higher 0.2 / 0.272, token-level
normalisation, no KL (`kl_coef` 0: no reference model is loaded), truncated importance sampling per
token capped at 2.0.

Normalisation (the engine divides the summed loss by the units of the whole step, over micro-batches
and ranks, so these are global-batch normalisations):
- `norm: token` (unit tokens): Σ over trained completion tokens / all trained tokens of the step (DAPO,
  OLMo 3 `--loss_denominator token`);
- `norm: sequence` (unit sequences): Σ over rows of each row's token mean / rows of the step (TRL `grpo`);
- `norm: constant` (unit sequences): Σ over tokens / `max_len` / rows of the step (Dr GRPO).
Padding rows (`loss_rows` False) count in none of them; rows masked as truncated (`masked_rows`) lose
their tokens but still count as sequences.

The old policy (the PPO ratio's denominator). With one optimizer step per rollout batch (OLMo 3 Think:
1 epoch, 1 minibatch) it is the learner itself: the ratio is taken against the learner's detached
log-probs, it is 1, and the clip is never active (clip fractions read 0). With `rollout.minibatches`
M > 1 (OLMo 3 Instruct: 4) the source splits each rollout batch into M optimizer steps, and with
`rollout.num_epochs` E > 1 serves them E times; either way it puts the policy's log-probs from before
the first step into the batch as `old_logps` (computed once, without gradient, by `completion_logps`);
the ratio is taken against those, so from the second step on it moves and the clip acts.
(`minibatches` and `num_epochs` are rollout settings, not objective ones: the source decides
what a trainer batch is and holds the policy for the old pass; the objective only reads `old_logps`.) The mismatch weights then compare `old_logps` (not the current learner) with
the engine's `rollout_logps`, as open-instruct does: they correct the sampler/trainer gap, the PPO ratio
corrects the policy's own updates within the batch.

Entropy control (Qwen3 reasoning RL keeps entropy from collapsing): `entropy_coef` > 0 adds the bonus
`-entropy_coef · H` per token (`policy_loss`); with `entropy_target` the coefficient adapts after every
applied step, `coef <- max(0, coef + entropy_coef_lr · (target - H_step))` (`adapt_entropy_coef`, from
the step's mean entropy as logged), and is saved in the objective's state, so a resume continues with it.

A non-finite loss: the micro-batch's loss is returned as it is (metric `nonfinite_micro_batches` counts
it) and the engine skips the whole optimizer step, whatever the other micro-batches gave, and stops
the run after the stage's `max_nonfinite_steps` skipped steps in a row (`flowlm.train.engine`).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal, Mapping

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from flowlm.errors import FlowError
from flowlm.train.losses import IGNORE
from flowlm.train.objectives.base import LossOutput, Max, Mean, Objective, ObjectiveConfig, Sum, register_objective
from flowlm.train.post_losses import chunked_rows, default_chunk_rows, target_logps, through_head


class GRPOConfig(ObjectiveConfig):
    """The policy loss's knobs (`flowlm.rl.losses.policy_loss`, `flowlm.rl.mismatch.mismatch_weights`)."""

    name: Literal["grpo"] = "grpo"
    loss_type: str = Field("ppo", description="ppo (token ratio, clip), gspo (sequence ratio), cispo")
    clip_low: float = Field(0.2, ge=0, lt=1)
    clip_high: float = Field(0.272, ge=0, description="clip-higher (OLMo 3: 0.272; DAPO: 0.28)")
    norm: Literal["token", "sequence", "constant"] = "token"
    max_len: int | None = Field(None, gt=0, description="norm: constant: the constant (max completion length)")
    kl_coef: float = Field(0.0, ge=0, description="0: no KL term and no reference model loaded")
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    reference: str | None = Field(None, description="kl_coef > 0: reference checkpoint (or an earlier stage)")
    is_mode: Literal["truncate", "mask", "off"] = Field(
        "truncate", description="mismatch correction: truncate (TIS) or mask (IcePop) the learner/engine ratio")
    is_level: Literal["token", "sequence"] = "token"
    is_cap: float = Field(2.0, gt=0, description="upper bound of the ratio (OLMo 3: 2.0 per token)")
    is_lower: float = Field(0.0, ge=0)
    fp32_lm_head: bool = Field(False, description="project the LM head in fp32 (outside bf16 autocast)")
    shared_prefix: bool = Field(
        True, description="compute each group's prompt once for its completions (flowlm.model.tree; native models)")
    entropy_coef: float = Field(0.0, ge=0, description="entropy bonus per token (0: entropy only monitored); "
                                                        "with entropy_target: the starting coefficient")
    entropy_target: float | None = Field(
        None, gt=0, description="adaptive entropy control: the mean token entropy (nats) the coefficient steers to")
    entropy_coef_lr: float = Field(1e-3, gt=0, description="entropy_target: coefficient change per nat of gap per step")

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and "max_nonfinite" in data:
            raise ValueError("max_nonfinite moved to the stage: max_nonfinite_steps (the engine skips a whole "
                             "step with a non-finite loss or gradient norm)")
        return data

    @field_validator("loss_type")
    @classmethod
    def _known_loss(cls, value: str) -> str:
        from flowlm.rl.losses import loss_type_names

        if value not in loss_type_names():
            raise ValueError(f"unknown loss_type '{value}'; known: {', '.join(loss_type_names())}")
        return value

    @model_validator(mode="after")
    def _check(self) -> "GRPOConfig":
        if self.kl_coef > 0 and self.reference is None:
            raise ValueError("kl_coef > 0 needs a reference model (reference: a checkpoint or an earlier stage)")
        if self.kl_coef == 0 and self.reference is not None:
            raise ValueError("reference is only used with kl_coef > 0 (with kl_coef 0 no reference is loaded)")
        if self.norm == "constant" and self.max_len is None:
            raise ValueError("norm: constant needs max_len (Dr GRPO: the maximum completion length)")
        if self.is_lower >= self.is_cap:
            raise ValueError(f"is_lower {self.is_lower} must be below is_cap {self.is_cap}")
        if self.entropy_target is None and self.entropy_coef_lr != type(self).model_fields["entropy_coef_lr"].default:
            raise ValueError("entropy_coef_lr only applies with entropy_target (adaptive entropy control)")
        return self


def token_mask(batch: Mapping[str, Any]) -> torch.Tensor:
    """`[B, T]` bool: completion tokens that train (labelled, in a trained row, not masked as truncated)."""
    rows = batch["loss_rows"].bool() & ~batch["masked_rows"].bool()
    return (batch["labels"] != IGNORE) & rows[:, None]


@register_objective
class GRPOObjective(Objective):
    """Policy-gradient loss on rollouts; metrics: the rollout statistics, clip fractions, ratio and
    mismatch-weight statistics, the mismatch band share and |Δlogprob|, entropy, KL when computed."""

    name = "grpo"
    Config = GRPOConfig
    unit = "tokens"
    data_kind = "rollouts"  # batches come from `flowlm.rl.source.RolloutSource` (stage kind `rl`)
    cfg: GRPOConfig

    def __init__(self, cfg: GRPOConfig | None = None, **fields: Any) -> None:
        super().__init__(cfg, **fields)
        self.unit = "tokens" if self.cfg.norm == "token" else "sequences"
        self.reference: nn.Module | None = None
        self.chunk_rows: int | None = None  # rows of logits per chunk (memory only); None = by budget
        self.entropy_coef = self.cfg.entropy_coef  # adapts after every step with entropy_target

    def setup(self, model: nn.Module, world: Any) -> None:
        if self.cfg.kl_coef == 0:
            return  # no KL term: the reference is never loaded (OLMo 3: --beta 0 --load_ref_policy False)
        from flowlm.model.adapter import load_causal_lm

        self.reference = load_causal_lm(str(self.cfg.reference), device=world.device).eval().requires_grad_(False)

    def count_units(self, batch: Mapping[str, Any]) -> int:
        if self.cfg.norm == "token":
            return int(token_mask(batch).sum())
        return int(batch["loss_rows"].sum())

    def count_tokens(self, batch: Mapping[str, Any]) -> int:
        return int(batch["input_ids"].numel())

    def state_dict(self) -> dict[str, Any]:
        """The adaptive entropy coefficient (with `entropy_target`; a fixed one comes from the config)."""
        return {"entropy_coef": self.entropy_coef} if self.cfg.entropy_target is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        # (`nonfinite_in_a_row` of older checkpoints is ignored: the engine counts skipped steps now)
        if self.cfg.entropy_target is not None and "entropy_coef" in state:
            self.entropy_coef = float(state["entropy_coef"])

    def end_step(self, metrics: Mapping[str, float]) -> None:
        """Called by the engine after every applied optimizer step with the step's metrics (reduced over
        micro-batches and ranks, so every rank moves the coefficient alike): the adaptive entropy update."""
        from flowlm.rl.losses import adapt_entropy_coef

        if self.cfg.entropy_target is not None and "entropy" in metrics:
            self.entropy_coef = adapt_entropy_coef(self.entropy_coef, float(metrics["entropy"]),
                                                   self.cfg.entropy_target, self.cfg.entropy_coef_lr)

    def loss(self, model: nn.Module, batch: Mapping[str, Any]) -> LossOutput:
        from flowlm.rl.losses import policy_loss
        from flowlm.rl.mismatch import mismatch_weights
        from flowlm.rl.stats import rollout_metrics

        cfg = self.cfg
        mask = token_mask(batch)
        bonus = self.entropy_coef > 0
        logps, entropy = self.token_logps(model, batch, mask, entropy_grad=bonus)
        ref = None
        if cfg.kl_coef > 0:
            if self.reference is None:
                raise FlowError("grpo: kl_coef > 0 but no reference model (setup was not called)")
            with torch.no_grad():
                ref = self.token_logps(self.reference, batch, mask)[0]
        old = batch.get("old_logps")  # minibatches / num_epochs > 1: the policy before the batch's first step
        behind = logps.detach() if old is None else old
        mm = mismatch_weights(behind, batch["rollout_logps"], mask, mode="truncate" if cfg.is_mode == "off"
                              else cfg.is_mode, level=cfg.is_level, cap=cfg.is_cap, lower=cfg.is_lower)
        out = policy_loss(logps, old, batch["advantages"], mask, loss_type=cfg.loss_type, clip_low=cfg.clip_low,
                          clip_high=cfg.clip_high, norm=cfg.norm, max_len=cfg.max_len,
                          is_weights=None if cfg.is_mode == "off" else mm.weights, ref_logps=ref,
                          kl_coef=cfg.kl_coef, kl_estimator=cfg.kl_estimator, entropy=entropy,
                          entropy_coef=self.entropy_coef)
        total = out.total / cfg.max_len if cfg.norm == "constant" else out.total
        metrics: dict[str, Any] = rollout_metrics(batch)
        if not bool(torch.isfinite(total)):  # the engine skips the whole step (see the module docstring)
            return LossOutput(total, {**metrics, "nonfinite_micro_batches": Sum(1)})
        metrics["nonfinite_micro_batches"] = Sum(0)
        metrics.update(self._loss_metrics(out.metrics, mm.metrics, mask, batch))
        if bonus or cfg.entropy_target is not None:
            metrics["entropy_coef"] = Max(self.entropy_coef)
        return LossOutput(total, metrics)

    @staticmethod
    def _loss_metrics(pm: Any, mm: Any, mask: torch.Tensor, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Token-weighted means (combine exactly over micro-batches and ranks) and maxima."""
        n = pm.tokens.float()
        out: dict[str, Any] = {
            "clip_frac_low": Mean(pm.clip_low * n, n), "clip_frac_high": Mean(pm.clip_high * n, n),
            "ratio_mean": Mean(pm.ratio_mean * n, n), "ratio_max": Max(pm.ratio_max),
            "mismatch/out_of_band": Mean(mm.out_of_band * n, n), "mismatch/ratio_mean": Mean(mm.ratio_mean * n, n),
            "mismatch/abs_diff_mean": Mean(mm.abs_diff_mean * n, n), "mismatch/abs_diff_max": Max(mm.abs_diff_max),
            "mismatch/corrected": Mean(mm.corrected * n, n),
            "response_len": Mean(n, batch["loss_rows"].sum().float()),
        }
        if pm.is_weight_mean is not None:
            out["is_weight_mean"], out["is_weight_max"] = Mean(pm.is_weight_mean * n, n), Max(pm.is_weight_max)
        if pm.entropy is not None:
            out["entropy"] = Mean(pm.entropy * n, n)
        if pm.kl is not None:
            out["kl"] = Mean(pm.kl * n, n)
        return out

    def token_logps(self, model: nn.Module, batch: Mapping[str, Any], mask: torch.Tensor, *,
                    entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """`completion_logps` with this objective's LM-head settings."""
        return completion_logps(model, batch, mask, chunk_rows=self.chunk_rows, fp32_lm_head=self.cfg.fp32_lm_head,
                                entropy_grad=entropy_grad, shared_prefix=self.cfg.shared_prefix)


def completion_logps(model: nn.Module, batch: Mapping[str, Any], mask: torch.Tensor, *, chunk_rows: int | None = None,
                     fp32_lm_head: bool = False, entropy_grad: bool = False,
                     shared_prefix: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """`(logps, entropy)`, both `[B, T]` fp32 and 0 outside `mask`: the log-prob of each label under `model`
    (with gradient when enabled) and the entropy of its next-token distribution (detached unless
    `entropy_grad`, which the entropy bonus needs). The LM head runs in row chunks of `chunk_rows` (None:
    by memory budget). With `shared_prefix`, a model with `supports_tree` and the batch's `group_ids`,
    each group's prompt is computed once for its completions (`flowlm.model.tree`, one flat row without
    padding); the numbers are the row-by-row ones to float rounding. The learner (`GRPOObjective.loss`)
    and the source's old-policy pass (`flowlm.rl.source`, minibatches > 1) both use this, so their
    numbers agree. A batch's `temperature` [B] divides each row's logits (the policy that sampled it, as
    TRL, open-instruct and veRL score it; both numbers then are those of that tempered distribution)."""
    labels, ids = batch["labels"], batch["input_ids"]
    where, kw = None, {}
    if shared_prefix and getattr(model, "supports_tree", False) and "group_ids" in batch:
        from flowlm.data.pairs import causal_lengths
        from flowlm.model.tree import group_rows, share_prefixes

        shared = share_prefixes(ids, labels, causal_lengths(labels), group_rows(batch["group_ids"]))
        flat = mask.reshape(-1)[shared.source]  # trunk tokens carry no label, so never trained
        where = shared.source[flat]
        targets = labels.reshape(-1)[where]
        ids, kw = shared.input_ids, {"tree": shared.tree}
    else:
        flat = mask.reshape(-1)
        targets = labels.reshape(-1)[flat]
    temps, scale = batch.get("temperature"), None
    if temps is not None and not bool((temps == 1).all()):  # temperature 1: no division, the same numbers
        per_token = temps.float()[:, None].expand(labels.shape).reshape(-1)
        scale = per_token[where] if where is not None else per_token[flat]

    def project(x: torch.Tensor, w: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        rows = x.reshape(-1, x.shape[-1])[flat]
        if scale is not None:  # logits / t = (hidden / t) @ W.T: the head stays one fused GEMM
            # divided in fp32 (a bf16 0.8 is 0.80078: a bias on every logit), kept fp32 for an fp32 head
            divided = rows.float() / scale.to(device=rows.device, dtype=torch.float32)[:, None]
            rows = divided if fp32_lm_head else divided.to(rows.dtype)
        chunk = chunk_rows or default_chunk_rows(w.shape[0] if w is not None else x.shape[-1], x.device)
        if w is not None and not entropy_grad:  # the fused head: gradient written out, entropy on the side
            return target_logps(rows, targets, w, chunk, entropy=True, fp32=fp32_lm_head)
        fn = partial(_chunk, fp32_lm_head=fp32_lm_head, entropy_grad=entropy_grad)
        per = chunked_rows(fn, (rows, targets), (w,), chunk)  # [N, 2]
        return per[:, 0], (per[:, 1] if entropy_grad else per[:, 1].detach())

    logp, ent = through_head(model, ids, project, **kw)
    zeros = torch.zeros(mask.numel(), dtype=torch.float32, device=ids.device)
    if where is None:
        return zeros.masked_scatter(flat, logp).view(mask.shape), zeros.masked_scatter(flat, ent).view(mask.shape)
    return zeros.index_copy(0, where, logp).view(mask.shape), zeros.index_copy(0, where, ent).view(mask.shape)


def _chunk(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None, *, fp32_lm_head: bool,
           entropy_grad: bool) -> torch.Tensor:
    """`[c, 2]`: log p(target) and the entropy (nats; without gradient unless `entropy_grad`) of each row."""
    if weight is None:
        logits = hidden.float()
    elif fp32_lm_head:
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            logits = hidden.float() @ weight.float().t()
    else:
        logits = (hidden @ weight.t()).float()
    logz = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(1, targets[:, None]).squeeze(1) - logz
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        entropy = logz - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1)
    return torch.stack([logp, entropy], dim=1)
