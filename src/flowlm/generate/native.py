"""KV-cache runner for the native `Olmo3`: batched prefill into slots, one batched decode step for all slots.

Cache layout, per layer, pre-allocated once: keys and values `[slots, kv_heads, C, head_dim]` where
C is the context length on full-attention layers and `min(window, context)` on sliding layers. A
sliding layer's cache is a ring buffer: position p lives at index `p % window`. Because keys are
stored already rotated by RoPE at their absolute position and softmax does not care about key
order, attention over the ring needs no re-ordering, and after writing position p the valid entries
are exactly `index <= p` on both kinds of layer (a full ring holds positions p-W+1..p, which is the
window HF/flowlm use: the query itself plus W-1 earlier keys).

Active sequences occupy slots `0..n-1` (the engine compacts on finish by moving the last slot into
the freed one), so a decode step runs on plain views `cache[:n, :, :span]` with no gather, and
`span = max position + 1` keeps attention cost proportional to the longest *live* sequence instead
of the context length. Decode attention (`_attend`) is batched over (slot, kv head): the `rep` query
heads that share a kv head are the rows of one small GEMM against that head's cached keys
(`[n * kv_heads, rep, hd]` against `[n * kv_heads, span, hd]`), so GQA needs no cache expansion, and
one additive mask row per (slot, kv head), built once per step, is broadcast over them. The new keys
and values of a step go in with one `index_copy_` per cache tensor (flat row indices, once per step).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from flowlm.generate.threads import Threads
from flowlm.model.config import SLIDING
from flowlm.model.kernels import swiglu_composite
from flowlm.model.olmo3 import Olmo3, RMSNorm, fuse_projections
from flowlm.model.rope import cos_sin, layer_rope

# Decode steps with at least this many live slots use the prepacked oneDNN weights (`NativeRunner._pack`).
PACKED_MIN_ROWS = 2
# On CPU a decode step runs its small element-wise ops on one thread, and a matmul on all of the caller's
# intra-op threads only from this much work up (multiply-adds: a GEMM, or an attention bmm reading the
# cache). Below it, waking the other OpenMP threads costs more than they save (OMP_WAIT_POLICY=PASSIVE
# wakes them for every parallel region). Measured on the 2-core machine (2026-12-05), median step time:
# 9.5 -> 6.7 ms at 2 live slots, 6.7 -> 4.8 at 4, 8.6 -> 7.0 at 12, unchanged within noise from 24 up;
# a bmm threshold of 1 M made 24-32 slots at short spans 5-10% slower.
WIDE_GEMM_MACS = 6_000_000
WIDE_BMM_MACS = 400_000


def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def _linear(x: torch.Tensor, weight: torch.Tensor, packed: torch.Tensor | None) -> torch.Tensor:
    """`x @ weight.T`, through the prepacked oneDNN copy of `weight` when given."""
    if packed is None:
        return F.linear(x, weight)
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


def _norm(norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
    """`norm(x)`; for fp32 ATen's fused `rms_norm` (same values as `kernels.rms_norm`, no autograd
    Function around it: decode calls this 4 times per layer)."""
    w = norm.weight
    if x.dtype == torch.float32 and w.dtype == torch.float32:
        return F.rms_norm(x, w.shape, w, norm.eps)
    return norm(x)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`kernels.rope` (`x * cos + rotate_half(x) * sin` in the tables' dtype) cast back to x's dtype,
    the same ops without the autograd Function wrapper."""
    half = x.shape[-1] // 2
    out = x * cos
    out[..., :half].addcmul_(x[..., half:], sin[..., :half], value=-1.0)
    out[..., half:].addcmul_(x[..., :half], sin[..., half:])
    return out.to(x.dtype)


def length_groups(lengths: Sequence[int], slack: float = 1.15, min_tokens: int = 512) -> list[list[int]]:
    """Split ascending `lengths` into runs of consecutive indices for right-padded batches: a run is
    closed when adding the next length would make its padded size (longest x count) exceed `slack` x
    its real tokens, but never before it holds `min_tokens` tokens (small batches cost more per token
    than the padding they save)."""
    groups: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for i, n in enumerate(lengths):
        if current and tokens >= min_tokens and n * (len(current) + 1) > slack * (tokens + n):
            groups.append(current)
            current, tokens = [], 0
        current.append(i)
        tokens += n
    if current:
        groups.append(current)
    return groups


