"""Shared-prefix batches (`flowlm.model.tree`): the layout hand-checked, and the native model's tree forward
equal to the row-by-row forward in values and gradients: sliding windows shorter than the sequences, GQA,
groups of one, prompts that differ, a common prefix cut at the first label."""

from __future__ import annotations

import pytest
import torch

from flowlm.model.config import ModelConfig
from flowlm.model.olmo3 import Olmo3
from flowlm.model.tree import group_rows, share_prefixes, tree_masks

IGNORE = -100


def test_share_prefixes_layout_hand_checked():
    # rows 0 and 1 share [1, 2, 3]; row 0's first label is at position 2, so the trunk is [1, 2]
    ids = torch.tensor([[1, 2, 3, 4, 5], [1, 2, 3, 9, 0], [7, 8, 0, 0, 0]])
    labels = torch.tensor([[IGNORE, IGNORE, 4, 5, IGNORE], [IGNORE, IGNORE, IGNORE, IGNORE, IGNORE],
                           [IGNORE, 8, IGNORE, IGNORE, IGNORE]])
    sb = share_prefixes(ids, labels, [5, 4, 2], [[0, 1], [2]])
    # flat: trunk 0 [1, 2] | branch 0 [3, 4, 5] | branch 1 [3, 9] | trunk 1 [] | branch 2 [7, 8]
    assert sb.input_ids.tolist() == [[1, 2, 3, 4, 5, 3, 9, 7, 8]]
    assert sb.labels.tolist() == [[IGNORE, IGNORE, 4, 5, IGNORE, IGNORE, IGNORE, IGNORE, 8]]
    assert sb.tree.position_ids.tolist() == [0, 1, 2, 3, 4, 2, 3, 0, 1]
    assert sb.row.tolist() == [0, 0, 0, 0, 0, 1, 1, 2, 2]
    assert sb.source.tolist() == [0, 1, 2, 3, 4, 7, 8, 10, 11]
    assert sb.tree.trunk_len.tolist() == [2, 0]
    S = 9
    assert sb.tree.trunk_index.tolist() == [[0, 1], [S, S]]
    # branches sorted by length into buckets: [3, 9] and [7, 8] (2 tokens) apart from [3, 4, 5] (3 tokens)
    # or together; either way every flat token has one slot in cat(trunks, buckets)
    layout = torch.cat([sb.tree.trunk_index.reshape(-1), *(b.index.reshape(-1) for b in sb.tree.buckets)])
    assert layout[sb.tree.inverse].tolist() == list(range(S))
    by_start = {int(b.index[k, 0]): (int(b.length[k]), int(b.trunk[k])) for b in sb.tree.buckets
                for k in range(len(b.length))}
    assert by_start == {2: (3, 0), 5: (2, 0), 7: (2, 1)}
    with pytest.raises(ValueError, match="partition"):
        share_prefixes(ids, labels, [5, 4, 2], [[0, 1]])
    assert group_rows(torch.tensor([3, 3, 1, 3])) == [[0, 1, 3], [2]]


def test_tree_masks_hand_checked():
    ids = torch.tensor([[1, 2, 3, 4], [1, 2, 5, 0]])
    labels = torch.tensor([[IGNORE, IGNORE, 3, 4], [IGNORE, IGNORE, 5, IGNORE]])
    tree = share_prefixes(ids, labels, [4, 3], [[0, 1]]).tree  # trunk [1, 2]; branches [3, 4], [5]
    (bucket,) = tree.buckets  # one bucket, sorted by length: [5] first
    assert bucket.length.tolist() == [1, 2]
    m = tree_masks(tree, window=None)
    assert m.trunk[0, 0].tolist() == [[True, False], [True, True]]
    # [5] at position 2, then padding that sees only its own padding key
    assert m.branches[0][0, 0].tolist() == [[True, True, True, False], [False, False, False, True]]
    # [3, 4] at positions 2, 3: both trunk keys, then causal over itself
    assert m.branches[0][1, 0].tolist() == [[True, True, True, False], [True, True, True, True]]
    w = tree_masks(tree, window=2)  # a query sees itself and one earlier position
    assert w.branches[0][1, 0].tolist() == [[False, True, True, False], [False, False, True, True]]
    bias = w.branch_bias[0][0, 1]  # the CPU form: 0 where allowed, -inf elsewhere
    assert torch.equal(bias == 0, w.branches[0][1, 0]) and torch.isinf(bias[~w.branches[0][1, 0]]).all()


