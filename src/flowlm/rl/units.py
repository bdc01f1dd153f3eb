"""The worker side of the async actor (`flowlm.rl.actor`): rollout and verify units, the thread backend.

A *unit* is one worker fed by a driver thread of the training process: `ThreadUnit` (mode `async`: an
engine stepped in that thread) or, in `flowlm.rl.ray_workers`, a Ray actor (mode `ray`). A `Backend`
makes and replaces units; `ThreadBackend` is mode async's. `AsyncRollouts` (actor.py) owns the prompt
dispatch, staleness, accounting and batches, and talks to workers only through these classes.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # (no torch import here: mode ray's reward actors import this module and need none)
    import torch
    from torch import nn

    from flowlm.rl.source import RolloutSource

POLL_S = 0.05  # how often a waiting thread re-checks stop flags, dead workers and timeouts
ROLLOUT, VERIFY = "rollout-0", "verify-0"
READY = "<ready>"  # owner of a verified group waiting in the ready buffer


@dataclass
class Ready:
    """A verified group waiting for the learner."""

    ticket: int  # dispatch number
    index: int  # prompt index
    result: Any  # flowlm.generate.params.Result
    verdicts: list[Any]


class WorkerLost(RuntimeError):
    """A worker behind a unit is gone (e.g. a Ray actor died); `worker` names it."""

    def __init__(self, worker: str, message: str) -> None:
        super().__init__(message)
        self.worker = worker


def describe(err: BaseException | None) -> str:
    """`Type: first line of the message` of an error (a Ray task error shows the exception it wraps)."""
    if err is None:
        return "exited"
    if isinstance(err, WorkerLost):
        return str(err)  # already described
    cause = getattr(err, "cause", None)
    shown = cause if isinstance(cause, BaseException) else err
    lines = str(shown).strip().splitlines()
    return f"{type(shown).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")


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


class Unit:
    """A driver thread of this process and what it drives; replaced as a whole when it fails."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stop = threading.Event()
        self.worker: Worker | None = None
        self.lost: BaseException | None = None  # the unit's remote worker was found dead outside its thread

    def start_thread(self, loop: Callable[[], None]) -> None:
        self.worker = Worker(self.name, loop)
        self.worker.thread.start()

    @property
    def alive(self) -> bool:
        return self.lost is None and self.worker is not None and self.worker.thread.is_alive()

    @property
    def error(self) -> BaseException | None:
        return self.lost if self.lost is not None else (self.worker.error if self.worker is not None else None)


class RolloutUnit(Unit):
    """One rollout worker as the learner sees it: an engine (here or in a Ray actor) fed by its driver
    thread, which runs `AsyncRollouts._rollout_loop`. Subclasses implement the five methods below."""

    busy_what = "one engine step has run {s:.1f} s, so no weight update can be applied"

    def __init__(self, name: str, version: int) -> None:
        super().__init__(name)
        self.pushed = version  # newest version pushed to it
        self.unapplied_since: float | None = None  # when the oldest push not yet applied was made
        self.groups = 0  # groups it generated (handed to verification)

    def ready(self, timeout: float) -> None:
        """Wait until the worker can take prompts (a FlowError naming it after `timeout` seconds)."""

    def advance(self, submissions: list[tuple[list[int], Any, Any]]) -> tuple[list[Any], float, int] | None:
        """(In the unit's thread.) Submit `(prompt_ids, params, tag)`s, advance generation; return the finished
        results, the seconds spent generating and the tokens generated, or None when there is nothing to do."""
        raise NotImplementedError

    def push(self, weights: Any, version: int) -> None:
        """Queue `weights` as an inflight update with `version`; does not wait."""
        raise NotImplementedError

    def applied(self) -> int:
        """The newest policy version the worker is known to have applied."""
        raise NotImplementedError

    def busy_s(self) -> float:
        """How long the worker has been stuck in one engine step (0 between steps)."""
        return 0.0

    def close(self) -> None:
        """Release the worker (its thread is stopped)."""


