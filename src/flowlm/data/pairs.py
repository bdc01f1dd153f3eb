"""Preference pairs as a data source: two aligned token stores (chosen, rejected) and their batches.

Pair i is document i of `<dir>/chosen` and of `<dir>/rejected`: the same prompt followed by the chosen or
the rejected answer, rendered with the chat template, with a label mask on the answer tokens only
(`tokenize_pairs`). `PairDataset` serves them to `flowlm.data.loader.PackedLoader`; its `collate` pads
each side to the longest sequence of the batch, so a batch is

    chosen_input_ids, chosen_labels, rejected_input_ids, rejected_labels   int64 [P, T]

with `labels[t]` the target of position t (-100 on prompt, padding and the last token). Chosen and
rejected of one pair sit in the same row of their tensors, so splitting rows into micro-batches keeps
every pair whole. `PairDataset(..., with_index=True)` adds `pair_index` int64 `[P]`, the pairs' dataset
indices, which the DPO objective uses to look up its cached reference log-probabilities; `fingerprint()`
hashes what those depend on. `pair_rows` stacks a batch's two sides into one `[2P, T]` forward;
`pack_rows` packs such rows, cut after their last labelled position (`causal_lengths`), into fewer rows
with per-sequence `doc_ids` and positions, the padding-free form of the same forward.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np
import torch

from flowlm.data.pack import pack_bfd
from flowlm.data.store import TokenStore
from flowlm.errors import ConfigError, FlowError

IGNORE = -100
SIDES = ("chosen", "rejected")


def _messages(value: Any, role: str) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and all(isinstance(m, Mapping) for m in value):
        return [dict(m) for m in value]
    raise ValueError(f"expected a string or a list of messages, got {type(value).__name__}")


def render_pair(tok: Any, row: Mapping[str, Any], *, enable_thinking: bool = True) -> dict[str, tuple[list[int], list[int]]]:
    """`{chosen: (ids, mask), rejected: (ids, mask)}` for a TRL-style preference row.

    The row holds `prompt` (a string or messages) and `chosen` / `rejected` (a string or the assistant
    messages that follow the prompt), and `tools` when the prompt lists functions. The mask marks the
    answer's assistant tokens only.
    """
    from flowlm.model.tokenizer import render_chat, render_ids

    prompt = _messages(row["prompt"], "user")
    tools = row.get("tools") or None  # a function-calling pair: the prompt lists its functions
    n_prompt = len(render_ids(tok, prompt, enable_thinking=enable_thinking, add_generation_prompt=True, tools=tools))
    out = {}
    for side in SIDES:
        answer = _messages(row[side], "assistant")
        # one answer message (the usual case): only its mask is needed, so a template that re-renders the
        # prompt's earlier turns (Qwen3's, without generation markers) still works
        ids, mask = render_chat(tok, prompt + answer, enable_thinking=enable_thinking, last_only=len(answer) == 1,
                                tools=tools)
        mask = [0] * min(n_prompt, len(mask)) + list(mask[n_prompt:])
        out[side] = (ids, mask)
    return out


def tokenize_pairs(tok: Any, rows: Iterable[Mapping[str, Any]], out_dir: str | Path, *, source: str = "pairs",
                   enable_thinking: bool = True) -> dict[str, TokenStore]:
    """Write the chosen and rejected stores of `rows` under `out_dir`; a bad row names its index."""
    from flowlm.model.tokenizer import tokenizer_hash

    sides: dict[str, tuple[list[list[int]], list[list[int]]]] = {s: ([], []) for s in SIDES}
    for i, row in enumerate(rows):
        try:
            rendered = render_pair(tok, row, enable_thinking=enable_thinking)
        except (KeyError, ValueError, FlowError) as exc:
            raise FlowError(f"{source}: pair {i}: {exc}") from None
        for side, (ids, mask) in rendered.items():
            sides[side][0].append(ids)
            sides[side][1].append(mask)
    thash = tokenizer_hash(tok)
    meta = {"pad_id": tok.pad_token_id, "eos_id": tok.eos_token_id}
    return {side: TokenStore.write(Path(out_dir) / side, docs, vocab_size=len(tok), tokenizer_hash=thash,
                                   label_masks=masks, meta=meta) for side, (docs, masks) in sides.items()}


class PairDataset:
    """Pairs from `<dir>/chosen` and `<dir>/rejected`; sequences longer than `max_len` are cut on the right.

    `with_index`: batches also carry `pair_index` (each pair's index in the dataset).
    """

    def __init__(self, pair_dir: str | Path, max_len: int, pad_id: int | None = None, *,
                 with_index: bool = False) -> None:
        self.with_index = with_index
        self.stores = {side: TokenStore.open(Path(pair_dir) / side) for side in SIDES}
        n = {side: len(s) for side, s in self.stores.items()}
        if n["chosen"] != n["rejected"]:
            raise FlowError(f"{pair_dir}: {n['chosen']} chosen vs {n['rejected']} rejected sequences; pairs must align")
        if max_len < 2:
            raise ConfigError(f"max_len must be at least 2, got {max_len}")
        self.max_len = max_len
        meta = self.stores["chosen"].meta.get("meta", {}) if isinstance(self.stores["chosen"].meta, dict) else {}
        self.pad_id = int(pad_id if pad_id is not None else meta.get("pad_id") or 0)

    def __len__(self) -> int:
        return len(self.stores["chosen"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        """`{chosen: (ids, targets), rejected: (ids, targets), pair_index: i}`."""
        out: dict[str, Any] = {}
        for side, store in self.stores.items():
            ids = np.asarray(store.doc(i)[: self.max_len], dtype=np.int64)
            mask = store.doc_mask(i)
            tgt = np.full(len(ids), IGNORE, dtype=np.int64)
            tgt[:-1] = ids[1:]
            if mask is not None:
                tgt[:-1] = np.where(np.asarray(mask[1: len(ids)]) > 0, tgt[:-1], IGNORE)
            out[side] = (ids, tgt)
        out["pair_index"] = i
        return out

    def collate(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        for side in SIDES:
            T = max(len(it[side][0]) for it in items)
            ids = np.full((len(items), T), self.pad_id, dtype=np.int64)
            labels = np.full((len(items), T), IGNORE, dtype=np.int64)
            for r, it in enumerate(items):
                x, y = it[side]
                ids[r, : len(x)], labels[r, : len(y)] = x, y
            batch[f"{side}_input_ids"] = torch.from_numpy(ids)
            batch[f"{side}_labels"] = torch.from_numpy(labels)
        if self.with_index:
            batch["pair_index"] = torch.tensor([int(it["pair_index"]) for it in items], dtype=torch.int64)
        return batch

    def fingerprint(self) -> str:
        """Hash of everything a pair's log-probabilities depend on: both stores' token ids, document offsets,
        label masks and tokenizer hash, and `max_len` (truncation). Not the padding id: padding sits
        right of every real token, so causal models never see it."""
        h = hashlib.blake2b(digest_size=16)
        h.update(f"pairs/1 max_len={self.max_len}".encode())
        for side in SIDES:
            store = self.stores[side]
            h.update(f"{side} {store.tokenizer_hash} {store.tokens.dtype}".encode())
            for arr in (store.tokens, store.offsets, store.label_mask):
                _hash_array(h, arr)
        return h.hexdigest()


def _hash_array(h: Any, arr: np.ndarray | None) -> None:
    if arr is None:
        h.update(b"none")
        return
    h.update(f"{arr.dtype}{arr.shape}".encode())
    flat = arr.reshape(-1)
    step = max(1, (1 << 24) // max(arr.itemsize, 1))  # 16 MiB blocks of the memory map
    for s in range(0, len(flat), step):
        h.update(np.ascontiguousarray(flat[s:s + step]).tobytes())


def pair_rows(batch: Mapping[str, torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(input_ids, labels)` `[2P, T]`: the P chosen rows, then the P rejected rows, right-padded with
    `pad_id` (labels -100) to the longer side, so both sides go through one forward."""
    c_ids, c_lab = batch["chosen_input_ids"], batch["chosen_labels"]
    r_ids, r_lab = batch["rejected_input_ids"], batch["rejected_labels"]
    T = max(c_ids.shape[1], r_ids.shape[1])

    def pad(x: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, T - x.shape[1]), value=value)

    return (torch.cat([pad(c_ids, pad_id), pad(r_ids, pad_id)]),
            torch.cat([pad(c_lab, IGNORE), pad(r_lab, IGNORE)]))


