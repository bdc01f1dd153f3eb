"""Mode `ray` of the rollout source: rollout and reward workers as Ray actors (issue #15, build 5).

The multi-node form of mode `async` (`flowlm.rl.actor`): the learner, its prompt dispatch, ready buffer,
staleness, accounting and batches are `AsyncRollouts`'s, unchanged; this module is the `RayBackend` it
uses for `mode: ray`, whose rollout units are Ray actors instead of an engine in a thread:

    rollout: {mode: ray, num_rollout_workers: 4, num_reward_workers: 2, async_steps: 8,
              ray_address: auto}        # None (the default): a local Ray, started and shut down here

- `RolloutActor` (`rollout-<k>`, `num_rollout_workers` of them, `rollout_worker_cpus` Ray CPUs and torch
  threads each): builds its own model from the policy's class and config (shipped, not a pickled module)
  and its own engine: `flowlm.generate.Engine` (continuous batching), or with `backend: vllm` a
  `VLLMEngine` loaded from an export of that model (`rollout_worker_gpus` GPUs each, default 1). A driver
  thread per actor (the unit's thread here) sends it the prompts it claimed with each `run` call, which
  steps the engine until a group finishes or `RUN_BUDGET_S` passes and returns the finished results: token
  ids, log-probs and per-token versions as the engine produced them.
- `RewardActor` (`reward-<k>`, `num_reward_workers`): runs the rows' verifiers (`verify_completions`,
  in a `VerifyPool` inside the actor when `verify_workers > 0`). It imports the modules that registered
  those verifiers in the learner's process (plus `FLOWLM_PLUGINS`), so a verifier must live in an
  importable module; a name still unknown there fails the start, naming it. With `num_reward_workers: 0`
  verification runs in the learner's process (its verify thread), as in mode async.
- Weights: once per policy version the learner puts the state dict in the object store (`ray.put`, numpy
  buffers: every actor on a node maps the same copy) and sends the ref to every actor, which applies it
  as an inflight update (`Engine.update_weights`, between two decode steps). The call's ref resolves
  when the update is applied; the learner polls it (never blocks on it) and a push not applied within
  `weight_sync_timeout` is a FlowError naming the worker. A restarted actor is built with the newest
  pushed weights.
- Faults: a dead actor (killed, OOM, node lost; `RayActorError` from its `run` call or its weight update)
  is replaced by a new actor; the prompts dispatched to it and not returned are re-queued (none lost). A
  dead reward actor is replaced and the groups it was scoring are re-queued. Actors that do not start
  within `rollout_timeout` (e.g. the cluster lacks the CPUs asked for) are a FlowError naming them.

Ray: `ray_address` None starts a local Ray (`ray.init(num_cpus=...)`, no dashboard) that `close()` shuts
down; "auto" or an address connects (flowlm must be installed on every node). A Ray already initialised
in the process (a test, the data pipeline) is used as it is and left running.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from flowlm.errors import ConfigError, FlowError
from flowlm.rl.units import POLL_S, Backend, RolloutUnit, WorkerLost, describe, local_pool

if TYPE_CHECKING:  # torch is imported where used: a reward actor (this module, by reference) needs none
    import torch
    from torch import nn

    from flowlm.rl.source import RolloutSource

RUN_BUDGET_S = 0.25  # one `run` call steps the engine at most this long before returning (new prompts wait)
ACTOR_CONCURRENCY = 4  # `run`, weight updates waiting for a step boundary, `stall`
RELEASE_TIMEOUT_S = 10.0  # how long a closing unit waits for its actor to remove its files


# -- weights through the object store ---------------------------------------------------------------------
def pack_state(state: dict[str, torch.Tensor]) -> dict[str, tuple[np.ndarray, str]]:
    """A state dict as numpy arrays (zero-copy in Ray's object store) and dtype names; dtypes numpy lacks
    (bfloat16, ...) travel as integer views of their bytes."""
    import torch

    out = {}
    for key, t in state.items():
        t = t.detach().cpu().contiguous()
        try:
            arr = t.numpy()
        except TypeError:
            arr = t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]).numpy()
        out[key] = (arr, str(t.dtype).removeprefix("torch."))
    return out


def unpack_state(packed: dict[str, tuple[np.ndarray, str]]) -> dict[str, torch.Tensor]:
    import torch

    out = {}
    with warnings.catch_warnings():  # read-only object-store buffers: load_state_dict copies them
        warnings.simplefilter("ignore", UserWarning)
        for key, (arr, dtype) in packed.items():
            t = torch.from_numpy(arr)
            want = getattr(torch, dtype)
            out[key] = t if t.dtype == want else t.view(want)
    return out


# -- the actors (plain classes; `ray.remote` is applied by the backend, so importing needs no ray) ----------
class RolloutActor:
    """One rollout worker: its own model (built by `model_cls(model_cfg)`: the policy's class and config, or
    `HFCausalLM.from_config` and a transformers config) and engine (with `rollout.tools`, wrapped in
    `flowlm.tools.engine.ToolEngine`: the calls run in this actor)."""

    def __init__(self, name: str, model_cls: Any, model_cfg: Any, dtype: str, tokenizer: Any, gen_cfg: Any,
                 weights: dict[str, tuple[np.ndarray, str]], version: int, threads: int,
                 engine: tuple[str, float] = ("native", 0.0),
                 tools: tuple[tuple[str, ...], int, int] = ((), 1, 0)) -> None:
        import torch

        torch.set_num_threads(max(1, int(threads)))
        self.name = name
        model = model_cls(model_cfg).to(getattr(torch, dtype)).eval()
        kind, gpu_memory = engine
        self.export_dir: str | None = None
        if kind == "vllm":  # its export: removed by `release` (the driver's close) or at a clean exit
            import atexit
            import shutil

            from flowlm.generate.vllm_backend import VLLMEngine

            self.engine = VLLMEngine.from_policy(model, tokenizer, max_slots=gen_cfg.max_slots, context=gen_cfg.context,
                                                 seed=gen_cfg.seed, enable_thinking=gen_cfg.enable_thinking,
                                                 gpu_memory_utilization=gpu_memory, logprobs=gen_cfg.logprobs)
            self.export_dir = str(self.engine.export_dir)
            atexit.register(shutil.rmtree, self.export_dir, True)
        else:
            from flowlm.generate.engine import Engine

            self.engine = Engine(model, tokenizer, gen_cfg, copy_model=False, _owned=True)
        names, max_calls, workers = tools
        if names:  # rollouts that call tools (`flowlm.tools.engine`): the tools run in this actor
            from flowlm.tools.builtin import usable_tools
            from flowlm.tools.engine import ToolEngine

            self.engine = ToolEngine(self.engine, usable_tools(list(names)), max_calls=max_calls, enable_thinking=gen_cfg.enable_thinking,
                                     workers=workers)
        self.engine.update_weights(unpack_state(weights), version=version)  # idle: applied now
        self._lock = threading.Lock()
        self._requested = version

    def ready(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "version": self.engine.version, "engine": type(self.engine).__name__,
                "export_dir": self.export_dir}

    def release(self) -> bool:
        """Remove what the actor wrote to its node's disk (the vLLM export) before the driver kills it:
        `ray.kill` ends the process without running its exit handlers."""
        import shutil

        if self.export_dir is not None:
            shutil.rmtree(self.export_dir, ignore_errors=True)
        return True

    def run(self, submissions: list[tuple[list[int], Any, Any]], budget_s: float) -> dict[str, Any]:
        """Submit `(prompt_ids, params, tag)`s, step the engine until a group finishes or `budget_s` passes."""
        engine = self.engine
        for prompt_ids, params, tag in submissions:
            engine.submit(list(prompt_ids), params, tag=tag)
        done: list[Any] = []
        t0, n0 = time.perf_counter(), engine.stats["generated_tokens"]
        while engine.has_unfinished() and not done and time.perf_counter() - t0 < budget_s:
            done += engine.step()
        return {"results": done, "generate_s": time.perf_counter() - t0,
                "tokens": engine.stats["generated_tokens"] - n0, "version": engine.version}

    def update_weights(self, weights: dict[str, tuple[np.ndarray, str]], version: int) -> int:
        """Apply `weights` between two decode steps (inflight); returns once applied, with the engine's
        version. Calls may run out of order (a threaded actor): an older version than one already
        requested is skipped."""
        with self._lock:
            if version <= self._requested:
                return self.engine.version
            self._requested = version
        self.engine.update_weights(unpack_state(weights), version=version, wait=True)
        return self.engine.version

    def stall(self, seconds: float) -> bool:
        """Fault injection (tests): hold the engine's step lock for `seconds`, as a decode step that hangs
        would; returns once it is held."""
        held = threading.Event()

        def hold() -> None:
            with self.engine._step_lock:
                held.set()
                time.sleep(seconds)

        threading.Thread(target=hold, daemon=True).start()
        held.wait()
        return True


class RewardActor:
    """One reward worker: the rows' verifiers (imported from the modules that registered them)."""

    def __init__(self, name: str, modules: list[str], verifiers: list[str], verify_workers: int,
                 verify_timeout: float) -> None:
        import importlib

        from flowlm.plugins import load_plugins
        from flowlm.verify.base import UnknownVerifierError, get_verifier

        self.name = name
        load_plugins()
        for module in modules:
            importlib.import_module(module)
        for verifier in verifiers:
            try:
                get_verifier(verifier)
            except UnknownVerifierError:
                raise FlowError(f"reward worker '{name}': verifier '{verifier}' is not registered in the Ray "
                                f"worker (define it in an importable module, or use num_reward_workers: 0)") from None
        self.pool = None
        if verify_workers > 0:
            from flowlm.verify.pool import VerifyPool

            self.pool = VerifyPool(workers=verify_workers, timeout=verify_timeout, context="forkserver")

    def ready(self) -> dict[str, Any]:
        return {"pid": os.getpid()}

    def verify(self, rows: list[dict[str, Any]], texts: list[str]) -> list[Any]:
        from flowlm.rl.rows import verify_completions

        return verify_completions(rows, texts, pool=self.pool)


# -- the learner's side -----------------------------------------------------------------------------------
def _wait(ray: Any, refs: list[Any], stop: threading.Event) -> bool:
    """Wait until every ref is ready (done or failed); False when `stop` was set first."""
    while True:
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=POLL_S)
        if len(ready) == len(refs):
            return True
        if stop.is_set():
            return False


