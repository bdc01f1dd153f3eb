"""Async actor–learner on one machine: rollout threads generate ahead of the learner (issue #15, build 5).

Mode `async` of `flowlm.rl.source.RolloutConfig`; the trainer's loop does not change:

    source = RolloutSource(rows, tok, RolloutConfig(mode="async", async_steps=2), seed=0, max_len=512)
    source.bind(model)
    for batch in source: ...          # the trainer; source.close() stops the threads

Threads (daemons, started by the first batch; together they are a "crew"):
- `rollout-0` feeds the engine (`flowlm.generate.Engine`, continuous batching, `max_slots` sequences at
  a time): while fewer than `max_inflight_groups` groups are dispatched and not yet consumed, it takes the
  next prompt (re-queued prompts first, then the seeded prompt streams) and submits it with
  `n = group_size`; then it runs one engine step and hands finished groups to the verify thread.
- `verify-0` scores finished groups (in this process, or in a `VerifyPool` of processes with hard
  timeouts) and appends them to the ready buffer. Verification runs beside generation, never on the
  learner's critical path.
- The learner (the trainer's thread), once per batch: pushes the policy's weights as an **inflight
  update** (`Engine.update_weights(..., wait=False)`: applied between two decode steps, in-flight
  sequences continue on the new weights, nothing is drained; open-instruct `--inflight_updates`), with
  version = optimizer steps done; then takes ready groups until the batch holds `prompts_per_step`
  informative ones (zero-std filtering and active sampling as in sync mode: at most
  `prompts_per_step x max_draws` groups are taken, the shortfall is masked padding). Token ids, the
  engine's log-probs and each token's policy version pass into the batch unchanged
  (`rollout_versions`); the `grpo` objective's truncated importance weights correct the off-policy
  tokens (OLMo 3: TIS cap 2.0 with `async_steps` 8).

Staleness. A group's lag is the learner's version minus its oldest token's version. A group whose lag
exceeds `async_steps` is dropped, counted (`stale_dropped`) and its prompt re-queued at the front: the
replacement is a fresh sample of the same prompt, so dropping does not bias the batch towards prompts
with short completions (tinker-cookbook#822) and no prompt is lost. Pacing keeps drops rare: at most
`max_inflight_groups` (default `async_steps x prompts_per_step`) groups are dispatched and not yet
consumed, so with in-order completion a group is consumed within `async_steps` versions of its start;
out-of-order completion and filtered groups can exceed that, and the drop is the guard.

Faults, all loud. A weight update not applied within `weight_sync_timeout` seconds (the rollout thread
is stuck inside a decode step) is a FlowError naming the worker; it never hangs. A worker thread that
dies with an exception is restarted: the crew is stopped, every prompt dispatched and not yet verified
is re-queued (front, dispatch order), a fresh engine is built from the current policy, the crew starts
again (`worker_restarts`, a warning line naming the worker); after `max_worker_restarts` restarts the
run fails naming the worker and its exception. A FlowError in a worker (every prompt solved) fails the
run at once. No verified group within `rollout_timeout` seconds is a FlowError.

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
`time_wait_s`, `time_sync_s` (snapshot and push of the weights), and the busy seconds of the threads
since the previous batch, `time_generate_s` and `time_verify_s` (beside the learner, not on its path).
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from flowlm.errors import FlowError

if TYPE_CHECKING:
    from flowlm.rl.source import Group, RolloutSource

POLL_S = 0.05  # how often a waiting thread re-checks stop flags, dead workers and timeouts
ROLLOUT, VERIFY = "rollout-0", "verify-0"


@dataclass
class Ready:
    """A verified group waiting for the learner."""

    ticket: int  # dispatch number
    index: int  # prompt index
    result: Any  # flowlm.generate.params.Result
    verdicts: list[Any]


class Worker:
    """A daemon thread running `loop()`; keeps the exception that ended it."""

    def __init__(self, name: str, loop: Callable[[], None]) -> None:
        self.name, self._loop = name, loop
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"flowlm-rl-{name}", daemon=True)

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - the learner reports it (restart or fail)
            self.error = exc


class Crew:
    """One engine and the threads driving it; replaced as a whole when a thread dies."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.stop = threading.Event()
        self.finished: queue.Queue[Any] = queue.Queue()  # engine results waiting for verification
        self.workers: list[Worker] = []
        self.step_started: float | None = None  # when the running engine step began (None: between steps)


