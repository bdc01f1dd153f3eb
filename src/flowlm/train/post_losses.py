"""Post-training losses as small pure tensor functions: DPO, Bradley–Terry, distillation divergences,
and per-sequence log-probabilities through a chunked LM head.

Every loss returns one value per unit (per pair, per token) and no mean: the objective sums them and
the engine divides by the units of the whole accumulation group, so micro-batching and data
parallelism equal one big batch. Each matches TRL 1.16 on the same inputs
(`tests/train/test_post_losses.py`): `dpo_loss` = `DPOTrainer` `loss_type` `sigmoid` / `sigmoid_norm`,
the other `DPO_LOSSES` their TRL namesakes (`simpo` = `CPOTrainer`'s), `bradley_terry_loss` =
`RewardTrainer` (with `center_rewards_coefficient`), `generalized_jsd` =
`GKDTrainer.generalized_jsd_loss`.

Long vocabularies: `sequence_logps` and the distillation objective never hold more than one chunk of
`[rows, V]` logits at a time, also in backward (`chunked_rows` and `sequence_logps`' `_TargetLogps`
recompute each chunk's logits there; the latter keeps a lone chunk's).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE = -100


def default_chunk_rows(vocab_size: int, device: torch.device) -> int:
    """Rows of `[rows, V]` fp32 logits per chunk: 64 MiB on CPU, 1 GiB on a GPU (as the fused LM loss)."""
    budget = 1 << 24 if device.type == "cpu" else 1 << 28
    return max(64, budget // max(vocab_size, 1))


def chunked_rows(fn: Callable[..., torch.Tensor], rows: tuple[torch.Tensor, ...],
                 shared: tuple[torch.Tensor | None, ...], chunk_rows: int) -> torch.Tensor:
    """`fn(*row_chunks, *shared) -> [c]` on chunks of `chunk_rows` rows, concatenated to `[N]`.

    With gradients on, each chunk runs under activation checkpointing, so its `[c, V]` intermediates are
    freed after the forward and rebuilt one chunk at a time in backward: peak memory is one chunk's
    logits instead of all of them, for one extra LM-head GEMM per chunk.
    """
    n = rows[0].shape[0]
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (*rows, *shared))
    out = []
    # No rows still runs `fn` once (on empty slices): the result stays connected to the model, so a
    # micro-batch without targets backpropagates zeros instead of failing.
    for s in range(0, max(n, 1), chunk_rows):
        args = (*(r[s:s + chunk_rows] for r in rows), *shared)
        out.append(checkpoint(fn, *args, use_reentrant=False) if grad and n else fn(*args))
    return torch.cat(out)


class _TargetLogps(torch.autograd.Function):
    """`log softmax(hidden @ weight.T)[target]` per row `[n]` (fp32), in chunks of `chunk_rows` rows.

    What `chunked_rows` + autograd would compute, with the gradient written out: d logp / d logits =
    onehot - softmax, scaled per row by the incoming gradient, formed in place in the chunk's
    probability buffer (forward: one logits GEMM, then max, exp, sum in place; backward: two GEMMs). When
    all rows fit in one chunk its probabilities are kept for backward (the memory the recomputation would
    take then anyway); otherwise backward recomputes each chunk's logits from the saved log-sum-exp.
    Against autograd over `chunked_rows` (checkpointed chunks: the logits GEMM twice, and autograd's
    passes over `[c, V]` for log-sum-exp and its gradient), on the DPO benchmark's head shape (1,440
    labelled rows, D 256, V 8,192, 2 threads, alternating in one process): forward + backward 602 -> 277
    ms (minimum of 8). Matmuls run in the autocast dtype, as `_FusedLinearCE` does.
    """

    @staticmethod
    def forward(ctx, hidden, targets, weight, chunk_rows, want_entropy=False, fp32=False):  # type: ignore[override]
        device_type = hidden.device.type
        if fp32:
            dt = torch.float32
        else:
            dt = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
        n = hidden.shape[0]
        keep = (ctx.needs_input_grad[0] or ctx.needs_input_grad[2]) and n <= chunk_rows
        out = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        entropy = torch.empty(n if want_entropy else 0, dtype=torch.float32, device=hidden.device)
        probs = None
        with torch.autocast(device_type=device_type, enabled=False):
            w = weight.to(dt)
            for s in range(0, n, chunk_rows):
                logits = (hidden[s:s + chunk_rows].to(dt) @ w.t()).float()
                idx = targets[s:s + chunk_rows, None]
                m = logits.amax(dim=1)
                target = logits.gather(1, idx).squeeze(1)
                shifted = logits.sub_(m[:, None])
                if want_entropy:  # H = log S - sum(e * shifted) / S, with e = exp(shifted), S = sum(e)
                    e = shifted.exp()
                    sumexp = e.sum(dim=1)
                    entropy[s:s + chunk_rows] = sumexp.log() - torch.linalg.vecdot(e, shifted) / sumexp
                else:
                    e = shifted.exp_()
                    sumexp = e.sum(dim=1)
                lse[s:s + chunk_rows] = m + sumexp.log()
                out[s:s + chunk_rows] = target - lse[s:s + chunk_rows]
                if keep:
                    probs = e.div_(sumexp[:, None])
        ctx.dt, ctx.chunk_rows = dt, chunk_rows
        ctx.save_for_backward(hidden, targets, weight, lse, *(() if probs is None else (probs,)))
        ctx.mark_non_differentiable(entropy)
        return out, entropy

    @staticmethod
    def backward(ctx, grad_out, _grad_entropy):  # type: ignore[override]
        hidden, targets, weight, lse, *kept = ctx.saved_tensors
        dt, c = ctx.dt, ctx.chunk_rows
        grad_h = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            w = weight.to(dt)
            for s in range(0, hidden.shape[0], c):
                x = hidden[s:s + c].to(dt)
                if kept:
                    probs = kept[0]
                else:
                    probs = (x @ w.t()).float().sub_(lse[s:s + c, None]).exp_()
                g = grad_out[s:s + c].float()
                grad_logits = probs.mul_(-g[:, None]).scatter_add_(1, targets[s:s + c, None], g[:, None]).to(dt)
                grad_h[s:s + c] = (grad_logits @ w).to(hidden.dtype)
                if grad_logits.dtype == torch.float32:
                    grad_w.addmm_(grad_logits.t(), x)
                else:
                    grad_w.add_(torch.mm(grad_logits.t(), x))
        return grad_h, None, grad_w.to(weight.dtype), None, None, None


def target_logps(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, chunk_rows: int, *,
                 entropy: bool = False, fp32: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`(log p(target) [n], entropy [n] or None)` of `log_softmax(hidden @ weight.T)` per row, fp32, through
    `_TargetLogps` (logits in chunks, gradient written out). The entropy (nats) carries no gradient.
    `fp32`: the head's matmuls in fp32 whatever the autocast dtype (GRPO's `fp32_lm_head`)."""
    logp, ent = _TargetLogps.apply(hidden, targets, weight, chunk_rows, entropy, fp32)
    return logp, (ent if entropy else None)


