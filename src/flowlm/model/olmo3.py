"""The native OLMo-3 decoder (`Olmo3`), single device, parameter names equal to HF `Olmo3ForCausalLM`.

Block (OLMo 2/3 "reordered norm", OLMo-core `ReorderedNormTransformerBlock`):
    h   = x + post_attention_layernorm(attn(x))
    out = h + post_feedforward_layernorm(mlp(h))
Attention: q/k/v/o projections without bias, RMSNorm QK-norm over the *full* q and k projections
before splitting into heads (as OLMo-core and HF do), RoPE, `F.scaled_dot_product_attention` with GQA.
Layers follow `cfg.layer_types`: sliding layers see the `sliding_window` latest keys and plain RoPE;
full layers see every earlier key and use YaRN when `cfg.yarn` is set (OLMo 3 long-context recipe).

Packed documents: `doc_ids[B, T]` restrict attention to the same document. Each distinct mask is
built once per forward and shared by all layers of that kind; full layers without `doc_ids` take SDPA's
`is_causal` fast path and build no mask at all. Shared-prefix batches (`tree`, `flowlm.model.tree`)
compute a group's common prompt once for all its sequences.

The pieces (`RMSNorm`, `Olmo3Attention.project`/`attend`, `build_mask`, `flowlm.model.rope`) are public
so a generation engine can drive the same weights through a KV cache.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from flowlm.model import flex
from flowlm.model.config import FULL, SLIDING, ModelConfig
from flowlm.model.kernels import block_attention, rms_norm, swiglu
from flowlm.model.rope import apply_rope, cos_sin, layer_rope
from flowlm.model.tree import PrefixTree, TreeMask, tree_attention, tree_masks
from flowlm.train.losses import fused_linear_cross_entropy

# `forward(head=...)`: the caller's projection of the final hidden states `[B, T, D]` with the LM head
# weight `[V, D]`, run inside `forward` (FSDP2 gathers the head for it and reduces its gradient).
HeadFn = Callable[[torch.Tensor, torch.Tensor], Any]


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 and cast back, matching HF `Olmo3RMSNorm` (weight * normed)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            # No upcast copy needed; hand-written backward (`flowlm.model.kernels`).
            return rms_norm(x, self.weight, self.eps)
        normed = F.rms_norm(x.float(), self.weight.shape, None, self.eps)
        return (self.weight * normed).to(x.dtype)


def build_mask(seq_len: int, *, window: int | None = None, doc_ids: torch.Tensor | None = None,
               device: torch.device | None = None) -> torch.Tensor | None:
    """Boolean attention mask (True = may attend) `[1 or B, 1, T, T]`, or None for plain causal.

    Query i sees key j iff j <= i, and i - j < window when `window` is set (HF's sliding-window
    convention: the window counts the query itself), and doc_ids[b, i] == doc_ids[b, j] when given.
    """
    if window is None and doc_ids is None:
        return None  # caller uses SDPA is_causal=True
    if doc_ids is not None:
        device = doc_ids.device
    idx = torch.arange(seq_len, device=device)
    delta = idx[:, None] - idx[None, :]  # i - j
    mask = delta >= 0
    if window is not None and window < seq_len:
        mask = mask & (delta < window)
    mask = mask[None, None]
    if doc_ids is not None:
        mask = mask & (doc_ids[:, None, :, None] == doc_ids[:, None, None, :])
    return mask


def local_window_mask(seq_len: int, window: int, doc_ids: torch.Tensor | None,
                      device: torch.device | None = None) -> torch.Tensor:
    """Block-local form of the sliding-window mask for `local_window_attention`: `[1 or B, nb, W, 2W]` bool.

    Query block b (positions b*W .. b*W+W-1, the last block padded) against keys of blocks b-1 and b.
    Query i sees key j iff 0 <= i - j < window and, with `doc_ids[B, T]`, both lie in the same document.
    Built once per forward and shared by every sliding layer.
    """
    W = window
    nb = -(-seq_len // W)
    pad = nb * W - seq_len
    if doc_ids is not None:
        device = doc_ids.device
    i = torch.arange(W, device=device)[:, None]
    j = torch.arange(2 * W, device=device)[None, :]
    # query at b*W+i, key at (b-1)*W+j: distance W+i-j must lie in [0, W)
    mask = ((j > i) & (j <= i + W)).expand(nb, W, 2 * W).clone()
    mask[0, :, :W] = False  # block 0 has no previous block
    mask = mask[None]
    if doc_ids is not None:
        d = F.pad(doc_ids, (0, pad), value=-1) if pad else doc_ids  # padding: a document of its own
        db = d.view(d.shape[0], nb, W)
        dk = torch.cat((F.pad(db, (0, 0, 1, 0), value=-2)[:, :-1], db), dim=2)
        mask = mask & (db[:, :, :, None] == dk[:, :, None, :])
    return mask


def local_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
                           mask: torch.Tensor) -> torch.Tensor:
    """Sliding-window causal attention computed block-locally: `[B, H, T, hd]` in and out.

    Queries are cut into blocks of `window`; each block attends only to its own and the previous block
    (every key a query may see lies there), so the cost is O(T * 2W) instead of O(T^2) with a mostly-False
    dense mask. `mask` is `local_window_mask(T, window, doc_ids)`. Same result as
    `build_mask(window=...)` + SDPA (tested).
    On CPU, while the block scores stay small (`LOCAL_BMM_BYTES`), the blocks go through
    `kernels.block_attention` (batched GEMMs, faster there for such short blocks); otherwise through SDPA.
    """
    B, H, T, D = q.shape
    W = window
    nb = -(-T // W)
    pad = nb * W - T
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    qb = q.view(B, H, nb, W, D)
    kb, vb = k.view(B, k.shape[1], nb, W, D), v.view(B, v.shape[1], nb, W, D)
    kk = torch.cat((F.pad(kb, (0, 0, 0, 0, 1, 0))[:, :, :-1], kb), dim=3)  # [B, Hk, nb, 2W, D]
    vv = torch.cat((F.pad(vb, (0, 0, 0, 0, 1, 0))[:, :, :-1], vb), dim=3)
    if q.device.type == "cpu" and B * H * nb * W * 2 * W * 4 <= LOCAL_BMM_BYTES:
        bias = torch.zeros(mask.shape, dtype=torch.float32, device=q.device).masked_fill_(~mask, float("-inf"))
        out = block_attention(qb.reshape(B * H * nb, W, D), kk.reshape(B * H * nb, 2 * W, D),
                              vv.reshape(B * H * nb, 2 * W, D), bias, D ** -0.5)
        return out.view(B, H, nb * W, D)[:, :, :T]
    # Fold the blocks into the batch so SDPA stays 4-D and takes its fused kernel (a 5-D call falls
    # back to the unfused math path, measured ~2x slower on CPU).
    fold = lambda t: t.transpose(1, 2).reshape(B * nb, t.shape[1], t.shape[3], D)  # noqa: E731
    m4 = mask[:, None].expand(B, 1, nb, W, 2 * W).transpose(1, 2).reshape(B * nb, 1, W, 2 * W)
    out = F.scaled_dot_product_attention(fold(qb), fold(kk), fold(vv), attn_mask=m4)
    return out.view(B, nb, H, W, D).transpose(1, 2).reshape(B, H, nb * W, D)[:, :, :T]


# Largest fp32 block-score tensor `[B*H*blocks, W, 2W]` for which the CPU uses `block_attention`
# (the tiny preset at 8 x 512 tokens: 16 MiB; a 4,096-token window would need gigabytes).
LOCAL_BMM_BYTES = 256 << 20


def positions_from_doc_ids(doc_ids: torch.Tensor) -> torch.Tensor:
    """Position ids restarting at 0 at every document start of `doc_ids[B, T]` (contiguous documents)."""
    B, T = doc_ids.shape
    idx = torch.arange(T, device=doc_ids.device).expand(B, T)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    start_idx = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - start_idx


class LocalWindow(NamedTuple):
    """Passed instead of a dense mask: attend block-locally within `window` (see above)."""

    window: int
    mask: torch.Tensor  # local_window_mask(...)


class Olmo3Attention(nn.Module):
    """Self-attention with full-projection QK-norm, RoPE and GQA; no biases."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q_dim, kv_dim = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, q_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, kv_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, kv_dim, bias=False)
        self.o_proj = nn.Linear(q_dim, cfg.hidden_size, bias=False)
        # QK-norm over the whole projection, not per head (OLMo-core / HF Olmo3).
        self.q_norm = RMSNorm(q_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(kv_dim, cfg.rms_norm_eps)

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                qkv_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys (rotated) and values `[B, heads, T, head_dim]` for hidden states `x[B, T, D]`.

        `qkv_weight` is the q/k/v weights already concatenated (an inference engine keeps one, see
        `fuse_projections`); by default they are concatenated on the fly.
        """
        B, T, _ = x.shape
        # One GEMM for q, k and v (the parameters keep HF's names).
        # A single wider matmul runs measurably faster on CPU than three narrow ones.
        w = qkv_weight if qkv_weight is not None else torch.cat((self.q_proj.weight, self.k_proj.weight, self.v_proj.weight))
        q, k, v = F.linear(x, w).split([self.q_proj.out_features, self.k_proj.out_features, self.v_proj.out_features], dim=-1)
        q = self.q_norm(q).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_norm(k).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.reshape(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, k, cos, sin)
        return q, k, v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: torch.Tensor | None) -> torch.Tensor:
        """SDPA over `[B, heads, T, hd]` tensors, then the output projection -> `[B, Tq, D]`.

        `mask` None means plain causal over equal-length q and k (SDPA `is_causal` fast path).
        """
        k, v = self._expand_kv(k, v)
        return self._output(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | LocalWindow | None) -> torch.Tensor:
        q, k, v = self.project(x, cos, sin)
        if flex.available() and isinstance(mask, flex.BlockMask):
            return self._output(flex.attend(q, k, v, mask))  # GQA inside the kernel
        if isinstance(mask, LocalWindow):
            k, v = self._expand_kv(k, v)
            return self._output(local_window_attention(q, k, v, mask.window, mask.mask))
        if isinstance(mask, TreeMask):
            k, v = self._expand_kv(k, v)
            return self._output(tree_attention(q, k, v, mask))
        return self.attend(q, k, v, mask)

    def _expand_kv(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Expanding kv heads is faster on CPU than SDPA's enable_gqa math fallback (measured).
        if self.num_kv_heads == self.num_heads:
            return k, v
        rep = self.num_heads // self.num_kv_heads
        return k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)

    def _output(self, out: torch.Tensor) -> torch.Tensor:
        """`[B, heads, T, hd]` attention output -> output projection `[B, T, D]`."""
        B, _, T, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class Olmo3MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, gate_up_weight: torch.Tensor | None = None) -> torch.Tensor:
        # gate and up in one GEMM (weights concatenated on the fly unless given; names stay HF's).
        w = gate_up_weight if gate_up_weight is not None else torch.cat((self.gate_proj.weight, self.up_proj.weight))
        return self.down_proj(swiglu(F.linear(x, w)))


@torch.no_grad()
def fuse_projections(model: "Olmo3") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, one contiguous q/k/v matrix and one gate/up matrix, with the parameters made views
    into them; returns `[(qkv_weight, gate_up_weight)]` to pass to `project` / `Olmo3MLP.forward`.

    For inference on a model the caller owns: values and names are unchanged and in-place writes
    (`load_state_dict`, optimizer steps) go through the views, so the fused matrices never go stale
    and no step pays for concatenating weights. The parameters then share storage, which
    safetensors refuses to save, so do not call this on a model you will save.

    On CPU the output, down and (untied) LM-head projections are also stored transposed (the
    parameter is a transposed view of a contiguous `[in, out]` matrix): MKL's small-batch GEMM runs
    20-30% faster on that layout (measured for `[n, 256] x [256, 8192]` and `[n, 1024] x [1024, 256]`
    at n = 16..64 on our 2-core machine); the values are unchanged.
    """
    if next(model.parameters()).device.type == "cpu":
        heads = [model.lm_head] if not model.cfg.tie_embeddings else []
        for m in [*heads, *(l.self_attn.o_proj for l in model.model.layers), *(l.mlp.down_proj for l in model.model.layers)]:
            m.weight.data = m.weight.t().contiguous().t()
    fused = []
    for layer in model.model.layers:
        groups = []
        for parts in ((layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj),
                      (layer.mlp.gate_proj, layer.mlp.up_proj)):
            whole = torch.cat([m.weight for m in parts])
            start = 0
            for m in parts:
                rows = m.weight.shape[0]
                m.weight.data = whole[start:start + rows]
                start += rows
            groups.append(whole)
        fused.append((groups[0], groups[1]))
    return fused


class Olmo3DecoderLayer(nn.Module):
    """One reordered-norm block (norms on sublayer outputs, before the residual add)."""

    def __init__(self, cfg: ModelConfig, layer_type: str) -> None:
        super().__init__()
        self.layer_type = layer_type
        self.self_attn = Olmo3Attention(cfg)
        self.mlp = Olmo3MLP(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        h = x + self.post_attention_layernorm(self.self_attn(x, cos, sin, mask))
        return h + self.post_feedforward_layernorm(self.mlp(h))


class Olmo3Model(nn.Module):
    """Embedding, decoder layers and final norm (HF `Olmo3Model`, the `model.` prefix)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Olmo3DecoderLayer(cfg, kind) for kind in cfg.layer_types)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Olmo3(nn.Module):
    """OLMo-3 causal LM. See the module docstring for the architecture and `forward` for inputs."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = Olmo3Model(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        if self.lm_head.weight.device.type != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """normal(0, init_std) for every linear and embedding weight, ones for every norm."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    def rope_tables(self, position_ids: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """cos/sin per layer kind present (YaRN only on full layers, see `rope.layer_rope`)."""
        device = position_ids.device
        return {kind: cos_sin(position_ids, *layer_rope(self.cfg, kind, device))
                for kind in set(self.cfg.layer_types)}

    def masks(self, seq_len: int, doc_ids: torch.Tensor | None, device: torch.device,
              local: bool = False, use_flex: bool = False) -> dict[str, torch.Tensor | LocalWindow | None]:
        """One mask per layer kind present, built once per forward.

        With `local`, sliding layers get a `LocalWindow` marker (block-local kernel) instead of a dense
        `T x T` mask when the sequence spans at least two windows; with `use_flex`, every kind gets a
        FlexAttention `BlockMask` (`flowlm.model.flex`). Callers that drive `attend` themselves (the
        generation engine) keep the default dense masks.
        """
        if use_flex:
            window = self.cfg.sliding_window
            return {kind: flex.block_mask(seq_len, window=window if kind == SLIDING else None, doc_ids=doc_ids,
                                          device=device) for kind in set(self.cfg.layer_types)}
        out: dict[str, torch.Tensor | None] = {}
        if FULL in self.cfg.layer_types:
            out[FULL] = build_mask(seq_len, doc_ids=doc_ids, device=device)
        if SLIDING in self.cfg.layer_types:
            window = self.cfg.sliding_window if self.cfg.sliding_window < seq_len else None
            if local and window is not None and seq_len >= 2 * window:
                out[SLIDING] = LocalWindow(window, local_window_mask(seq_len, window, doc_ids, device))
            else:
                out[SLIDING] = build_mask(seq_len, window=window, doc_ids=doc_ids, device=device)
        return out

    # Training objectives may pass `labels` to get the loss without materialised logits.
    supports_fused_loss = True
    # `forward(tree=...)`: shared-prefix batches (`flowlm.model.tree`), for DPO pairs and RL groups.
    supports_tree = True
    # Attention kernel for `forward`: "auto" = FlexAttention for training on CUDA (block-sparse masks,
    # `flowlm.model.flex`), the SDPA paths otherwise (block-local sliding window on CPU); "flex" or "sdpa"
    # force one. Evaluation keeps SDPA on CUDA: its batch shapes vary and each would recompile flex.
    attention: str = "auto"  # "flex" on CPU: forward only (no CPU backward in torch 2.13)

    def _use_flex(self, device: torch.device) -> bool:
        if self.attention not in ("auto", "flex", "sdpa"):
            raise ValueError(f"Olmo3.attention must be 'auto', 'flex' or 'sdpa', got {self.attention!r}")
        if self.attention == "auto":
            return device.type == "cuda" and self.training and flex.available()
        if self.attention == "flex" and not flex.available():
            raise RuntimeError("Olmo3.attention = 'flex' needs torch.nn.attention.flex_attention (torch >= 2.5)")
        return self.attention == "flex"

    def forward(self, input_ids: torch.Tensor, *, position_ids: torch.Tensor | None = None,
                doc_ids: torch.Tensor | None = None, return_hidden: bool = False,
                labels: torch.Tensor | None = None, z_loss: float = 0.0, head: HeadFn | None = None,
                tree: PrefixTree | None = None):
        """Logits `[B, T, V]` for `input_ids[B, T]`, or final-normed hidden states `[B, T, D]`.

        `position_ids` `[T]` or `[B, T]` default to `arange(T)` (packed batches pass per-document
        positions, see `positions_from_doc_ids`); `doc_ids[B, T]` confine attention to one document.
        With `labels[B, T]` it returns `(loss_sum, z_sum, n_tokens)` from
        `flowlm.train.losses.fused_linear_cross_entropy` instead, never holding the `[B, T, V]` logits
        (inside `forward`, so wrappers such as FSDP2 see the LM head used). With `head` it returns
        `head(hidden [B, T, D], lm_head.weight [V, D])`: an objective's own projection of the positions it
        scores (`flowlm.train.post_losses.target_logps`), run inside `forward` for the same reason.
        With `tree` (`flowlm.model.tree.share_prefixes`), `input_ids` is the flat `[1, S]` row of shared
        trunks and branches; positions and attention come from the tree (`position_ids`, `doc_ids` unused).
        """
        T = input_ids.shape[1]
        if tree is not None:
            if input_ids.shape[0] != 1 or doc_ids is not None:
                raise ValueError("forward(tree=...) takes one flat row [1, S] and no doc_ids")
            position_ids = tree.position_ids
            window = self.cfg.sliding_window
            if self._use_flex(input_ids.device):  # block-sparse over the flat row: no per-branch masks at scale
                masks = {kind: flex.tree_block_mask(tree.group, tree.branch, tree.position_ids,
                                                    window=window if kind == SLIDING else None)
                         for kind in set(self.cfg.layer_types)}
            else:
                masks = {kind: tree_masks(tree, window if kind == SLIDING else None)
                         for kind in set(self.cfg.layer_types)}
        else:
            masks = self.masks(T, doc_ids, input_ids.device, local=True, use_flex=self._use_flex(input_ids.device))
        if position_ids is None:
            position_ids = torch.arange(T, device=input_ids.device)
        tables = self.rope_tables(position_ids)
        h = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            cos, sin = tables[layer.layer_type]
            h = layer(h, cos, sin, masks[layer.layer_type])
        h = self.model.norm(h)
        if head is not None:
            return head(h, self.lm_head.weight)
        if labels is not None:
            return fused_linear_cross_entropy(h, self.lm_head.weight, labels, z_loss)
        return h if return_hidden else self.lm_head(h)

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Parameter count (shared tensors once); `exclude_embeddings` drops the input embedding only."""
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings and not self.cfg.tie_embeddings:
            total -= self.model.embed_tokens.weight.numel()
        return total

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward) for MFU, PaLM-appendix style:

            6 * N + 12 * sum_l(heads * head_dim * T_eff(l))

        N = parameters excluding the input embedding (the LM head is a real matmul, the embedding a
        lookup); T_eff = seq_len on full layers and min(window, seq_len) on sliding layers (keys a
        query can see, without halving for causality, as PaLM/nanochat count it).
        """
        cfg = self.cfg
        n = self.num_params(exclude_embeddings=True)
        if cfg.tie_embeddings:  # the shared matrix still acts as the LM head matmul
            n = self.num_params()
        attn = 0
        for kind in cfg.layer_types:
            t_eff = min(cfg.sliding_window, seq_len) if kind == SLIDING else seq_len
            attn += 12 * cfg.num_heads * cfg.head_dim * t_eff
        return float(6 * n + attn)
