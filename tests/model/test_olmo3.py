"""Native Olmo3: packed-document isolation, sliding-window placement, GQA shapes, YaRN placement, FLOPs."""

import pytest
import torch

from flowlm.model.config import FULL, SLIDING, ModelConfig, YarnConfig
from flowlm.model.olmo3 import Olmo3, build_mask, positions_from_doc_ids

from .conftest import micro_config


def _layer_outputs(model: Olmo3, ids: torch.Tensor, **kw) -> list[torch.Tensor]:
    outs: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda _m, _i, o: outs.append(o)) for layer in model.model.layers]
    try:
        with torch.no_grad():
            model(ids, **kw)
    finally:
        for h in hooks:
            h.remove()
    return outs


def test_parameter_names_and_shapes_gqa() -> None:
    cfg = micro_config()
    model = Olmo3(cfg)
    sd = model.state_dict()
    assert sd["model.layers.0.self_attn.q_proj.weight"].shape == (64, 64)
    assert sd["model.layers.0.self_attn.k_proj.weight"].shape == (32, 64)  # 2 kv heads x 16
    assert sd["model.layers.0.self_attn.v_proj.weight"].shape == (32, 64)
    assert sd["model.layers.0.self_attn.q_norm.weight"].shape == (64,)  # full-projection QK-norm
    assert sd["model.layers.0.self_attn.k_norm.weight"].shape == (32,)
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
            "model.layers.3.post_feedforward_layernorm.weight", "model.layers.3.mlp.down_proj.weight"} <= set(sd)
    ids = torch.randint(0, 128, (3, 11))
    assert model(ids).shape == (3, 11, 128)
    assert model(ids, return_hidden=True).shape == (3, 11, 64)


def test_init_and_counts() -> None:
    model = Olmo3(micro_config(init_std=0.05))
    assert torch.equal(model.model.norm.weight, torch.ones(64))
    assert abs(model.lm_head.weight.std().item() - 0.05) < 0.005
    n = model.num_params()
    assert n == sum(p.numel() for p in model.parameters())
    assert model.num_params(exclude_embeddings=True) == n - 128 * 64
    # 6N + 12 * heads * head_dim * T_eff: 3 sliding layers see 8 keys, the full one 32.
    n_ne = n - 128 * 64
    assert model.flops_per_token(32) == 6 * n_ne + 12 * 64 * (3 * 8 + 32)


def test_packed_documents_do_not_leak() -> None:
    model = Olmo3(micro_config()).eval()
    a, b = torch.randint(0, 128, (1, 7)), torch.randint(0, 128, (1, 9))
    packed = torch.cat([a, b], dim=1)
    doc_ids = torch.tensor([[0] * 7 + [1] * 9])
    pos = positions_from_doc_ids(doc_ids)
    assert pos.tolist() == [list(range(7)) + list(range(9))]
    with torch.no_grad():
        out = model(packed, position_ids=pos, doc_ids=doc_ids)
        alone_a, alone_b = model(a), model(b)
        changed = packed.clone()
        changed[0, :7] = (changed[0, :7] + 1) % 128
        out_changed = model(changed, position_ids=pos, doc_ids=doc_ids)
    torch.testing.assert_close(out[:, :7], alone_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, 7:], alone_b, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_changed[:, 7:], out[:, 7:], atol=0, rtol=0)
    assert not torch.allclose(out_changed[:, :7], out[:, :7])


