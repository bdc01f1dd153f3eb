"""Inflight weight updates: new weights land between decode steps, sequences continue, versions switch."""

from __future__ import annotations

import threading

import pytest
import torch

from flowlm.errors import ConfigError
from flowlm.generate.engine import Engine, GenerateConfig
from flowlm.generate.params import SamplingParams

from .conftest import micro_model

GREEDY = SamplingParams(temperature=0, max_new_tokens=20, ignore_eos=True)


def _greedy_continue(model, seq: list[int], n: int) -> list[int]:
    seq = list(seq)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[-n:]


def test_update_mid_generation_switches_versions_and_continues() -> None:
    old = micro_model(seed=0)
    # Only the LM head changes: the cached keys/values stay valid under the new policy, so the
    # continuation after the update must equal greedy decoding of (old body + new head) exactly.
    new = micro_model(seed=0)
    torch.manual_seed(5)
    new.lm_head.weight.data.normal_(0, 0.2)
    engine = Engine(old, config=GenerateConfig(max_slots=4))
    prompts = [[3, 4, 5], [7] * 11]
    ids = [engine.submit(p, GREEDY) for p in prompts]
    for _ in range(6):  # 1 token from prefill + 1 per decode step: 7 tokens each
        assert engine.step() == []
    assert engine.update_weights(new.state_dict(), version=7) == 7
    results = {r.request_id: r for r in engine.stream()}
    for rid, prompt in zip(ids, prompts):
        c = results[rid].completions[0]
        assert len(c.tokens) == 20 and c.finish_reason == "length"
        assert c.versions == [0] * 7 + [7] * 13
        assert c.tokens[:7] == _greedy_continue(old, prompt, 7)
        assert c.tokens[7:] == _greedy_continue(new, prompt + c.tokens[:7], 13)


def test_update_from_a_module_and_logprobs_follow_new_policy() -> None:
    engine = Engine(micro_model(seed=0), config=GenerateConfig(max_slots=2))
    new = micro_model(seed=1)
    engine.submit([1, 2, 3, 4], SamplingParams(temperature=1.0, max_new_tokens=8, ignore_eos=True, seed=0))
    engine.step()
    engine.update_weights(new)  # default version: previous + 1
    res = next(iter(engine.stream()))
    c = res.completions[0]
    assert c.versions == [0, 0] + [1] * 6
    # A new request after the update is generated entirely by the new weights.
    fresh = engine.generate([[1, 2, 3, 4]], GREEDY)[0].completions[0]
    assert fresh.versions == [1] * 20 and fresh.tokens == _greedy_continue(new, [1, 2, 3, 4], 20)


def test_engine_owns_a_copy_of_the_model() -> None:
    model = micro_model(seed=0)
    engine = Engine(model, config=GenerateConfig(max_slots=2))
    before = engine.generate([[1, 2]], GREEDY)[0].completions[0].tokens
    with torch.no_grad():
        model.lm_head.weight.mul_(-1)  # a trainer stepping in place must not leak into the engine
    assert engine.generate([[1, 2]], GREEDY)[0].completions[0].tokens == before


def test_update_from_another_thread_while_streaming() -> None:
    engine = Engine(micro_model(seed=0), config=GenerateConfig(max_slots=4))
    new = micro_model(seed=1).state_dict()
    for i in range(4):
        engine.submit([i + 1, 2, 3], SamplingParams(max_new_tokens=40, ignore_eos=True, seed=i))
    go, calling = threading.Event(), threading.Event()

    def trainer() -> None:
        go.wait()
        calling.set()
        engine.update_weights(new, version=3)  # waits for the stepping thread's next step boundary

    t = threading.Thread(target=trainer)
    t.start()
    results = engine.step()
    go.set()
    calling.wait(timeout=10)
    while engine.has_unfinished():
        results += engine.step()
    t.join()
    assert engine.version == 3 and len(results) == 4
    versions = [r.completions[0].versions for r in results]
    # All four run in lockstep: the switch happens at the same token in each, and never goes back.
    assert all(v == versions[0] for v in versions)
    assert versions[0][0] == 0 and versions[0][-1] == 3 and versions[0] == sorted(versions[0])


def test_update_is_queued_while_a_step_runs_and_bad_keys_are_rejected() -> None:
    engine = Engine(micro_model(seed=0), config=GenerateConfig(max_slots=2))
    engine.submit([1, 2, 3], GREEDY)
    engine.step()
    with engine._step_lock:  # as if a step were running in another thread
        assert engine.update_weights(micro_model(seed=1), wait=False) == 1
        assert engine.version == 0
    engine.step()
    assert engine.version == 1
    with pytest.raises(ConfigError, match="unknown keys"):
        engine.update_weights({"nope.weight": torch.zeros(1)})
    res = next(iter(engine.stream())).completions[0]
    assert res.versions == [0, 0] + [1] * 18


def test_a_load_that_fails_in_the_step_releases_the_waiting_caller_and_keeps_the_version() -> None:
    model = micro_model()
    engine = Engine(model, config=GenerateConfig(max_slots=4))
    bad = {k: v.clone() for k, v in model.state_dict().items()}
    bad["lm_head.weight"] = torch.zeros(3, 3)  # the right name, a wrong shape: only the load can tell
    returned: list[int] = []
    engine._step_lock.acquire()  # a step is running
    waiter = threading.Thread(target=lambda: returned.append(engine.update_weights(bad, wait=True)))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()  # queued behind the running step
    engine._step_lock.release()
    with pytest.raises(RuntimeError, match="size mismatch"):
        engine.step()
    waiter.join(5)
    assert not waiter.is_alive() and returned == [1] and engine.version == 0
