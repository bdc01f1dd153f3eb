"""Shared-prefix batches: sequences that begin with the same tokens, with those tokens computed once.

A DPO pair's chosen and rejected answers follow one prompt; an RL group's G completions follow one
prompt. Run as separate rows, every row recomputes the prompt. Here a group's common prefix (its *trunk*)
is laid out once and each sequence keeps only its remainder (a *branch*); all trunks and branches are
concatenated into one flat row `[1, S]` with no padding, and attention is computed per trunk and per
branch:

- trunk tokens attend causally within their trunk;
- branch tokens attend to their whole trunk and causally within their own branch, never to a sibling.

Positions are those of the original sequences (a branch continues at its trunk's length), and a sliding
window is measured in positions, so every token sees exactly the keys it sees in its own row: the
results equal the row-by-row forward to float rounding (tested, with windows, GQA and empty trunks).

The trunk stops before the first labelled position of any sequence of the group (and leaves every branch
at least one token): the position that predicts a sequence's first target belongs to each sequence on
its own, since its label differs between them. So no labelled position is shared, and each branch's
labels are its sequence's.

`share_prefixes` builds the layout (`SharedBatch`) from right-padded rows and a partition of the rows
into groups; `tree_masks` builds one `TreeMask` per attention kind; `tree_attention` is the attention.
(Training on CUDA takes FlexAttention instead: `flowlm.model.flex.tree_block_mask` over the flat row.)
The linear layers, norms and MLP run on the flat `[1, S, D]` row unchanged. Attention pads the trunks to
the longest (`[N, P]`) and the branches, sorted by length, in up to four buckets to the longest of each
(`[m, B]`, cut where the padded scores are fewest): its cost is about `N·P² + Σ m·B·(P + B)` scores
instead of the dense `(Σ lengths)²` of one packed row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from flowlm.model.kernels import block_attention

IGNORE = -100


class Branches(NamedTuple):
    """One bucket of branches of similar length, padded to the longest of the bucket."""

    index: torch.Tensor  # [m, B] int64: flat positions, padded with S
    length: torch.Tensor  # [m] int64 (>= 1)
    trunk: torch.Tensor  # [m] int64: the trunk each branch continues


class PrefixTree(NamedTuple):
    """Where each trunk's and branch's tokens sit in the flat row of `S` tokens (index `S` = padding).

    The attention layout is `cat(trunks [N * P], bucket 0 [m0 * B0], bucket 1 [m1 * B1], ...)`; `inverse`
    maps each flat token to its slot there."""

    position_ids: torch.Tensor  # [S] int64
    trunk_index: torch.Tensor  # [N, P] int64
    trunk_len: torch.Tensor  # [N] int64 (0: a group with nothing shared)
    buckets: tuple[Branches, ...]
    inverse: torch.Tensor  # [S] int64
    layout: torch.Tensor  # [N * P + Σ m * B] int64: the flat position of every attention slot (S: padding)
    group: torch.Tensor  # [S] int64: each flat token's group (FlexAttention's predicate, `flowlm.model.flex`)
    branch: torch.Tensor  # [S] int64: each flat token's branch, -1 on trunks


class SharedBatch(NamedTuple):
    """Rows re-laid as trunks and branches (`share_prefixes`)."""

    input_ids: torch.Tensor  # [1, S]
    labels: torch.Tensor  # [1, S], -100 on trunks
    source: torch.Tensor  # [S]: index into the flattened input rows [R * T] of each token
    row: torch.Tensor  # [S]: the input row of each token (a trunk token: its group's first row)
    tree: PrefixTree


class TreeMask(NamedTuple):
    """Masks of one attention kind, built once per forward (`tree_masks`): boolean (True = may attend), and
    on CPU also as additive biases (0 / -inf) for `kernels.block_attention`."""

    tree: PrefixTree
    trunk: torch.Tensor | None  # [N, 1, P, P]; None when every trunk is empty
    branches: tuple[torch.Tensor, ...]  # per bucket [m, 1, B, P + B]
    trunk_bias: torch.Tensor | None = None  # [1, N, P, P] (CPU)
    branch_bias: tuple[torch.Tensor, ...] | None = None  # per bucket [1, m, B, P + B] (CPU)


def _prefix_len(ids: list[np.ndarray], labels: list[np.ndarray]) -> int:
    """Trunk length of one group: the common prefix, cut before any row's first label, and short enough
    that every row keeps at least one token. A single row shares nothing."""
    if len(ids) < 2:
        return 0
    n = min(len(x) for x in ids) - 1
    for y in labels:
        hit = np.flatnonzero(y[:n] != IGNORE)
        if len(hit):
            n = min(n, int(hit[0]))
    first = ids[0][:n]
    for x in ids[1:]:
        diff = np.flatnonzero(x[:n] != first)
        if len(diff):
            n = int(diff[0])
            first = first[:n]
    return max(n, 0)


def share_prefixes(input_ids: torch.Tensor, labels: torch.Tensor, lengths: Sequence[int],
                   groups: Sequence[Sequence[int]]) -> SharedBatch:
    """Lay out the first `lengths[r]` tokens of each row `r` of `input_ids` / `labels` `[R, T]` as trunks
    and branches. `groups` partitions the rows (each row in exactly one group); rows of a group share
    their common prefix (see the module docstring for where it stops). One host copy of the inputs."""
    R, T = labels.shape
    seen = sorted(r for g in groups for r in g)
    if seen != list(range(R)):
        raise ValueError(f"share_prefixes: groups must partition the {R} rows, got {[list(g) for g in groups]}")
    ids_np, lab_np = input_ids.cpu().numpy(), labels.cpu().numpy()
    # per flat token: source index (row * T + column), position, row, group, branch (-1: trunk)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("src", "pos", "row", "group", "branch")}
    trunks: list[tuple[int, int]] = []  # (start, length) in the flat row
    branches: list[tuple[int, int, int]] = []  # (start, length, trunk)

    def add(r: int, lo: int, hi: int, t: int, branch: int) -> None:
        for key, value in (("src", r * T + np.arange(lo, hi)), ("pos", np.arange(lo, hi)),
                           ("row", np.full(hi - lo, r)), ("group", np.full(hi - lo, t)),
                           ("branch", np.full(hi - lo, branch))):
            cols[key].append(value)

    at = 0
    for t, g in enumerate(groups):
        g = list(g)
        s = _prefix_len([ids_np[r, :lengths[r]] for r in g], [lab_np[r, :lengths[r]] for r in g])
        trunks.append((at, s))
        add(g[0], 0, s, t, -1)
        at += s
        for r in g:
            n = int(lengths[r]) - s
            add(r, s, s + n, t, len(branches))
            branches.append((at, n, t))
            at += n
    device = labels.device
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(device)  # noqa: E731
    flat = {k: as_t(np.concatenate(v)) for k, v in cols.items()}
    trunk_index, buckets, inverse = _attention_layout(trunks, branches, at)
    layout = np.concatenate([trunk_index.reshape(-1), *(index.reshape(-1) for index, _, _ in buckets)])
    tree = PrefixTree(flat["pos"], as_t(trunk_index), as_t([n for _, n in trunks]),
                      tuple(Branches(*(as_t(a) for a in b)) for b in buckets), as_t(inverse), as_t(layout),
                      flat["group"], flat["branch"])
    # trunk tokens carry no label: the trunk ends before every row's first label
    return SharedBatch(input_ids.reshape(-1)[flat["src"]][None], labels.reshape(-1)[flat["src"]][None],
                       flat["src"], flat["row"], tree)


def _attention_layout(trunks: list[tuple[int, int]], branches: list[tuple[int, int, int]],
                      S: int) -> tuple[np.ndarray, list[tuple[np.ndarray, list[int], list[int]]], np.ndarray]:
    """`(trunk_index [N, P], buckets [(index [m, B], lengths, trunks)], inverse [S])`: the trunks padded to
    the longest, the branches bucketed by length (`_buckets`), padding pointing at slot `S`."""
    P = max(n for _, n in trunks)
    trunk_index = np.full((len(trunks), P), S, dtype=np.int64)
    inverse = np.empty(S, dtype=np.int64)
    for i, (start, n) in enumerate(trunks):
        trunk_index[i, :n] = np.arange(start, start + n)
        inverse[start:start + n] = i * P + np.arange(n)
    base, buckets = len(trunks) * P, []
    for members in _buckets(sorted(range(len(branches)), key=lambda i: branches[i][1]),
                            [n for _, n, _ in branches], P):
        B = max(branches[i][1] for i in members)
        index = np.full((len(members), B), S, dtype=np.int64)
        for k, i in enumerate(members):
            start, n, _ = branches[i]
            index[k, :n] = np.arange(start, start + n)
            inverse[start:start + n] = base + k * B + np.arange(n)
        base += len(members) * B
        buckets.append((index, [branches[i][1] for i in members], [branches[i][2] for i in members]))
    return trunk_index, buckets, inverse


# A bucket's fixed cost in attention scores (one more pair of batched GEMMs and a softmax call).
BUCKET_COST = 1 << 14
MAX_BUCKETS = 4


def _buckets(order: list[int], lengths: list[int], trunk: int) -> list[list[int]]:
    """Branches (`order`: sorted by length) cut into at most `MAX_BUCKETS` runs of consecutive lengths,
    minimising the padded attention scores `Σ m · B · (trunk + B)` plus `BUCKET_COST` per bucket: a
    dynamic programme over at most 64 candidate cut points (where the length changes, thinned evenly),
    so thousands of branches cost milliseconds."""
    n = len(order)
    ls = [lengths[i] for i in order]
    cuts = [i for i in range(1, n) if ls[i] != ls[i - 1]]
    if len(cuts) > 63:
        cuts = [cuts[(k * len(cuts)) // 63] for k in range(63)]
    points = [0, *cuts, n]
    C = len(points)

    def cost(a: int, b: int) -> float:  # branches points[a] .. points[b] - 1
        m, B = points[b] - points[a], ls[points[b] - 1]
        return m * B * (trunk + B) + BUCKET_COST

    best = [[float("inf")] * C for _ in range(MAX_BUCKETS + 1)]
    back = [[0] * C for _ in range(MAX_BUCKETS + 1)]
    best[0][0] = 0.0
    for k in range(1, MAX_BUCKETS + 1):
        for b in range(1, C):
            for a in range(b):
                c = best[k - 1][a] + cost(a, b)
                if c < best[k][b]:
                    best[k][b], back[k][b] = c, a
    k = min(range(1, MAX_BUCKETS + 1), key=lambda q: best[q][C - 1])
    out, b = [], C - 1
    while k:
        a = back[k][b]
        out.append(order[points[a]:points[b]])
        b, k = a, k - 1
    return out[::-1]


def tree_masks(tree: PrefixTree, window: int | None) -> TreeMask:
    """The trunk and branch masks for causal attention, within `window` positions when set (HF's
    convention: the window counts the query itself). Padding queries see one padding key (their output
    is never read), so no row of a mask is empty."""
    tl = tree.trunk_len
    P = tree.trunk_index.shape[1]
    device = tl.device
    big = torch.iinfo(torch.int64).max if window is None else window
    trunk = None
    if P:
        i = torch.arange(P, device=device)
        d = i[:, None] - i[None, :]  # query - key
        pad_q = (i[None, :] >= tl[:, None])[:, :, None]  # [N, P, 1]
        trunk = (d >= 0) & (d < big) & (i[None, None, :] < tl[:, None, None])
        trunk = torch.where(pad_q, (d == 0)[None], trunk)[:, None]
    branches = tuple(_branch_mask(b, tl, P, big) for b in tree.buckets)
    masks = TreeMask(tree, trunk, branches)
    if device.type != "cpu":
        return masks
    bias = lambda m: torch.zeros(m[:, 0].shape, device=device).masked_fill_(~m[:, 0], float("-inf"))[None]  # noqa: E731
    return masks._replace(trunk_bias=bias(trunk) if trunk is not None else None,
                          branch_bias=tuple(bias(m) for m in branches))


def _branch_mask(b: Branches, tl: torch.Tensor, P: int, big: int) -> torch.Tensor:
    """`[m, 1, B, P + B]`: the trunk's real keys within the window, then causal over the branch itself."""
    bl, B = b.length, b.index.shape[1]
    device = bl.device
    t = torch.arange(B, device=device)
    own = t[:, None] - t[None, :]
    pad_q = t[None, :] >= bl[:, None]  # [m, B]
    mask = (own >= 0) & (own < big) & (t[None, None, :] < bl[:, None, None])  # [m, B, B]
    mask = torch.where(pad_q[:, :, None], (own == 0)[None], mask)
    if P:
        tlb = tl[b.trunk]  # [m]
        j = torch.arange(P, device=device)
        dist = tlb[:, None, None] + t[None, :, None] - j[None, None, :]  # query at tlb + t, trunk key at j
        on_trunk = (j[None, None, :] < tlb[:, None, None]) & (dist < big) & ~pad_q[:, :, None]
        mask = torch.cat((on_trunk, mask), dim=2)
    return mask[:, None]


