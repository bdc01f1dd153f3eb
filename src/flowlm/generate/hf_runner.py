"""Runner for any `transformers` causal LM, behind the interface of `NativeRunner`.

Two ways to hold the live slots' keys and values:

* **Batched** (the model's own cache a `DynamicCache` of plain `DynamicLayer`s and, for sliding-window
  and hybrid models, `DynamicSlidingWindowLayer`s: Qwen3, Llama, Mistral, Gemma, HF OLMo-3, ...). The live
  slots `0..n-1` share one `DynamicCache`, left-padded to a common length, and a decode step is one forward
  over all of them, with an attention mask that hides each row's padding and per-row position ids, as
  `generate` runs a left-padded batch. A prompt is prefilled on its own and its cache joins the batch as new
  rows (the shorter side gets left padding); a finished slot's row is replaced by the last row and dropped,
  and padding columns no live row needs are cut off. A sliding-window layer's own cache keeps only its last
  window of keys, whose start differs per row, so such models are prefilled into a `DynamicCache()` built
  without their config: every layer keeps all its keys, and the model's sliding mask (from its config, over
  positions that left padding does not shift relative to each other) hides what lies outside the window.
  That costs the full-length KV memory for the sliding layers, as a static cache does.
* **Per slot** (any other cache: quantized, linear-attention hybrids, encoder-decoder, ...). Every slot keeps
  the model's own `past_key_values` and a decode step runs one forward per slot. Correct for every
  architecture with no per-model code, but without cross-slot batching.

OLMo-3 checkpoints use `NativeRunner` instead; this path is for models of other families (adapter
policies, teachers, judges, baselines).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def find_hf_model(model: nn.Module) -> Any | None:
    """The `transformers.PreTrainedModel` in `model` (itself, or a wrapper's child), else None."""
    from transformers import PreTrainedModel

    if isinstance(model, PreTrainedModel):
        return model
    return next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)


def _cache_kind(cache: Any) -> str:
    """How a model's own prefill cache can be batched: "full" (a `DynamicCache` of plain full-attention
    layers: it joins the batch as it is), "sliding" (the same with sliding-window layers among them:
    prefill into a config-less `DynamicCache` instead) or "per_slot" (anything else)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

    layers = getattr(cache, "layers", None)
    if not isinstance(cache, DynamicCache) or not layers:
        return "per_slot"
    kinds = {type(layer) for layer in layers}
    if kinds == {DynamicLayer}:
        return "full"
    # replaced by a plain DynamicCache, so only the plain class: a subclass may carry state of its own
    plain = type(cache) is DynamicCache
    return "sliding" if plain and kinds <= {DynamicLayer, DynamicSlidingWindowLayer} else "per_slot"


def _cache_of(out: Any) -> Any:
    """A forward's cache: `cache` in newer transformers 5 releases, `past_key_values` before."""
    return out["cache"] if "cache" in out else out["past_key_values"]


def _left_pad(t: torch.Tensor, n: int) -> torch.Tensor:
    """`t` `[B, H, L, D]` with `n` zero positions in front of L."""
    return t if n == 0 else torch.cat([t.new_zeros(*t.shape[:2], n, t.shape[3]), t], dim=2)