def sequence_logps(x: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None, *,
                   chunk_rows: int | None = None, segments: torch.Tensor | None = None,
                   n_segments: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sum of target log-probabilities and the number of targets.

    Args:
        x: `[B, T, V]` logits, or `[B, T, D]` final hidden states when `weight` (`[V, D]`, a bias-free
            LM head) is given; then only the labelled positions are projected, in chunks of `chunk_rows`
            (`_TargetLogps`), so the `[B, T, V]` logits never exist.
        labels: `[B, T]` target ids, `-100` where no target.
        segments: `[B, T]` the sequence (`0 .. n_segments - 1`) each position belongs to, for rows that
            pack several sequences (`flowlm.data.pairs.pack_rows`); default: one sequence per row.

    Returns:
        `(logps [n] fp32, counts [n] int64)`, `n` = `n_segments` (default B): `Σ_t log p(labels[t] | x[t])`
        over each sequence's labelled positions and how many there are.
    """
    valid = labels != IGNORE
    if segments is None:
        if weight is None:
            logp = torch.log_softmax(x.float(), dim=-1).gather(-1, labels.clamp_min(0)[..., None]).squeeze(-1)
            return (logp * valid).sum(dim=1), valid.sum(dim=1)
        n_segments = labels.shape[0]
        segments = torch.arange(n_segments, device=labels.device)[:, None].expand_as(labels)
    elif n_segments is None:
        raise ValueError("sequence_logps: segments need n_segments")
    flat = valid.reshape(-1)
    seg = segments.reshape(-1)[flat]
    counts = torch.zeros(n_segments, dtype=torch.int64, device=labels.device).index_add_(0, seg, torch.ones_like(seg))
    sums = torch.zeros(n_segments, dtype=torch.float32, device=x.device)
    if weight is None:
        logp = torch.log_softmax(x.reshape(-1, x.shape[-1])[flat].float(), dim=-1)
        return sums.index_add(0, seg, logp.gather(1, labels.reshape(-1)[flat][:, None]).squeeze(1)), counts
    hidden = x.reshape(-1, x.shape[-1])[flat]
    chunk = chunk_rows or default_chunk_rows(weight.shape[0], x.device)
    per_token, _ = target_logps(hidden, labels.reshape(-1)[flat], weight, chunk)
    return sums.index_add(0, seg, per_token), counts


class DPOLoss(NamedTuple):
    """Per-pair losses and implicit rewards (detached; the rewards whose difference the loss sees)."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


# The preference losses `dpo_loss` takes, with the TRL 1.16 name each equals (`DPOTrainer` `loss_type`, or
# `CPOTrainer` for `simpo`). `NORMALISED`: the log-ratios are per answer token (divided by each side's length).
DPO_LOSSES = {"dpo": "sigmoid", "dpo_norm": "sigmoid_norm", "ipo": "ipo", "hinge": "hinge", "robust": "robust",
              "exo_pair": "exo_pair", "bco_pair": "bco_pair", "nca_pair": "nca_pair", "sppo_hard": "sppo_hard",
              "apo_zero": "apo_zero", "apo_down": "apo_down", "discopop": "discopop", "simpo": "simpo (CPOTrainer)",
              "orpo": "ORPOTrainer"}
NORMALISED = frozenset({"dpo_norm", "ipo", "simpo", "orpo"})
REFERENCE_FREE = frozenset({"simpo", "orpo"})


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """`log(1 - exp(x))` for x < 0, computed stably on both sides of -ln 2 (x = 0 gives -inf)."""
    x = x.clamp(max=0.0)
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _pair_losses(loss_type: str, chosen: torch.Tensor, rejected: torch.Tensor, beta: float, *, eps: float,
                 tau: float, gamma: float) -> torch.Tensor:
    """`dpo_loss`'s per-pair loss of `loss_type` from the two sides' (normalised) log-ratios, without the NLL
    term (see `dpo_loss` for the formulas); ε is `label_smoothing`, τ `discopop_tau`, γ `simpo_gamma`."""
    z = beta * (chosen - rejected)
    if loss_type in ("dpo", "dpo_norm"):
        return -F.logsigmoid(z)
    if loss_type == "ipo":
        return (chosen - rejected - 1 / (2 * beta)) ** 2
    if loss_type == "hinge":
        return torch.relu(1 - z)
    if loss_type == "robust":
        return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    if loss_type == "exo_pair":
        return (torch.sigmoid(z) * (F.logsigmoid(z) - torch.log1p(torch.tensor(-eps)))
                + torch.sigmoid(-z) * (F.logsigmoid(-z) - torch.log(torch.tensor(eps))))
    if loss_type == "bco_pair":
        return -F.logsigmoid(beta * chosen) - F.logsigmoid(-beta * rejected)
    if loss_type == "nca_pair":
        return -F.logsigmoid(beta * chosen) - 0.5 * F.logsigmoid(-beta * chosen) - 0.5 * F.logsigmoid(-beta * rejected)
    if loss_type == "sppo_hard":
        return (chosen - 0.5 / beta) ** 2 + (rejected + 0.5 / beta) ** 2
    if loss_type == "apo_zero":
        return 1 - torch.sigmoid(beta * chosen) + torch.sigmoid(beta * rejected)
    if loss_type == "apo_down":
        return torch.sigmoid(beta * chosen) + 1 - torch.sigmoid(z)
    if loss_type == "discopop":
        mix = torch.sigmoid(z / tau)
        return -F.logsigmoid(z) * (1 - mix) + torch.exp(-z) * mix
    if loss_type == "simpo":
        return -(1 - eps) * F.logsigmoid(z - gamma) - eps * F.logsigmoid(gamma - z)
    # orpo: the log odds ratio of per-token probabilities
    return -beta * F.logsigmoid((chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected)))


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float, *,
             loss_type: str = "dpo", chosen_lengths: torch.Tensor | None = None,
             rejected_lengths: torch.Tensor | None = None, label_smoothing: float = 0.0,
             discopop_tau: float = 0.05, simpo_gamma: float = 0.5, sft_weight: float = 0.0) -> DPOLoss:
    """A preference loss per pair. `r = logπ(y|x) - logπ_ref(y|x)` per side, log-probabilities summed over
    the answer tokens (divided by the side's answer tokens, clamped to at least 1, for the `NORMALISED`
    types), `Δ = r_c - r_r`:

    - `dpo` (Rafailov et al. 2023; TRL `sigmoid`): `-log σ(βΔ)`.
    - `dpo_norm` (TRL `sigmoid_norm`; open-instruct `dpo_norm`, which averages the log-probabilities of
      policy and reference before the difference, the same number; Tülu 3 and OLMo 3 use it, OLMo 3 Think
      with β = 5): the same on per-token log-ratios.
    - `ipo` (Azar et al. 2023): `(Δ - 1/(2β))²` on per-token log-ratios (TRL's normalisation).
    - `hinge` (SLiC): `max(0, 1 - βΔ)`.
    - `robust` (Chowdhury et al. 2024, labels flipped with probability ε = `label_smoothing` < 0.5):
      `(-(1-ε) log σ(βΔ) + ε log σ(-βΔ)) / (1 - 2ε)`.
    - `exo_pair` (Ji et al. 2024, ε = `label_smoothing` > 0): `KL(σ(±βΔ) ‖ (1-ε, ε))`.
    - `bco_pair`: `-log σ(β r_c) - log σ(-β r_r)`; `nca_pair`: `-log σ(β r_c) - ½ log σ(-β r_c) - ½ log σ(-β r_r)`.
    - `sppo_hard`: `(r_c - 1/(2β))² + (r_r + 1/(2β))²`.
    - `apo_zero` / `apo_down` (D'Oosterlinck et al. 2024): `1 - σ(β r_c) + σ(β r_r)` /
      `σ(β r_c) + 1 - σ(βΔ)`.
    - `discopop` (Chris Lu et al. 2024): the logistic and exponential losses of `z = βΔ`, blended by
      `σ(z / discopop_tau)`.
    - `simpo` (Meng et al. 2024; TRL `CPOTrainer` `simpo`): reference-free, `r` is the per-token log-probability
      alone (the reference arguments are ignored): `-(1-ε) log σ(βΔ - γ) - ε log σ(γ - βΔ)`, γ = `simpo_gamma`.
    - `orpo` (Hong et al. 2024; TRL `ORPOTrainer`): reference-free, on per-token log-probabilities `p`:
      the chosen answers' NLL (per token over the batch given) `- β log σ(log odds_c - log odds_r)`, with
      `log odds = p - log(1 - exp(p))`.

    `sft_weight` adds that weight times the negative log-likelihood of the chosen answers, per token over the
    batch given (RPO; TRL's `sft` loss type combined through `loss_weights`), to every pair's loss.

    The rewards returned are `β · r` with the normalisation of the loss, so reward accuracy
    (`chosen > rejected`) agrees with the sign of the margin the loss pushes on. open-instruct reports
    these; TRL's `sigmoid_norm` logs the unnormalised `β · (logπ - logπ_ref)` instead.
    """
    if loss_type not in DPO_LOSSES:
        raise ValueError(f"loss_type must be one of {', '.join(DPO_LOSSES)}, got {loss_type!r}")
    if loss_type == "robust" and not 0 <= label_smoothing < 0.5:
        raise ValueError(f"robust: label_smoothing is a flip probability in [0, 0.5), got {label_smoothing}")
    if loss_type == "exo_pair" and not 0 < label_smoothing < 1:
        raise ValueError(f"exo_pair: label_smoothing must be in (0, 1) (1e-3 is the paper's), got {label_smoothing}")
    if loss_type in REFERENCE_FREE:
        chosen, rejected = policy_chosen_logps, policy_rejected_logps
    else:
        chosen = policy_chosen_logps - ref_chosen_logps
        rejected = policy_rejected_logps - ref_rejected_logps
    needs_lengths = loss_type in NORMALISED or sft_weight
    if needs_lengths and (chosen_lengths is None or rejected_lengths is None):
        raise ValueError(f"{loss_type}: needs chosen_lengths and rejected_lengths (answer tokens per side)")
    if loss_type in NORMALISED:
        chosen = chosen / chosen_lengths.clamp_min(1).to(chosen.dtype)
        rejected = rejected / rejected_lengths.clamp_min(1).to(rejected.dtype)
    losses = _pair_losses(loss_type, chosen, rejected, beta, eps=label_smoothing, tau=discopop_tau, gamma=simpo_gamma)
    if loss_type == "orpo":  # the chosen answers' NLL is part of ORPO
        sft_weight = sft_weight + 1.0
    if sft_weight:
        nll = -policy_chosen_logps.sum() / chosen_lengths.sum().clamp_min(1).to(policy_chosen_logps.dtype)
        losses = losses + sft_weight * nll
    return DPOLoss(losses, (beta * chosen).detach(), (beta * rejected).detach())


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                       center_coef: float = 0.0) -> torch.Tensor:
    """Reward-model loss per pair: `-log σ(r_c - r_r) + center_coef · (r_c + r_r)²`.

    The second term (Eisenstein et al. 2023; TRL `RewardConfig.center_rewards_coefficient`, whose mean
    over pairs is this sum over pairs divided by their number) keeps rewards centred on zero.
    """
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    if center_coef:
        losses = losses + center_coef * (chosen_rewards + rejected_rewards) ** 2
    return losses


