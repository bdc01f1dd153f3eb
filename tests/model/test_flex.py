"""FlexAttention path (`flowlm.model.flex`): same logits and gradients as the SDPA paths, chosen as documented.

Runs on CPU (flex compiles to a C++ kernel there); `tests/test_cuda.py` repeats the parity on a GPU.
"""

import pytest
import torch

from flowlm.model import flex
from flowlm.model.olmo3 import Olmo3, build_mask, positions_from_doc_ids

from .conftest import micro_config


def _packed(B: int, T: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids and 1-4 documents per row of random lengths."""
    ids = torch.randint(0, vocab, (B, T))
    cuts = torch.stack([torch.sort(torch.randint(1, T, (3,))).values for _ in range(B)])
    doc_ids = (torch.arange(T)[None, None, :] >= cuts[:, :, None]).sum(1)
    return ids, doc_ids


@pytest.mark.parametrize("window", [None, 40])
def test_block_mask_equals_dense_mask(window) -> None:
    T = 256
    _, doc_ids = _packed(2, T, 8)
    bm = flex.block_mask(T, window=window, doc_ids=doc_ids, device=torch.device("cpu"))
    dense = build_mask(T, window=window, doc_ids=doc_ids)
    got = bm.to_dense()  # block-level; expand with the mask_mod to compare per element
    assert got.shape[0] == 2
    q, k = torch.arange(T)[:, None], torch.arange(T)[None, :]
    for b in range(2):
        elem = bm.mask_mod(torch.tensor(b), torch.tensor(0), q, k)
        assert torch.equal(elem, dense[b, 0])


def test_flex_forward_equals_sdpa() -> None:
    # 3 sliding layers (window 32) + 1 full layer, GQA 4 q / 2 kv heads, 2 packed rows of 200 tokens
    # (not a multiple of FlexAttention's 128-token blocks).
    # Forward only: FlexAttention has no CPU backward (torch 2.13); tests/test_cuda.py checks gradients.
    cfg = micro_config(sliding_window=32, max_seq_len=256, hidden_size=128, num_heads=4, num_kv_heads=2)
    ref = Olmo3(cfg)
    ref.attention = "sdpa"
    model = Olmo3(cfg)
    model.load_state_dict(ref.state_dict())
    model.attention = "flex"
    ids, doc_ids = _packed(2, 200, cfg.vocab_size)
    pos = positions_from_doc_ids(doc_ids)
    with torch.no_grad():
        a = ref(ids, position_ids=pos, doc_ids=doc_ids)
        b = model(ids, position_ids=pos, doc_ids=doc_ids)
        c = model(ids)  # no documents: causal (+ window) block masks broadcast over the batch
        d = ref(ids)
    assert (a - b).abs().max().item() < 1e-5
    assert (c - d).abs().max().item() < 1e-5


def test_auto_uses_flex_only_for_training_on_cuda() -> None:
    model = Olmo3(micro_config())
    assert model._use_flex(torch.device("cuda")) is True
    assert model._use_flex(torch.device("cpu")) is False
    model.eval()
    assert model._use_flex(torch.device("cuda")) is False
    model.attention = "flex"
    assert model._use_flex(torch.device("cpu")) is True
    model.attention = "fast"
    with pytest.raises(ValueError, match="'auto', 'flex' or 'sdpa'"):
        model._use_flex(torch.device("cpu"))


def test_tree_block_mask_forward_equals_the_bucket_path() -> None:
    # Shared-prefix rows (`flowlm.model.tree`) under FlexAttention (training on CUDA): one block-sparse
    # mask over the flat row instead of per-branch masks; same logits as the CPU bucket path.
    from flowlm.model.tree import share_prefixes

    cfg = micro_config(sliding_window=32, max_seq_len=256, hidden_size=128, num_heads=4, num_kv_heads=2)
    ref = Olmo3(cfg)
    model = Olmo3(cfg)
    model.load_state_dict(ref.state_dict())
    model.attention = "flex"
    g = torch.Generator().manual_seed(0)
    lengths = [150, 90, 120, 40, 200]
    ids = torch.randint(1, cfg.vocab_size, (5, 200), generator=g)
    ids[1, :60], ids[2, :60] = ids[0, :60], ids[0, :60]  # rows 0-2 share a 60-token prompt
    labels = torch.full((5, 200), -100)
    for r, n in enumerate(lengths):
        labels[r, 59:n - 1] = ids[r, 60:n]
    sb = share_prefixes(ids, labels, lengths, [[0, 1, 2], [3, 4]])
    assert sb.tree.trunk_len.tolist()[0] == 59
    with torch.no_grad():
        a = ref(sb.input_ids, tree=sb.tree)
        b = model(sb.input_ids, tree=sb.tree)
    assert (a - b).abs().max().item() < 1e-5