class HFRunner:
    """Same interface as `NativeRunner` (prefill / decode / move / release / load_weights)."""

    def __init__(self, model: Any, num_slots: int, context: int | None = None) -> None:
        self.model = model
        limit = getattr(model.config, "max_position_embeddings", None) or context or 2048
        self.context = min(context, limit) if context else limit
        self.vocab_size = model.config.vocab_size
        self.device = next(model.parameters()).device
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.2x
        self.lens = [0] * num_slots  # tokens each slot holds (its next token's position)
        self.batched: bool | None = None  # decided by the first prefill's cache
        self.full_cache = False  # batched sliding-window model: prefill into a config-less DynamicCache
        # per slot: one cache each
        self.caches: list[Any] = [None] * num_slots
        # batched: one cache for the live slots 0..n-1, each row left-padded by pads[i]
        self.batch: Any = None
        self.pads: list[int] = []

    def load_weights(self, state_dict: dict[str, torch.Tensor], strict: bool = True) -> None:
        """Copy new weights in place; live caches are kept."""
        self.model.load_state_dict(state_dict, strict=strict)

    @torch.inference_mode()
    def prefill(self, prompts: Sequence[Sequence[int]], slot_groups: Sequence[Sequence[int]]) -> torch.Tensor:
        """Prefill each prompt on its own; its cache goes to every slot of its group (the batch's new rows,
        or the first slot's own cache and copies for the others)."""
        rows = []
        for prompt, slots in zip(prompts, slot_groups):
            ids = torch.as_tensor([list(prompt)], dtype=torch.long, device=self.device)
            out = self._prefill_one(ids)
            rows.append(out.logits[0, -1].float())
            cache = _cache_of(out)
            if self.batched:
                self._join(cache, list(slots), len(prompt))
            else:
                for i, s in enumerate(slots):
                    self.caches[s] = cache if i == 0 else copy.deepcopy(cache)
            for s in slots:
                self.lens[s] = len(prompt)
        return torch.stack(rows)

    def _prefill_one(self, ids: torch.Tensor) -> Any:
        """One prompt's forward with a cache. The first one also decides the mode from the model's own cache;
        for a sliding-window model it is redone into a full `DynamicCache` (see the module docstring)."""
        if self.full_cache:
            from transformers.cache_utils import DynamicCache

            return self.model(input_ids=ids, use_cache=True, **{self._cache_kw: DynamicCache()})
        out = self.model(input_ids=ids, use_cache=True)
        if self.batched is None:
            kind = _cache_kind(_cache_of(out))
            self.batched = kind != "per_slot"
            if kind == "sliding":
                self.full_cache = True
                return self._prefill_one(ids)
        return out

    def _join(self, cache: Any, slots: list[int], length: int) -> None:
        """Append a prompt's cache to the batch as the rows `slots` (the next free ones: live slots are 0..n-1)."""
        n = len(self.pads)
        if slots != list(range(n, n + len(slots))):
            raise RuntimeError(f"hf runner: slots {slots} do not follow the {n} live ones")
        if self.batch is None:
            for layer in cache.layers:
                layer.keys = layer.keys.expand(len(slots), -1, -1, -1).contiguous()
                layer.values = layer.values.expand(len(slots), -1, -1, -1).contiguous()
            self.batch, self.pads = cache, [0] * len(slots)
            return
        width = self.batch.layers[0].keys.shape[2]
        grow, pad = max(0, length - width), max(0, width - length)
        for mine, new in zip(self.batch.layers, cache.layers):
            k = _left_pad(new.keys, pad).expand(len(slots), -1, -1, -1)
            v = _left_pad(new.values, pad).expand(len(slots), -1, -1, -1)
            mine.keys = torch.cat([_left_pad(mine.keys, grow), k], dim=0)
            mine.values = torch.cat([_left_pad(mine.values, grow), v], dim=0)
        self.pads = [p + grow for p in self.pads] + [pad] * len(slots)

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """One step for the live slots `0..n-1`; returns logits `[n, V]`."""
        if self.batched:
            return self._decode_batch(tokens)
        rows = []
        for i, tok in enumerate(tokens.tolist()):
            ids = torch.tensor([[tok]], dtype=torch.long, device=self.device)
            pos = torch.tensor([[self.lens[i]]], device=self.device)
            out = self.model(input_ids=ids, position_ids=pos, cache_position=pos[0], use_cache=True,
                             **{self._cache_kw: self.caches[i]})
            self.caches[i] = _cache_of(out)
            self.lens[i] += 1
            rows.append(out.logits[0, -1].float())
        return torch.stack(rows)

    def _decode_batch(self, tokens: torch.Tensor) -> torch.Tensor:
        n = len(self.pads)
        if len(tokens) != n:
            raise RuntimeError(f"hf runner: {len(tokens)} tokens for {n} live slots")
        width = self.batch.layers[0].keys.shape[2]
        pads = torch.tensor(self.pads, device=self.device)
        mask = (torch.arange(width + 1, device=self.device)[None, :] >= pads[:, None]).long()
        pos = torch.tensor(self.lens[:n], device=self.device)[:, None]
        out = self.model(input_ids=tokens.to(self.device).view(n, 1), attention_mask=mask, position_ids=pos,
                         use_cache=True, **{self._cache_kw: self.batch})
        self.batch = _cache_of(out)
        for i in range(n):
            self.lens[i] += 1
        return out.logits[:, -1].float()

    def move(self, src: int, dst: int) -> None:
        if self.batched:
            for layer in self.batch.layers:
                layer.keys[dst] = layer.keys[src]
                layer.values[dst] = layer.values[src]
            self.pads[dst] = self.pads[src]
        else:
            self.caches[dst] = self.caches[src]
            self.caches[src] = None
        self.lens[dst] = self.lens[src]

    def release(self, slot: int) -> None:
        self.lens[slot] = 0
        if not self.batched:
            self.caches[slot] = None
            return
        if slot != len(self.pads) - 1:
            raise RuntimeError(f"hf runner: release of slot {slot}, not the last live one ({len(self.pads) - 1})")
        self.pads.pop()
        if not self.pads:
            self.batch = None
            return
        cut = min(self.pads)  # leading columns that are padding in every live row
        for layer in self.batch.layers:
            layer.keys = layer.keys[:slot, :, cut:]
            layer.values = layer.values[:slot, :, cut:]
        self.pads = [p - cut for p in self.pads]
