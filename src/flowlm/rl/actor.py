"""Async actor–learner: rollout workers generate ahead of the learner (issue #15, build 5).

Modes `async` and `ray` of `flowlm.rl.source.RolloutConfig`; the trainer's loop does not change:

    source = RolloutSource(rows, tok, RolloutConfig(mode="async", async_steps=2), seed=0, max_len=512)
    source.bind(model)
    for batch in source: ...          # the trainer; source.close() stops the workers

The rollout side is a set of **rollout units** (`RolloutUnit`: an engine somewhere, `flowlm.generate.Engine`
with continuous batching, fed by a driver thread of this process) and one **verify unit** (`verify-0`, a
driver thread scoring finished groups). A backend decides where the engines and the verifiers live:
- mode `async` (`ThreadBackend`): one unit `rollout-0` whose engine steps in its driver thread, in the
  trainer's process (sharing its cores); verification in this process or in a `VerifyPool`;
- mode `ray` (`flowlm.rl.ray_workers.RayBackend`): `num_rollout_workers` units `rollout-<k>`, each a Ray
  actor holding its own engine built from the policy's config and weights; verification in
  `num_reward_workers` Ray actors `reward-<k>` (or in this process with 0).
Everything else is this module's and the same in both modes: prompt dispatch, the ready buffer,
staleness, weight pushes and their timeout, restarts, prompt accounting, the batch and its metrics.

- A rollout unit's thread: while fewer than `max_inflight_groups` groups are dispatched and not yet
  consumed (and fewer than its share, `max_inflight_groups / units` rounded up), it takes the next prompt
  (re-queued prompts first, then the seeded prompt streams) and submits it with `n = group_size`; then it
  advances its engine (mode async: one engine step; mode ray: one actor call that runs engine steps until
  a group finishes or `RUN_BUDGET_S` passes) and hands finished groups to the verify unit.
- The verify unit scores finished groups (`verify_completions`, or the reward actors) and appends them to
  the ready buffer. Verification runs beside generation, never on the learner's critical path.
- The learner (the trainer's thread), once per batch: pushes the policy's weights to every unit as an
  **inflight update** (applied between two decode steps, in-flight sequences continue on the new weights,
  nothing is drained; open-instruct `--inflight_updates`), with version = optimizer steps done (mode
  async: `Engine.update_weights(..., wait=False)` with a copy of the state dict; mode ray: the state dict
  is put in Ray's object store once and its ref sent to every actor); then takes ready groups until the
  batch holds `prompts_per_step` informative ones (zero-std filtering and active sampling as in sync mode:
  at most `RolloutConfig.max_groups()` groups are taken, as many as sync mode's rounds may draw; the
  shortfall is masked padding). Token ids,
  the engine's log-probs and each token's policy version pass into the batch unchanged
  (`rollout_versions`); the `grpo` objective's truncated importance weights correct the off-policy tokens
  (OLMo 3: TIS cap 2.0 with `async_steps` 8).

Minibatches (`minibatches` M or `num_epochs` E > 1; OLMo 3 Instruct RL ran M = 4 with `async_steps` 8):
the learner asks for a batch once per rollout batch, so the weights are pushed once per M x E optimizer
steps, as open-instruct syncs once per training step. `flowlm.rl.source` splits the batch and takes the
old-policy pass (`old_logps`, the policy at the batch's first step) in the trainer's thread; the `grpo`
objective's ratio is against that policy and its truncated importance weights against the engine's
log-probs, so a group sampled several versions back is corrected towards `old_logps`, as AReaL's decoupled
loss and open-instruct's TIS do. Versions stay optimizer steps done (the sync mode's numbers); lags count
weight pushes (`batches_behind`).

Staleness. A group's lag is the number of weight pushes between its oldest token's version and the
learner's (with one optimizer step per batch, the difference of the two). A group whose lag
exceeds `async_steps` is dropped, counted (`stale_dropped`) and its prompt re-queued at the front: the
replacement is a fresh sample of the same prompt, so dropping does not bias the batch towards prompts
with short completions (tinker-cookbook#822) and no prompt is lost. Pacing keeps drops rare: at most
`max_inflight_groups` (default `async_steps x prompts_per_step`) groups are dispatched and not yet
consumed, so with in-order completion a group is consumed within `async_steps` versions of its start;
out-of-order completion and filtered groups can exceed that, and the drop is the guard.

Faults, all loud. A weight update not applied by a unit within `weight_sync_timeout` seconds (its worker
is stuck inside a decode step) is a FlowError naming the worker; it never hangs. A unit whose thread dies
with an exception (mode ray: also a dead actor, seen by a failed weight update) is restarted alone: every
prompt dispatched to it and not yet handed to verification is re-queued (front, dispatch order), a fresh
engine (mode ray: a fresh actor) is built with the newest pushed weights, a warning line names the worker
(`worker_restarts`); a dead verify unit re-queues the groups it held and the dead reward actor (if any) is
replaced. After `max_worker_restarts` restarts in all the run fails naming the worker and its exception.
A FlowError in a worker (every prompt solved) fails the run at once. No verified group within
`rollout_timeout` seconds is a FlowError.

Resume without loss or replay. The checkpoint (`RolloutSource.state_dict`, taken under this actor's
lock) holds the prompt streams, whose cursors have passed every prompt drawn, and `requeue`: every
prompt drawn and not consumed by the learner (re-queued ones, then dispatched ones in dispatch order).
A resumed run regenerates those first, with the resumed weights; consumed prompts are behind the
cursors and not drawn again in the epoch. Rollouts themselves are not saved: what was in flight at
the checkpoint is regenerated, not trained on from before the crash. The log (`rollouts.jsonl`) has per
batch the prompt ids `drawn` from the streams since the previous batch, `consumed` (every group taken:
trained, filtered or padding), `trained`, `stale_dropped`, `lags`, and `pending` (drawn, not consumed)
after the batch: at every record, all drawn so far = all consumed so far + pending, with no id twice.

Metrics per batch (`stat_*` columns, see `flowlm.rl.source`): `stale_dropped`, the staleness histogram
`staleness/lag_0..lag_<async_steps>` (consumed groups per lag) and its mean `policy_lag`,
`learner_idle_share` (time the learner waited for groups / wall time since the previous batch),
`rollout_tok_s` (tokens generated since the previous batch / that wall time), `worker_restarts`,
`requeued_on_restart`, `time_wait_s`, `time_sync_s` (snapshot and push of the weights), and the busy
seconds of the workers since the previous batch, `time_generate_s` (summed over the rollout units) and
`time_verify_s` (beside the learner, not on its path).
"""