class _ToLayout(torch.autograd.Function):
    """`x[:, index]` for `x` `[H, S, hd]` padded with one zero slot (index S): the flat row laid out as trunks
    then branches `[H, L, hd]`. Every real position appears once in `index`, so the gradient is a gather
    too (`grad[:, inverse]`), not a scatter-add."""

    @staticmethod
    def forward(ctx, x, index, inverse):  # type: ignore[override]
        ctx.save_for_backward(inverse)
        return F.pad(x, (0, 0, 0, 1))[:, index]

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (inverse,) = ctx.saved_tensors
        return grad[:, inverse], None, None


class _FromLayout(torch.autograd.Function):
    """The inverse of `_ToLayout`: `layout[:, inverse]` `[H, S, hd]`; padding slots get no gradient."""

    @staticmethod
    def forward(ctx, layout, inverse, index):  # type: ignore[override]
        ctx.save_for_backward(index)
        return layout[:, inverse]

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (index,) = ctx.saved_tensors
        return F.pad(grad, (0, 0, 0, 1))[:, index], None, None


def tree_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: TreeMask) -> torch.Tensor:
    """Attention over the flat row: `q`, `k`, `v` `[1, H, S, hd]` (k, v with q's head count) -> `[1, H, S, hd]`.

    Trunks and branch buckets are laid out head-major (`[H, N, P, hd]`, `[H, m, B, hd]`), so every block
    is a contiguous view; on CPU they go through `kernels.block_attention` (batched GEMMs, faster than
    SDPA for such short blocks, as for the sliding window), elsewhere through SDPA.
    """
    tree = mask.tree
    q, k, v = (_ToLayout.apply(x[0], tree.layout, tree.inverse) for x in (q, k, v))
    H, _, hd = q.shape
    N, P = tree.trunk_index.shape
    scale = hd ** -0.5

    def attend(qq, kk, vv, m, bias):  # [H, n, Lq, hd], [H, n, Lk, hd] -> [H, n * Lq, hd]
        n, lq, lk = qq.shape[1], qq.shape[2], kk.shape[2]
        if bias is not None:
            out = block_attention(qq.reshape(H * n, lq, hd), kk.reshape(H * n, lk, hd), vv.reshape(H * n, lk, hd),
                                  bias, scale)
        else:
            out = F.scaled_dot_product_attention(qq.transpose(0, 1), kk.transpose(0, 1), vv.transpose(0, 1),
                                                 attn_mask=m).transpose(0, 1)
        return out.reshape(H, n * lq, hd)

    parts = []
    if P:
        qt, kt, vt = (x[:, :N * P].view(H, N, P, hd) for x in (q, k, v))
        parts.append(attend(qt, kt, vt, mask.trunk, mask.trunk_bias))
    at = N * P
    biases = mask.branch_bias or (None,) * len(tree.buckets)
    for b, m, bias in zip(tree.buckets, mask.branches, biases):
        n, B = b.index.shape
        qb, kb, vb = (x[:, at:at + n * B].view(H, n, B, hd) for x in (q, k, v))
        at += n * B
        if P:
            kb = torch.cat((kt[:, b.trunk], kb), dim=2)
            vb = torch.cat((vt[:, b.trunk], vb), dim=2)
        parts.append(attend(qb, kb, vb, m, bias))
    return _FromLayout.apply(torch.cat(parts, dim=1), tree.inverse, tree.layout)[None]


def group_rows(group_ids: torch.Tensor) -> list[list[int]]:
    """Rows with equal `group_ids` `[R]` as groups, in order of first appearance."""
    out: dict[int, list[int]] = {}
    for r, g in enumerate(group_ids.tolist()):
        out.setdefault(int(g), []).append(r)
    return list(out.values())
