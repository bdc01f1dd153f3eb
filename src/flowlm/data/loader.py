"""Deterministic, resumable, shardable batch loader over an indexed dataset (packed LM, chat, pairs).

The data-source contract the training engine relies on: an infinite iterable of batches (dicts of
tensors) with `state_dict()` / `load_state_dict()` for exact resume and a `split_rule`
(`flowlm.train.batch.SplitRule`) saying how a batch splits into micro-batches. `PackedLoader` serves
any dataset with `__len__` / `__getitem__`; the dataset's `collate(items)` (if it has one) builds the
batch, else the items' `input_ids, labels, doc_ids, position_ids` are stacked (`PackedDataset`: packed
LM and packed chat, whose assistant-only labels come from the store's label mask). Preference pairs
(`flowlm.data.pairs.PairDataset`) bring their own collate; a producer-fed stream (the RL rollout queue)
is `flowlm.data.stream.StreamSource`.

Epoch `e` visits the instances in the permutation `default_rng([seed, e]).permutation(n)`, cut into
global batches of `batch_size` rows. Iteration is infinite (epoch after epoch); the state is just
`{epoch, position}` (position = batches already yielded in that epoch), so a checkpointed run resumes
with exactly the batches an uninterrupted run would have produced. Data-parallel rank `r` of `w` takes
rows `[r·b/w, (r+1)·b/w)` of every global batch, so the ranks' rows concatenate to the global batch.
"""

from __future__ import annotations

import copy
from typing import Any, Iterator, Protocol

import numpy as np
import torch

from flowlm.errors import ConfigError
from flowlm.train.batch import SplitRule

FIELDS = ("input_ids", "labels", "doc_ids", "position_ids")


class _Dataset(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, i: int) -> Any: ...


class PackedLoader:
    """Infinite iterator of batches of `batch_size` instances (`{input_ids, labels, doc_ids, position_ids}`
    int64 tensors `[B, T]` for packed datasets; the dataset's own `collate` otherwise)."""

    split_rule = SplitRule()

    def __init__(self, dataset: _Dataset, batch_size: int, seed: int, drop_last: bool = True) -> None:
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        if len(dataset) == 0:
            raise ConfigError("the dataset is empty: nothing to load")
        if drop_last and len(dataset) < batch_size:
            raise ConfigError(f"batch_size {batch_size} > {len(dataset)} instances with drop_last=True: no batch")
        self.dataset, self.batch_size, self.seed, self.drop_last = dataset, int(batch_size), int(seed), drop_last
        self.rank, self.world_size = 0, 1
        self.epoch, self.position = 0, 0
        self._perm: tuple[int, np.ndarray] | None = None

    @property
    def batches_per_epoch(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def shard(self, rank: int, world_size: int) -> "PackedLoader":
        """A copy that yields only this rank's `batch_size / world_size` rows of each global batch."""
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ConfigError(f"bad shard rank={rank} world_size={world_size}")
        if self.batch_size % world_size:
            raise ConfigError(f"batch_size {self.batch_size} is not divisible by world_size {world_size}")
        if not self.drop_last and world_size > 1:
            # A ragged final batch cannot be split evenly; uneven ranks would desynchronise collectives.
            raise ConfigError("sharding needs drop_last=True")
        out = copy.copy(self)
        out.rank, out.world_size = rank, world_size
        out._perm = None
        return out

    def permutation(self, epoch: int) -> np.ndarray:
        """Instance order of `epoch` (same on every rank); the last one is cached (it is O(n) to draw)."""
        cached = self._perm
        if cached is None or cached[0] != epoch:
            self._perm = cached = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset)))
        return cached[1]

    def batch_indices(self, epoch: int, position: int) -> np.ndarray:
        """Dataset indices of this rank's rows of global batch `position` in `epoch`."""
        rows = self.permutation(epoch)[position * self.batch_size : (position + 1) * self.batch_size]
        per = len(rows) // self.world_size
        return rows[self.rank * per : (self.rank + 1) * per]

    def collate(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        items = [self.dataset[int(i)] for i in indices]
        own = getattr(self.dataset, "collate", None)
        if own is not None:
            return own(items)
        return {f: torch.from_numpy(np.stack([getattr(it, f) for it in items]).astype(np.int64)) for f in FIELDS}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            if self.position >= self.batches_per_epoch:
                self.epoch, self.position = self.epoch + 1, 0
            perm_epoch, pos = self.epoch, self.position
            # Advance before yielding: a state_dict taken after receiving a batch resumes at the next one.
            self.position += 1
            yield self.collate(self.batch_indices(perm_epoch, pos))

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