class ThreadUnit(RolloutUnit):
    """Mode async: the engine steps in the unit's own thread."""

    def __init__(self, name: str, engine: Any) -> None:
        super().__init__(name, engine.version)
        self.engine = engine
        self.step_started: float | None = None  # when the running engine step began (None: between steps)

    def advance(self, submissions: list[tuple[list[int], Any, Any]]) -> tuple[list[Any], float, int] | None:
        engine = self.engine
        for prompt_ids, params, tag in submissions:
            engine.submit(prompt_ids, params, tag=tag)
        if not engine.has_unfinished():
            return None
        t0 = self.step_started = time.perf_counter()
        n0 = engine.stats["generated_tokens"]
        try:
            done = engine.step()
        finally:
            self.step_started = None
        return done, time.perf_counter() - t0, engine.stats["generated_tokens"] - n0

    def push(self, weights: Any, version: int) -> None:
        # a copy: the engine may load it after the learner's next optimizer step has begun changing the weights
        self.engine.update_weights(weights, version=version, wait=False)

    def applied(self) -> int:
        return self.engine.version

    def busy_s(self) -> float:
        started = self.step_started
        return time.perf_counter() - started if started is not None else 0.0


class VerifyUnit(Unit):
    """The thread scoring finished groups (`AsyncRollouts._verify_loop`); its own queue of results."""

    def __init__(self) -> None:
        super().__init__(VERIFY)
        self.queue: queue.Queue[Any] = queue.Queue()


class Backend:
    """Where the rollout units' engines and the verifiers live (see module docstring)."""

    mode = "async"
    source: RolloutSource
    names: list[str]  # the rollout units, in order

    def open(self, version: int) -> None:
        """Prepare (verifier processes or actors, a Ray connection) before the first unit."""

    def new_unit(self, name: str, version: int) -> RolloutUnit:
        """A unit whose worker holds the newest pushed weights (`version`); `ready()` waits for it."""
        raise NotImplementedError

    def weights(self) -> Any:
        """The policy's current weights in the form units take (one snapshot for every unit)."""
        raise NotImplementedError

    def verify(self, rows: list[dict[str, Any]], texts: list[str], stop: threading.Event) -> list[Any] | None:
        """One verdict per (row, text); None when `stop` was set first."""
        from flowlm.rl.source import verify_completions  # (patchable there: tests inject failures)

        return verify_completions(rows, texts, pool=self.source._pool)

    def repair(self, err: BaseException | None) -> None:
        """After the verify unit died with `err`: replace what it names (a reward worker)."""

    def close(self) -> None:
        """Release what `open` took."""


def local_pool(source: RolloutSource) -> None:
    """The source's `VerifyPool` when `verify_workers > 0` (verification in this process's verify thread)."""
    cfg = source.cfg
    if cfg.verify_workers > 0 and source._pool is None:
        from flowlm.verify.pool import VerifyPool

        # forkserver: replacing a worker must not fork this process while a rollout thread runs torch
        source._pool = VerifyPool(workers=cfg.verify_workers, timeout=cfg.verify_timeout, context="forkserver")


class ThreadBackend(Backend):
    """Mode async: one engine stepping in a thread of this process, verification here."""

    mode = "async"

    def __init__(self, source: RolloutSource, policy: nn.Module) -> None:
        self.source, self.policy = source, policy
        self.names = [ROLLOUT]
        self._spare = source.engine  # the engine `bind` built: used by the first unit

    def open(self, version: int) -> None:
        local_pool(self.source)

    def new_unit(self, name: str, version: int) -> RolloutUnit:
        engine, self._spare = self._spare or self.source.make_engine(self.policy), None
        engine.update_weights(self.weights(), version=version)  # idle: applied now
        self.source.engine = engine
        return ThreadUnit(name, engine)

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.source.policy_weights().items()}
