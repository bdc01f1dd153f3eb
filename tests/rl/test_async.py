"""Mode async of the rollout source (`flowlm.rl.actor`): the staleness bound (per-token policy versions),
stale groups dropped, counted and regenerated, a weight-sync timeout that names the worker, crashed
workers restarted without losing their prompts, and prompt accounting across `state_dict` resume and a
real `kill -9` of `flowlm train` (no prompt lost or replayed, checked by prompt ids in `rollouts.jsonl`).

The micro model, tokenizer and test verifiers are those of `tests/rl/test_source.py`; the CLI test
reuses the corpus/tokenizer/pretrain recipe of `tests/rl/test_rl_flow.py`.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

import flowlm.rl.source as source_module
from flowlm.errors import FlowError
from flowlm.rl.source import RolloutConfig, RolloutSource
from tests.rl import test_source
from tests.rl.test_rl_flow import flowlm, recipe, torchrun_rl
from tests.rl.test_rl_flow import prompt_rows as ifeval_rows
from tests.rl.test_source import metrics, rows

tok, model = test_source.tok, test_source.model  # its fixtures (importing it also registers its verifiers)


def async_source(tok, model, prompt_rows, log=None, **cfg) -> RolloutSource:
    settings = {"prompts_per_step": 3, "group_size": 4, "max_new_tokens": 6, "mode": "async", "async_steps": 1,
                "rollout_timeout": 60.0, **cfg}
    src = RolloutSource(prompt_rows, tok, RolloutConfig(**settings), seed=0, max_len=96, log_path=log)
    src.bind(model)
    return src


def records(log: Path) -> list[dict]:
    return [json.loads(x) for x in log.read_text().splitlines()]


def check_accounting(recs: list[dict]) -> tuple[list[str], list[str]]:
    """Within an epoch: no prompt drawn or consumed twice, and after every batch everything drawn so far
    is consumed or pending (in flight or buffered). Returns (drawn, consumed)."""
    drawn: list[str] = []
    consumed: list[str] = []
    for r in recs:
        drawn += r["drawn"]
        consumed += r["consumed"]
        assert len(set(drawn)) == len(drawn), f"position {r['position']}: a prompt drawn twice"
        assert len(set(consumed)) == len(consumed), f"position {r['position']}: a prompt consumed twice"
        assert sorted(drawn) == sorted(consumed + r["pending"]), f"position {r['position']}: a prompt lost"
    return drawn, consumed


def test_async_batches_respect_the_staleness_bound(tok, model, tmp_path):
    log = tmp_path / "r.jsonl"
    src = async_source(tok, model, rows(80), log=log, async_steps=1)
    try:
        it = iter(src)
        for position in range(6):
            b = next(it)
            with torch.no_grad():  # the learner's "step": the weights move on while the next groups are sampled
                next(model.parameters()).add_(1e-4)
            time.sleep(0.05)
            labelled = b["labels"] != -100
            v = b["rollout_versions"]
            assert ((v >= 0) == labelled).all()  # one version per sampled token, -1 elsewhere
            assert (position - v[labelled] <= 1).all() and (v[labelled] <= position).all()
            for r in range(v.shape[0]):  # an inflight update only ever moves a sequence forward
                row = v[r, labelled[r]]
                assert (row[1:] >= row[:-1]).all()
            m = metrics(b)
            assert m["staleness/lag_0"] + m["staleness/lag_1"] == m["prompts"] and 0 <= m["policy_lag"] <= 1
            assert m["stale_dropped"] == 0 and m["informative_share"] == 1.0
            assert 0 <= m["learner_idle_share"] <= 1 and m["rollout_tok_s"] > 0
    finally:
        src.close()
    recs = records(log)
    assert [r["position"] for r in recs] == list(range(6)) and all(len(r["trained"]) == 3 for r in recs)
    assert all(max(r["lags"]) <= 1 for r in recs) and sum(r["lags"].count(1) for r in recs) > 0
    check_accounting(recs)


def test_batches_behind_counts_weight_pushes_by_hand():
    from flowlm.rl.actor import batches_behind

    # one optimizer step per rollout batch: the difference of the versions
    assert [batches_behind(d, 1) for d in (0, 1, 3)] == [0, 1, 3]
    # 4 steps per batch (OLMo 3 Instruct's minibatches): versions 0, 4, 8 pushed; 8 - 0 is two pushes
    assert [batches_behind(d, 4) for d in (0, 4, 8, 12)] == [0, 1, 2, 3]
    # a resume after minibatch 1 of 4 starts the engine on version 5; the next push (8) is one push later
    assert batches_behind(8 - 5, 4) == 1 and batches_behind(12 - 5, 4) == 2


def test_async_minibatches_push_once_per_rollout_batch_with_the_old_policy_logps(tok, model, tmp_path):
    """minibatches 3 in mode async (OLMo 3 Instruct RL ran 4 with async_steps 8): each rollout batch is 3
    optimizer steps of one whole group each, their `old_logps` the policy at the batch's first step; the
    weights are pushed once per batch (versions 0, 3, 6: optimizer steps done) and the staleness bound
    counts pushes."""
    from flowlm.train.objectives.grpo import token_mask
    from tests.rl.test_grpo_objective import full_logps

    policy = copy.deepcopy(model)
    log = tmp_path / "r.jsonl"
    src = async_source(tok, policy, rows(80), log=log, async_steps=1, minibatches=3)
    try:
        it = iter(src)
        for k in range(12):
            part = next(it)
            if k % 3 == 0:  # the first step of a rollout batch: the policy the old-policy pass used
                before = copy.deepcopy(policy)
                version = k  # optimizer steps done when the batch was taken
                m = metrics(part)
                assert m["policy_lag"] <= 1 and m["stale_dropped"] == 0 and m["informative_share"] == 1.0
                assert m["staleness/lag_0"] + m["staleness/lag_1"] == m["prompts"]  # groups taken, each lag <= 1
            else:
                assert not any(key.startswith("stat_") for key in part)  # statistics once per batch
            assert part["input_ids"].shape[0] == 4  # one whole group per optimizer step
            mask = token_mask(part)
            assert torch.equal(~part["old_logps"].isnan(), mask)
            with torch.no_grad():
                assert torch.allclose(part["old_logps"][mask], full_logps(before, part)[mask], atol=1e-5)
            v = part["rollout_versions"][part["labels"] != -100]
            assert (v % 3 == 0).all() and (v <= version).all() and ((version - v) // 3 <= 1).all()
            with torch.no_grad():  # the learner's optimizer step
                next(policy.parameters()).add_(1e-3)
            time.sleep(0.02)
    finally:
        src.close()
    assert (src.position, src.steps) == (4, 12)
    recs = records(log)
    assert [r["position"] for r in recs] == [0, 1, 2, 3] and [r["version"] for r in recs] == [0, 3, 6, 9]
    assert all(max(r["lags"]) <= 1 for r in recs) and sum(r["lags"].count(1) for r in recs) > 0
    check_accounting(recs)


def test_async_resume_between_two_minibatches_serves_the_rest_then_loses_no_prompt(tok, model, tmp_path):
    """A checkpoint after the first of 3 minibatches: the resumed source serves the other two (the same
    tensors and old-policy log-probs), then regenerates what was in flight first; no prompt lost or replayed."""
    policy = copy.deepcopy(model)
    log = tmp_path / "r.jsonl"
    straight = async_source(tok, policy, rows(80), log=log, async_steps=2, minibatches=3)
    try:
        it = iter(straight)
        for _ in range(4):
            next(it)
        state = copy.deepcopy(straight.state_dict())  # (the trainer's checkpoint keeps it with torch.save)
        rest = [next(it), next(it)]
        next(it)  # the next batch, generated after the checkpoint: lost with the process
    finally:
        straight.close()
    assert (state["position"], state["steps"], len(state["pending"])) == (2, 4, 2) and state["async"]["requeue"]
    resumed = async_source(tok, policy, rows(80), log=log, async_steps=2, minibatches=3)
    resumed.load_state_dict(state)
    try:
        it = iter(resumed)
        again = [next(it) for _ in range(2)]
        after = [next(it) for _ in range(6)]
    finally:
        resumed.close()
    for a, b in zip(rest, again):
        for key in ("input_ids", "labels", "advantages", "old_logps", "rollout_versions"):
            assert torch.equal(a[key].nan_to_num(7.0), b[key].nan_to_num(7.0)), key
    # then whole rollout batches again, their statistics on the first step of each
    assert [any(key.startswith("stat_") for key in part) for part in after] == [True, False, False] * 2
    recs = records(log)
    assert [r["position"] for r in recs] == [0, 1, 2, 3] and [r["version"] for r in recs] == [0, 3, 6, 9]
    check_accounting(recs)
    pending = {f"p{i}" for i in state["async"]["requeue"]}
    assert pending <= {p for r in recs[2:] for p in r["consumed"]} | set(recs[-1]["pending"])


def test_async_minibatches_through_the_trainer_ratio_one_on_each_first_step(tok, tmp_path):
    """Mode async with minibatches 2 through the trainer: the first step of each rollout batch has ratio 1
    (its old-policy pass is the learner's own weights, however old the samples: their lag shows in the
    mismatch band, where the truncated importance weights correct it), the second step's ratio moves, and
    the easy reward still rises."""
    recs = train_easy_reward(tok, tmp_path, 60, minibatches=2)
    firsts, seconds = recs[0::2], recs[1::2]
    assert all("reward" in r for r in firsts) and not any("reward" in r for r in seconds)
    assert all(r["ratio_max"] == pytest.approx(1.0, abs=1e-4) for r in firsts)
    assert all(r["ratio_max"] > 1.0 + 1e-4 for r in seconds)
    assert all(r["policy_lag"] <= 1 for r in firsts) and sum(r["staleness/lag_1"] for r in firsts) > 0
    assert any(r["mismatch/out_of_band"] > 0 for r in firsts)
    first, last = (sum(r["reward"] for r in part) / 4 for part in (firsts[:4], firsts[-4:]))
    assert first < 0.15 and last > 0.5, (first, last)


def test_stale_groups_are_dropped_counted_and_replaced(tok, model, tmp_path):
    # 8 groups generated at once for a learner that takes 1 per step: groups sampled at version 0 are 2
    # versions old by the third batch and must be dropped (and their prompts sampled again). (With fewer
    # slots the queued groups would start later, on newer weights, and not be stale.)
    log = tmp_path / "r.jsonl"
    src = async_source(tok, model, rows(80), log=log, prompts_per_step=1, max_inflight_groups=8, max_slots=32,
                       filter_zero_std=False, active_sampling=False)
    try:
        batches = [b for _, b in zip(range(6), src)]
    finally:
        src.close()
    dropped = sum(metrics(b)["stale_dropped"] for b in batches)
    assert dropped >= 1 and src.totals["stale_dropped"] == dropped
    for position, b in enumerate(batches):
        v = b["rollout_versions"][b["labels"] != -100]
        assert (position - v <= 1).all()  # nothing past the bound was trained on
    recs = records(log)
    assert sum(len(r["stale_dropped"]) for r in recs) == dropped
    check_accounting(recs)
    assert all(len(r["consumed"]) == 1 for r in recs)  # every batch still has its group (replaced, not short)


def test_a_weight_sync_timeout_is_a_clear_error_naming_the_worker(tok, model):
    src = async_source(tok, model, rows(40), prompts_per_step=2, weight_sync_timeout=0.3)
    release = threading.Event()
    try:
        it = iter(src)
        next(it)
        engine = src.engine
        inner = engine.step

        def stuck():  # a decode step that never ends: the pushed weights can never be applied
            with engine._step_lock:
                release.wait(60)
            return inner()

        engine.step = stuck
        t0 = time.perf_counter()
        with pytest.raises(FlowError, match=r"weight sync to rollout worker 'rollout-0' timed out: "):
            for _ in range(10):
                next(it)
        assert time.perf_counter() - t0 < 15
    finally:
        release.set()
        src.close()


@pytest.mark.parametrize("where", ["rollout", "verify"])
def test_a_crashed_worker_is_restarted_and_its_prompts_are_not_lost(tok, model, tmp_path, capsys, monkeypatch, where):
    log = tmp_path / "r.jsonl"
    src = async_source(tok, model, rows(80), log=log, async_steps=2)
    calls = {"n": 0}
    if where == "rollout":
        inner = src.engine.step

        def flaky():
            calls["n"] += 1
            if calls["n"] == 3:  # mid-generation: groups are in the engine
                raise RuntimeError("boom in a decode step")
            return inner()

        src.engine.step = flaky  # the restarted crew gets a fresh engine without this
    else:
        inner_verify = source_module.verify_completions

        def flaky_verify(*a, **kw):
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("boom in verification")
            return inner_verify(*a, **kw)

        monkeypatch.setattr(source_module, "verify_completions", flaky_verify)
    try:
        batches = [b for _, b in zip(range(4), src)]
    finally:
        src.close()
    assert sum(metrics(b).get("worker_restarts", 0) for b in batches) == 1 and src.totals["worker_restarts"] == 1
    assert sum(metrics(b).get("requeued_on_restart", 0) for b in batches) >= 1
    err = capsys.readouterr().err
    name = "rollout-0" if where == "rollout" else "verify-0"
    assert f"worker '{name}' died (RuntimeError: boom" in err and "prompts re-queued" in err
    check_accounting(records(log))  # the crashed crew's prompts were sampled again, none lost or repeated


def test_a_crash_loop_fails_naming_the_worker(tok, model, monkeypatch):
    from flowlm.generate.engine import Engine

    def boom(self):
        raise RuntimeError("always")

    monkeypatch.setattr(Engine, "step", boom)
    src = async_source(tok, model, rows(20), max_worker_restarts=1)
    try:
        with pytest.raises(FlowError, match=r"worker 'rollout-0' died \(RuntimeError: always\); 2 crashes "
                                            r"exceed max_worker_restarts 1"):
            next(iter(src))
    finally:
        src.close()


def test_groups_finished_before_the_verifier_starts_are_not_dropped(tok, model, monkeypatch):
    """The verify thread starts before the rollout threads: a group finished early is verified, not lost
    (it was dropped while no verifier existed, and its ticket then blocked dispatch: a CI timeout)."""
    from flowlm.rl.actor import AsyncRollouts

    start_verifier = AsyncRollouts._start_verifier

    def late(self, v=None):
        time.sleep(1.0)  # a busy machine: time for the rollout thread to finish whole groups
        start_verifier(self, v)

    monkeypatch.setattr(AsyncRollouts, "_start_verifier", late)
    src = async_source(tok, model, rows(20), max_new_tokens=2, rollout_timeout=8.0)
    try:
        batch = next(iter(src))
    finally:
        src.close()
    assert batch["input_ids"].shape[0] == 3 * 4


def test_all_solved_in_a_worker_fails_the_run(tok, model):
    src = async_source(tok, model, rows(3, "rl_test_const", "1"), prompts_per_step=2, group_size=2,
                       filter_zero_std=False, active_sampling=False, skip_solved_threshold=0.9)
    try:
        with pytest.raises(FlowError, match="worker 'rollout-0': rl prompts: every prompt is solved"):
            for _ in zip(range(6), src):
                pass
    finally:
        src.close()


def test_state_dict_resume_regenerates_in_flight_prompts_first(tok, model, tmp_path):
    log = tmp_path / "r.jsonl"
    straight = async_source(tok, model, rows(80), log=log, async_steps=2)
    try:
        it = iter(straight)
        next(it), next(it)
        state = json.loads(json.dumps(straight.state_dict()))  # what a checkpoint keeps (JSON-safe)
        next(it), next(it)  # generated after the checkpoint: lost with the process
    finally:
        straight.close()
    assert state["position"] == 2 and state["async"]["requeue"]
    resumed = async_source(tok, model, rows(80), log=log, async_steps=2)
    resumed.load_state_dict(state)
    try:
        batches = [b for _, b in zip(range(3), resumed)]
    finally:
        resumed.close()
    recs = records(log)
    assert [r["position"] for r in recs] == [0, 1, 2, 3, 4]  # the lost attempt's records 2-3 were replaced
    check_accounting(recs)
    # the prompts in flight at the checkpoint were sampled again after the resume: none lost
    pending = {f"p{i}" for i in state["async"]["requeue"]}
    assert pending <= {p for r in recs[2:] for p in r["consumed"]} | set(recs[-1]["pending"])
    assert len(batches) == 3
    with pytest.raises(FlowError, match="written in mode async, this run is mode sync"):
        RolloutSource(rows(80), tok, RolloutConfig(prompts_per_step=3, group_size=4), seed=0,
                      max_len=96).load_state_dict(state)


def test_async_only_settings_are_refused_in_sync_mode():
    with pytest.raises(ValueError, match="async_steps only apply to mode: async"):
        RolloutConfig(async_steps=2)
    assert RolloutConfig(mode="async").async_steps == 8  # OLMo 3 Think RL


def train_easy_reward(tok, out: Path, steps: int, **rollout) -> list[dict]:
    """GRPO in mode async (async_steps 1) on the reward 'share of digits' with a micro model; the step records."""
    from flowlm.model.config import ModelConfig
    from flowlm.model.olmo3 import Olmo3
    from flowlm.train.config import EngineConfig
    from flowlm.train.engine import Trainer
    from flowlm.train.objectives import build_objective

    torch.manual_seed(0)
    policy = Olmo3(ModelConfig(vocab_size=len(tok), hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                               intermediate_size=64, max_seq_len=128, sliding_window=16, init_std=0.2))
    src = RolloutSource(rows(64, "rl_test_digits"), tok, RolloutConfig(
        prompts_per_step=8, group_size=8, max_new_tokens=8, mode="async", async_steps=1, **rollout), seed=0, max_len=64)
    src.bind(policy)
    cfg = EngineConfig(steps=steps, seq_len=64, batch_size=64, optim={"lr": 3e-3}, schedule={"kind": "constant"},
                       checkpoint_every=1000)
    try:
        Trainer(policy, build_objective("grpo"), src, cfg, out, show_progress=False).fit()
    finally:
        src.close()
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def test_async_grpo_through_the_trainer_raises_an_easy_reward(tok, tmp_path):
    """The sync test's 30 GRPO steps with one-step-off-policy rollouts: the truncated importance weights
    (cap 2) carry the lag, and the reward 'share of digits' still rises from < 0.15 to > 0.5."""
    recs = train_easy_reward(tok, tmp_path, 30)
    first, last = (sum(r["reward"] for r in part) / 5 for part in (recs[:5], recs[-5:]))
    assert first < 0.15 and last > 0.5, (first, last)
    assert all(r["policy_lag"] <= 1 for r in recs) and sum(r["staleness/lag_1"] for r in recs) > 0
    assert any(r["mismatch/out_of_band"] > 0 for r in recs)  # off-policy tokens show up as mismatch


# -- kill -9 of `flowlm train` in async mode ----------------------------------------------------------------
@pytest.fixture(scope="module")
def async_base(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("rl_async_flow")
    prompts = d / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in ifeval_rows(48)))
    rec = copy.deepcopy(recipe(prompts))  # its `rollout` dict is test_rl_flow's own: never change it in place
    rec["stages"]["rl"]["rollout"].update({"mode": "async", "async_steps": 1})
    (d / "recipe.yaml").write_text(yaml.safe_dump(rec, sort_keys=False))
    flowlm("train", str(d / "recipe.yaml"), "--stage", "corpus", "--stage", "tokenizer", "--stage", "pretrain",
           "--run-dir", str(d / "run"), "--no-progress")
    return d


def kill_9_then_resume(base: Path, d: Path, run, killed_rc: int | None = None) -> list[dict]:
    """`run(env)` the rl stage of `base`'s recipe in `d` killed at position 3 (step 4's batch: steps 1-3 ran,
    the step-2 checkpoint is the newest), then again to the end; check that no prompt was lost or replayed
    and return the training steps' records."""
    shutil.copytree(base / "run", d)
    log = d / "rl" / "rollouts.jsonl"
    proc = run({"FLOWLM_RL_KILL_AT_POSITION": "3"})
    assert proc.returncode != 0 and killed_rc in (None, proc.returncode), proc.stderr[-2000:]
    before = records(log)
    assert [r["position"] for r in before] == [0, 1, 2, 3]
    proc = run({})
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = records(log)
    assert [r["position"] for r in after] == [0, 1, 2, 3]
    assert after[:2] == before[:2]  # checkpointed batches kept; positions 2-3 regenerated after the resume
    check_accounting(after)
    # the prompts in flight at the step-2 checkpoint were consumed first after the resume, none lost
    assert set(before[1]["pending"]) <= set(after[2]["consumed"] + after[3]["consumed"] + after[3]["pending"])
    assert not set(before[0]["consumed"] + before[1]["consumed"]) & set(after[2]["consumed"] + after[3]["consumed"])
    st = json.loads((d / "flow.json").read_text())["stages"]["rl"]
    assert st["status"] == "done" and st["config"]["rollout"]["mode"] == "async"
    steps = [json.loads(x) for x in (d / "rl" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for r in steps:
        assert r["policy_lag"] <= 1 and r["stale_dropped"] == 0 and 0 <= r["learner_idle_share"] <= 1
        assert r["informative_share"] == 1.0 and r["rollout_tok_s"] > 0
    return steps


def test_kill_9_then_resume_in_async_mode_loses_and_replays_no_prompt(async_base, tmp_path):
    d = tmp_path / "run"
    kill_9_then_resume(async_base, d, lambda env: flowlm(
        "train", str(async_base / "recipe.yaml"), "--stage", "rl", "--run-dir", str(d), "--no-progress",
        check=False, env=env), killed_rc=-9)


def test_flowlm_train_async_with_minibatches_two_steps_per_rollout_batch(async_base, tmp_path):
    """OLMo 3 Instruct RL's shape (async with minibatches) through the installed `flowlm train`: 4 optimizer
    steps from 2 rollout batches, pushed as versions 0 and 2, the rollout statistics on each batch's first step."""
    d = tmp_path / "run"
    shutil.copytree(async_base / "run", d)
    flowlm("train", str(async_base / "recipe.yaml"), "--stage", "rl", "--run-dir", str(d), "--no-progress",
           "stages.rl.rollout.minibatches=2")
    st = json.loads((d / "flow.json").read_text())["stages"]["rl"]
    assert st["status"] == "done" and st["config"]["rollout"]["minibatches"] == 2
    steps = [json.loads(x) for x in (d / "rl" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert ["reward" in r for r in steps] == [True, False, True, False]
    assert all(r["ratio_max"] == pytest.approx(1.0, abs=1e-4) for r in steps[0::2])
    recs = records(d / "rl" / "rollouts.jsonl")
    assert [r["version"] for r in recs] == [0, 2] and all(max(r["lags"]) <= 1 for r in recs)
    check_accounting(recs)


def test_torchrun_async_minibatches_resume_between_two_minibatches(async_base, tmp_path):
    """Mode async with minibatches 2 under `torchrun --nproc_per_node 2`, rank 0 killed with the newest
    checkpoint (step 3) between two minibatches: the same command serves the rest of that batch (the rollout
    thread starts on the gathered weights first) and finishes with no prompt lost or replayed."""
    spec = yaml.safe_load((async_base / "recipe.yaml").read_text())
    spec["stages"]["rl"].update({"steps": 6, "checkpoint_every": 3})
    spec["stages"]["rl"]["rollout"].update({"prompts_per_step": 4, "minibatches": 2})
    rec = tmp_path / "recipe.yaml"
    rec.write_text(yaml.safe_dump(spec, sort_keys=False))
    d = tmp_path / "run"
    shutil.copytree(async_base / "run", d)
    proc = torchrun_rl(rec, d, env={"FLOWLM_RL_KILL_AT_POSITION": "2"})
    assert proc.returncode != 0
    assert sorted(p.name for p in (d / "rl" / "checkpoints").glob("step_*")) == ["step_0000003"]
    proc = torchrun_rl(rec, d)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = records(d / "rl" / "rollouts.jsonl")
    assert [(r["position"], r["version"]) for r in recs] == [(0, 0), (1, 2), (2, 4)]
    assert all(max(r["lags"]) <= 1 for r in recs)
    check_accounting(recs)
    steps = [json.loads(x) for x in (d / "rl" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert all(r["ratio_max"] == pytest.approx(1.0, abs=1e-4) for r in steps[0::2])


def test_torchrun_async_learner_kill_9_then_resume_loses_and_replays_no_prompt(async_base, tmp_path):
    """Mode async under `torchrun --nproc_per_node 2`: rank 0's rollout thread generates with the full weights
    gathered from the FSDP2 shards (pushed inflight), each rank trains half of every batch's groups. `kill -9`
    of rank 0 mid-stage, then the same command: no prompt lost or replayed, the staleness bound held."""
    d = tmp_path / "run"
    steps = kill_9_then_resume(async_base, d, lambda env: torchrun_rl(async_base / "recipe.yaml", d, env=env))
    # a batch generated wholly by the current policy ran exactly the weights gathered from the shards
    current = [r for r in steps if r["policy_lag"] == 0]
    assert current and all(r["mismatch/abs_diff_max"] < 1e-3 for r in current)


REBUILD = r"""
import sys, torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from flowlm.generate.params import SamplingParams
from flowlm.model.config import ModelConfig
from flowlm.model.olmo3 import Olmo3
from flowlm.rl.source import RolloutConfig, RolloutSource
from flowlm.model.tokenizer import load_tokenizer
dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=0, world_size=1)
tok = load_tokenizer(sys.argv[1])
torch.manual_seed(0)
if sys.argv[3] == "olmo3":
    policy = Olmo3(ModelConfig(vocab_size=len(tok), hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                               intermediate_size=64, max_seq_len=128, sliding_window=16, init_std=0.2))
else:  # an HF model of another family behind the adapter
    from transformers import Qwen3Config, Qwen3ForCausalLM
    from flowlm.model.adapter import HFCausalLM
    policy = HFCausalLM(Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=128, initializer_range=0.2)))
src = RolloutSource([{"id": "p0", "prompt": "q", "dataset": "math", "ground_truth": "0"}], tok,
                    RolloutConfig(prompts_per_step=1, group_size=2, max_new_tokens=6), seed=0, max_len=96)
src.bind(policy)  # before sharding, as the rl stage does
with torch.no_grad():
    for p in policy.parameters():
        p.add_(0.01)  # "trained": the bind-time engine holds the old weights
trained = {k: v.clone() for k, v in policy.state_dict().items()}
fully_shard(policy)
assert type(next(policy.parameters())).__name__ == "DTensor"
rebuilt = src.make_engine(policy)
rebuilt.update_weights(trained, version=1)
src.engine.update_weights(trained, version=1)
greedy = SamplingParams(temperature=0, max_new_tokens=6)
a = rebuilt.generate([[5, 6, 7, 8]], greedy)[0].completions[0]
b = src.engine.generate([[5, 6, 7, 8]], greedy)[0].completions[0]
assert a.tokens == b.tokens and len(a.tokens) > 0, (a.tokens, b.tokens)
assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5)
print("OK", a.tokens)
"""


@pytest.mark.parametrize("family", ["olmo3", "qwen3"])
def test_an_engine_rebuilt_from_an_fsdp2_sharded_policy_runs_the_pushed_weights(tok, tmp_path, family):
    """Mode async under torchrun restarts a dead rollout worker after the policy was sharded: the new engine is
    a fresh copy of the architecture that runs exactly the full weights pushed to it (a native model, or an
    HF model of another family behind the adapter, whose rebuild was refused until 2026-12-06)."""
    tok.save_pretrained(tmp_path / "tok")
    proc = subprocess.run([sys.executable, "-c", REBUILD, str(tmp_path / "tok"), str(tmp_path / "pg"), family],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
