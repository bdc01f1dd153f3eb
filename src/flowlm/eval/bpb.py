"""Bits-per-byte on gold continuations (OLMES definition) and held-out loss.

Per instance: BPB_i = -sum_t log p(gold_t | context, gold_<t) / (UTF-8 bytes of gold * ln 2); a task's
score is the mean over instances (not the corpus-level ratio lm-eval uses for perplexity tasks; the two
aggregations differ and must not be mixed). Held-out loss is the mean next-token NLL (nats) over the
tokens of held-out documents.

Instances are packed several to a row with document ids, so one forward scores many of them without
any attending to another (the model's intra-document masking does the isolation).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from flowlm.train.losses import token_logprobs


@dataclass(frozen=True)
class Scored:
    """One packed segment: `ids` = context + continuation; loss is taken over the last `n_cont` tokens."""

    ids: list[int]
    n_cont: int
    n_bytes: int


def encode_items(tokenizer: Any, items: Sequence[dict[str, str]], max_len: int, bos_id: int) -> list[Scored]:
    """Tokenize context and continuation separately; cut the context from the left to fit `max_len`."""
    out = []
    for item in items:
        ctx = tokenizer.encode(item["context"], add_special_tokens=False) if item["context"] else []
        cont = tokenizer.encode(item["continuation"], add_special_tokens=False)
        if not cont:
            continue
        ctx = [bos_id] + ctx  # the first gold token needs a predecessor
        cont = cont[: max_len - 1]
        ctx = ctx[-(max_len - len(cont)) :]
        out.append(Scored(ctx + cont, len(cont), len(item["continuation"].encode("utf-8"))))
    return out


def _pack_rows(segments: list[Scored], row_len: int) -> list[list[int]]:
    """First-fit-decreasing assignment of segment indices to rows of `row_len` tokens."""
    order = sorted(range(len(segments)), key=lambda i: -len(segments[i].ids))
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = len(segments[i].ids)
        for r, cap in enumerate(free):
            if cap >= n:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(row_len - n)
    return rows


@torch.no_grad()
def score_segments(
    model: nn.Module, segments: list[Scored], *, row_len: int, rows_per_batch: int, pad_id: int, device: torch.device
) -> list[tuple[float, int]]:
    """Sum of continuation log-probs (nats) and continuation token count for every segment."""
    results: list[tuple[float, int]] = [(0.0, 0)] * len(segments)
    rows = _pack_rows(segments, row_len)
    for b in range(0, len(rows), rows_per_batch):
        chunk = rows[b : b + rows_per_batch]
        ids = torch.full((len(chunk), row_len), pad_id, dtype=torch.long)
        docs = torch.zeros((len(chunk), row_len), dtype=torch.long)
        pos = torch.zeros((len(chunk), row_len), dtype=torch.long)
        targets = torch.full((len(chunk), row_len), -100, dtype=torch.long)
        spans: list[tuple[int, int, int, int]] = []  # (segment, row, start, length)
        for r, seg_ids in enumerate(chunk):
            start = 0
            for d, s in enumerate(seg_ids):
                seg = segments[s]
                n = len(seg.ids)
                ids[r, start : start + n] = torch.tensor(seg.ids)
                docs[r, start : start + n] = d
                pos[r, start : start + n] = torch.arange(n)
                # logits at position p predict token p+1: continuation targets sit one to the left.
                targets[r, start + n - seg.n_cont - 1 : start + n - 1] = torch.tensor(seg.ids[n - seg.n_cont :])
                spans.append((s, r, start, n))
                start += n
            docs[r, start:] = len(seg_ids)  # padding is its own document
            pos[r, start:] = torch.arange(row_len - start)
        logp = _target_logprobs(model, ids.to(device), pos.to(device), docs.to(device), targets.to(device)).cpu()
        for s, r, start, n in spans:
            results[s] = (float(logp[r, start : start + n].sum()), segments[s].n_cont)
    return results


def _target_logprobs(model: nn.Module, ids: torch.Tensor, pos: torch.Tensor, docs: torch.Tensor,
                     targets: torch.Tensor) -> torch.Tensor:
    """`token_logprobs` of the model's logits at every position (0 where the target is -100).

    Models that expose `lm_head` and `return_hidden` (the native `Olmo3`, the HF adapter) project only
    the positions that are scored: context tokens never pay for the vocabulary-sized head and softmax.
    The head is called outside the model's forward, so a model sharded with FSDP2 has its root
    parameters (the head among them) gathered explicitly for that call (`unshard`), and resharded after.
    """
    if getattr(model, "lm_head", None) is None:
        return token_logprobs(model(ids, position_ids=pos, doc_ids=docs), targets)
    hidden = model(ids, position_ids=pos, doc_ids=docs, return_hidden=True)
    scored = targets != -100
    out = torch.zeros(targets.shape, dtype=torch.float32, device=targets.device)
    with gathered(model):
        out[scored] = token_logprobs(model.lm_head(hidden[scored]), targets[scored])
    return out


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[None]:
    """The root parameters of an FSDP2-sharded model unsharded inside the block (a no-op otherwise)."""
    if not callable(getattr(model, "unshard", None)):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def evaluate_bpb(
    model: nn.Module,
    tokenizer: Any,
    eval_sets: dict[str, list[dict[str, str]]],
    *,
    max_items: int = 200,
    row_len: int = 512,
    batch_tokens: int = 4096,
    heldout_docs: Sequence[str] = (),
) -> dict[str, float]:
    """`{task}/bpb` per task, `bpb` (mean over tasks) and, given held-out documents, `heldout_loss`."""
    device = next(model.parameters()).device
    bos = tokenizer.eos_token_id if tokenizer.bos_token_id is None else tokenizer.bos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else bos
    rows_per_batch = max(1, batch_tokens // row_len)
    out: dict[str, float] = {}
    for task, items in sorted(eval_sets.items()):
        segs = encode_items(tokenizer, items[:max_items], row_len, bos)
        scored = score_segments(model, segs, row_len=row_len, rows_per_batch=rows_per_batch, pad_id=pad, device=device)
        per_item = [-lp / (seg.n_bytes * math.log(2)) for (lp, _), seg in zip(scored, segs)]
        out[f"{task}/bpb"] = sum(per_item) / len(per_item)
    if out:
        out["bpb"] = sum(out.values()) / len(out)
    if heldout_docs:
        segs = encode_items(tokenizer, [{"context": "", "continuation": d} for d in heldout_docs], row_len, bos)
        scored = score_segments(model, segs, row_len=row_len, rows_per_batch=rows_per_batch, pad_id=pad, device=device)
        out["heldout_loss"] = -sum(lp for lp, _ in scored) / sum(n for _, n in scored)
    return out
