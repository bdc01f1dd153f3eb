"""Mode ray of the rollout source (`flowlm.rl.ray_workers`) on a local Ray cluster started once for the
module: rollout and reward workers as Ray actors, batches with the async mode's keys, per-token versions
and prompt accounting (also across a `state_dict` resume), `flowlm train` of an `rl` stage connecting to
the cluster, a killed rollout actor restarted without losing its prompts, and a weight-sync timeout that
names the worker.

The micro model, tokenizer and test verifiers are those of `tests/rl/test_source.py` (the reward actors
import that module to register them, as they would a plugin's); the CLI test reuses the
corpus/tokenizer/pretrain recipe of `tests/rl/test_rl_flow.py`.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from flowlm.errors import ConfigError, FlowError
from flowlm.rl.source import RolloutConfig, RolloutSource
from tests.rl import test_source
from tests.rl.test_async import async_source, check_accounting, records
from tests.rl.test_rl_flow import flowlm, recipe, torchrun_train
from tests.rl.test_rl_flow import prompt_rows as ifeval_rows
from tests.rl.test_source import metrics, rows

ray = pytest.importorskip("ray")
tok, model = test_source.tok, test_source.model  # its fixtures (importing it also registers its verifiers)

BATCH_KEYS = {"input_ids", "labels", "rollout_logps", "rollout_versions", "advantages", "loss_rows", "masked_rows",
              "group_ids", "prompt_index", "temperature"}
ASYNC_METRICS = {"stale_dropped", "staleness/lag_0", "staleness/lag_1", "policy_lag", "learner_idle_share",
                 "rollout_tok_s", "rollout_tokens", "time_wait_s", "time_generate_s", "time_verify_s",
                 "time_batch_s", "informative_share", "reward", "reward/rl_test_parity", "prompts", "completions"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray for the whole module (the sources find it initialised and use it; the CLI connects). Its
    workers can import `tests/fake_vllm.py` as `vllm` (a shim on their PYTHONPATH), for `backend: vllm`."""
    from tests.rl.test_rl_flow import fake_vllm_env

    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = fake_vllm_env(tmp_path_factory.mktemp("ray_shim"))["PYTHONPATH"]
    try:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    finally:
        os.environ.pop("PYTHONPATH") if old is None else os.environ.__setitem__("PYTHONPATH", old)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def ray_source(tok, model, prompt_rows, log=None, **cfg) -> RolloutSource:
    """test_async's source in mode ray (actor start-up imports torch: slow on a loaded machine)."""
    return async_source(tok, model, prompt_rows, log, **{"mode": "ray", "rollout_timeout": 300.0, **cfg})


def test_ray_batches_have_the_async_contract_and_resume_without_loss(cluster, tok, model, tmp_path):
    log = tmp_path / "r.jsonl"
    src = ray_source(tok, model, rows(80), log=log, num_rollout_workers=2, num_reward_workers=1)
    assert src.engine is None  # the engines live in the actors
    try:
        it = iter(src)
        for position in range(4):
            b = next(it)
            with torch.no_grad():  # the learner's "step": the next push carries new weights
                next(model.parameters()).add_(1e-4)
            assert BATCH_KEYS <= set(b) and all(k in BATCH_KEYS or k.startswith("stat_") for k in b)
            assert b["input_ids"].shape[0] == 12 and torch.equal(b["group_ids"], torch.arange(3).repeat_interleave(4))
            labelled = b["labels"] != -100
            v = b["rollout_versions"]
            assert ((v >= 0) == labelled).all() and ((~b["rollout_logps"].isnan()) == labelled).all()
            assert (position - v[labelled] <= 1).all() and (v[labelled] <= position).all()
            # token ids end to end: the labels are the sampled ids that follow each prompt
            assert torch.equal(b["input_ids"][:, 1:][labelled[:, :-1]], b["labels"][labelled])
            m = metrics(b)
            assert ASYNC_METRICS <= set(m) and all(math.isfinite(x) for x in m.values())
            assert ("time_sync_s" in m) == (position > 0)  # a push per new policy version (the first is at start)
            assert m["staleness/lag_0"] + m["staleness/lag_1"] == m["prompts"] and m["informative_share"] == 1.0
            assert m["verifier_errors"] == 0 and m["completions"] >= 12  # the reward actor ran the test verifier
        units = src._actor.units
        assert [u.name for u in units] == ["rollout-0", "rollout-1"]
        # Both actors are started before any prompt is dispatched, but which one generates which group is
        # the threads' race for room: under load one actor may serve all 12 (a CI-like run failed so).
        assert sum(u.groups for u in units) >= 12
        assert len({u.info["pid"] for u in units}) == 2  # in their own processes
        state = json.loads(json.dumps(src.state_dict()))  # what a checkpoint keeps
        next(it)  # generated after the checkpoint: lost with the process
    finally:
        src.close()
    assert state["position"] == 4 and state["async"]["requeue"]
    # resumed with one rollout actor and verification in this process (the checkpoint does not depend on them)
    resumed = ray_source(tok, model, rows(80), log=log, num_rollout_workers=1, num_reward_workers=0)
    resumed.load_state_dict(state)
    try:
        batches = [b for _, b in zip(range(2), resumed)]
    finally:
        resumed.close()
    recs = records(log)
    assert [r["position"] for r in recs] == list(range(6)) and len(batches) == 2
    assert sum(r["lags"].count(1) for r in recs) > 0  # the workers ran ahead of the learner
    check_accounting(recs)  # no prompt lost or consumed twice, across the resume
    pending = {f"p{i}" for i in state["async"]["requeue"]}
    assert pending <= {p for r in recs[4:] for p in r["consumed"]} | set(recs[-1]["pending"])