def test_branches_bucket_by_length():
    # 12 singletons: 8 short (4 tokens) and 4 long (200): two buckets, the short ones not padded to 200
    ids = torch.randint(1, 50, (12, 200))
    labels = torch.full((12, 200), IGNORE)
    lengths = [4] * 8 + [200] * 4
    tree = share_prefixes(ids, labels, lengths, [[r] for r in range(12)]).tree
    assert sorted(b.index.shape for b in tree.buckets) == [(4, 200), (8, 4)]


def rows_and_groups(seed: int):
    """Six sequences in three groups: a long shared prompt, prompts that diverge early, a group of one;
    labels start after each prompt, and every sequence ends with an unlabelled token."""
    g = torch.Generator().manual_seed(seed)
    lengths = [30, 22, 40, 17, 25, 33]
    prompt_len = [15, 15, 10, 10, 12, 12]
    groups = [[0, 1], [2, 3, 5], [4]]
    R, T = len(lengths), max(lengths)
    ids = torch.randint(1, 64, (R, T), generator=g)
    for group in groups:
        for r in group[1:]:
            ids[r, :prompt_len[r]] = ids[group[0], :prompt_len[r]]
    ids[3, 6] = (ids[2, 6] % 63) + 1  # rows 2 and 3 part at position 6, before their prompts end
    labels = torch.full((R, T), IGNORE)
    for r, (n, p) in enumerate(zip(lengths, prompt_len)):
        labels[r, p - 1:n - 1] = ids[r, p:n]
        ids[r, n:] = 0
    return ids, labels, lengths, groups


@pytest.mark.parametrize("kv_heads,window", [(2, 8), (4, 64)])
def test_tree_forward_equals_row_forward_values_and_gradients(kv_heads, window):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=4, num_heads=4, num_kv_heads=kv_heads,
                      intermediate_size=64, max_seq_len=128, sliding_window=window)
    model = Olmo3(cfg)
    ids, labels, lengths, groups = rows_and_groups(seed=1)
    sb = share_prefixes(ids, labels, lengths, groups)
    assert sb.tree.trunk_len.tolist() == [14, 6, 0]  # first label / divergence / a group of one
    R, T = ids.shape
    weights = torch.randn(R, T, 64)
    row_out = torch.zeros(R * T, 64)
    with torch.no_grad():
        for r in range(R):
            row_out.view(R, T, 64)[r, :lengths[r]] = model(ids[r:r + 1, :lengths[r]])[0]
    tree_out = model(sb.input_ids, tree=sb.tree)[0]
    torch.testing.assert_close(tree_out, row_out[sb.source], rtol=1e-5, atol=1e-5)

    # Gradients of a loss over the labelled (branch) positions only: each row's own tokens.
    params = list(model.parameters())
    labelled = (labels != IGNORE)
    w_rows = weights * labelled[..., None]
    loss_r = sum((model(ids[r:r + 1, :lengths[r]])[0] * w_rows[r, :lengths[r]]).sum() for r in range(R))
    g_rows = torch.autograd.grad(loss_r, params)
    loss_t = (model(sb.input_ids, tree=sb.tree)[0] * w_rows.reshape(R * T, 64)[sb.source]).sum()
    g_tree = torch.autograd.grad(loss_t, params)
    for a, b in zip(g_rows, g_tree):  # fp32 rounding (sums over the rows in another order): ~1e-7 seen
        assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max())


def test_tree_forward_rejects_batches_and_doc_ids():
    model = Olmo3(ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=2,
                              intermediate_size=64, max_seq_len=64, sliding_window=8))
    ids, labels, lengths, groups = rows_and_groups(seed=2)
    sb = share_prefixes(ids, labels, lengths, groups)
    with pytest.raises(ValueError, match="one flat row"):
        model(sb.input_ids.expand(2, -1), tree=sb.tree)


def test_sdpa_path_equals_the_cpu_block_path():
    # Off the CPU the masks carry no additive biases and attention goes through SDPA: same numbers.
    from flowlm.model.tree import tree_attention

    ids, labels, lengths, groups = rows_and_groups(seed=3)
    sb = share_prefixes(ids, labels, lengths, groups)
    S = sb.input_ids.shape[1]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, S, 8, generator=g, requires_grad=True) for _ in range(3))
    for window in (None, 8):
        cpu = tree_masks(sb.tree, window)
        assert cpu.branch_bias is not None
        other = cpu._replace(trunk_bias=None, branch_bias=None)
        a, b = tree_attention(q, k, v, cpu), tree_attention(q, k, v, other)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        w = torch.randn(a.shape, generator=g)
        for ga, gb in zip(torch.autograd.grad((a * w).sum(), (q, k, v)), torch.autograd.grad((b * w).sum(), (q, k, v))):
            torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-5)