class AsyncRollouts:
    """The rollout side of mode `async` and the learner's batch assembly (see module docstring)."""

    def __init__(self, source: RolloutSource, policy: nn.Module, resume: dict[str, Any]) -> None:
        cfg = source.cfg
        self.source, self.policy, self.cfg = source, policy, cfg
        self.max_inflight = cfg.max_inflight_groups or cfg.async_steps * cfg.prompts_per_step
        self.lock = threading.Condition()  # guards everything below and the source's prompt streams
        self.requeue: deque[int] = deque(int(i) for i in resume.get("requeue", []))
        self.dispatched = int(resume.get("dispatched", 0))
        self.drawn_unlogged = [int(i) for i in resume.get("drawn_unlogged", [])]
        self.outstanding: dict[int, int] = {}  # ticket -> prompt index: dispatched, not consumed
        self.ready: deque[Ready] = deque()
        self.activity: Counter[str] = Counter()  # the threads' busy seconds and tokens since the last batch
        self.restarts = 0
        self.crew: Crew | None = None
        self.pushed = -1  # the newest version pushed
        self.unapplied_since: float | None = None  # when the oldest push not yet applied was made
        self._last_batch = time.perf_counter()

    # -- life cycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Load the policy's current (possibly resumed) weights into the engine and start the crew."""
        if self.cfg.verify_workers > 0 and self.source._pool is None:
            from flowlm.verify.pool import VerifyPool

            # forkserver: replacing a worker must not fork this process while a rollout thread runs torch
            self.source._pool = VerifyPool(workers=self.cfg.verify_workers, timeout=self.cfg.verify_timeout,
                                           context="forkserver")
        engine = self.source.engine
        engine.update_weights(self._snapshot(), version=self.source.position)  # idle: applied now
        self.pushed = self.source.position
        self._start_crew(engine)
        self._last_batch = time.perf_counter()

    def _start_crew(self, engine: Any) -> None:
        crew = Crew(engine)
        crew.workers = [Worker(ROLLOUT, lambda: self._rollout_loop(crew)),
                        Worker(VERIFY, lambda: self._verify_loop(crew))]
        self.crew = crew
        self.source.engine = engine
        for w in crew.workers:
            w.thread.start()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the crew. Healthy threads notice within one engine step or `POLL_S`; a thread stuck in a
        step or a long verification is a daemon and is left behind (it exits when it returns)."""
        crew, self.crew = self.crew, None
        if crew is None:
            return
        crew.stop.set()
        with self.lock:
            self.lock.notify_all()
        for w in crew.workers:
            w.thread.join(timeout)

    def state(self) -> dict[str, Any]:
        """Prompts drawn and not consumed, re-queued ones first (call under `self.lock`)."""
        with self.lock:
            return {"requeue": list(self.requeue) + [self.outstanding[t] for t in sorted(self.outstanding)],
                    "dispatched": self.dispatched, "drawn_unlogged": list(self.drawn_unlogged)}

    # -- the rollout and verify threads -----------------------------------------------------------------
    def _rollout_loop(self, crew: Crew) -> None:
        engine = crew.engine
        while not crew.stop.is_set():
            self._dispatch(crew)
            if not engine.has_unfinished():
                with self.lock:
                    self.lock.wait_for(lambda: crew.stop.is_set() or len(self.outstanding) < self.max_inflight,
                                       timeout=POLL_S)
                continue
            t0 = crew.step_started = time.perf_counter()
            n0 = engine.stats["generated_tokens"]
            done = engine.step()
            crew.step_started = None
            with self.lock:
                self.activity["generate_s"] += time.perf_counter() - t0
                self.activity["tokens"] += engine.stats["generated_tokens"] - n0
            for res in done:
                crew.finished.put(res)

    def _dispatch(self, crew: Crew) -> None:
        """Submit prompts while fewer than `max_inflight` groups are dispatched and not consumed."""
        from flowlm.generate.params import SamplingParams

        cfg, src = self.cfg, self.source
        while True:
            with self.lock:
                if crew.stop.is_set() or len(self.outstanding) >= self.max_inflight:
                    return
                ticket = self.dispatched
                if self.requeue:
                    index = self.requeue.popleft()
                else:  # seeded by (seed, ticket); skipped solved prompts are counted with the next batch
                    rng = np.random.default_rng([src.seed, ticket, 0, 2])
                    index = src.draw(rng, list(src.streams), self.activity)
                    self.drawn_unlogged.append(index)
                self.dispatched += 1
                self.outstanding[ticket] = index
            seed = int(np.random.default_rng([src.seed, ticket, 0, 3]).integers(1 << 30))
            params = SamplingParams(n=cfg.group_size, temperature=cfg.temperature, top_p=cfg.top_p,
                                    max_new_tokens=cfg.max_new_tokens, seed=seed)
            crew.engine.submit(src.prompt_ids[index], params, tag=(ticket, index))

    def _verify_loop(self, crew: Crew) -> None:
        from flowlm.rl.source import verify_completions  # (patchable there: tests inject failures)

        src = self.source
        while not crew.stop.is_set():
            try:
                results = [crew.finished.get(timeout=POLL_S)]
            except queue.Empty:
                continue
            while not crew.finished.empty():  # everything finished so far in one call (one pool round trip)
                results.append(crew.finished.get_nowait())
            for res in results:
                if not res.ok:  # prompts were checked against the context: a bug, not bad data
                    raise FlowError(f"prompt {src.rows[res.tag[1]].get('id', res.tag[1])} could not be sampled: "
                                    f"{res.error}")
            t0 = time.perf_counter()
            rows = [src.rows[res.tag[1]] for res in results for _ in res.completions]
            verdicts = verify_completions(rows, [c.text for res in results for c in res.completions], pool=src._pool)
            with self.lock:
                self.activity["verify_s"] += time.perf_counter() - t0
                if crew is not self.crew:
                    return  # replaced meanwhile: these prompts were re-queued
                k = 0
                for res in results:
                    n = len(res.completions)
                    self.ready.append(Ready(res.tag[0], res.tag[1], res, verdicts[k:k + n]))
                    k += n
                self.lock.notify_all()

    # -- the learner's side --------------------------------------------------------------------------
    def next_batch(self) -> dict[str, Any]:
        """Push the weights, take verified groups into a batch (see module docstring)."""
        cfg, src = self.cfg, self.source
        t0 = time.perf_counter()
        version = src.position  # optimizer steps done: the version of the policy this batch trains
        stats: Counter[str] = Counter()
        self._check(stats)
        self._push(version, stats)
        kept: list[Group] = []
        spare: list[Group] = []
        taken: list[Group] = []
        dropped: list[int] = []
        lags: list[int] = []
        limit = cfg.prompts_per_step * (cfg.max_draws if cfg.active_sampling else 1)
        while len(kept) < cfg.prompts_per_step and len(taken) < limit:
            item = self._take(stats)
            lag = version - min(min(c.versions) for c in item.result.completions)
            with self.lock:
                del self.outstanding[item.ticket]
                self.lock.notify_all()  # room for the rollout thread to dispatch
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
                    raise FlowError(f"rl async: no verified group within rollout_timeout {self.cfg.rollout_timeout} s "
                                    f"(rollout worker '{ROLLOUT}', {len(self.outstanding)} groups in flight)")
        finally:
            stats["time_wait_s"] += time.perf_counter() - t0

    def _push(self, version: int, stats: Counter[str]) -> None:
        """Snapshot the policy's weights and queue them as an inflight update (no waiting, no draining)."""
        if version == self.pushed:
            return
        t0 = time.perf_counter()
        engine = self.crew.engine
        if self.unapplied_since is None or engine.version >= self.pushed:
            self.unapplied_since = t0
        # a copy: the engine may load it after the learner's next optimizer step has begun changing the weights
        engine.update_weights(self._snapshot(), version=version, wait=False)
        self.pushed = version
        stats["time_sync_s"] += time.perf_counter() - t0

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.policy.state_dict().items()}

    def _check(self, stats: Counter[str]) -> None:
        """Restart a dead crew. Fail when a pushed weight update stayed unapplied past `weight_sync_timeout`,
        or when one engine step has run that long (no update could land: caught even while no push waits)."""
        crew = self.crew
        dead = next((w for w in crew.workers if not w.thread.is_alive()), None)
        if dead is not None:
            self._restart(dead, stats)
            return
        now, timeout, version = time.perf_counter(), self.cfg.weight_sync_timeout, crew.engine.version
        unapplied = now - (self.unapplied_since or now) if version < self.pushed else 0.0
        started = crew.step_started
        stuck = now - started if started is not None else 0.0
        if max(unapplied, stuck) > timeout:
            why = (f"policy version {self.pushed} pushed {unapplied:.1f} s ago is not applied" if unapplied > timeout
                   else f"one engine step has run {stuck:.1f} s, so no weight update can be applied")
            raise FlowError(f"rl async: weight sync to rollout worker '{ROLLOUT}' timed out: {why} "
                            f"(weight_sync_timeout {timeout} s; the worker is at policy version {version})")

    def _restart(self, dead: Worker, stats: Counter[str]) -> None:
        """Replace the crew after `dead` stopped: its prompts not yet verified are re-queued, not lost."""
        err = dead.error
        what = f"{type(err).__name__}: {err}" if err is not None else "exited"
        if isinstance(err, FlowError):
            raise FlowError(f"rl async: worker '{dead.name}': {err}") from err
        self.restarts += 1
        if self.restarts > self.cfg.max_worker_restarts:
            raise FlowError(f"rl async: worker '{dead.name}' died ({what}); {self.restarts} crashes exceed "
                            f"max_worker_restarts {self.cfg.max_worker_restarts}") from err
        old = self.crew
        self.close(timeout=self.cfg.weight_sync_timeout)
        stuck = [w.name for w in old.workers if w.thread.is_alive()]
        if stuck:
            raise FlowError(f"rl async: worker {stuck[0]!r} did not stop within {self.cfg.weight_sync_timeout} s "
                            f"after '{dead.name}' died ({what})") from err
        with self.lock:
            ready = {r.ticket for r in self.ready}
            lost = [t for t in sorted(self.outstanding) if t not in ready]
            self.requeue.extendleft(self.outstanding.pop(t) for t in reversed(lost))
        stats["worker_restarts"] += 1
        stats["requeued_on_restart"] += len(lost)
        print(f"warning: rl async: worker '{dead.name}' died ({what}); restarted ({self.restarts} so far), "
              f"{len(lost)} prompts re-queued", file=sys.stderr, flush=True)
        engine = self.source.make_engine(self.policy)  # the policy holds version `self.pushed` now
        engine.version = self.pushed
        self._start_crew(engine)

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
