"""`flowlm.rl.streams.PromptStreams`: seeded epochs, the domain mix, solved-prompt skipping, resume."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from flowlm.errors import FlowError
from flowlm.rl.streams import PromptStreams


def draws(streams: PromptStreams, n: int, pass_rate: dict[int, float] | None = None,
          stats: Counter | None = None, seed: int = 7) -> list[int]:
    rng = np.random.default_rng(seed)
    return [streams.draw(rng, streams.names(), pass_rate or {}, stats if stats is not None else Counter())
            for _ in range(n)]


def test_each_epoch_is_a_seeded_permutation_of_every_prompt():
    s = PromptStreams(["math"] * 5, None, seed=3, skip_solved_threshold=None)
    got = draws(s, 15)
    for epoch in range(3):
        assert sorted(got[5 * epoch:5 * epoch + 5]) == [0, 1, 2, 3, 4]
    assert got[:5] != got[5:10] or got[5:10] != got[10:]  # epochs are reshuffled
    again = PromptStreams(["math"] * 5, None, seed=3, skip_solved_threshold=None)
    assert draws(again, 15) == got  # the same seed, the same order
    assert draws(PromptStreams(["math"] * 5, None, seed=4, skip_solved_threshold=None), 15) != got


def test_domain_weights_draw_only_positive_domains_in_their_own_streams():
    domains = ["math", "code", "math", "ifeval", "code", "math"]
    s = PromptStreams(domains, {"math": 3.0, "code": 1.0, "ifeval": 0.0}, seed=0, skip_solved_threshold=None)
    assert s.names() == ["code", "math"]  # sorted, the zero-weight domain has no stream
    got = draws(s, 400)
    assert 3 not in got  # the ifeval prompt is never drawn
    math = sum(domains[i] == "math" for i in got)
    assert 0.68 < math / len(got) < 0.82  # 3 : 1 by weight
    with pytest.raises(FlowError, match=r"domains without prompts: \['chat'\]"):
        PromptStreams(domains, {"chat": 1.0}, seed=0, skip_solved_threshold=None)


def test_solved_prompts_are_skipped_and_counted_until_none_is_left():
    s = PromptStreams(["math"] * 4, None, seed=1, skip_solved_threshold=0.9)
    stats: Counter = Counter()
    # seed 1's epoch orders start [0 1 2 3], [2 0 1 3], [1 3 2 0]: the third epoch ends with the two solved
    # prompts, so the seventh draw sees four solved in a row across two epochs while 1 and 3 are unsolved
    # (this was a false "every prompt is solved" before)
    got = draws(s, 8, pass_rate={0: 1.0, 2: 0.9, 3: 0.5}, stats=stats)
    assert got.count(1) == got.count(3) == 4  # 0 and 2 reached the threshold: 1 and 3 once per epoch
    stream = s.streams["*"]
    assert 8 + stats["skipped_solved"] == 4 * stream["epoch"] + stream["cursor"]  # every position passed is counted
    assert stats["skipped_solved"] >= 6  # both solved prompts in each of the first three epochs
    with pytest.raises(FlowError, match="every prompt is solved at or above skip_solved_threshold 0.9"):
        draws(s, 1, pass_rate={i: 1.0 for i in range(4)})


def test_state_resumes_the_same_draws_and_names_an_unknown_stream():
    domains = ["math", "code"] * 4
    weights = {"math": 1.0, "code": 1.0}
    straight = PromptStreams(domains, weights, seed=5, skip_solved_threshold=None)
    rng = np.random.default_rng(0)
    first = [straight.draw(rng, straight.names(), {}, Counter()) for _ in range(6)]
    state = json.loads(json.dumps(straight.state_dict()))  # what a checkpoint keeps
    rest = [straight.draw(rng, straight.names(), {}, Counter()) for _ in range(6)]
    resumed = PromptStreams(domains, weights, seed=5, skip_solved_threshold=None)
    resumed.load_state_dict(state)
    rng = np.random.default_rng(0)
    [rng.choice(2, p=[0.5, 0.5]) for _ in first]  # the stream choices already made
    assert [resumed.draw(rng, resumed.names(), {}, Counter()) for _ in range(6)] == rest
    assert len(set(first + rest)) == 8 and len(first + rest) == 12  # an epoch of 4 per stream, then more
    with pytest.raises(FlowError, match="prompt stream 'chat' is not in this run's prompts"):
        resumed.load_state_dict({"chat": [0, 1]})
