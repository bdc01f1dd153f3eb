"""Packed preference pairs: `pack_rows` lays out hand-checked rows, `sequence_logps` sums per packed
sequence, and DPO's packed forward (`pair_logps`) gives the padded forward's per-sequence log-probabilities
and gradients on tiny native and transformers models, sequences of many lengths (past two sliding windows,
so the native model's block-local path runs too)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowlm.data.pairs import causal_lengths, pack_rows, packed_row_len, pair_rows
from flowlm.model.config import ModelConfig
from flowlm.model.olmo3 import Olmo3
from flowlm.model.tree import share_prefixes
from flowlm.train.objectives.dpo import packing_window, pair_logps
from flowlm.train.post_losses import sequence_logps

V = 64


def test_causal_lengths_and_pack_rows_hand_checked():
    labels = torch.tensor([[-100, 7, 8, -100, -100],   # last label at 2 -> 3 tokens
                           [-100, -100, -100, -100, -100],  # no label -> 1 token
                           [5, 6, -100, -100, -100]])  # -> 2 tokens
    ids = torch.arange(1, 16).view(3, 5)
    lengths = causal_lengths(labels)
    assert lengths == [3, 1, 2]
    rows = pack_rows(ids, labels, lengths)  # rows of 3: [seq 0], [seq 2, seq 1]
    assert rows.input_ids.tolist() == [[1, 2, 3], [11, 12, 6]]
    assert rows.labels.tolist() == [[-100, 7, 8], [5, 6, -100]]
    assert rows.doc_ids.tolist() == [[0, 0, 0], [0, 0, 1]]
    assert rows.position_ids.tolist() == [[0, 1, 2], [0, 1, 0]]
    assert rows.sequence.tolist() == [[0, 0, 0], [2, 2, 1]]
    wide = pack_rows(ids, labels, lengths, row_len=8)  # one row, trimmed to its 6 tokens, no padding
    assert wide.input_ids.tolist() == [[1, 2, 3, 11, 12, 6]] and wide.doc_ids.tolist() == [[0, 0, 0, 1, 1, 2]]
    padded = pack_rows(ids, labels, [3, 1, 1], row_len=4)  # [seq 0, seq 1], [seq 2] + padding
    assert padded.input_ids.tolist() == [[1, 2, 3, 6], [11, 0, 0, 0]]
    assert padded.labels[1].tolist() == [5, -100, -100, -100]
    assert padded.doc_ids[1].tolist() == [0, 1, 1, 1] and padded.position_ids[1].tolist() == [0, 0, 1, 2]


def test_sequence_logps_over_segments_equals_per_row():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 5, 8, generator=g)
    w = torch.randn(11, 8, generator=g)
    labels = torch.randint(0, 11, (2, 5), generator=g)
    labels[1, 3:] = -100
    # row 0 = sequences 2 (positions 0-1) and 0 (2-4); row 1 = sequence 1, then padding
    segments = torch.tensor([[2, 2, 0, 0, 0], [1, 1, 1, 0, 0]])
    per_row = [(h[0, 2:], labels[0, 2:]), (h[1, :3], labels[1, :3]), (h[0, :2], labels[0, :2])]
    want = torch.stack([sequence_logps(x[None], y[None], w)[0][0] for x, y in per_row])
    for weight, x in ((w, h), (None, h @ w.t())):
        got, n = sequence_logps(x, labels, weight, chunk_rows=3, segments=segments, n_segments=3)
        torch.testing.assert_close(got, want)
        assert n.tolist() == [3, 3, 2]


def test_packed_row_len_trades_padding_for_attention():
    lengths = [10, 10, 6, 6]
    assert packed_row_len(lengths, 1e9) == 16  # positions only: rows [10, 6] [10, 6]
    assert packed_row_len(lengths, 1.0) == 10  # attention dominant: the shortest rows, four of them
    assert packed_row_len(lengths, 1e9, limit=12) == 12  # [10] [10] [6, 6]
    assert packed_row_len([7], 1e9, limit=4) == 7  # never shorter than the longest


def test_sequence_logps_head_kept_or_recomputed_and_under_autocast():
    # One chunk keeps its probabilities for backward, several recompute them: same values and gradients;
    # under bf16 autocast the GEMMs run in bf16 and the log-probabilities stay fp32.
    g = torch.Generator().manual_seed(1)
    h = torch.randn(3, 7, 16, generator=g, requires_grad=True)
    w = torch.randn(50, 16, generator=g, requires_grad=True)
    labels = torch.randint(0, 50, (3, 7), generator=g)
    labels[1, :4] = -100
    out = []
    for chunk in (64, 4):
        logps, _ = sequence_logps(h, labels, w, chunk_rows=chunk)
        out.append((logps, *torch.autograd.grad(logps @ torch.tensor([1.0, -2.0, 0.5]), (h, w))))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, _ = sequence_logps(h, labels, w)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, out[0][0], rtol=2e-2, atol=0.5)
    (g_h,) = torch.autograd.grad(low.sum(), h)
    assert g_h.dtype == torch.float32 and torch.isfinite(g_h).all()


def pair_batch(chosen: list[int], rejected: list[int], seed: int = 0, shared: bool = False) -> dict[str, torch.Tensor]:
    """Pairs with the given sequence lengths; answers (labels) start at a random prompt length and end one
    token before the sequence (the last token has no target), padded with id 0 as `PairDataset` does.
    `shared`: a pair's two sequences begin with the same prompt (as real pairs do)."""
    rng = np.random.default_rng(seed)
    batch = {}
    prompts = []
    for side, lens in (("chosen", chosen), ("rejected", rejected)):
        T = max(lens)
        ids, lab = torch.zeros(len(lens), T, dtype=torch.long), torch.full((len(lens), T), -100)
        for i, n in enumerate(lens):
            x = torch.as_tensor(rng.integers(1, V, n))
            p = int(rng.integers(0, n - 1))
            if shared and side == "rejected":
                px = prompts[i]
                p = min(len(px), n - 1)
                x[:p] = px[:p]
            elif shared:
                prompts.append(x[:p])
            ids[i, :n], lab[i, p:n - 1] = x, x[p + 1:]
        batch[f"{side}_input_ids"], batch[f"{side}_labels"] = ids, lab
    return batch


