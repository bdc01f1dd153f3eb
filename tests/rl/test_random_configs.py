"""Seeded random rollout configurations (modes sync and async): every batch has its shape, and in mode
async no prompt is lost or drawn twice across a checkpoint and resume (the rollout log's accounting).

Each case draws prompts per step, group size, completion length, `async_steps`, the in-flight cap,
minibatches, epochs, zero-std filtering, active sampling, `skip_solved_threshold` and `domain_weights`
over a mix of prompts whose verifier is random, always right, or always raising; then serves a few
optimizer steps, optionally checkpointing (`state_dict`) part way and resuming in a fresh source.
The settings are tested one by one elsewhere; this checks them combined. (100 cases of it, run once on
2026-12-06, all passed.)"""

from __future__ import annotations

import copy
import random

import pytest

from flowlm.rl.source import RolloutConfig, RolloutSource
from tests.rl.test_async import check_accounting, records
from tests.rl.test_source import model, rows, tok  # noqa: F401 (fixtures)


def draw_case(case: int) -> tuple[dict, int, int | None]:
    r = random.Random(case)
    ppst = r.choice([1, 2, 3, 4])
    filt = r.random() < 0.5
    cfg = {"prompts_per_step": ppst, "group_size": r.choice([2, 3, 4]), "max_new_tokens": r.randint(2, 8),
           "mode": r.choice(["async", "async", "sync"]), "minibatches": r.choice([d for d in (1, 2, 4) if ppst % d == 0]),
           "num_epochs": r.choice([1, 1, 2]), "filter_zero_std": filt, "active_sampling": filt and r.random() < 0.7}
    if cfg["mode"] == "async":
        cfg |= {"async_steps": r.choice([1, 2, 3]), "rollout_timeout": 60.0}
        if r.random() < 0.4:
            cfg["max_inflight_groups"] = r.choice([ppst, 2 * ppst, 3 * ppst])
    if r.random() < 0.5:
        cfg["skip_solved_threshold"] = r.choice([0.5, 0.9, 1.0])
    if r.random() < 0.4:
        cfg["domain_weights"] = {"rl_test_parity": r.choice([1.0, 2.0]), "rl_test_const": r.choice([0.0, 1.0]),
                                 "rl_test_raise": 1.0}
    steps = r.randint(3, 8)
    return cfg, steps, (r.randint(1, steps - 1) if r.random() < 0.6 else None)


@pytest.mark.parametrize("case", range(12))
def test_random_configurations_keep_batch_shapes_and_prompt_accounting(tok, model, tmp_path, case):
    cfg, steps, cut = draw_case(case)
    prompt_rows = (rows(300, "rl_test_parity") + rows(150, "rl_test_const", "1", prefix="c")
                   + rows(150, "rl_test_raise", prefix="x"))
    log = tmp_path / "r.jsonl"
    rows_per_step = cfg["prompts_per_step"] // cfg["minibatches"] * cfg["group_size"]

    def serve(n: int, state: dict | None) -> dict:
        src = RolloutSource(prompt_rows, tok, RolloutConfig(**cfg), seed=case, max_len=96, log_path=log)
        src.bind(model)
        if state is not None:
            src.load_state_dict(state)
        try:
            it = iter(src)
            for _ in range(n):
                assert next(it)["input_ids"].shape[0] == rows_per_step, cfg
            return copy.deepcopy(src.state_dict())  # what a checkpoint keeps (tensors of unserved minibatches)
        finally:
            src.close()

    if cut is None:
        serve(steps, None)
    else:
        serve(steps - cut, serve(cut, None))
    if cfg["mode"] == "async":
        check_accounting(records(log))
