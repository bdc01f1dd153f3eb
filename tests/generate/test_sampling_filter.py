"""The CPU filter (values-only sort + threshold) is bit-for-bit the reference full sort, row by row."""

from __future__ import annotations

import pytest
import torch

from flowlm.generate import sampling
from flowlm.generate.sampling import _filter_probs_sorted, filter_probs, sample


def _cases(seed: int) -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for scale in (0.3, 3.0, 30.0):  # flat (a random-weight model at T 0.6 keeps ~87% of 8k tokens) .. peaked
        logits = torch.randn(24, 1500, generator=g) * scale
        out.append((f"randn{scale}", logits))
        out.append((f"ties{scale}", (logits * 2).round() / 2))  # many exact ties, some straddling the cut
        masked = logits.clone()
        masked[torch.rand(masked.shape, generator=g) < 0.6] = float("-inf")  # zeros: ties of value 0
        out.append((f"masked{scale}", masked))
    onehot = torch.randn(24, 1500, generator=g)
    onehot[:, 7] += 60.0
    out.append(("onehot", onehot))
    return [(name, torch.log_softmax(x, -1).exp()) for name, x in out]


def _params(probs: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """top-p on the boundary (equal to a cumsum or mass-before value, or an ulp above), random, 0.95 or 1."""
    b, v = probs.shape
    sorted_p = probs.sort(dim=-1, descending=True).values
    cs = sorted_p.cumsum(-1)
    r = torch.randint(0, v, (b, 1), generator=g)
    pick = torch.randint(0, 6, (b,), generator=g)
    top_p = torch.where(pick == 0, cs.gather(-1, r)[:, 0], (cs - sorted_p).gather(-1, r)[:, 0])
    top_p = torch.where(pick == 2, torch.nextafter(top_p, torch.tensor(2.0)), top_p)
    top_p = torch.where(pick == 3, torch.rand(b, generator=g), top_p)
    top_p = torch.where(pick == 4, torch.full((b,), 0.95), top_p)
    top_p = torch.where(pick == 5, torch.ones(b), top_p).clamp(1e-6, 1.0)
    top_k = torch.where(torch.rand(b, generator=g) < 0.3, torch.randint(0, v + 2, (b,), generator=g), 0)
    min_p = torch.where(torch.rand(b, generator=g) < 0.3, torch.rand(b, generator=g) * 0.5, torch.zeros(b))
    return top_k, top_p, min_p


def _assert_bitwise(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype == torch.float32
    same = (a.view(torch.int32) == b.view(torch.int32)).all(dim=-1)
    assert bool(same.all()), f"rows differ: {(~same).nonzero().flatten().tolist()[:10]}"


@pytest.mark.parametrize("band", [sampling._BAND, 1])  # band 1: rows decide all their ranks (the wide path)
@pytest.mark.parametrize("filters", ["all", "top_p_only"])
def test_threshold_filter_matches_the_full_sort_bitwise(band: int, filters: str, monkeypatch) -> None:
    monkeypatch.setattr(sampling, "_BAND", band)
    g = torch.Generator().manual_seed(3)
    for name, probs in _cases(0):
        top_k, top_p, min_p = _params(probs, g)
        if filters == "top_p_only":
            top_k, min_p = torch.zeros_like(top_k), torch.zeros_like(min_p)
        _assert_bitwise(filter_probs(probs, top_k, top_p, min_p), _filter_probs_sorted(probs, top_k, top_p, min_p))


def test_fallback_is_per_row_and_rare(monkeypatch) -> None:
    """Rows without a tie at the cut never reach the sort; a tied row does, alone."""
    calls = []

    def spy(p: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        calls.append(p.shape[0])
        return _filter_probs_sorted(p, *rest)

    monkeypatch.setattr(sampling, "_filter_probs_sorted", spy)
    probs = _cases(1)[0][1]  # flat, continuous values: no ties
    n = probs.shape[0]
    filter_probs(probs, torch.zeros(n, dtype=torch.long), torch.full((n,), 0.95), torch.zeros(n))
    assert calls == []
    tied = torch.tensor([[0.3, 0.3, 0.2, 0.2]])  # top-k 3 cuts through the 0.2s: the reference's tie order decides
    both = torch.cat([torch.nn.functional.pad(tied, (0, probs.shape[1] - 4)), probs])
    k = torch.zeros(n + 1, dtype=torch.long)
    k[0] = 3
    out = filter_probs(both, k, torch.ones(n + 1), torch.zeros(n + 1))
    assert calls == [1]
    _assert_bitwise(out, _filter_probs_sorted(both, k, torch.ones(n + 1), torch.zeros(n + 1)))


def test_sampled_tokens_match_the_reference_and_ignore_batch_mates(monkeypatch) -> None:
    g = torch.Generator().manual_seed(5)
    logits = torch.cat([torch.randn(32, 800, generator=g) * s for s in (0.5, 4.0)])
    n = logits.shape[0]
    kw = {"temperature": torch.full((n,), 0.6), "top_k": torch.zeros(n, dtype=torch.long), "top_p": torch.full((n,), 0.95),
          "min_p": torch.zeros(n), "uniform": torch.rand(n, generator=g, dtype=torch.float64), "needs_filter": True,
          "any_greedy": False}
    tokens, logps = sample(logits, **kw)
    with monkeypatch.context() as m:
        m.setattr(sampling, "filter_probs", _filter_probs_sorted)
        ref_tokens, ref_logps = sample(logits, **kw)
    assert torch.equal(tokens, ref_tokens) and torch.equal(logps, ref_logps)
    # Row 0 alone, and beside rows that take the reference (ties at the cut) or other filters.
    alone, _ = sample(logits[:1], **{k: (v[:1] if torch.is_tensor(v) else v) for k, v in kw.items()})
    mates = torch.cat([logits[:1], torch.zeros(3, 800).index_fill_(1, torch.arange(4), 1.0)])
    mixed = {**kw, "temperature": torch.tensor([0.6, 1.0, 1.0, 0.0]), "top_k": torch.tensor([0, 2, 0, 0]),
             "top_p": torch.tensor([0.95, 1.0, 0.5, 1.0]), "min_p": torch.tensor([0.0, 0.0, 0.0, 0.3]),
             "uniform": torch.cat([kw["uniform"][:1], torch.rand(3, generator=g, dtype=torch.float64)]), "any_greedy": True}
    with_mates, _ = sample(mates, **mixed)
    assert alone[0] == tokens[0] == with_mates[0]