LENGTHS = ([5, 40, 17, 3, 60, 2], [33, 9, 50, 21, 4, 64])


def assert_packed_equals_padded(model: torch.nn.Module, batch: dict[str, torch.Tensor], **kw) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    ref, n_ref = pair_logps(model, batch, pack=False, shared_prefix=False)
    got, n = pair_logps(model, batch, **kw)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert n.tolist() == n_ref.tolist()
    weights = torch.linspace(-1.0, 1.0, len(ref))  # a loss that weighs every sequence differently
    g_ref = torch.autograd.grad(ref @ weights, params)
    g_got = torch.autograd.grad(got @ weights, params)
    for a, b in zip(g_ref, g_got):  # float rounding: within 1e-5 of each tensor's largest entry (~1e-6 seen)
        assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max())


@pytest.mark.parametrize("pack_length,shared_prefix", [(None, False), (96, False), (None, True)])
def test_packed_pair_logps_equal_padded_on_the_native_model(pack_length, shared_prefix):
    torch.manual_seed(0)
    model = Olmo3(ModelConfig.preset("tiny", vocab_size=V, hidden_size=32, num_layers=4, num_heads=2, num_kv_heads=1,
                                     intermediate_size=64, max_seq_len=128, sliding_window=8))
    assert packing_window(model) is None
    shared = pair_batch(*LENGTHS, seed=3, shared=True)
    ids, labels = pair_rows(shared, pad_id=0)
    trunks = share_prefixes(ids, labels, causal_lengths(labels), [[i, 6 + i] for i in range(6)]).tree.trunk_len
    assert (trunks > 0).sum() >= 4  # most pairs share a prompt (a prompt of 0 or 1 tokens shares nothing)
    for batch in (pair_batch(*LENGTHS), shared):
        assert_packed_equals_padded(model, batch, pack_length=pack_length, shared_prefix=shared_prefix)
        with torch.no_grad():  # the reference precompute's path
            torch.testing.assert_close(pair_logps(model.eval(), batch, shared_prefix=shared_prefix)[0],
                                       pair_logps(model, batch, pack=False, shared_prefix=False)[0], rtol=1e-5, atol=1e-5)
        model.train()


def test_packed_pair_logps_equal_padded_on_transformers_models():
    transformers = pytest.importorskip("transformers")
    from flowlm.model.adapter import HFCausalLM

    torch.manual_seed(0)
    qwen = HFCausalLM(transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=128)))
    assert packing_window(qwen) is None
    assert_packed_equals_padded(qwen, pair_batch(*LENGTHS))
    # sliding-window layers: the adapter's document mask would replace the window, so rows stay within it
    olmo = HFCausalLM(transformers.Olmo3ForCausalLM(transformers.Olmo3Config(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=128, sliding_window=32)))
    assert packing_window(olmo) == 32
    assert_packed_equals_padded(olmo, pair_batch([5, 30, 17], [12, 9, 31]), pack_length=64)  # packed, rows <= 32
    assert_packed_equals_padded(olmo, pair_batch(*LENGTHS))  # a sequence past the window: padded rows