def test_ray_minibatches_push_once_per_rollout_batch(cluster, tok, model, tmp_path):
    """minibatches 3 in mode ray: three optimizer steps per rollout batch, each with the old-policy
    log-probs; the actor gets the weights once per batch (versions 0, 3, 6: optimizer steps done)."""
    policy = copy.deepcopy(model)
    log = tmp_path / "r.jsonl"
    src = ray_source(tok, policy, rows(80), log=log, minibatches=3)
    try:
        it = iter(src)
        for k in range(9):
            part = next(it)
            assert part["input_ids"].shape[0] == 4 and not part["old_logps"][part["labels"] != -100].isnan().any()
            v = part["rollout_versions"][part["labels"] != -100]
            assert (v % 3 == 0).all() and (v <= k - k % 3).all()
            with torch.no_grad():
                next(policy.parameters()).add_(1e-3)
    finally:
        src.close()
    recs = records(log)
    assert [r["version"] for r in recs] == [0, 3, 6] and all(max(r["lags"]) <= 1 for r in recs)
    check_accounting(recs)


def test_ray_rollout_actors_run_an_hf_policy_behind_the_adapter(cluster, tok):
    """A policy of another family (a tiny Qwen3 behind `HFCausalLM`): each actor builds the architecture from
    its transformers config and loads the learner's weights, so the rollout log-probs are the policy's own
    (an actor left with its fresh weights would be far off)."""
    from flowlm.model.adapter import HFCausalLM
    from flowlm.train.losses import token_logprobs
    from tests.hf_models import tiny_qwen3

    policy = HFCausalLM(tiny_qwen3(len(tok))).eval()
    src = ray_source(tok, policy, rows(24), num_rollout_workers=1, num_reward_workers=0)
    try:
        b = next(iter(src))
    finally:
        src.close()
    labelled = b["labels"] != -100
    assert labelled.any() and (b["rollout_versions"][labelled] == 0).all()
    with torch.no_grad():
        mine = token_logprobs(policy(b["input_ids"]).float(), b["labels"].clamp(min=0))
    assert (mine[labelled] - b["rollout_logps"][labelled]).abs().max().item() < 1e-4


def test_ray_rollout_actors_run_tool_calls(cluster, tmp_path):
    """`rollout.tools` in mode ray: the actor wraps its engine and runs the calls itself; the batch is the one the
    sync and async modes give (`tests/tools/test_tool_rollouts.py`: the call runs, the tool turn is masked, the
    learner's log-probs equal the actor's)."""
    from tests.tools.test_tool_rollouts import check_real_rollouts, make_caller, make_tok

    tool_tok = make_tok(tmp_path / "tok")
    check_real_rollouts(tool_tok, make_caller(tool_tok), mode="ray", num_rollout_workers=1, num_reward_workers=0)


