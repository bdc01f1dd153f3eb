"""Data sources behind the loader contract: preference pairs and a producer-fed stream, with exact resume."""

from __future__ import annotations

import threading

import pytest
import torch

from flowlm.data.loader import PackedLoader
from flowlm.data.pairs import PairDataset, tokenize_pairs
from flowlm.data.stream import StreamSource
from flowlm.errors import FlowError
from flowlm.train.batch import split_batch


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from flowlm.model.tokenizer import train_tokenizer

    texts = ["The quick brown fox jumps over the lazy dog. " * 20, "def add(a, b):\n    return a + b\n" * 20]
    return train_tokenizer(texts, 400, tmp_path_factory.mktemp("tok"))


def test_pairs_keep_chosen_and_rejected_aligned_with_answer_only_labels(tok, tmp_path):
    rows = [{"prompt": f"What is {i} + {i}?", "chosen": f"It is {2 * i}.", "rejected": "No idea, sorry about that."}
            for i in range(6)]
    tokenize_pairs(tok, rows, tmp_path / "pairs")
    ds = PairDataset(tmp_path / "pairs", max_len=64)
    assert len(ds) == 6
    loader = PackedLoader(ds, batch_size=4, seed=0)
    batch = next(iter(loader))
    assert set(batch) == {"chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"}
    rows_in_batch = loader.batch_indices(0, 0)
    for r, i in enumerate(rows_in_batch):
        labels = batch["chosen_labels"][r]
        answer = tok.decode([int(t) for t in labels[labels != -100]])
        assert f"It is {2 * int(i)}." in answer and "What is" not in answer
        rej = batch["rejected_labels"][r]
        assert "No idea" in tok.decode([int(t) for t in rej[rej != -100]])
    # splitting rows keeps each pair's two sides together
    parts = split_batch(batch, 2)
    assert torch.equal(parts[1]["rejected_input_ids"], batch["rejected_input_ids"][2:])


def test_pair_rows_with_missing_fields_are_named(tok, tmp_path):
    with pytest.raises(FlowError, match="pairs: pair 1: 'rejected'"):
        tokenize_pairs(tok, [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b"}],
                       tmp_path / "bad")


def test_pair_loader_resumes_exactly(tok, tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(10)]
    tokenize_pairs(tok, rows, tmp_path / "pairs")
    ds = PairDataset(tmp_path / "pairs", max_len=32)
    a = PackedLoader(ds, batch_size=3, seed=5)
    it = iter(a)
    next(it), next(it)
    state = a.state_dict()
    want = [next(it) for _ in range(4)]
    b = PackedLoader(ds, batch_size=3, seed=5)
    b.load_state_dict(state)
    got = [x for _, x in zip(range(4), iter(b))]
    for x, y in zip(want, got):
        assert all(torch.equal(x[k], y[k]) for k in x)


def test_stream_source_resumes_with_its_buffered_rows_and_loses_none():
    src = StreamSource(batch_size=2, timeout=5)
    for i in range(7):
        src.put({"id": i, "x": torch.tensor([float(i)])})
    it = iter(src)
    first = next(it)
    assert first["id"] == [0, 1] and first["x"].shape == (2, 1)
    state = src.state_dict()  # a checkpoint after one batch: rows 2..6 still buffered
    assert state["consumed"] == 1 and [r["id"] for r in state["pending"]] == [2, 3, 4, 5, 6]
    again = StreamSource(batch_size=2, timeout=5)
    again.load_state_dict(state)
    again.put({"id": 7, "x": torch.tensor([7.0])})
    again.close()
    ids = [i for batch in again for i in batch["id"]]
    assert ids == [2, 3, 4, 5, 6, 7]  # none lost, none replayed


def test_stream_source_waits_for_producers_and_times_out_loudly():
    src = StreamSource(batch_size=3, timeout=5)

    def produce():
        for i in range(3):
            src.put({"id": i})

    threading.Thread(target=produce).start()
    assert next(iter(src))["id"] == [0, 1, 2]
    stalled = StreamSource(batch_size=2, timeout=0.1)
    stalled.put({"id": 0})
    with pytest.raises(FlowError, match="no batch of 2 rows within 0.1 s \\(1 buffered\\)"):
        next(iter(stalled))
