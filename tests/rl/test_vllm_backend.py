"""The vLLM rollout backend's contract, on CPU through `tests/fake_vllm.py` (flowlm's native engine behind
vLLM's calls, with vLLM's prefix-cache rules): queued inflight updates, one prefix-cache salt per policy
version, the reset after each update, and RL runs with `rollout.backend: vllm` in modes sync and async.
The last test runs the real vLLM (CUDA and the vllm package): the mismatch band share between its
logprobs and the learner's."""

from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path

import pytest
import torch

from flowlm.generate.params import SamplingParams
from flowlm.rl.source import RolloutConfig, RolloutSource
from tests import fake_vllm

from .test_source import model, rows, tok  # noqa: F401 (fixtures)


@pytest.fixture
def vllm(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    fake_vllm.INSTANCES.clear()
    return fake_vllm


@pytest.fixture
def ckpt(tok, model, tmp_path):  # noqa: F811
    from flowlm.model.hf import save_pretrained

    return save_pretrained(model, tok, tmp_path / "ckpt")


def _other_weights(model) -> dict[str, torch.Tensor]:  # noqa: F811
    torch.manual_seed(5)
    return {k: torch.randn_like(v) * 0.2 for k, v in model.state_dict().items()}


def test_an_update_during_a_step_is_queued_and_new_prompts_get_the_new_versions_salt(vllm, ckpt, model):  # noqa: F811
    from flowlm.generate.vllm_backend import VLLMEngine

    engine = VLLMEngine(ckpt, max_slots=8)
    fake = vllm.INSTANCES[-1]
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=12, ignore_eos=True, seed=3)
    first = engine.submit([5, 6, 7], params)
    engine.step()
    engine.step()
    assert engine.version == 0 and fake.llm_engine.cache.salts == ["flowlm-policy-v0"]

    engine._step_lock.acquire()  # a step is running in another thread
    try:
        assert engine.update_weights(_other_weights(model), wait=False) == 1
        assert engine.version == 0 and fake.worker.loads == 0  # queued, not applied mid-step
        newer = engine.update_weights(_other_weights(model), wait=False)  # replaces the queued one
        assert newer == 2
    finally:
        engine._step_lock.release()
    done = engine.step()  # the queued update lands before this step's tokens
    assert engine.version == 2 and fake.worker.loads == 1
    # the running request holds cache blocks: vLLM refuses the reset, and that is counted
    assert fake.llm_engine.cache.resets == [False] and engine.stats["prefix_cache_resets_refused"] == 1

    second = engine.submit([5, 6, 7], params)  # the same prompt under the new weights
    assert fake.llm_engine.cache.salts[-1] == "flowlm-policy-v2"
    assert fake.llm_engine.cache.hits == []  # it does not reuse the blocks cached under version 0
    done += list(engine.stream())
    by_id = {r.request_id: r for r in done}
    for c in by_id[first].completions:
        assert len(c.tokens) == 12 and c.versions[0] == 0 and c.versions[-1] == 2 and c.versions == sorted(c.versions)
    assert all(c.versions == [2] * 12 for c in by_id[second].completions)

    engine.update_weights(model.state_dict())  # idle: applied now, and the reset goes through
    assert engine.version == 3 and fake.llm_engine.cache.resets[-1] is True
    assert engine.stats["prefix_cache_resets"] == 1 and engine.stats["weight_updates"] == 2


def test_a_failed_weight_load_raises_in_the_stepping_thread_and_releases_a_waiting_caller(vllm, ckpt, model):  # noqa: F811
    from flowlm.generate.vllm_backend import VLLMEngine

    engine = VLLMEngine(ckpt, max_slots=4)
    bad = {"model.not_a_layer.weight": torch.zeros(2)}
    engine._step_lock.acquire()
    returned: list[int] = []
    waiter = threading.Thread(target=lambda: returned.append(engine.update_weights(bad, wait=True)))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()  # waiting for the step boundary
    engine._step_lock.release()
    with pytest.raises(Exception, match="not_a_layer"):
        engine.step()
    waiter.join(5)
    assert not waiter.is_alive() and returned == [1] and engine.version == 0  # released, and seen unapplied


def test_an_adapters_prefix_is_stripped_from_the_learners_names(vllm, ckpt, model):  # noqa: F811
    from flowlm.generate.vllm_backend import VLLMEngine

    engine = VLLMEngine(ckpt, max_slots=4, weight_prefix="hf.")
    new = _other_weights(model)
    engine.update_weights({f"hf.{k}": v for k, v in new.items()})
    loaded = vllm.INSTANCES[-1].worker.engine.runner.model.state_dict()
    assert all(torch.equal(loaded[k], new[k]) for k in new)