def test_a_killed_rollout_actor_is_restarted_and_its_prompts_are_not_lost(cluster, tok, model, tmp_path, capsys):
    log = tmp_path / "r.jsonl"
    src = ray_source(tok, model, rows(80), log=log, async_steps=2, num_rollout_workers=2, num_reward_workers=1)
    try:
        it = iter(src)
        batches = [next(it), next(it)]
        actor = src._actor
        victim = actor.units[0]
        assert ray.get(victim.handle.stall.remote(60))  # freeze it: nothing it holds comes back from now on
        time.sleep(0.3)  # (a call that finished a group before the freeze has returned by now)
        for _ in range(6):  # until it holds prompts it cannot finish (rollout-1 serves the batches meanwhile)
            with actor.lock:
                held = {t: actor.outstanding[t] for t, who in actor.owner.items() if who == "rollout-0"}
            if held:
                break
            batches.append(next(it))
            time.sleep(0.1)
        assert held  # prompts dispatched to it and not returned
        ray.kill(victim.handle)
        killed_at = len(batches)
        batches += [next(it) for _ in range(3)]
        assert actor.units[0] is not victim and actor.units[0].name == "rollout-0"
        assert actor.units[0].info["pid"] != victim.info["pid"]
        restarted = sum(metrics(b).get("requeued_on_restart", 0) for b in batches)
        ray.kill(actor.backend.rewards[0][1])  # a dead reward actor: replaced, the groups it scored re-queued
        for _ in range(8):  # (the groups verified before the kill are served first)
            batches.append(next(it))
            if actor.restarts == 2:
                break
    finally:
        src.close()
    m = [metrics(b) for b in batches]
    assert sum(x.get("worker_restarts", 0) for x in m) == 2 and src.totals["worker_restarts"] == 2
    assert restarted == len(held)
    err = capsys.readouterr().err
    assert "warning: rl ray: worker 'rollout-0' died (ActorDiedError: " in err
    assert f"restarted (1 so far), {len(held)} prompts re-queued" in err
    assert "warning: rl ray: worker 'reward-0' died (ActorDiedError: " in err and "restarted (2 so far)" in err
    recs = records(log)
    check_accounting(recs)  # no prompt lost or repeated
    # the dead actor's prompts were sampled again by the others: consumed after the kill, or still pending
    assert {f"p{i}" for i in held.values()} <= ({p for r in recs[killed_at:] for p in r["consumed"]}
                                                | set(recs[-1]["pending"]))
    assert all(len(r["trained"]) == 3 for r in recs)


def test_a_weight_sync_timeout_is_a_clear_error_naming_the_worker(cluster, tok, model):
    src = ray_source(tok, model, rows(40), prompts_per_step=2, weight_sync_timeout=0.5, num_rollout_workers=2,
                     num_reward_workers=0)
    try:
        it = iter(src)
        next(it)
        stuck = src._actor.units[1]
        assert ray.get(stuck.handle.stall.remote(60))  # a decode step that never ends on rollout-1
        t0 = time.perf_counter()
        with pytest.raises(FlowError, match=r"rl ray: weight sync to rollout worker 'rollout-1' timed out: "):
            while time.perf_counter() - t0 < 30:  # rollout-0 keeps the batches coming meanwhile
                next(it)
                with torch.no_grad():
                    next(model.parameters()).add_(1e-4)
                time.sleep(0.1)  # the learner's step
        assert time.perf_counter() - t0 < 15
    finally:
        src.close()


def test_ray_rollout_actors_with_backend_vllm(cluster, tok, model):
    """`backend: vllm` in mode ray: each actor builds a VLLMEngine (here over the stand-in, with no GPU asked
    for) and takes the learner's pushes as inflight updates; the batches keep the async contract; the
    actor's export is gone after the source closes."""
    src = ray_source(tok, model, rows(40), num_rollout_workers=1, num_reward_workers=0, backend="vllm",
                     rollout_worker_gpus=0)
    try:
        it = iter(src)
        for position in range(3):
            b = next(it)
            with torch.no_grad():
                next(model.parameters()).add_(1e-4)
            labelled = b["labels"] != -100
            v = b["rollout_versions"]
            assert b["input_ids"].shape[0] == 12 and ((v >= 0) == labelled).all()
            assert (position - v[labelled] <= 1).all() and (v[labelled] <= position).all()
        unit = src._actor.units[0]
        assert unit.info["engine"] == "VLLMEngine" and unit.gpus == 0
        # a push was applied in the actor: its engine's version moves (asked of the actor itself: the unit's
        # own record moves only when its thread next polls, which a loaded machine may delay)
        deadline = time.perf_counter() + 60
        while ray.get(unit.handle.ready.remote())["version"] < 1 and time.perf_counter() < deadline:
            time.sleep(0.05)
        assert ray.get(unit.handle.ready.remote())["version"] >= 1
        export = Path(unit.info["export_dir"])
        assert (export / "policy" / "config.json").is_file()  # the actor's export (this node: the same disk)
    finally:
        src.close()
    # closing the source closes the actor, which removes its export first (`ray.kill` skips exit handlers)
    assert not export.exists()
    assert RolloutConfig(mode="ray", backend="vllm").actor_gpus() == 1.0 and RolloutConfig(mode="ray").actor_gpus() == 0