class RayUnit(RolloutUnit):
    """A rollout unit whose engine is a `RolloutActor`; its thread here feeds it and drains it."""

    busy_what = (f"a generation call has run {{s:.1f}} s past its {RUN_BUDGET_S} s budget (an engine step "
                 "hangs), so no weight update can be applied")

    def __init__(self, name: str, backend: RayBackend, version: int) -> None:
        super().__init__(name, version)
        self.ray, self.cpus = backend.ray, backend.cfg.rollout_worker_cpus
        self.gpus = backend.cfg.actor_gpus()
        self.handle = backend.rollout_cls.options(num_cpus=self.cpus, num_gpus=self.gpus,
                                                  max_concurrency=ACTOR_CONCURRENCY).remote(
            name, *backend.model_spec, backend.tokenizer_ref, backend.gen_cfg, backend.weights_ref, version, self.cpus,
            (backend.cfg.backend, backend.cfg.vllm_gpu_memory), (tuple(backend.cfg.tools), backend.cfg.max_tool_calls,
                                                                   backend.cfg.tool_workers))
        self._ready_ref = self.handle.ready.remote()
        self.info: dict[str, Any] | None = None  # what the actor's `ready` reported, once it has
        self.version = version  # newest version known applied
        self.updates: list[tuple[Any, int]] = []  # (ref of update_weights, version) not yet resolved
        self.inflight = 0  # groups submitted to the actor and not returned
        self.call_started: float | None = None  # when the running `run` call was sent

    def ready(self, timeout: float) -> None:
        ray = self.ray
        try:
            self.info = ray.get(self._ready_ref, timeout=max(timeout, 0.0))
        except ray.exceptions.GetTimeoutError:
            raise FlowError(f"rl ray: rollout worker '{self.name}' did not start within {timeout:.0f} s "
                            f"(rollout_timeout; it asks Ray for {self.cpus} CPU(s) and {self.gpus:g} GPU(s): does "
                            f"the cluster have them free? ray.available_resources() = {ray.available_resources()})"
                            ) from None
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
            raise FlowError(f"rl ray: rollout worker '{self.name}' failed to start: {describe(exc)}") from None

    def advance(self, submissions: list[tuple[list[int], Any, Any]]) -> tuple[list[Any], float, int] | None:
        if not submissions and self.inflight == 0:
            return None
        ref = self.handle.run.remote(submissions, RUN_BUDGET_S)
        self.inflight += len(submissions)
        self.call_started = time.perf_counter()
        try:
            if not _wait(self.ray, [ref], self.stop):
                return None
            out = self.ray.get(ref)  # a dead actor raises RayActorError here: the unit's thread ends with it
        finally:
            self.call_started = None
        self.inflight -= len(out["results"])
        return out["results"], out["generate_s"], out["tokens"]

    def push(self, weights: Any, version: int) -> None:
        self.updates.append((self.handle.update_weights.remote(weights, version), version))

    def applied(self) -> int:
        """Polls the pushes (never blocks): resolved ones raise the version; a dead actor marks the unit lost."""
        if not self.updates:
            return self.version
        ray = self.ray
        done, _ = ray.wait([r for r, _ in self.updates], num_returns=len(self.updates), timeout=0)
        if done:
            finished = set(done)
            for ref, version in self.updates:
                if ref not in finished:
                    continue
                try:
                    self.version = max(self.version, int(ray.get(ref)))
                except ray.exceptions.RayActorError as exc:
                    self.lost = exc
                except ray.exceptions.RayTaskError as exc:
                    raise FlowError(f"rl ray: weight sync to rollout worker '{self.name}' failed (policy version "
                                    f"{version}): {describe(exc)}") from None
            self.updates = [(r, v) for r, v in self.updates if r not in finished]
        return self.version

    def busy_s(self) -> float:
        started = self.call_started
        return max(0.0, time.perf_counter() - started - RUN_BUDGET_S) if started is not None else 0.0

    def close(self) -> None:
        """Have the actor remove its files (a few seconds at most: a dead or hung actor is killed anyway),
        then kill it."""
        if getattr(self, "info", None) is not None:  # started (one never placed has nothing to remove)
            with contextlib.suppress(Exception):  # already gone, or hung
                self.ray.get(self.handle.release.remote(), timeout=RELEASE_TIMEOUT_S)
        with contextlib.suppress(Exception):  # already gone
            self.ray.kill(self.handle, no_restart=True)


