"""A micro OLMo-3 that has learnt one token sequence by heart: how the tool tests get a model that makes a
call, reads the answer and replies, on the real engine (a tiny random model never calls a tool)."""

from __future__ import annotations

import torch


def memorize(vocab_size: int, segments: list[tuple[list[int], bool]], *, context: int = 1024) -> torch.nn.Module:
    """A micro model trained on the concatenated `segments` (`(ids, trained)`: the tokens of a segment that is
    not trained, a prompt or a tool's answer, are context only) until it reproduces them (loss < 0.05)."""
    from flowlm.model.config import ModelConfig
    from flowlm.model.olmo3 import Olmo3

    ids = torch.tensor([[t for seg, _ in segments for t in seg]])
    trained = torch.cat([torch.full((len(seg),), flag) for seg, flag in segments])[1:]  # position j predicts j + 1
    torch.manual_seed(0)
    model = Olmo3(ModelConfig(vocab_size=vocab_size, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                              intermediate_size=128, max_seq_len=context, sliding_window=context))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(250):
        loss = torch.nn.functional.cross_entropy(model(ids[:, :-1])[0, trained], ids[0, 1:][trained])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    return model.eval()
