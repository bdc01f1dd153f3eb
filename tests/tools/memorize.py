"""A micro OLMo-3 that has learnt token sequences by heart: how the tool tests get a model that makes a call,
reads the answer and replies, on the real engine (a tiny random model never calls a tool)."""

from __future__ import annotations

import torch

Segments = list[tuple[list[int], bool]]


def memorize(vocab_size: int, segments: Segments, *, context: int = 1024, more: list[Segments] = (),
             steps: int = 250) -> torch.nn.Module:
    """A micro model trained on the concatenated `segments` (`(ids, trained)`: the tokens of a segment that is
    not trained, a prompt or a tool's answer, are context only) until it reproduces them (loss < 0.05). `more`
    are further sequences learnt beside it, each on its own (a batch row), e.g. one per prompt a model must answer."""
    from flowlm.model.config import ModelConfig
    from flowlm.model.olmo3 import Olmo3

    seqs = [segments, *more]
    width = max(sum(len(ids) for ids, _ in seq) for seq in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    trained = torch.zeros(len(seqs), width, dtype=torch.bool)
    for b, seq in enumerate(seqs):
        row = torch.tensor([t for part, _ in seq for t in part])
        ids[b, :len(row)] = row
        trained[b, :len(row)] = torch.cat([torch.full((len(part),), flag) for part, flag in seq])
    trained = trained[:, 1:]  # position j predicts j + 1 (padding is never trained)
    torch.manual_seed(0)
    model = Olmo3(ModelConfig(vocab_size=vocab_size, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                              intermediate_size=128, max_seq_len=context, sliding_window=context))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(ids[:, :-1])[trained], ids[:, 1:][trained])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, loss.item()
    return model.eval()
