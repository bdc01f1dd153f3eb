"""PackedLoader: determinism, exact resume (mid-epoch and across epochs), sharding, micro-batch split."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
import torch

from flowlm.data.loader import PackedLoader
from flowlm.data.pack import PackedDataset
from flowlm.data.store import TokenStore
from flowlm.errors import ConfigError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> PackedDataset:
    rng = np.random.default_rng(0)
    docs = [rng.integers(2, 500, rng.integers(1, 40)).tolist() for _ in range(120)]
    st = TokenStore.write(tmp_path_factory.mktemp("ld") / "s", docs, vocab_size=512, tokenizer_hash="h")
    return PackedDataset(st, seq_len=32, seed=0)


def _take(loader: PackedLoader, n: int) -> list[dict[str, torch.Tensor]]:
    return list(islice(iter(loader), n))


def _same(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> bool:
    return len(a) == len(b) and all(all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def test_batches_shape_dtype_and_epoch_coverage(dataset: PackedDataset) -> None:
    loader = PackedLoader(dataset, batch_size=4, seed=7)
    n = loader.batches_per_epoch
    assert n == len(dataset) // 4
    batches = _take(loader, n)
    for b in batches:
        assert set(b) == {"input_ids", "labels", "doc_ids", "position_ids"}
        assert all(v.shape == (4, 32) and v.dtype == torch.int64 for v in b.values())
    rows = {tuple(r.tolist()) for b in batches for r in b["input_ids"]}
    assert len(rows) == 4 * n  # an epoch never repeats an instance
    assert loader.state_dict() == {"epoch": 0, "position": n}


def test_deterministic_and_seed_dependent(dataset: PackedDataset) -> None:
    a = _take(PackedLoader(dataset, 4, seed=1), 5)
    assert _same(a, _take(PackedLoader(dataset, 4, seed=1), 5))
    assert not _same(a, _take(PackedLoader(dataset, 4, seed=2), 5))


def test_epochs_reshuffle(dataset: PackedDataset) -> None:
    loader = PackedLoader(dataset, 4, seed=1)
    assert not np.array_equal(loader.permutation(0), loader.permutation(1))


@pytest.mark.parametrize("stop", [3, "epoch_end", "past_epoch"])
def test_exact_resume(dataset: PackedDataset, stop) -> None:
    per_epoch = PackedLoader(dataset, 4, seed=5).batches_per_epoch
    k = {"epoch_end": per_epoch, "past_epoch": per_epoch + 2}.get(stop, stop)
    reference = _take(PackedLoader(dataset, 4, seed=5), k + 6)
    first = PackedLoader(dataset, 4, seed=5)
    it = iter(first)
    head = [next(it) for _ in range(k)]
    state = first.state_dict()
    resumed = PackedLoader(dataset, 4, seed=5)
    resumed.load_state_dict(state)
    tail = _take(resumed, 6)
    assert _same(head + tail, reference)
    if stop == "past_epoch":
        assert state["epoch"] == 1


def test_shards_concatenate_to_global_batch(dataset: PackedDataset) -> None:
    full = _take(PackedLoader(dataset, 8, seed=3), 4)
    shards = [_take(PackedLoader(dataset, 8, seed=3).shard(r, 4), 4) for r in range(4)]
    for i, b in enumerate(full):
        for key in b:
            assert torch.equal(torch.cat([s[i][key] for s in shards]), b[key])
    with pytest.raises(ConfigError, match="divisible"):
        PackedLoader(dataset, 6, seed=3).shard(0, 4)


def test_shard_resume(dataset: PackedDataset) -> None:
    ref = _take(PackedLoader(dataset, 8, seed=3).shard(1, 2), 5)
    a = PackedLoader(dataset, 8, seed=3).shard(1, 2)
    it = iter(a)
    head = [next(it), next(it)]
    b = PackedLoader(dataset, 8, seed=3).shard(1, 2)
    b.load_state_dict(a.state_dict())
    assert _same(head + _take(b, 3), ref)


def test_drop_last_false_yields_ragged_tail(dataset: PackedDataset) -> None:
    loader = PackedLoader(dataset, 7, seed=0, drop_last=False)
    sizes = [b["input_ids"].shape[0] for b in _take(loader, loader.batches_per_epoch)]
    assert sum(sizes) == len(dataset) and sizes[-1] == len(dataset) - 7 * (len(sizes) - 1)
    with pytest.raises(ConfigError, match="drop_last"):
        loader.shard(0, 7)


def test_bad_arguments(dataset: PackedDataset) -> None:
    with pytest.raises(ConfigError):
        PackedLoader(dataset, 0, seed=0)
    with pytest.raises(ConfigError, match="drop_last"):
        PackedLoader(dataset, len(dataset) + 1, seed=0)
