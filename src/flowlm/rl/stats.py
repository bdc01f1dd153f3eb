"""Statistics that ride in rollout batches, and the spurious-reward coins.

A rollout batch carries its statistics (draws, filtered groups, timings, shares) as `[B]` columns named
`stat_<kind>/<name>` (`stat_columns`): they split into micro-batches, minibatches and ranks with the
rows, and summing a column over the parts gives the batch's value; `rollout_metrics` turns a part's
columns into the trainer's typed metrics, which it sums over micro-batches and ranks.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

STAT = "stat_"  # batch keys holding statistics columns (see `stat_columns`)


def stat_columns(stats: Counter[str], rows: int) -> dict[str, torch.Tensor]:
    """Batch statistics as `[B]` columns whose first row holds the value and the others 0, so they split
    into micro-batches with the batch and summing a column over micro-batches gives the batch's value.
    `stat_sum/<name>`: a count; `stat_num/<name>` + `stat_den/<name>`: a mean over what `den` counts
    (from the `num:<name>` / `den:<name>` entries of `stats`)."""
    out = {}
    for key, value in stats.items():
        kind, name = key.split(":", 1) if key.startswith(("num:", "den:")) else ("sum", key)
        col = torch.zeros(rows, dtype=torch.float32)
        col[0] = float(value)
        out[f"{STAT}{kind}/{name}"] = col
    return out


def rollout_metrics(batch: dict[str, Any]) -> dict[str, Any]:
    """Typed metrics (`Sum` counts, `Mean` shares and averages) from a (micro-)batch's `stat_*` columns."""
    from flowlm.train.objectives.base import Mean, Sum

    out: dict[str, Any] = {}
    for key, col in batch.items():
        if key.startswith(f"{STAT}sum/"):
            out[key[len(STAT) + 4:]] = Sum(col.sum())
        elif key.startswith(f"{STAT}num/"):
            name = key[len(STAT) + 4:]
            out[name] = Mean(col.sum(), batch[f"{STAT}den/{name}"].sum())
    return out


def coin_rewards(seed: int, index: int, completions: Sequence[Any]) -> torch.Tensor:
    """Spurious rewards: a fair coin per completion, decided by a hash of (seed, prompt, its token ids), so
    a completion gets the same coin whatever the batch, thread or resume that sampled it, and the coin
    knows nothing of correctness (RL-Zero's contamination control: it should not raise held-out pass@1)."""
    coins = []
    for c in completions:
        h = hashlib.blake2b(f"{seed}:{index}:".encode() + np.asarray(c.tokens, dtype=np.int64).tobytes(), digest_size=8)
        coins.append(float(h.digest()[0] & 1))
    return torch.tensor(coins, dtype=torch.float32)
