"""`NativeRunner.decode` against the training forward: batched one-query attention over the slot cache
(ring buffers past the sliding window, GQA, per-row lengths) and the prepacked oneDNN GEMMs, including
after `load_weights` (the packed copies must follow the new weights)."""

from __future__ import annotations

import copy

import pytest
import torch

from flowlm.generate import native
from flowlm.generate.native import NativeRunner

from .conftest import micro_model

# Prompt lengths straddling the window (8): rows end up at different positions, some rings wrap.
PROMPTS = [[(7 * i + j) % 128 for j in range(length)] for i, length in enumerate([3, 5, 8, 9, 12, 17])]


def _reference_logits(model, seq: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([seq]))[0, -1]


def _decode_against_forward(runner: NativeRunner, reference, steps: int = 12) -> None:
    """Prefill `PROMPTS` into slots 0..5, decode `steps` greedy tokens, compare every step's logits."""
    seqs = [list(p) for p in PROMPTS]
    logits = runner.prefill(PROMPTS, [[i] for i in range(len(PROMPTS))])
    for _ in range(steps):
        for s, row in zip(seqs, logits):
            s.append(int(row.argmax()))
        logits = runner.decode(torch.tensor([s[-1] for s in seqs]))
        want = torch.stack([_reference_logits(reference, s) for s in seqs])
        torch.testing.assert_close(logits, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("owned", [True, False])
def test_decode_matches_training_forward(owned: bool) -> None:
    model = micro_model(seed=0)
    runner = NativeRunner(copy.deepcopy(model), num_slots=8, context=64, owned=owned)
    if owned and native._onednn_available():
        assert runner.packed is not None and len(PROMPTS) >= native.PACKED_MIN_ROWS  # the packed GEMMs run
    if not owned:
        assert runner.packed is None  # weights shared with the caller: never copied
    _decode_against_forward(runner, model)


def test_packed_weights_follow_load_weights() -> None:
    runner = NativeRunner(copy.deepcopy(micro_model(seed=0)), num_slots=8, context=64, owned=True)
    new = micro_model(seed=3)
    with torch.inference_mode():
        runner.load_weights(new.state_dict())
    _decode_against_forward(runner, new, steps=4)


def test_decode_with_few_rows_skips_packed_path() -> None:
    """Below `PACKED_MIN_ROWS` live slots the plain GEMMs run; results agree either way."""
    model = micro_model(seed=0)
    runner = NativeRunner(copy.deepcopy(model), num_slots=8, context=64, owned=True)
    seq = list(PROMPTS[4])
    logits = runner.prefill([seq], [[0]])
    for _ in range(10):  # passes position 8: the ring of sliding layers wraps
        seq.append(int(logits[0].argmax()))
        logits = runner.decode(torch.tensor([seq[-1]]))
        torch.testing.assert_close(logits[0], _reference_logits(model, seq), atol=1e-4, rtol=1e-4)


def test_length_groups_hand_computed() -> None:
    from flowlm.generate.native import length_groups

    # padded size of [10, 10, 12] is 36 <= 1.15 * 32 = 36.8; adding 20 would pad 80 > 1.15 * 52
    assert length_groups([10, 10, 12, 20, 21], slack=1.15, min_tokens=0) == [[0, 1, 2], [3, 4]]
    assert length_groups([10, 10, 12, 20, 21], slack=1.15, min_tokens=40) == [[0, 1, 2, 3], [4]]
    assert length_groups([5] * 4, slack=1.0, min_tokens=0) == [[0, 1, 2, 3]]  # equal lengths never split
    assert length_groups([]) == []


def test_prefill_in_length_groups_fills_shuffled_slot_groups(monkeypatch) -> None:
    """Prompts prefilled as several length-sorted batches (every length its own batch here), each prompt
    into one or two slots given out of order: every slot decodes what the training forward gives."""
    monkeypatch.setattr(native, "length_groups", lambda lengths: [[i] for i in range(len(lengths))])
    model = micro_model(seed=0)
    runner = NativeRunner(copy.deepcopy(model), num_slots=8, context=64, owned=True)
    prompts = [PROMPTS[5], PROMPTS[0], PROMPTS[3], PROMPTS[1], PROMPTS[4], PROMPTS[2]]
    groups = [[6], [0, 7], [2], [5, 1], [3], [4]]
    logits = runner.prefill(prompts, groups)
    for b, prompt in enumerate(prompts):  # logits come back in the prompts' order
        torch.testing.assert_close(logits[b], _reference_logits(model, list(prompt)), atol=1e-4, rtol=1e-4)
    seqs = [None] * 8
    for prompt, slots in zip(prompts, groups):
        for s in slots:
            seqs[s] = list(prompt)
    first = {s: int(logits[b].argmax()) for b, slots in enumerate(groups) for s in slots}
    for s in range(8):
        seqs[s].append(first[s])
    for _ in range(10):  # past the window of 8: rings wrap
        out = runner.decode(torch.tensor([s[-1] for s in seqs]))
        want = torch.stack([_reference_logits(model, s) for s in seqs])
        torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)
        for s, row in zip(seqs, out):
            s.append(int(row.argmax()))