class NativeRunner:
    """Drives an `Olmo3`'s weights through a slot KV cache (see module docstring)."""

    def __init__(self, model: Olmo3, num_slots: int, context: int | None = None, *, owned: bool = False) -> None:
        """`owned`: the runner may re-lay the model's weights (`fuse_projections`, no per-step concat)."""
        cfg = model.cfg
        self.model, self.cfg = model, cfg
        self.context = min(context or cfg.max_seq_len, cfg.max_seq_len)
        self.vocab_size = cfg.vocab_size
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.window = cfg.sliding_window
        self.caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        for kind in cfg.layer_types:
            length = min(self.window, self.context) if kind == SLIDING else self.context
            shape = (num_slots, cfg.num_kv_heads, length, cfg.head_dim)
            self.caches.append((torch.zeros(shape, device=self.device, dtype=self.dtype),
                                torch.zeros(shape, device=self.device, dtype=self.dtype)))
        self.lens = [0] * num_slots  # tokens cached per slot (Python: no device sync to read)
        self.arange = torch.arange(self.context, device=self.device)
        # cos/sin of every position, per layer kind, computed once; decode gathers its rows
        self.rope_tables = {kind: cos_sin(self.arange, *layer_rope(cfg, kind, self.device))
                            for kind in set(cfg.layer_types)}
        self.fused = fuse_projections(model) if owned else [(None, None)] * len(model.model.layers)
        # oneDNN-prepacked copies of the decode GEMMs' weights (CPU fp32, owned weights only; see `_pack`)
        self.num_slots = num_slots
        self.packed: list[tuple[torch.Tensor, ...]] | None = None
        self._packs = owned and self.device.type == "cpu" and self.dtype == torch.float32 and _onednn_available()
        self._pack()

    # ---- weights -------------------------------------------------------------------------------
    def load_weights(self, state_dict: dict[str, torch.Tensor], strict: bool = True) -> None:
        """Copy new weights in place (cached keys/values of live sequences are kept, as vLLM does)."""
        self.model.load_state_dict(state_dict, strict=strict)
        self._pack()

    @torch.no_grad()
    def _pack(self) -> None:
        """Re-lay the decode GEMMs' weights (q/k/v, output, gate/up, down per layer, then the LM head)
        in oneDNN's blocked format, once per weight version (`load_weights` calls this again).

        A decode GEMM has few rows (the live slots) against a whole weight matrix, and MKL's `F.linear`
        re-packs the weight on every call; the prepacked oneDNN GEMM ran 15-45% faster per matmul at
        5-64 rows on our 2-core machine; at 2 rows it beats MKL by 1.2-3.5x on one thread (MKL's 2-row
        GEMM wakes its second thread; 2026-12-05), at 1 row MKL's GEMV wins (`PACKED_MIN_ROWS`). Same values,
        another summation order (logits differ by ~2e-6). Costs one more copy of those weights' memory.
        """
        if not self._packs:
            return
        pack = lambda w: torch.ops.mkldnn._reorder_linear_weight(w.detach().contiguous(), self.num_slots)
        model = self.model
        self.packed = [(pack(w_qkv), pack(layer.self_attn.o_proj.weight), pack(w_gu), pack(layer.mlp.down_proj.weight))
                       for layer, (w_qkv, w_gu) in zip(model.model.layers, self.fused)]
        self.packed.append((pack(model.lm_head.weight),))

    # ---- prefill -------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, prompts: Sequence[Sequence[int]], slot_groups: Sequence[Sequence[int]]) -> torch.Tensor:
        """Run the prompts, copy prompt b's keys/values into every slot of `slot_groups[b]` (n samples
        share one prefill) and return the last-position logits `[R, V]` in the prompts' order.

        The prompts run as right-padded batches of similar lengths (`length_groups`): one batch of
        16-48-token prompts would spend a third of its rows on padding.
        """
        order = sorted(range(len(prompts)), key=lambda b: len(prompts[b]))
        rows: list[torch.Tensor | None] = [None] * len(prompts)
        for group in length_groups([len(prompts[b]) for b in order]):
            members = [order[i] for i in group]
            logits = self._prefill_batch([prompts[b] for b in members], [slot_groups[b] for b in members])
            for row, b in zip(logits, members):
                rows[b] = row
        return torch.stack(rows)  # type: ignore[arg-type]

    def _prefill_batch(self, prompts: Sequence[Sequence[int]], slot_groups: Sequence[Sequence[int]]) -> torch.Tensor:
        """One right-padded batch of `prefill`. Right padding needs no extra mask: a real query never
        sees the padding keys after it."""
        lengths = [len(p) for p in prompts]
        T = max(lengths)
        ids = torch.zeros(len(prompts), T, dtype=torch.long)
        for b, prompt in enumerate(prompts):
            ids[b, :len(prompt)] = torch.as_tensor(prompt, dtype=torch.long)
        ids = ids.to(self.device)
        model = self.model
        tables = model.rope_tables(torch.arange(T, device=self.device))
        masks = model.masks(T, None, self.device)
        writes = {cap: self._prompt_rows(lengths, slot_groups, T, cap) for cap in {kc.shape[2] for kc, _ in self.caches}}
        h = model.model.embed_tokens(ids)
        for layer, (kc, vc), (w_qkv, w_gu) in zip(model.model.layers, self.caches, self.fused):
            attn = layer.self_attn
            cos, sin = tables[layer.layer_type]
            q, k, v = attn.project(h, cos, sin, w_qkv)
            src, dst = writes[kc.shape[2]]
            hd = kc.shape[-1]
            kc.view(-1, hd).index_copy_(0, dst, k.reshape(-1, hd).index_select(0, src))
            vc.view(-1, hd).index_copy_(0, dst, v.reshape(-1, hd).index_select(0, src))
            h = h + layer.post_attention_layernorm(attn.attend(q, k, v, masks[layer.layer_type]))
            h = h + layer.post_feedforward_layernorm(layer.mlp(h, w_gu))
        last = torch.as_tensor(lengths, device=self.device) - 1
        h_last = h[torch.arange(len(prompts), device=self.device), last]
        logits = model.lm_head(model.model.norm(h_last))
        for length, slots in zip(lengths, slot_groups):
            for s in slots:
                self.lens[s] = length
        return logits.float()

    def _prompt_rows(self, lengths: list[int], slot_groups: Sequence[Sequence[int]], T: int,
                     cap: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Row indices for writing a batch's keys/values into a cache of `cap` positions per slot, as one
        gather and one `index_copy_` per tensor: `src` into `k.reshape(R * kvh * T, hd)`, `dst` into
        `cache.view(slots * kvh * cap, hd)`. A ring (sliding) cache keeps each prompt's last `cap`
        positions, position p at index `p % cap`; a full cache has `cap >= length`."""
        kvh = self.cfg.num_kv_heads
        heads = torch.arange(kvh)[:, None]
        src, dst = [], []
        for b, (length, slots) in enumerate(zip(lengths, slot_groups)):
            pos = torch.arange(max(0, length - cap), length)
            src_b = ((b * kvh + heads) * T + pos).view(-1)
            for s in slots:
                src.append(src_b)
                dst.append(((s * kvh + heads) * cap + pos % cap).view(-1))
        return torch.cat(src).to(self.device), torch.cat(dst).to(self.device)

    # ---- decode --------------------------------------------------------------------------------
    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token to each of slots `0..n-1` (at position `lens[slot]`), return logits `[n, V]`."""
        n = tokens.shape[0]
        span = max(self.lens[:n]) + 1
        if span > self.context:
            raise RuntimeError(f"slot overflow: position {span - 1} >= context {self.context}")
        threads = Threads(self.device)
        try:
            threads.narrow()
            logits = self._step(tokens, n, span, threads)
        finally:
            threads.restore()
        for i in range(n):
            self.lens[i] += 1
        return logits

    def _step(self, tokens: torch.Tensor, n: int, span: int, threads: Threads) -> torch.Tensor:
        """`decode`'s per-step tables, then its forward pass (`_layers`)."""
        dev, kvh = self.device, self.cfg.num_kv_heads
        pos = torch.tensor(self.lens[:n], device=dev)
        # Shared by every layer this step: additive mask (0 where index <= position, else -inf), one row
        # per (slot, kv head), sliced to each layer's width; the RoPE rows; the cache rows to write.
        bias = torch.zeros(n, span, device=dev, dtype=self.dtype).masked_fill_(self.arange[:span] > pos[:, None],
                                                                               float("-inf"))
        bias = bias[:, None, None].expand(n, kvh, 1, span).reshape(n * kvh, 1, span)
        tables = {kind: (cos.index_select(0, pos)[:, None], sin.index_select(0, pos)[:, None])
                  for kind, (cos, sin) in self.rope_tables.items()}
        base = (torch.arange(n, device=dev)[:, None] * kvh + torch.arange(kvh, device=dev)).view(-1)
        rows = {}
        for kc, _ in self.caches:
            cap = kc.shape[2]
            if cap not in rows:
                rows[cap] = base * cap + (pos % cap).repeat_interleave(kvh)
        return self._layers(tokens.to(dev), n, span, bias, tables, rows, threads)

    def _layers(self, tokens: torch.Tensor, n: int, span: int, bias: torch.Tensor,
                tables: dict[str, tuple[torch.Tensor, torch.Tensor]], rows: dict[int, torch.Tensor],
                threads: Threads) -> torch.Tensor:
        """`decode`'s forward pass: embeddings, every layer (cache writes and attention), the LM head."""
        cfg, model = self.cfg, self.model
        heads, kvh, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        h = model.model.embed_tokens(tokens)  # [n, D]
        scale = hd ** -0.5
        packed = self.packed if self.packed is not None and n >= PACKED_MIN_ROWS else None

        def linear(x: torch.Tensor, weight: torch.Tensor, pack: torch.Tensor | None) -> torch.Tensor:
            threads.wide(n * weight.shape[0] * weight.shape[1], WIDE_GEMM_MACS)
            out = _linear(x, weight, pack)
            threads.narrow()
            return out

        for i, (layer, (kc, vc), (w_qkv, w_gu)) in enumerate(zip(model.model.layers, self.caches, self.fused)):
            attn, mlp = layer.self_attn, layer.mlp
            p_qkv, p_o, p_gu, p_down = packed[i] if packed is not None else (None,) * 4
            cos, sin = tables[layer.layer_type]
            if w_qkv is None:
                w_qkv = torch.cat((attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight))
            q, k, v = linear(h, w_qkv, p_qkv).split([heads * hd, kvh * hd, kvh * hd], dim=-1)
            q = _rope(_norm(attn.q_norm, q).view(n, heads, hd), cos, sin)
            k = _rope(_norm(attn.k_norm, k).view(n, kvh, hd), cos, sin)
            cap = kc.shape[2]
            idx = rows[cap]
            kc.view(-1, hd).index_copy_(0, idx, k.reshape(n * kvh, hd))
            vc.view(-1, hd).index_copy_(0, idx, v.reshape(n * kvh, hd))
            width = min(span, cap)
            out = self._attend(q.view(n * kvh, heads // kvh, hd), kc[:n, :, :width].reshape(n * kvh, width, hd),
                               vc[:n, :, :width].reshape(n * kvh, width, hd), bias[..., :width], scale, threads)
            h = h + _norm(layer.post_attention_layernorm, linear(out.view(n, heads * hd), attn.o_proj.weight, p_o))
            if w_gu is None:
                w_gu = torch.cat((mlp.gate_proj.weight, mlp.up_proj.weight))
            gate_up = linear(h, w_gu, p_gu)
            h = h + _norm(layer.post_feedforward_layernorm, linear(swiglu_composite(gate_up), mlp.down_proj.weight, p_down))
        h = _norm(model.model.norm, h)
        return linear(h, model.lm_head.weight, packed[-1][0] if packed is not None else None).float()

    @staticmethod
    def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float,
                threads: Threads) -> torch.Tensor:
        """One-query attention against cached keys, batched over (slot, kv head) `b`: `q[b, rep, hd]`
        (the `rep` query heads sharing a kv head, so GQA needs no cache expansion), `k`/`v[b, width, hd]`,
        additive mask `bias[b, 1, width]` -> `[b, rep, hd]`.

        On CPU in fp32 two batched GEMMs and a softmax: there SDPA's flash kernel cost more per call than the
        whole product at our decode shapes (it parallelises and allocates per call, ~1.5 ms even for
        one slot on the loaded 2-core machine). Other devices and 16-bit dtypes keep SDPA (same mask, scale).
        `threads`: the bmm's run wide from `WIDE_BMM_MACS` up, the softmax narrow.
        """
        if q.device.type != "cpu" or q.dtype != torch.float32:  # 16-bit: SDPA's fp32 accumulation
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
        macs = q.shape[0] * q.shape[1] * k.shape[1] * k.shape[2]
        threads.wide(macs, WIDE_BMM_MACS)
        s = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=scale)
        threads.narrow()
        p = torch.softmax(s, dim=-1)
        threads.wide(macs, WIDE_BMM_MACS)
        out = torch.bmm(p, v)
        threads.narrow()
        return out

    # ---- slot management ----------------------------------------------------------------------
    def move(self, src: int, dst: int) -> None:
        """Copy slot `src`'s cache into `dst` (compaction after a sequence finishes)."""
        length = self.lens[src]
        for kc, vc in self.caches:
            used = min(length, kc.shape[2])
            kc[dst, :, :used] = kc[src, :, :used]
            vc[dst, :, :used] = vc[src, :, :used]
        self.lens[dst] = length

    def release(self, slot: int) -> None:
        """Mark a slot empty (its stale cache is overwritten by the next prefill)."""
        self.lens[slot] = 0