def support_logprobs(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0,
                     top_k: int | None = None, renormalise_student: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher log-probabilities (fp32, after dividing the logits by `temperature`) over the
    full vocabulary or, with `top_k`, over the teacher's `top_k` tokens at each position.

    Top-k: the teacher is renormalised over its top-k support (what offline distillation stores). The
    student is renormalised over the same support when `renormalise_student`, else it keeps its full-
    vocabulary log-probabilities gathered there (they sum to at most 1 on the support).
    """
    s = student_logits.float() / temperature
    t = teacher_logits.float() / temperature
    if top_k is None or top_k >= t.shape[-1]:
        return torch.log_softmax(s, dim=-1), torch.log_softmax(t, dim=-1)
    t_top, idx = t.topk(top_k, dim=-1)
    s_top = s.gather(-1, idx)
    if renormalise_student:
        s_logp = torch.log_softmax(s_top, dim=-1)
    else:
        s_logp = s_top - torch.logsumexp(s, dim=-1, keepdim=True)
    return s_logp, torch.log_softmax(t_top, dim=-1)


def kl_from_logprobs(p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """`KL(p ‖ q) = Σ p (log p - log q)` over the last dimension (finite log-probabilities)."""
    return (p_logp.exp() * (p_logp - q_logp)).sum(dim=-1)


def jsd_from_logprobs(s_logp: torch.Tensor, t_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """Generalized JSD in TRL's convention (GKD, Agarwal et al. 2024, eq. 1 with P = teacher):
    `β · KL(t ‖ m) + (1 - β) · KL(s ‖ m)`, `m = β t + (1 - β) s`, for 0 < β < 1; β = 0 is the forward
    KL `KL(t ‖ s)` and β = 1 the reverse KL `KL(s ‖ t)`. The general form tends to 0 at both ends, so
    the endpoints are special cases, as in TRL, not limits."""
    if beta == 0:
        return kl_from_logprobs(t_logp, s_logp)
    if beta == 1:
        return kl_from_logprobs(s_logp, t_logp)
    b = torch.tensor(beta, dtype=s_logp.dtype, device=s_logp.device)
    m = torch.logsumexp(torch.stack([s_logp + torch.log1p(-b), t_logp + torch.log(b)]), dim=0)
    return b * kl_from_logprobs(t_logp, m) + (1 - b) * kl_from_logprobs(s_logp, m)


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float, temperature: float = 1.0,
                    labels_mask: torch.Tensor | None = None, *, top_k: int | None = None) -> torch.Tensor:
    """Per-position generalized JSD between student and teacher next-token distributions (`[...]` for
    `[..., V]` logits; 0 where `labels_mask` is False). Equals TRL `GKDTrainer.generalized_jsd_loss`
    summed over positions (TRL then divides by the number of masked-in positions). As in TRL, the
    temperature divides both logits and there is no `T²` factor.

    `top_k` (not in TRL): the teacher keeps its top-k tokens per position, renormalised. Forward KL
    (β = 0) compares it with the student's full distribution (`-Σ_topk t log s - H(t)`, the sparse
    distillation loss, which also pulls the student's mass into the support); for β > 0 the student is
    renormalised over the same support, since `KL(s ‖ t)` is infinite where the truncated teacher is 0.
    `top_k ≥ V` is the full computation.
    """
    s_logp, t_logp = support_logprobs(student_logits, teacher_logits, temperature=temperature, top_k=top_k,
                                      renormalise_student=beta != 0)
    div = jsd_from_logprobs(s_logp, t_logp, beta)
    return div if labels_mask is None else div * labels_mask.to(div.dtype)


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
               labels_mask: torch.Tensor | None = None, *, top_k: int | None = None) -> torch.Tensor:
    """`KL(teacher ‖ student)` per position (mode-covering; TRL β = 0)."""
    return generalized_jsd(student_logits, teacher_logits, 0.0, temperature, labels_mask, top_k=top_k)


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
               labels_mask: torch.Tensor | None = None, *, top_k: int | None = None) -> torch.Tensor:
    """`KL(student ‖ teacher)` per position (mode-seeking; TRL β = 1)."""
    return generalized_jsd(student_logits, teacher_logits, 1.0, temperature, labels_mask, top_k=top_k)


def through_head(model: torch.nn.Module, input_ids: torch.Tensor, project: Callable[..., Any], **kw: Any) -> Any:
    """`project(x, w)` of the model's output: with a bias-free LM head `x` is the final hidden states and `w`
    the head weight, run inside the model's forward (`forward(head=...)`: FSDP2 gathers the head there and
    reduces its gradient); otherwise `x` is the full logits and `w` None. `kw`: the forward's other
    arguments (positions, document ids)."""
    if head_weight(model) is not None:
        return model(input_ids, head=project, **kw)
    return project(model(input_ids, **kw), None)


def head_weight(model: torch.nn.Module) -> torch.Tensor | None:
    """The bias-free LM head weight `[V, D]` of a native or adapted causal LM (`model.lm_head`), else None
    (then callers take the full logits from `model(...)`)."""
    head = getattr(model, "lm_head", None)
    if head is None or getattr(head, "bias", None) is not None:
        return None
    return head.weight
