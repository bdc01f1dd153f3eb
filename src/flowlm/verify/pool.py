"""Parallel verification in worker processes with hard per-item timeouts.

Each worker is a process with its own pipe; the dispatcher (any thread — no signals are used)
hands one item at a time to an idle worker and waits with `multiprocessing.connection.wait`. An item
that runs past its deadline (e.g. a hung sympy simplification) gets a score-0 "timeout" verdict and
its worker is SIGKILLed and replaced; sandboxed programs it started die with it (PDEATHSIG). A worker
that crashes is replaced the same way. Workers are forked (default `fork` context: starting or
replacing one costs a fork, not a Python start-up, and scripts need no `__main__` guard); pass
`context="forkserver"` when the parent holds threads that must not be forked (e.g. a loaded torch
model). The verifier modules are imported before the first fork so children share them.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Iterable

from flowlm import forkserver
from flowlm.verify.base import Verdict, run_verifier


@dataclass(frozen=True)
class Task:
    """One verification: verifier name, completion, ground truth and the rest of the row."""

    name: str
    completion: Any
    ground_truth: Any
    row: dict[str, Any]
    timeout: float | None = None  # overrides the pool's default hard timeout
    fn: str | None = None  # "module:function" with a verifier's signature, run instead of the registry's `name`


def _worker_loop(conn: Connection) -> None:
    """Worker main: score tasks until the pipe closes. Runs on the worker's main thread, so the
    verifiers' own SIGALRM timeouts work here too."""
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task.fn is None:
            v = run_verifier(task.name, task.completion, task.ground_truth, **task.row)
        else:  # flowlm's own helpers (e.g. `math_equiv`'s comparison off the main thread): not model code
            module, _, attr = task.fn.partition(":")
            v = getattr(importlib.import_module(module), attr)(task.completion, task.ground_truth, **task.row)
        conn.send((v.score, v.reason, v.meta))


class _Worker:
    def __init__(self, ctx: Any) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_loop, args=(child,), daemon=True)
        self.proc.start()
        child.close()
        self.item: int | None = None
        self.deadline = 0.0

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


class VerifyPool:
    """A pool of verifier processes; use as a context manager or call `close()`."""

    def __init__(self, workers: int = 2, timeout: float = 60.0, context: str = "fork") -> None:
        self.n_workers = max(1, workers)
        self.timeout = timeout
        if context == "forkserver":
            self._ctx = forkserver.context(["flowlm.verify.builtin"])
        else:
            self._ctx = mp.get_context(context)
        import flowlm.verify.builtin  # noqa: F401  # import once here, so forked workers start warm
        self._workers: list[_Worker] = []
        self.replaced = 0  # workers killed for timeouts or crashes (observability)

    def __enter__(self) -> "VerifyPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self) -> _Worker:
        return _Worker(self._ctx)

    def _replace(self, i: int) -> None:
        self._workers[i].kill()
        self._workers[i] = self._spawn()
        self.replaced += 1

    def map(self, tasks: Iterable[Task]) -> list[Verdict]:
        """Verdicts in task order. Never raises on model output; a timeout scores 0."""
        tasks = list(tasks)
        results: list[Verdict | None] = [None] * len(tasks)
        while len(self._workers) < min(self.n_workers, max(1, len(tasks))):
            self._workers.append(self._spawn())
        todo = list(range(len(tasks)))[::-1]
        while todo or any(w.item is not None for w in self._workers):
            self._dispatch(tasks, todo)
            self._collect(tasks, results)
        return [r if r is not None else Verdict(0.0, "not run") for r in results]

    def _dispatch(self, tasks: list[Task], todo: list[int]) -> None:
        for w in self._workers:
            if w.item is None and todo:
                i = todo.pop()
                w.item = i
                w.deadline = time.monotonic() + (tasks[i].timeout or self.timeout)
                w.conn.send(tasks[i])

    def _collect(self, tasks: list[Task], results: list[Verdict | None]) -> None:
        busy = [w for w in self._workers if w.item is not None]
        if not busy:
            return
        wait_for = max(0.0, min(w.deadline for w in busy) - time.monotonic())
        ready = wait([w.conn for w in busy], timeout=min(wait_for, 1.0))
        now = time.monotonic()
        for idx, w in enumerate(self._workers):
            if w.item is None:
                continue
            if w.conn in ready:
                try:
                    score, reason, meta = w.conn.recv()
                    results[w.item] = Verdict(score, reason, meta)
                    w.item = None
                    continue
                except (EOFError, OSError):
                    results[w.item] = Verdict(0.0, f"verifier {tasks[w.item].name} crashed (worker died)")
            elif now < w.deadline:
                continue
            else:
                limit = tasks[w.item].timeout or self.timeout
                results[w.item] = Verdict(0.0, f"timeout: verifier {tasks[w.item].name} ran over {limit:g}s")
            self._replace(idx)

    def close(self) -> None:
        """Stop all workers."""
        for w in self._workers:
            w.kill()
        self._workers = []


def default_workers() -> int:
    """Workers to use by default: the CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