def test_build_mask_window_and_documents() -> None:
    mask = build_mask(6, window=3)[0, 0]
    expected = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0],
                             [0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    assert build_mask(6) is None  # plain causal -> SDPA is_causal fast path
    docs = build_mask(4, doc_ids=torch.tensor([[0, 0, 1, 1]]))[0, 0]
    assert docs.tolist() == [[True, False, False, False], [True, True, False, False],
                             [False, False, True, False], [False, False, True, True]]


@pytest.mark.parametrize(("pattern", "layers", "expected"), [
    ((True, True, True, False), 8, "SSSFSSSF"),
    ((True, True, True, False), 6, "SSSFSF"),  # last layer forced full
    ((True,), 3, "SSF"),
    ((False,), 3, "FFF"),
    ((True, False), 5, "SFSFF"),
])
def test_layer_types_patterns(pattern: tuple[bool, ...], layers: int, expected: str) -> None:
    cfg = micro_config(num_layers=layers, swa_pattern=pattern)
    assert "".join("S" if t == SLIDING else "F" for t in cfg.layer_types) == expected


def test_token_beyond_window_reaches_only_through_full_layers() -> None:
    cfg = micro_config(swa_pattern=(True,), num_layers=3, sliding_window=4)  # S S F
    model = Olmo3(cfg).eval()
    ids = torch.randint(0, 128, (1, 12))
    changed = ids.clone()
    changed[0, 0] = (changed[0, 0] + 5) % 128
    base, alt = _layer_outputs(model, ids), _layer_outputs(model, changed)
    # Layer 0 (sliding, window 4): position 4 is 4 steps after position 0 -> cannot see it.
    torch.testing.assert_close(alt[0][:, 4:], base[0][:, 4:], atol=0, rtol=0)
    assert not torch.allclose(alt[0][:, 3], base[0][:, 3])  # inside the window
    # Two stacked sliding layers reach 2 * (4 - 1) = 6 back: position 7 is still untouched.
    torch.testing.assert_close(alt[1][:, 7:], base[1][:, 7:], atol=0, rtol=0)
    # The full last layer carries position 0 to the end.
    assert not torch.allclose(alt[2][:, -1], base[2][:, -1])


def test_yarn_only_on_full_layers() -> None:
    """OLMo-core `full_attn_layers_only=True`: sliding layers keep plain RoPE under YaRN."""
    plain_cfg = micro_config(max_seq_len=64)
    yarn_cfg = micro_config(max_seq_len=64, yarn=YarnConfig(factor=4.0, original_max_seq_len=16))
    plain, yarn = Olmo3(plain_cfg).eval(), Olmo3(yarn_cfg).eval()
    yarn.load_state_dict(plain.state_dict())
    pos = torch.arange(40)
    t_plain, t_yarn = plain.rope_tables(pos), yarn.rope_tables(pos)
    torch.testing.assert_close(t_yarn[SLIDING], t_plain[SLIDING], atol=0, rtol=0)
    assert not torch.allclose(t_yarn[FULL][0], t_plain[FULL][0])
    ids = torch.randint(0, 128, (2, 40))
    out_plain, out_yarn = _layer_outputs(plain, ids), _layer_outputs(yarn, ids)
    for i in range(3):  # S S S: identical
        torch.testing.assert_close(out_yarn[i], out_plain[i], atol=0, rtol=0)
    assert not torch.allclose(out_yarn[3], out_plain[3])  # F: YaRN


def test_gqa_matches_explicit_mha() -> None:
    """A GQA model equals the MHA model whose k/v heads are the GQA heads repeated."""
    gqa = Olmo3(micro_config(num_kv_heads=2, swa_pattern=(False,))).eval()
    mha = Olmo3(micro_config(num_kv_heads=4, swa_pattern=(False,))).eval()
    state = gqa.state_dict()
    for i in range(4):
        for name in ("k_proj", "v_proj"):
            w = state[f"model.layers.{i}.self_attn.{name}.weight"]  # [2*16, 64]
            state[f"model.layers.{i}.self_attn.{name}.weight"] = w.view(2, 16, 64).repeat_interleave(
                2, dim=0).reshape(64, 64)
        # k_norm over the full projection: RMS over 32 dims equals RMS over the same values repeated.
        kn = state[f"model.layers.{i}.self_attn.k_norm.weight"]
        state[f"model.layers.{i}.self_attn.k_norm.weight"] = kn.view(2, 16).repeat_interleave(2, 0).reshape(64)
    mha.load_state_dict(state)
    ids = torch.randint(0, 128, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(mha(ids), gqa(ids), atol=1e-5, rtol=1e-5)


def test_tied_embeddings_share_storage() -> None:
    model = Olmo3(micro_config(tie_embeddings=True))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.num_params() == Olmo3(micro_config()).num_params() - 128 * 64


def test_presets_parameter_counts() -> None:
    with torch.device("meta"):
        seven = Olmo3(ModelConfig.preset("7b"))
        big = Olmo3(ModelConfig.preset("32b"))
        tiny = Olmo3(ModelConfig.preset("tiny"))
    assert 7.2e9 < seven.num_params() < 7.4e9  # OLMo 3 7B: 7.30 B
    assert 32.0e9 < big.num_params() < 32.5e9  # OLMo 3 32B: 32.2 B
    assert 5e6 < tiny.num_params() < 11e6  # 10.5 M
    assert seven.cfg.layer_types.count(FULL) == 8 and seven.cfg.layer_types[3] == FULL


def test_decoder_layers_compile_as_one_graph_and_match_eager() -> None:
    # `compile: true` compiles each decoder layer; a graph break inside one (the hand-written kernels'
    # backwards once caused several) splits it and loses the fusion. fullgraph=True fails on any break.
    cfg = micro_config(max_seq_len=32)
    model = Olmo3(cfg)
    T = 32  # >= 2 windows: sliding layers take the block-local kernel
    ids = torch.randint(0, cfg.vocab_size, (2, T))
    doc_ids = torch.tensor([[0] * 20 + [1] * 12, [0] * 32])
    pos = positions_from_doc_ids(doc_ids)
    tables = model.rope_tables(pos)
    masks = model.masks(T, doc_ids, ids.device, local=True)
    x = model.model.embed_tokens(ids).detach()
    for kind in (SLIDING, FULL):
        layer = next(lay for lay in model.model.layers if lay.layer_type == kind)
        compiled = torch.compile(layer, fullgraph=True)
        outs, grads = [], []
        for fn in (layer, compiled):
            xi = x.clone().requires_grad_()
            out = fn(xi, *tables[kind], masks[kind])
            out.square().sum().backward()
            outs.append(out.detach())
            grads.append(xi.grad)
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel", ["block_attention", "sdpa"])
@pytest.mark.parametrize("with_docs", [True, False])
def test_local_window_attention_equals_dense_mask(monkeypatch, kernel, with_docs) -> None:
    # T = 45 is not a multiple of the window 8 (padded last block); values and q/k/v gradients
    # equal SDPA under the dense sliding-window mask.
    from flowlm.model import olmo3

    if kernel == "sdpa":
        monkeypatch.setattr(olmo3, "LOCAL_BMM_BYTES", 0)
    B, H, T, D, W = 2, 3, 45, 16, 8
    q, k, v = (torch.randn(B, H, T, D, dtype=torch.float64, requires_grad=True) for _ in range(3))
    doc_ids = torch.tensor([[0] * 20 + [1] * 25, [0] * 3 + [1] * 30 + [2] * 12]) if with_docs else None
    gy = torch.randn(B, H, T, D, dtype=torch.float64)
    out = olmo3.local_window_attention(q, k, v, W, olmo3.local_window_mask(T, W, doc_ids))
    mask = build_mask(T, window=W, doc_ids=doc_ids)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, ref)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), gy), torch.autograd.grad(ref, (q, k, v), gy)):
        torch.testing.assert_close(a, b)
