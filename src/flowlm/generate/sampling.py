"""Batched token sampling with per-row parameters, as pure tensor functions.

One call samples every active sequence of a decode step: rows may differ in temperature, top-k,
top-p and min-p, so the filters are applied as per-row thresholds rather than by grouping rows.
Randomness comes in as one uniform number per row (drawn by the caller from that row's own seeded
generator), and the token is picked by inverse-CDF over the filtered, unnormalised probabilities.
That makes a seeded request reproduce the same tokens whatever else shares its batch.

The returned logprob is `log_softmax(raw_logits)[token]` (temperature 1, no filtering) by default, or with
`tempered` `log_softmax(raw_logits / temperature)[token]` (the row's temperature, still before top-k/top-p/
min-p; greedy rows keep the raw one): the log-prob of the policy the RL loss trains, at temperature 1 or at
the sampling temperature as TRL, open-instruct and veRL scale the learner's logits. Never the probability of
the filtered sampling distribution, whose renormalisation the learner cannot reproduce (TRL #6789).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def filter_probs(probs: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                 min_p: torch.Tensor) -> torch.Tensor:
    """Zero the tokens each row's filters drop; rows keep at least their most likely token.

    `probs[B, V]` (a row need not sum to 1 afterwards: sampling renormalises), `top_k[B]` int
    (0 = off), `top_p[B]` in (0, 1], `min_p[B]` in [0, 1). Top-k and top-p keep a token when fewer
    than k tokens rank above it and the probability mass ranked above it is below p (vLLM/HF
    convention: the token that crosses p is kept); min-p drops tokens below min_p * max prob.

    On CPU (fp32) the rows are filtered by a value threshold found from a values-only sort (numpy's
    SIMD sort, ~10x `torch.sort` with indices on [256, 8k]): bit-for-bit the result of the full sort,
    see `_filter_probs_threshold`.
    """
    if (probs.device.type == "cpu" and probs.dim() == 2 and probs.numel() > 0
            and probs.dtype == top_p.dtype == min_p.dtype == torch.float32):
        return _filter_probs_threshold(probs, top_k, top_p, min_p)
    return _filter_probs_sorted(probs, top_k, top_p, min_p)


def _filter_probs_sorted(probs: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                         min_p: torch.Tensor) -> torch.Tensor:
    """The reference: sort each row with its indices, decide per rank, scatter back."""
    sorted_p, order = probs.sort(dim=-1, descending=True)
    rank = torch.arange(probs.shape[-1], device=probs.device)
    mass_before = sorted_p.cumsum(dim=-1) - sorted_p
    keep = mass_before < top_p[:, None]
    keep &= (top_k[:, None] == 0) | (rank[None, :] < top_k[:, None])
    keep &= sorted_p >= min_p[:, None] * sorted_p[:, :1]
    keep[:, 0] = True  # never empty a row
    kept_sorted = sorted_p * keep
    return torch.zeros_like(probs).scatter_(-1, order, kept_sorted)


_BAND = 16  # top-p ranks decided one by one per row; a row that needs more decides all its ranks


def _filter_probs_threshold(probs: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                            min_p: torch.Tensor) -> torch.Tensor:
    """`_filter_probs_sorted` without the index sort, bit-for-bit row by row.

    The reference decides keep/drop per rank from the sorted values alone (their cumsum, the rank,
    the max), and a row's sorted values are the same whatever order its ties come in. So a
    values-only sort gives the reference's cumsum, and each filter keeps a prefix of the ranks:
    top-k the first k, min-p those >= min_p * max (a searchsorted), and top-p those whose mass
    before (`cumsum - p`) is below p, which is nondecreasing down the ranks (cumsum rises at least
    as fast as p falls, and rounding is monotone). Every rank whose cumsum is below p is kept
    (mass before <= cumsum); from the first cumsum >= p on, `_BAND` ranks are decided with the
    reference's own expression, which in practice reaches the first dropped rank (the one after the
    token that crosses p); rows that need more (top-p 1 on a peaked row: many tiny values with
    cumsum ~1) decide all their ranks. When the kept ranks are 0..c-1 and the value at c-1 is
    strictly above the value at c, the kept tokens are exactly those with `p >= sorted[c-1]`: one
    pass. Rows where a tie of nonzero values straddles the cut (which tied tokens the reference
    keeps then follows its sort's tie order) or with NaN/inf/negative entries go through the
    reference itself. Each row's path depends on that row only, so a seeded request still samples
    the same tokens in any batch.
    """
    p = probs.detach().contiguous()
    vocab = p.shape[-1]
    ascending_np = np.sort(p.numpy(), axis=-1)  # values only: numpy's SIMD sort, ~10x torch.sort on [256, 8k]
    sorted_p = torch.from_numpy(np.ascontiguousarray(ascending_np[:, ::-1]))
    cs = sorted_p.cumsum(dim=-1)  # the reference's cumsum, bit for bit
    clean = torch.isfinite(sorted_p[:, 0]) & (sorted_p[:, -1] >= 0) & torch.isfinite(cs[:, -1])  # numpy puts NaN last

    limit = torch.full_like(top_k, vocab, dtype=torch.long)  # top-k and min-p keep ranks < limit
    if bool((top_k != 0).any()):
        limit = torch.where(top_k == 0, limit, top_k.clamp(0, vocab))
    if bool((min_p != 0).any()):
        threshold = min_p[:, None] * sorted_p[:, :1]  # the reference's expression
        below = torch.searchsorted(torch.from_numpy(ascending_np), threshold).squeeze(-1)
        limit = torch.minimum(limit, vocab - below)

    start = torch.searchsorted(cs, top_p[:, None]).squeeze(-1)  # top-p keeps ranks < start
    band = start[:, None] + torch.arange(_BAND)
    at = band.clamp_max(vocab - 1)
    keep = ((cs.gather(-1, at) - sorted_p.gather(-1, at)) < top_p[:, None]) & (band < limit[:, None])
    cut = torch.minimum(start + keep.sum(dim=-1), limit)
    undecided = keep[:, -1]  # the whole band kept, and ranks after it still allowed by top-k/min-p
    if bool(undecided.any()):
        rows = undecided.nonzero().squeeze(-1)
        keep = (cs[rows] - sorted_p[rows]) < top_p[rows, None]
        cut[rows] = torch.minimum(keep.sum(dim=-1), limit[rows])
    cut = cut.clamp_min(1)  # never empty a row

    last_kept = sorted_p.gather(-1, (cut - 1)[:, None])
    after = sorted_p.gather(-1, cut.clamp_max(vocab - 1)[:, None])
    clean &= (cut == vocab) | ((last_kept > after) | (last_kept == 0)).squeeze(-1)  # no tie of nonzeros straddles the cut
    values = p.numpy()  # numpy: torch.where / mul against a [B, 1] column measured ~5x slower here
    out = torch.from_numpy(values * (values >= last_kept.numpy()))  # p * True == p, p * False == +0
    if not bool(clean.all()):
        rows = (~clean).nonzero().squeeze(-1)
        out[rows] = _filter_probs_sorted(p[rows], top_k[rows], top_p[rows], min_p[rows])
    return out


_BLOCK = 128  # inverse-CDF in two levels: per-row sums of blocks of this many tokens, then one block


def _shifted_exp(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(m, exp(z - m))` with `m` the row max `[B, 1]`: unnormalised probabilities, one pass."""
    m = z.amax(dim=-1, keepdim=True)
    return m, (z - m).exp_()


def _blocks(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`w[B, V]` (zero-padded to whole blocks) as `[B, nb, _BLOCK]`, and the running sum of its block
    sums `[B, nb]` (the last column is the row total). Every sum here reduces within a row, in the same
    order whatever the batch, so a row's totals do not depend on its batch-mates."""
    if w.shape[-1] % _BLOCK:
        w = F.pad(w, (0, _BLOCK - w.shape[-1] % _BLOCK))
    wb = w.view(w.shape[0], -1, _BLOCK)
    return wb, wb.sum(dim=-1).cumsum(dim=-1)


def _inverse_cdf(wb: torch.Tensor, block_cdf: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The first token whose running weight exceeds `uniform * total`, per row: the block from the block
    sums' running total, then the token from a cumsum over that block only (`_BLOCK` values instead of
    the vocabulary). Always a token of weight > 0: the first running sum above a target is one that
    just grew, and targets at or past the total (rounding) go to the last token with weight."""
    rows, _, size = wb.shape
    total = block_cdf[:, -1:]
    target = uniform.to(block_cdf.dtype)[:, None] * total
    blk = torch.searchsorted(block_cdf, target, right=True)
    blk = torch.minimum(blk, (block_cdf < total).sum(dim=-1, keepdim=True))  # last block with weight
    before = torch.where(blk > 0, block_cdf.gather(-1, (blk - 1).clamp_min(0)), 0.0)
    inner = wb.gather(1, blk[:, :, None].expand(rows, 1, size)).squeeze(1).cumsum(dim=-1)
    j = torch.searchsorted(inner, target - before, right=True)
    j = torch.minimum(j, (inner < inner[:, -1:]).sum(dim=-1, keepdim=True))  # last token with weight
    return (blk * size + j).squeeze(-1)


def _token_logprob(z: torch.Tensor, z_max: torch.Tensor, cdf: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """`log_softmax(z)[token]` per row from the pass's row max and running exp-sums (last column: the total)."""
    return (z.gather(-1, tokens[:, None]) - z_max - cdf[:, -1:].log()).squeeze(-1)


def sample(logits: torch.Tensor, *, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
           min_p: torch.Tensor, uniform: torch.Tensor, needs_filter: bool,
           any_greedy: bool = True, all_unit_temperature: bool = False,
           tempered: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row; returns `(tokens[B] int64, logprobs[B] fp32)`.

    `logits[B, V]` are the model's raw logits. Rows with `temperature == 0` take the argmax of the raw
    logits (greedy). `uniform[B]` in [0, 1) drives inverse-CDF sampling over each row's unnormalised
    probabilities `exp(logits / t - max)`; rows with a filter (top-k, top-p, min-p) are normalised and
    filtered first. The flags only skip work the caller knows is unneeded (all three are facts about
    `temperature`/filters the caller already holds, so no device sync is needed to learn them):
    `needs_filter` False skips the filters when no row uses top-k/top-p/min-p (the common RL case),
    `any_greedy` False skips the argmax, and `all_unit_temperature` reuses the raw probabilities as
    the sampling weights. A temperature-1 row without filters gets bit-for-bit the same weights on
    every path (`logits / 1` is `logits`), so a seeded request samples the same tokens whatever else
    shares its batch.

    The logprob is `z[token] - max(z) - log(sum exp(z - max(z)))` from the same pass as the sampling
    weights: `z` the raw logits (default), or with `tempered` the logits divided by the row's temperature,
    summed before any filter (greedy rows: the raw logits). One exp over the vocabulary when every row has
    temperature 1, or when `tempered` and no row is greedy.
    """
    logits = logits.float()
    unit = all_unit_temperature
    if unit or not tempered or any_greedy:  # the raw log-softmax is needed
        raw_max, raw_w = _shifted_exp(logits)
        raw_blocks, raw_cdf = _blocks(raw_w)
    if unit:
        weights, blocks, cdf = raw_w, raw_blocks, raw_cdf
    else:
        safe_t = torch.where(temperature <= 0, torch.ones_like(temperature), temperature)
        z = logits / safe_t[:, None]
        z_max, weights = _shifted_exp(z)
        # tempered: the sums are taken here, before a filter zeroes part of `weights` in place
        blocks, cdf = _blocks(weights) if tempered else (None, None)
        z_cdf = cdf
    if needs_filter:
        rows = ((top_k > 0) | (top_p < 1) | (min_p > 0)).nonzero().squeeze(-1)
        if rows.numel():
            sub = weights[rows]
            probs = sub / _blocks(sub)[1][:, -1:]
            weights[rows] = filter_probs(probs, top_k[rows], top_p[rows], min_p[rows])  # raw sums are taken
            blocks = None
    if blocks is None:
        blocks, cdf = _blocks(weights)
    tokens = _inverse_cdf(blocks, cdf, uniform)
    if any_greedy and not unit:
        tokens = torch.where(temperature <= 0, logits.argmax(dim=-1), tokens)
    if unit or not tempered:
        return tokens, _token_logprob(logits, raw_max, raw_cdf, tokens)
    logp = _token_logprob(z, z_max, z_cdf, tokens)
    if any_greedy:
        logp = torch.where(temperature <= 0, _token_logprob(logits, raw_max, raw_cdf, tokens), logp)
    return tokens, logp