def test_an_actor_the_cluster_cannot_place_fails_naming_it(cluster, tok, model):
    src = ray_source(tok, model, rows(6), rollout_worker_cpus=64, num_reward_workers=0, rollout_timeout=1.0)
    t0 = time.perf_counter()
    with pytest.raises(FlowError, match=r"rl ray: rollout worker 'rollout-0' did not start within 1 s .*64 CPU"):
        next(iter(src))
    assert time.perf_counter() - t0 < 10 and src._actor is None
    src.close()


def test_ray_settings_are_checked_and_a_missing_ray_is_the_extras_error(tok, model, monkeypatch):
    with pytest.raises(ValueError, match="num_rollout_workers only apply to mode: ray"):
        RolloutConfig(mode="async", num_rollout_workers=2)
    with pytest.raises(ValueError, match="async_steps only apply to mode: async or ray"):
        RolloutConfig(async_steps=2)
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        RolloutConfig(mode="ray", num_rollout_workers=0)
    assert RolloutConfig(mode="ray").num_reward_workers == 1
    from flowlm.rl.ray_workers import pack_state, unpack_state

    state = {"w": torch.randn(3, 4), "b": torch.randn(5).to(torch.bfloat16), "i": torch.arange(4)}
    back = unpack_state(ray.get(ray.put(pack_state(state))) if ray.is_initialized() else pack_state(state))
    assert all(back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in state.items())
    src = ray_source(tok, model, rows(6))
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r"rollout mode 'ray' needs the 'ray' package: pip install 'flowlm\[ray\]'"):
        next(iter(src))


# -- `flowlm train` of an rl stage in mode ray, connecting to the module's cluster -----------------------------
@pytest.mark.parametrize("ranks", [1, 2])
def test_rl_stage_in_ray_mode_trains_through_flowlm_train(cluster, tmp_path, ranks):
    """One process, and the learner under `torchrun --nproc_per_node 2` (FSDP2 on gloo: rank 0 gathers the
    full weights from the shards and puts them in the object store for the actors every step)."""
    d = tmp_path
    prompts = d / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in ifeval_rows(48)))
    rec = copy.deepcopy(recipe(prompts))  # its `rollout` dict is test_rl_flow's own: never change it in place
    rec["stages"]["rl"]["rollout"].update({"mode": "ray", "async_steps": 1, "ray_address": cluster,
                                           "num_rollout_workers": 2, "num_reward_workers": 1, "rollout_timeout": 300,
                                           "max_draws": 16})  # which groups finish first is timing: room to fill
    (d / "recipe.yaml").write_text(yaml.safe_dump(rec, sort_keys=False))
    stages = [a for s in ("corpus", "tokenizer", "pretrain", "rl") for a in ("--stage", s)]
    if ranks == 1:
        proc = flowlm("train", str(d / "recipe.yaml"), *stages, "--run-dir", str(d / "run"), "--no-progress")
    else:
        proc = torchrun_train(d / "recipe.yaml", d / "run", *stages)
        assert proc.returncode == 0, proc.stderr[-3000:]
    st = json.loads((d / "run" / "flow.json").read_text())["stages"]["rl"]
    assert st["status"] == "done" and st["config"]["rollout"]["mode"] == "ray", proc.stderr[-2000:]
    assert st["config"]["rollout"]["num_rollout_workers"] == 2
    steps = [json.loads(x) for x in (d / "run" / "rl" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for r in steps:
        assert all(math.isfinite(r[k]) for k in ("loss", "grad_norm", "reward", "entropy", "policy_lag"))
        assert r["grad_norm"] > 0 and 0 <= r["reward"] <= 1 and "reward/ifeval" in r and r["verifier_errors"] == 0
        # Two workers finish out of order, so a group may outlive `async_steps` and be dropped (the documented
        # guard, `flowlm.rl.actor`): no consumed group is staler than the bound; drops are checked below.
        assert r["policy_lag"] <= 1 and 0 <= r["learner_idle_share"] <= 1
        assert r["informative_share"] == 1.0 and r["rollout_tok_s"] > 0
    recs = records(Path(d / "run" / "rl" / "rollouts.jsonl"))
    assert [r["position"] for r in recs] == [0, 1, 2, 3] and [r["version"] for r in recs] == [0, 1, 2, 3]
    _, consumed = check_accounting(recs)
    # every stale drop is counted in the metrics and its prompt re-queued: consumed later or still pending
    dropped = [p for rec in recs for p in rec["stale_dropped"]]
    assert sum(r["stale_dropped"] for r in steps) == len(dropped)
    assert all(p in consumed or p in recs[-1]["pending"] for p in dropped)
    assert st["metrics"]["rollouts"]["batches"] == 4