from __future__ import annotations

import math
import queue
import sys
import threading
import time
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

import numpy as np

from flowlm.errors import FlowError
from flowlm.rl.units import (
    POLL_S, READY, VERIFY, Backend, Ready, RolloutUnit, ThreadBackend, Unit, VerifyUnit, describe,
)

if TYPE_CHECKING:  # (no torch import here: mode ray's reward actors import this module and need none)
    from torch import nn

    from flowlm.rl.source import Group, RolloutSource


def batches_behind(steps_behind: int, steps_per_batch: int) -> int:
    """Weight pushes between a token's policy version and the learner's, both in optimizer steps done: the
    weights are pushed once per rollout batch of `steps_per_batch` steps, so the pushes after a version `v`
    up to `V` number `ceil((V - v) / steps_per_batch)` (a resume between two minibatches starts the engine
    on a version off the batch boundary; the next push still counts one)."""
    return -(-steps_behind // steps_per_batch)


class AsyncRollouts:
    """The rollout side of modes `async` and `ray` and the learner's batch assembly (see module docstring)."""

    def __init__(self, source: RolloutSource, policy: nn.Module, resume: dict[str, Any]) -> None:
        cfg = source.cfg
        self.source, self.policy, self.cfg = source, policy, cfg
        if cfg.mode == "ray":
            from flowlm.rl.ray_workers import RayBackend

            self.backend: Backend = RayBackend(source, policy)
        else:
            self.backend = ThreadBackend(source, policy)
        self.mode = self.backend.mode
        self.max_inflight = cfg.max_inflight_groups or cfg.async_steps * cfg.prompts_per_step
        self.per_unit = math.ceil(self.max_inflight / len(self.backend.names))
        self.lock = threading.Condition()  # guards everything below and the source's prompt streams
        self.requeue: deque[int] = deque(int(i) for i in resume.get("requeue", []))
        self.dispatched = int(resume.get("dispatched", 0))
        self.drawn_unlogged = [int(i) for i in resume.get("drawn_unlogged", [])]
        self.outstanding: dict[int, int] = {}  # ticket -> prompt index: dispatched, not consumed
        self.owner: dict[int, str] = {}  # ticket -> who holds it: a rollout unit, VERIFY or READY
        self.load: Counter[str] = Counter()  # tickets per owner
        self.ready: deque[Ready] = deque()
        self.activity: Counter[str] = Counter()  # the workers' busy seconds and tokens since the last batch
        self.restarts = 0
        self.units: list[RolloutUnit] = []
        self.verifier: VerifyUnit | None = None
        self.pushed = -1  # the newest version pushed
        self._last_batch = time.perf_counter()

    # -- life cycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the workers on the policy's current (possibly resumed) weights, then their threads."""
        version = self.source.steps  # optimizer steps done (a resume may land between two minibatches)
        try:
            self.backend.open(version)
            self.pushed = version
            for name in self.backend.names:
                self.units.append(self.backend.new_unit(name, version))
            deadline = time.perf_counter() + self.cfg.rollout_timeout
            for unit in self.units:
                unit.ready(deadline - time.perf_counter())
        except BaseException:
            self.close()
            raise
        self._start_verifier()  # first: a rollout thread hands finished groups to it (none may be dropped)
        for unit in self.units:
            unit.start_thread(lambda unit=unit: self._rollout_loop(unit))
        self._last_batch = time.perf_counter()

    def _start_verifier(self, v: VerifyUnit | None = None) -> None:
        if v is None:
            v = VerifyUnit()
            with self.lock:
                self.verifier = v
        v.start_thread(lambda: self._verify_loop(v))

    def close(self, timeout: float = 2.0) -> None:
        """Stop the units and release their workers. Healthy threads notice within one engine step or
        `POLL_S`; a thread stuck in a step or a long verification is a daemon and is left behind."""
        with self.lock:
            units, verifier = self.units, self.verifier
            self.units, self.verifier = [], None
            everyone: list[Unit] = [*units, *([verifier] if verifier is not None else [])]
            for u in everyone:
                u.stop.set()
            self.lock.notify_all()
        for u in everyone:
            if u.worker is not None:
                u.worker.thread.join(timeout)
        for unit in units:
            unit.close()
        self.backend.close()

    def state(self) -> dict[str, Any]:
        """Prompts drawn and not consumed, re-queued ones first (call under `self.lock`)."""
        with self.lock:
            return {"requeue": list(self.requeue) + [self.outstanding[t] for t in sorted(self.outstanding)],
                    "dispatched": self.dispatched, "drawn_unlogged": list(self.drawn_unlogged)}

    # -- ticket bookkeeping (under self.lock) ---------------------------------------------------------
    def _own(self, ticket: int, who: str) -> None:
        old = self.owner.get(ticket)
        if old is not None:
            self.load[old] -= 1
        self.owner[ticket] = who
        self.load[who] += 1

    def _release(self, ticket: int) -> int:
        """Forget a ticket (consumed or re-queued); returns its prompt index."""
        self.load[self.owner.pop(ticket)] -= 1
        return self.outstanding.pop(ticket)

    def _room(self, unit: RolloutUnit) -> int:
        return min(self.max_inflight - len(self.outstanding), self.per_unit - self.load[unit.name])

    # -- the rollout and verify threads -----------------------------------------------------------------
    def _rollout_loop(self, unit: RolloutUnit) -> None:
        while not unit.stop.is_set():
            out = unit.advance(self._claim(unit))
            if out is None:  # nothing to generate: wait for room to dispatch
                with self.lock:
                    self.lock.wait_for(lambda: unit.stop.is_set() or self._room(unit) > 0, timeout=POLL_S)
                continue
            done, seconds, tokens = out
            with self.lock:
                self.activity["generate_s"] += seconds
                self.activity["tokens"] += tokens
                verifier = self.verifier
                for res in done:
                    ticket = res.tag[0]
                    if verifier is None or self.owner.get(ticket) != unit.name:
                        continue  # closing, or re-queued meanwhile
                    self._own(ticket, VERIFY)
                    verifier.queue.put(res)
                    unit.groups += 1

    def _claim(self, unit: RolloutUnit) -> list[tuple[list[int], Any, Any]]:
        """Prompts for `unit` while fewer than `max_inflight` groups are dispatched and not consumed (and
        fewer than its share): `(prompt_ids, params, (ticket, index))`, seeded by (seed, ticket)."""
        from flowlm.generate.params import SamplingParams

        cfg, src = self.cfg, self.source
        claimed: list[tuple[int, int]] = []
        with self.lock:
            while not unit.stop.is_set() and self._room(unit) > 0:
                ticket = self.dispatched
                if self.requeue:
                    index = self.requeue.popleft()
                else:  # seeded by (seed, ticket); skipped solved prompts are counted with the next batch
                    rng = np.random.default_rng([src.seed, ticket, 0, 2])
                    index = src.draw(rng, src.streams.names(), self.activity)
                    self.drawn_unlogged.append(index)
                self.dispatched += 1
                self.outstanding[ticket] = index
                self._own(ticket, unit.name)
                claimed.append((ticket, index))
        out = []
        for ticket, index in claimed:
            seed = int(np.random.default_rng([src.seed, ticket, 0, 3]).integers(1 << 30))
            params = SamplingParams(n=cfg.group_size, temperature=cfg.temperature, top_p=cfg.top_p,
                                    max_new_tokens=cfg.max_new_tokens, stop=tuple(cfg.stop),
                                    stop_token_ids=src.stop_ids, seed=seed)
            out.append((src.prompt_ids[index], params, (ticket, index)))
        return out

    def _verify_loop(self, v: VerifyUnit) -> None:
        src = self.source
        while not v.stop.is_set():
            try:
                results = [v.queue.get(timeout=POLL_S)]
            except queue.Empty:
                continue
            while not v.queue.empty():  # everything finished so far in one call (one round trip)
                results.append(v.queue.get_nowait())
            for res in results:
                if not res.ok:  # prompts were checked against the context: a bug, not bad data
                    raise FlowError(f"prompt {src.rows[res.tag[1]].get('id', res.tag[1])} could not be sampled: "
                                    f"{res.error}")
            t0 = time.perf_counter()
            rows = [src.rows[res.tag[1]] for res in results for _ in res.completions]
            verdicts = self.backend.verify(rows, [c.text for res in results for c in res.completions], v.stop)
            if verdicts is None:
                return  # stopped
            with self.lock:
                self.activity["verify_s"] += time.perf_counter() - t0
                if v is not self.verifier:
                    return  # replaced meanwhile: these prompts were re-queued
                k = 0
                for res in results:
                    n = len(res.completions)
                    if self.owner.get(res.tag[0]) == VERIFY:
                        self._own(res.tag[0], READY)
                        self.ready.append(Ready(res.tag[0], res.tag[1], res, verdicts[k:k + n]))
                    k += n
                self.lock.notify_all()

    # -- the learner's side --------------------------------------------------------------------------
    def next_batch(self) -> dict[str, Any]:
        """Push the weights, take verified groups into a batch (see module docstring)."""
        cfg, src = self.cfg, self.source
        t0 = time.perf_counter()
        version = src.steps  # optimizer steps done: the version of the policy this batch trains
        per_batch = cfg.steps_per_batch()
        stats: Counter[str] = Counter()
        self._check(stats)
        self._push(version, stats)
        kept: list[Group] = []
        spare: list[Group] = []
        taken: list[Group] = []
        dropped: list[int] = []
        lags: list[int] = []
        limit = cfg.max_groups()
        while len(kept) < cfg.prompts_per_step and len(taken) < limit:
            item = self._take(stats)
            lag = batches_behind(version - min(min(c.versions) for c in item.result.completions), per_batch)
            with self.lock:
                self._release(item.ticket)
                self.lock.notify_all()  # room for the rollout threads to dispatch
                if lag > cfg.async_steps:  # stale: regenerate the same prompt next
                    self.requeue.appendleft(item.index)
                    dropped.append(item.index)
                    continue
                group = src._group(item.index, 0, item.result, item.verdicts, stats)  # updates the pass rates
            taken.append(group)
            lags.append(lag)
            (kept if group.informative or not cfg.filter_zero_std else spare).append(group)
        pad = spare[len(spare) - (cfg.prompts_per_step - len(kept)):] if len(kept) < cfg.prompts_per_step else []
        groups = kept + pad
        self._batch_stats(stats, groups, spare, taken, dropped, lags)
        self._log(version, taken, groups, len(kept), dropped, lags)
        stats["time_batch_s"] += time.perf_counter() - t0
        return src.collate(groups, trains=[True] * len(kept) + [False] * len(pad), stats=stats)

    def _batch_stats(self, stats: Counter[str], groups: list[Group], spare: list[Group], taken: list[Group],
                     dropped: list[int], lags: list[int]) -> None:
        cfg = self.cfg
        stats["filtered"] = len(spare) if cfg.filter_zero_std else 0
        stats["resampled"] = max(0, len(taken) - cfg.prompts_per_step)
        stats["informative"] = sum(g.informative for g in groups)
        stats["num:informative_share"], stats["den:informative_share"] = stats["informative"], len(groups)
        stats["stale_dropped"] += len(dropped)
        for lag in range(cfg.async_steps + 1):
            stats[f"staleness/lag_{lag}"] += lags.count(lag)
        stats["num:policy_lag"], stats["den:policy_lag"] = sum(lags), len(lags)
        now = time.perf_counter()
        span, self._last_batch = now - self._last_batch, now
        with self.lock:
            act, self.activity = self.activity, Counter()
        stats["skipped_solved"] += act["skipped_solved"]
        stats["rollout_tokens"] += act["tokens"]
        stats["time_generate_s"] += act["generate_s"]
        stats["time_verify_s"] += act["verify_s"]
        stats["num:rollout_tok_s"], stats["den:rollout_tok_s"] = act["tokens"], span
        stats["num:learner_idle_share"], stats["den:learner_idle_share"] = stats["time_wait_s"], span
        src = self.source
        src.totals.update({k: v for k, v in stats.items() if not k.startswith(("num:", "den:", "time_"))})
        src.totals["batches"] += 1

    def _take(self, stats: Counter[str]) -> Ready:
        """The oldest verified group; waits (checking the workers and the weight sync) up to `rollout_timeout`."""
        t0 = time.perf_counter()
        try:
            while True:
                with self.lock:
                    if self.ready:
                        return self.ready.popleft()
                    self.lock.wait(POLL_S)
                    if self.ready:
                        return self.ready.popleft()
                self._check(stats)
                if time.perf_counter() - t0 > self.cfg.rollout_timeout:
                    names = ", ".join(f"'{u.name}'" for u in self.units)
                    raise FlowError(f"rl {self.mode}: no verified group within rollout_timeout "
                                    f"{self.cfg.rollout_timeout} s (rollout workers {names}, "
                                    f"{len(self.outstanding)} groups in flight)")
        finally:
            stats["time_wait_s"] += time.perf_counter() - t0

    def _push(self, version: int, stats: Counter[str]) -> None:
        """Snapshot the policy's weights once and queue them on every unit as an inflight update (no waiting,
        no draining)."""
        if version == self.pushed:
            return
        t0 = time.perf_counter()
        weights = self.backend.weights()
        for unit in self.units:
            if unit.unapplied_since is None or unit.applied() >= unit.pushed:
                unit.unapplied_since = t0
            unit.push(weights, version)
            unit.pushed = version
        self.pushed = version
        stats["time_sync_s"] += time.perf_counter() - t0

    def _check(self, stats: Counter[str]) -> None:
        """Restart dead units. Fail when a pushed weight update stayed unapplied past `weight_sync_timeout`
        on some unit, or when one of its engine steps has run that long (no update could land: caught even
        while no push waits)."""
        for unit in list(self.units):
            unit.applied()  # mode ray: polls the pushes, which notices a dead actor
        for unit in [*self.units, *([self.verifier] if self.verifier is not None else [])]:
            if not unit.alive:
                self._restart(unit, stats)
        now, timeout = time.perf_counter(), self.cfg.weight_sync_timeout
        for unit in self.units:
            version = unit.applied()
            unapplied = now - (unit.unapplied_since or now) if version < unit.pushed else 0.0
            stuck = unit.busy_s()
            if max(unapplied, stuck) > timeout:
                why = (f"policy version {unit.pushed} pushed {unapplied:.1f} s ago is not applied"
                       if unapplied > timeout else unit.busy_what.format(s=stuck))
                raise FlowError(f"rl {self.mode}: weight sync to rollout worker '{unit.name}' timed out: {why} "
                                f"(weight_sync_timeout {timeout} s; the worker is at policy version {version})")

    def _restart(self, dead: Unit, stats: Counter[str]) -> None:
        """Replace the unit `dead`: what it held and had not handed on is re-queued, not lost."""
        err = dead.error
        name, what = getattr(err, "worker", dead.name), describe(err)
        if isinstance(err, FlowError):
            cause = getattr(err, "cause", None)
            raise FlowError(f"rl {self.mode}: worker '{name}': "
                            f"{cause if isinstance(cause, BaseException) else err}") from err
        self.restarts += 1
        if self.restarts > self.cfg.max_worker_restarts:
            raise FlowError(f"rl {self.mode}: worker '{name}' died ({what}); {self.restarts} crashes exceed "
                            f"max_worker_restarts {self.cfg.max_worker_restarts}") from err
        dead.stop.set()
        with self.lock:
            self.lock.notify_all()
        if dead.worker is not None:
            dead.worker.thread.join(self.cfg.weight_sync_timeout)
            if dead.worker.thread.is_alive():
                raise FlowError(f"rl {self.mode}: worker '{dead.name}' did not stop within "
                                f"{self.cfg.weight_sync_timeout} s after it failed ({what})") from err
        if isinstance(dead, RolloutUnit):
            dead.close()
        with self.lock:
            lost = sorted(t for t, who in self.owner.items() if who == dead.name)
            self.requeue.extendleft(self._release(t) for t in reversed(lost))
            if isinstance(dead, VerifyUnit):  # swapped under the lock: no result goes to the dead queue
                self.verifier = VerifyUnit()  # its thread starts below; finished groups queue up meanwhile
            fresh = self.verifier
        stats["worker_restarts"] += 1
        stats["requeued_on_restart"] += len(lost)
        print(f"warning: rl {self.mode}: worker '{name}' died ({what}); restarted ({self.restarts} so far), "
              f"{len(lost)} prompts re-queued", file=sys.stderr, flush=True)
        if isinstance(dead, VerifyUnit):
            self.backend.repair(err)
            self._start_verifier(fresh)
            return
        unit = self.backend.new_unit(dead.name, self.pushed)  # the newest pushed weights
        unit.ready(self.cfg.rollout_timeout)
        self.units[self.units.index(dead)] = unit
        unit.start_thread(lambda: self._rollout_loop(unit))

    def _log(self, version: int, taken: list[Group], groups: list[Group], n_trained: int, dropped: list[int],
             lags: list[int]) -> None:
        src = self.source
        with self.lock:
            drawn, self.drawn_unlogged = self.drawn_unlogged, []
            pending = self.state()["requeue"]
        if src.log_path is None:
            return

        def ids(indices: Any) -> list[str]:
            return [str(src.rows[i].get("id", i)) for i in indices]

        rec = {"position": src.position, "version": version, "drawn": ids(drawn),
               "consumed": ids(g.index for g in taken), "trained": ids(g.index for g in groups[:n_trained]),
               "stale_dropped": ids(dropped), "lags": lags, "pending": ids(pending),
               "pass_rates": [round(float(g.scores.mean()), 4) for g in groups]}
        src.append_log(rec)
