"""CUDA checks (skipped without a GPU; CI has none, they ran on a lent H100): the FlexAttention training
path against SDPA (logits and gradients), native vs transformers logits on the GPU, the fused LM-head loss
under bf16 autocast, and FSDP2 on one GPU (NCCL) against the unsharded model.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from flowlm.model.config import ModelConfig
from flowlm.model.olmo3 import Olmo3, positions_from_doc_ids

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def _cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=512, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2,
                intermediate_size=512, max_seq_len=512, sliding_window=128)
    base.update(kw)
    return ModelConfig(**base)


def _packed(B: int, T: int, vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, T), generator=g)
    cuts = torch.stack([torch.sort(torch.randint(1, T, (3,), generator=g)).values for _ in range(B)])
    doc_ids = (torch.arange(T)[None, None, :] >= cuts[:, :, None]).sum(1)
    return ids.to(CUDA), doc_ids.to(CUDA), positions_from_doc_ids(doc_ids).to(CUDA)


def _pair(cfg: ModelConfig) -> tuple[Olmo3, Olmo3]:
    torch.manual_seed(0)
    ref = Olmo3(cfg).to(CUDA)
    ref.attention = "sdpa"
    model = Olmo3(cfg).to(CUDA)
    model.load_state_dict(ref.state_dict())
    model.attention = "auto"  # training on CUDA: flex
    return ref, model


def _assert_same_logits_and_grads(models, forward) -> None:
    """`forward(model)` -> logits on each of two models: logits within 1e-4, gradients of a fixed loss
    within 1e-3 relative (fp32, TF32 off)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    outs, grads = [], []
    for m in models:
        logits = forward(m)
        logits.pow(2).mean().backward()
        outs.append(logits.detach())
        grads.append({n: p.grad for n, p in m.named_parameters()})
    assert (outs[0] - outs[1]).abs().max().item() < 1e-4
    for name, g in grads[0].items():
        rel = ((g - grads[1][name]).norm() / g.norm().clamp_min(1e-12)).item()
        assert rel < 1e-3, (name, rel)


def test_flex_training_path_matches_sdpa_fp32() -> None:
    ref, model = _pair(_cfg())
    assert model._use_flex(CUDA)
    ids, doc_ids, pos = _packed(2, 512, 512)
    _assert_same_logits_and_grads((ref, model), lambda m: m(ids, position_ids=pos, doc_ids=doc_ids))


def test_flex_training_path_matches_sdpa_bf16_loss() -> None:
    ref, model = _pair(_cfg())
    ids, doc_ids, pos = _packed(4, 512, 512, seed=1)
    labels = torch.roll(ids, -1, 1)
    losses = []
    for m in (ref, model):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            total, _, n = m(ids, position_ids=pos, doc_ids=doc_ids, labels=labels)
        losses.append(total.item() / n)
    assert abs(losses[0] - losses[1]) < 2e-2 * losses[0], losses


def test_shared_prefix_rows_flex_equal_sdpa_buckets_fp32() -> None:
    # `forward(tree=...)` (DPO pairs, RL groups): FlexAttention's block mask over the flat row (training
    # on CUDA) against the SDPA bucket path; logits and gradients.
    from flowlm.model.tree import share_prefixes

    ref, model = _pair(_cfg())
    g = torch.Generator().manual_seed(2)
    lengths = [400, 300, 350, 120, 500, 260]
    ids = torch.randint(1, 512, (6, 512), generator=g)
    ids[1, :100], ids[2, :100] = ids[0, :100], ids[0, :100]
    ids[4, :40] = ids[3, :40]
    labels = torch.full((6, 512), -100)
    for r, n in enumerate(lengths):
        labels[r, 99 if r < 3 else 39:n - 1] = ids[r, 100 if r < 3 else 40:n]
    sb = share_prefixes(ids.to(CUDA), labels.to(CUDA), lengths, [[0, 1, 2], [3, 4], [5]])
    _assert_same_logits_and_grads((ref, model), lambda m: m(sb.input_ids, tree=sb.tree))


def test_native_matches_transformers_on_gpu(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from flowlm.model.hf import save_pretrained

    torch.backends.cuda.matmul.allow_tf32 = False
    cfg = _cfg()
    native = Olmo3(cfg).eval()
    save_pretrained(native, None, tmp_path / "ckpt")
    native = native.to(CUDA)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", attn_implementation="sdpa").to(CUDA).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 300), device=CUDA)  # > window 128: sliding layers slide
    with torch.no_grad():
        diff = (native(ids) - hf(ids).logits).abs().max().item()
    assert diff < 1e-4, diff


def test_fused_loss_bf16_matches_unfused_on_gpu() -> None:
    from flowlm.train.losses import fused_linear_cross_entropy, lm_loss_sum

    torch.manual_seed(0)
    h = torch.randn(3000, 256, device=CUDA, requires_grad=True)
    w = (torch.randn(50_000, 256, device=CUDA) * 0.05).requires_grad_()
    labels = torch.randint(0, 50_000, (3000,), device=CUDA)
    labels[::7] = -100
    results = []
    for fused in (False, True):
        h.grad = w.grad = None
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if fused:
                total, _, n = fused_linear_cross_entropy(h, w, labels, z_loss=1e-4)
            else:
                total, _, n = lm_loss_sum(h @ w.t(), labels, z_loss=1e-4)
        (total / n).backward()
        results.append((total.item() / n, h.grad.clone(), w.grad.clone()))
    (l0, gh0, gw0), (l1, gh1, gw1) = results
    assert abs(l0 - l1) < 1e-2
    for a, b in ((gh0, gh1), (gw0, gw1)):
        assert ((a - b).norm() / a.norm()).item() < 2e-2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fsdp2_one_gpu_equals_unsharded(tmp_path: Path) -> None:
    import torch.distributed as dist

    from flowlm.data.loader import PackedLoader
    from flowlm.data.pack import PackedDataset
    from flowlm.data.store import TokenStore
    from flowlm.train.config import EngineConfig
    from flowlm.train.engine import Trainer
    from flowlm.train.objectives.lm import LMObjective
    from flowlm.train.parallel import World, parallelize

    torch.backends.cuda.matmul.allow_tf32 = False
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(1, 512, (int(n),), generator=g).tolist() for n in torch.randint(20, 700, (80,), generator=g)]
    store = TokenStore.write(tmp_path / "store", docs, vocab_size=512, tokenizer_hash="synthetic")
    cfg = EngineConfig(steps=4, seq_len=256, batch_size=4, checkpoint_every=100)

    def losses(sharded: bool) -> list[float]:
        torch.manual_seed(0)
        world = World(device=CUDA)
        model = Olmo3(_cfg()).to(CUDA)
        if sharded:
            model = parallelize(model, world)
        loader = PackedLoader(PackedDataset(store, 256, seed=0), 4, seed=0)
        trainer = Trainer(model, LMObjective(), loader, cfg, tmp_path / f"run{sharded}", world=world, show_progress=False)
        batch = next(iter(loader))  # one batch, four steps: the loss must fall
        return [trainer.train_step(batch)["loss"] for _ in range(4)]

    plain = losses(False)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        sharded = losses(True)
    finally:
        dist.destroy_process_group()
    assert plain[-1] < plain[0]
    for a, b in zip(plain, sharded):
        assert abs(a - b) < 1e-4 * max(1.0, abs(a)), (plain, sharded)