def _source(tok, model, **cfg) -> RolloutSource:  # noqa: F811
    settings = {"prompts_per_step": 3, "group_size": 4, "max_new_tokens": 6, "backend": "vllm", **cfg}
    src = RolloutSource(rows(12), tok, RolloutConfig(**settings), seed=0, max_len=96)
    src.bind(model)
    return src


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_rl_rollouts_through_the_vllm_backend(vllm, tok, model, mode):  # noqa: F811
    from flowlm.generate.vllm_backend import VLLMEngine

    policy = type(model)(model.cfg)
    policy.load_state_dict(model.state_dict())
    extra = {"mode": "async", "async_steps": 1} if mode == "async" else {}
    src = _source(tok, policy, **extra)
    assert isinstance(src.engine, VLLMEngine) and vllm.INSTANCES[-1].gpu_memory_utilization == 0.3
    export = Path(vllm.INSTANCES[-1].path)
    it = iter(src)
    for step in range(3):
        before = {k: v.clone() for k, v in policy.state_dict().items()}
        batch = next(it)
        assert batch["input_ids"].shape[0] > 0 and not batch["rollout_logps"].isnan().all()
        with torch.no_grad():  # the learner's optimizer step, as the trainer would take it
            for p in policy.parameters():
                p.add_(0.01 * torch.randn_like(p))
    engine, fake = src.engine, vllm.INSTANCES[-1]
    assert engine.stats["weight_updates"] >= 3
    salts = set(fake.llm_engine.cache.salts)
    # each version its own prefix-cache namespace: the requests after an update use the new version's salt
    assert "flowlm-policy-v0" in salts and salts <= {f"flowlm-policy-v{v}" for v in range(engine.version + 1)}
    # in sync mode every version samples a batch; in async mode, under load, the learner's pushes can
    # outrun generation so that a version samples nothing (a CI-like run saw v0 and v2 only)
    assert salts == {"flowlm-policy-v0", "flowlm-policy-v1", "flowlm-policy-v2"} if mode == "sync" else len(salts) >= 2
    if mode == "sync":  # the engine took the policy before each batch: it holds the weights of the last one
        assert engine.version == 2
        loaded = fake.worker.engine.runner.model.state_dict()
        assert all(torch.equal(loaded[k], before[k]) for k in before)  # what the third batch was sampled from
        assert fake.llm_engine.cache.resets and all(fake.llm_engine.cache.resets)  # idle between batches
    src.close()
    assert not export.exists()  # the exported checkpoint is removed


def test_an_unknown_logprobs_mode_is_a_config_error(ckpt):
    """Checked before vLLM is needed (this ran into a NameError until 2026-12-07)."""
    from flowlm.errors import ConfigError
    from flowlm.generate.vllm_backend import VLLMEngine

    with pytest.raises(ConfigError, match="logprobs must be one of raw, tempered, not 'soft'"):
        VLLMEngine(ckpt, logprobs="soft")


def test_the_vllm_memory_share_applies_to_backend_vllm_only():
    with pytest.raises(ValueError, match="vllm_gpu_memory only applies to backend: vllm"):
        RolloutConfig(vllm_gpu_memory=0.5)
    assert RolloutConfig(backend="vllm", vllm_gpu_memory=0.5).vllm_gpu_memory == 0.5


@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None,
                    reason="needs a CUDA GPU and the vllm package")
def test_real_vllm_rollouts_match_the_learner_within_the_mismatch_band(tok, model):  # noqa: F811
    from flowlm.rl.mismatch import mismatch_weights
    from flowlm.train.objectives.grpo import GRPOObjective, token_mask

    src = RolloutSource(rows(12), tok, RolloutConfig(prompts_per_step=3, group_size=4, max_new_tokens=16,
                                                     backend="vllm", filter_zero_std=False,
                                                     active_sampling=False), seed=0, max_len=96)
    src.bind(model)
    batch = next(iter(src))
    src.close()
    mask = token_mask(batch)
    with torch.no_grad():
        learner, _ = GRPOObjective().token_logps(model, batch, mask)
    metrics = mismatch_weights(learner, batch["rollout_logps"], mask).metrics
    share = float(metrics.out_of_band)
    print(f"vLLM vs learner: out-of-band share {share:.4f}, max |dlogp| {float(metrics.abs_diff_max):.2e}")
    assert share < 0.05
