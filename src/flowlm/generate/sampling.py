"""Batched token sampling with per-row parameters, as pure tensor functions.

One call samples every active sequence of a decode step: rows may differ in temperature, top-k,
top-p and min-p, so the filters are applied as per-row thresholds rather than by grouping rows.
Randomness comes in as one uniform number per row (drawn by the caller from that row's own seeded
generator), and the token is picked by inverse-CDF over the filtered, unnormalised probabilities.
That makes a seeded request reproduce the same tokens whatever else shares its batch.

The returned logprob is always `log_softmax(raw_logits)[token]` (temperature 1, no filtering): the
policy probability the RL loss needs, not the probability of the modified sampling distribution.
"""

from __future__ import annotations

import torch


def filter_probs(probs: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                 min_p: torch.Tensor) -> torch.Tensor:
    """Zero the tokens each row's filters drop; rows keep at least their most likely token.

    `probs[B, V]` (a row need not sum to 1 afterwards: sampling renormalises), `top_k[B]` int
    (0 = off), `top_p[B]` in (0, 1], `min_p[B]` in [0, 1). Top-k and top-p keep a token when fewer
    than k tokens rank above it and the probability mass ranked above it is below p (vLLM/HF
    convention: the token that crosses p is kept); min-p drops tokens below min_p * max prob.
    """
    sorted_p, order = probs.sort(dim=-1, descending=True)
    rank = torch.arange(probs.shape[-1], device=probs.device)
    mass_before = sorted_p.cumsum(dim=-1) - sorted_p
    keep = mass_before < top_p[:, None]
    keep &= (top_k[:, None] == 0) | (rank[None, :] < top_k[:, None])
    keep &= sorted_p >= min_p[:, None] * sorted_p[:, :1]
    keep[:, 0] = True  # never empty a row
    kept_sorted = sorted_p * keep
    return torch.zeros_like(probs).scatter_(-1, order, kept_sorted)


def sample(logits: torch.Tensor, *, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
           min_p: torch.Tensor, uniform: torch.Tensor, needs_filter: bool,
           any_greedy: bool = True, all_unit_temperature: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row; returns `(tokens[B] int64, raw logprobs[B] fp32)`.

    `logits[B, V]` are the model's raw logits. Rows with `temperature == 0` take the argmax of the raw
    logits (greedy). `uniform[B]` in [0, 1) drives inverse-CDF sampling. The flags only skip work the
    caller knows is unneeded (all three are facts about `temperature`/filters the caller already
    holds, so no device sync is needed to learn them): `needs_filter` False skips the sort when no
    row uses top-k/top-p/min-p (the common RL case), `any_greedy` False skips the argmax, and
    `all_unit_temperature` reuses the raw log-softmax as the sampling distribution.
    """
    logits = logits.float()
    raw_logp = torch.log_softmax(logits, dim=-1)
    if all_unit_temperature:
        probs = raw_logp.exp()
    else:
        greedy = temperature <= 0
        safe_t = torch.where(greedy, torch.ones_like(temperature), temperature)
        # exp(log_softmax) rather than softmax: a temperature-1 row then gets bit-for-bit the same
        # probabilities as on the fast path, so a seeded request samples the same tokens whatever
        # else shares its batch.
        probs = torch.log_softmax(logits / safe_t[:, None], dim=-1).exp()
    if needs_filter:
        probs = filter_probs(probs, top_k, top_p, min_p)
    cdf = probs.cumsum(dim=-1)
    target = uniform.to(cdf.dtype)[:, None] * cdf[:, -1:]
    # right=True: the first index whose cdf exceeds the target, which always has probability > 0.
    tokens = torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_max(logits.shape[-1] - 1)
    if any_greedy and not all_unit_temperature:
        tokens = torch.where(temperature <= 0, logits.argmax(dim=-1), tokens)
    return tokens, raw_logp.gather(-1, tokens[:, None]).squeeze(-1)
