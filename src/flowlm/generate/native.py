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
of the context length. GQA is computed without expanding the cache: the `rep` query heads that share
a kv head are laid out as SDPA's query-length axis (`[n, kv_heads, rep, hd]` against
`[n, kv_heads, span, hd]`), one mask row broadcast over them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from flowlm.model.config import SLIDING
from flowlm.model.olmo3 import Olmo3, fuse_projections
from flowlm.model.rope import cos_sin, layer_rope


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

    # ---- weights -------------------------------------------------------------------------------
    def load_weights(self, state_dict: dict[str, torch.Tensor], strict: bool = True) -> None:
        """Copy new weights in place (cached keys/values of live sequences are kept, as vLLM does)."""
        self.model.load_state_dict(state_dict, strict=strict)

    # ---- prefill -------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, prompts: Sequence[Sequence[int]], slot_groups: Sequence[Sequence[int]]) -> torch.Tensor:
        """Run the prompts as one right-padded batch, copy row b's keys/values into every slot of
        `slot_groups[b]` (n samples share one prefill) and return the last-position logits `[R, V]`.

        Right padding needs no extra mask: a real query never sees the padding keys after it.
        """
        lengths = [len(p) for p in prompts]
        T = max(lengths)
        ids = torch.zeros(len(prompts), T, dtype=torch.long)
        for b, prompt in enumerate(prompts):
            ids[b, :len(prompt)] = torch.as_tensor(prompt, dtype=torch.long)
        ids = ids.to(self.device)
        model = self.model
        tables = model.rope_tables(torch.arange(T, device=self.device))
        masks = model.masks(T, None, self.device)
        h = model.model.embed_tokens(ids)
        for layer, (kc, vc), (w_qkv, w_gu) in zip(model.model.layers, self.caches, self.fused):
            attn = layer.self_attn
            cos, sin = tables[layer.layer_type]
            q, k, v = attn.project(h, cos, sin, w_qkv)
            self._store_prompt(kc, vc, k, v, lengths, slot_groups, layer.layer_type == SLIDING)
            h = h + layer.post_attention_layernorm(attn.attend(q, k, v, masks[layer.layer_type]))
            h = h + layer.post_feedforward_layernorm(layer.mlp(h, w_gu))
        last = torch.as_tensor(lengths, device=self.device) - 1
        h_last = h[torch.arange(len(prompts), device=self.device), last]
        logits = model.lm_head(model.model.norm(h_last))
        for length, slots in zip(lengths, slot_groups):
            for s in slots:
                self.lens[s] = length
        return logits.float()

    def _store_prompt(self, kc: torch.Tensor, vc: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      lengths: list[int], slot_groups: Sequence[Sequence[int]], ring: bool) -> None:
        """Write each prompt's keys/values `[R, kvh, T, hd]` into its slots (ring layers: last W only)."""
        for b, (length, slots) in enumerate(zip(lengths, slot_groups)):
            idx = torch.as_tensor(list(slots), device=self.device)
            if ring:
                start = max(0, length - kc.shape[2])
                pos = torch.arange(start, length, device=self.device)
                ring_idx = pos % kc.shape[2]
                for s in slots:
                    kc[s, :, ring_idx] = k[b, :, start:length]
                    vc[s, :, ring_idx] = v[b, :, start:length]
            else:
                kc[idx, :, :length] = k[b:b + 1, :, :length]
                vc[idx, :, :length] = v[b:b + 1, :, :length]

    # ---- decode --------------------------------------------------------------------------------
    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token to each of slots `0..n-1` (at position `lens[slot]`), return logits `[n, V]`."""
        n = tokens.shape[0]
        span = max(self.lens[:n]) + 1
        if span > self.context:
            raise RuntimeError(f"slot overflow: position {span - 1} >= context {self.context}")
        pos = torch.as_tensor(self.lens[:n], device=self.device)
        rows = torch.arange(n, device=self.device)
        valid = (self.arange[:span][None, :] <= pos[:, None])[:, None, None, :]  # [n, 1, 1, span]
        tables = {kind: (cos[pos][:, None], sin[pos][:, None]) for kind, (cos, sin) in self.rope_tables.items()}
        model = self.model
        h = model.model.embed_tokens(tokens.to(self.device))[:, None, :]
        for layer, (kc, vc), (w_qkv, w_gu) in zip(model.model.layers, self.caches, self.fused):
            attn = layer.self_attn
            cos, sin = tables[layer.layer_type]
            q, k, v = attn.project(h, cos, sin, w_qkv)  # [n, heads, 1, hd]
            cap = kc.shape[2]
            slot_pos = pos % cap if layer.layer_type == SLIDING else pos
            kc[rows, :, slot_pos] = k[:, :, 0]
            vc[rows, :, slot_pos] = v[:, :, 0]
            width = min(span, cap)
            out = self._attend(attn, q, kc[:n, :, :width], vc[:n, :, :width], valid[..., :width])
            h = h + layer.post_attention_layernorm(attn.o_proj(out))
            h = h + layer.post_feedforward_layernorm(layer.mlp(h, w_gu))
        for i in range(n):
            self.lens[i] += 1
        return model.lm_head(model.model.norm(h[:, 0])).float()

    @staticmethod
    def _attend(attn: torch.nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """One-query attention against cached keys; GQA via the query-length axis (no kv expansion)."""
        n, heads, _, hd = q.shape
        kvh = k.shape[1]
        qg = q.view(n, kvh, heads // kvh, hd)
        out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask)
        return out.reshape(n, 1, heads * hd)

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