def causal_lengths(labels: torch.Tensor) -> list[int]:
    """Tokens each row of `labels` `[N, T]` needs for its labelled log-probabilities under a causal model:
    up to and including its last labelled position (the tokens after it cannot change them), at least 1.
    One host sync."""
    pos = torch.arange(labels.shape[1], device=labels.device)
    return (torch.where(labels != IGNORE, pos, 0).amax(dim=1) + 1).tolist()


def packed_row_len(lengths: Sequence[int], attention_tokens: float, limit: int | None = None) -> int:
    """A row length for `pack_rows`: of 17 candidates from the longest sequence to twice that (at most
    `limit`, if the longest fits), the one whose `pack_bfd` rows (trimmed to the fullest) minimise
    `rows · L · (1 + L / attention_tokens)`: every position pays for its layers and, with dense
    document masks, for attention over its whole row, `attention_tokens` being the row length at which
    that equals the rest (~8 x hidden size for a decoder with a 4 x MLP: 2 · 16 d² per position against
    4 · L · d). Rows of just the longest sequence cannot hold two sequences longer than half of it, which
    left DPO's benchmark batches (77-286 tokens) 20 % padding; the choice here 5 %, and ~10 % less time
    than those rows (`benchmarks/dpo_throughput.py` data, tiny preset, d 256: attention_tokens 2,048)."""
    lo = max(lengths)
    hi = max(lo, min(2 * lo, limit or 2 * lo))
    best: tuple[float, int] | None = None
    for k in range(17):
        bins = pack_bfd(list(lengths), lo + (hi - lo) * k // 16)
        fill = max(sum(n for _, _, n in b) for b in bins)
        cost = len(bins) * fill * (1.0 + fill / attention_tokens)
        if best is None or cost < best[0]:
            best = (cost, fill)
    return best[1]


class PackedRows(NamedTuple):
    """Sequences packed into rows (`pack_rows`): every field `[R, L]` int64."""

    input_ids: torch.Tensor
    labels: torch.Tensor  # -100 on padding
    doc_ids: torch.Tensor  # per row 0, 1, ... per sequence; padding a document of its own
    position_ids: torch.Tensor  # restart at 0 in every document (padding included)
    sequence: torch.Tensor  # the input row each position came from (0 on padding, which has no label)


def pack_rows(input_ids: torch.Tensor, labels: torch.Tensor, lengths: Sequence[int],
              row_len: int | None = None) -> PackedRows:
    """The first `lengths[i]` tokens of each row `i` of `input_ids` / `labels` `[N, T]`, packed
    best-fit-decreasing (`flowlm.data.pack.pack_bfd`) into rows of `max(row_len, max(lengths))` tokens,
    trimmed to the fullest row; no sequence is cut. With intra-document masking (`doc_ids`) and positions
    restarting per document a model computes what it computes on the rows one by one (padding: id 0,
    label -100), on fewer positions: DPO's `[2P, T]` rows padded to the longest were 37 % padding in
    `benchmarks/dpo_throughput.py` (positions past each sequence's last label included), packed rows
    of `packed_row_len` 5 %."""
    T = labels.shape[1]
    L = max(max(lengths), row_len or 0)
    bins = pack_bfd(list(lengths), L)
    L = max(sum(n for _, _, n in b) for b in bins)
    src = np.full((len(bins), L), -1, dtype=np.int64)
    doc, pos = np.zeros((len(bins), L), dtype=np.int64), np.zeros((len(bins), L), dtype=np.int64)
    for r, b in enumerate(bins):
        at = 0
        for k, (i, _, n) in enumerate(b):
            src[r, at:at + n] = i * T + np.arange(n)
            doc[r, at:at + n], pos[r, at:at + n] = k, np.arange(n)
            at += n
        doc[r, at:], pos[r, at:] = len(b), np.arange(L - at)
    src_t = torch.from_numpy(src).to(labels.device)
    pad, take = src_t < 0, src_t.clamp_min(0)
    return PackedRows(input_ids.reshape(-1)[take].masked_fill(pad, 0),
                      labels.reshape(-1)[take].masked_fill(pad, IGNORE),
                      torch.from_numpy(doc).to(labels.device), torch.from_numpy(pos).to(labels.device),
                      torch.div(take, T, rounding_mode="floor"))