def plain_class(model: nn.Module) -> type:
    """The model's own class: FSDP2 (`fully_shard`) swaps a sharded module's class for a subclass
    `FSDP<name>`, which a worker process must not build."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # (no distributed build)
        return type(model)
    return next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))


class RayBackend(Backend):
    """Mode ray: `num_rollout_workers` `RolloutActor`s and `num_reward_workers` `RewardActor`s."""

    mode = "ray"

    def __init__(self, source: RolloutSource, policy: nn.Module) -> None:
        from flowlm.extras import require

        self.ray = require("ray", "ray", "rollout mode 'ray'")
        self.source, self.cfg = source, source.cfg
        from flowlm.model.adapter import HFCausalLM

        model = getattr(policy, "_orig_mod", policy)  # (torch.compile wraps the module)
        if not hasattr(model, "cfg") and not isinstance(model, HFCausalLM):
            raise ConfigError(f"rollout mode 'ray' builds each worker's model from the policy's class and config: "
                              f"{type(model).__name__} is neither a native flowlm model nor an HF model behind "
                              "flowlm's adapter")
        self.model = model
        self.names = [f"rollout-{k}" for k in range(self.cfg.num_rollout_workers)]
        self.rewards: list[tuple[str, Any]] = []
        self._owns = False

    def open(self, version: int) -> None:
        from flowlm.generate.engine import GenerateConfig

        ray, cfg, src = self.ray, self.cfg, self.source
        if not ray.is_initialized():
            if cfg.ray_address is None:
                cpus = max(cfg.num_rollout_workers * cfg.rollout_worker_cpus + cfg.num_reward_workers, os.cpu_count() or 1)
                ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=cfg.ray_address, log_to_driver=False)
            self._owns = True
        self.rollout_cls = ray.remote(RolloutActor)
        self.reward_cls = ray.remote(RewardActor)
        from flowlm.model.adapter import HFCausalLM

        model = self.model
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        if isinstance(model, HFCausalLM):  # the wrapped model's transformers config; `max_position_embeddings`
            config = model.hf.config
            self.model_spec = (HFCausalLM.from_config, config, dtype)
            longest = getattr(config, "max_position_embeddings", None) or src.max_len
        else:
            self.model_spec = (plain_class(model), model.cfg, dtype)
            longest = getattr(model.cfg, "max_seq_len", src.max_len)
        self.tokenizer_ref = ray.put(src.tokenizer)
        context = min(src.max_len, longest)
        self.gen_cfg = GenerateConfig(max_slots=cfg.max_slots or cfg.prompts_per_step * cfg.group_size,
                                      context=context, enable_thinking=cfg.thinking, logprobs=cfg.logprobs_mode())
        self.weights_ref = ray.put(pack_state(src.policy_weights()))
        if cfg.num_reward_workers == 0:
            local_pool(src)
            return
        from flowlm.verify.base import get_verifier
        from flowlm.verify.rows import pairs_of

        self.verifiers = sorted({p.name for row in src.rows for p in pairs_of(row)})
        self.modules = sorted({get_verifier(v).__module__ for v in self.verifiers} - {"__main__"})
        self.rewards = [(f"reward-{k}", self._new_reward(f"reward-{k}")) for k in range(cfg.num_reward_workers)]
        deadline = time.perf_counter() + cfg.rollout_timeout
        for name, handle in self.rewards:
            self._ready(name, handle, deadline - time.perf_counter())

    def _new_reward(self, name: str) -> Any:
        cfg = self.cfg
        return self.reward_cls.options(num_cpus=1).remote(name, self.modules, self.verifiers, cfg.verify_workers,
                                                           cfg.verify_timeout)

    def _ready(self, name: str, handle: Any, timeout: float) -> None:
        ray = self.ray
        try:
            ray.get(handle.ready.remote(), timeout=max(timeout, 0.0))
        except ray.exceptions.GetTimeoutError:
            raise FlowError(f"rl ray: reward worker '{name}' did not start within {timeout:.0f} s (rollout_timeout; "
                            f"it asks Ray for 1 CPU: ray.available_resources() = {ray.available_resources()})") from None
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
            raise FlowError(f"rl ray: reward worker '{name}' failed to start: {describe(exc)}") from None

    def new_unit(self, name: str, version: int) -> RolloutUnit:
        return RayUnit(name, self, version)

    def weights(self) -> Any:
        """The policy's weights in the object store, once for every actor (also what a restarted actor gets)."""
        self.weights_ref = self.ray.put(pack_state(self.source.policy_weights()))
        return self.weights_ref

    def verify(self, rows: list[dict[str, Any]], texts: list[str], stop: threading.Event) -> list[Any] | None:
        if not self.rewards:
            return super().verify(rows, texts, stop)
        ray = self.ray
        size = math.ceil(len(rows) / len(self.rewards))
        calls = [(name, handle.verify.remote(rows[i:i + size], texts[i:i + size]))
                 for (name, handle), i in zip(self.rewards, range(0, len(rows), size))]
        if not _wait(ray, [ref for _, ref in calls], stop):
            return None
        out: list[Any] = []
        for name, ref in calls:
            try:
                out += ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                raise WorkerLost(name, describe(exc)) from exc
        return out

    def repair(self, err: BaseException | None) -> None:
        """Replace the reward actor `err` names (a `WorkerLost`)."""
        name = getattr(err, "worker", None)
        for k, (known, handle) in enumerate(self.rewards):
            if known == name:
                with contextlib.suppress(Exception):  # already gone
                    self.ray.kill(handle, no_restart=True)
                fresh = self._new_reward(name)
                self._ready(name, fresh, self.cfg.rollout_timeout)
                self.rewards[k] = (name, fresh)

    def close(self) -> None:
        ray = self.ray
        rewards, self.rewards = self.rewards, []
        for _, handle in rewards:
            with contextlib.suppress(Exception):  # already gone
                ray.kill(handle, no_restart=True)
        if self._owns and ray.is_initialized():
            ray.shutdown()
        self._owns = False
