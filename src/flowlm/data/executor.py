"""Executors: map a pipeline stage's picklable task function over shards, locally with N worker
processes or on a Ray cluster, with per-task completion markers so a crashed run resumes.

A task is `(key, fn, args)`; its return value must be JSON-serialisable. When a stage finishes a task,
the result is written to `<markers>/<stage>/<key>.done` (atomically); re-running the stage returns
the stored result for that key without calling `fn` again. Outputs are written by the tasks to fixed
per-shard paths, so every executor produces byte-identical files.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path
from typing import Any, Callable, Sequence

from flowlm import forkserver
from flowlm.atomic import atomic_write_json
from flowlm.errors import ConfigError
from flowlm.extras import require

Task = tuple[str, Callable[..., Any], tuple[Any, ...]]


def _marker(markers: Path, stage: str, key: str) -> Path:
    return markers / stage / f"{key}.done"


def _run_one(task: Task) -> Any:
    _, fn, args = task
    return fn(*args)


class Executor:
    """Serial executor (and the base class): runs pending tasks in order, in this process."""

    name = "serial"

    def __init__(self, markers_dir: str | Path | None = None) -> None:
        self.markers = Path(markers_dir) if markers_dir else None
        self.skipped = 0  # tasks answered from markers (for tests and logs)

    def set_markers(self, markers_dir: str | Path) -> None:
        self.markers = Path(markers_dir)

    def map(self, stage: str, tasks: Sequence[Task]) -> list[Any]:
        """Run `tasks`, reusing results of tasks already marked done. Results keep task order."""
        results: list[Any] = [None] * len(tasks)
        pending: list[int] = []
        for i, (key, _, _) in enumerate(tasks):
            m = _marker(self.markers, stage, key) if self.markers else None
            if m is not None and m.exists():
                results[i] = json.loads(m.read_text())["result"]
                self.skipped += 1
            else:
                pending.append(i)
        for i, res in zip(pending, self._execute([tasks[i] for i in pending])):
            results[i] = res
            if self.markers:
                atomic_write_json(_marker(self.markers, stage, tasks[i][0]), {"result": res}, indent=None)
        return results

    def _execute(self, tasks: list[Task]) -> list[Any]:
        return [_run_one(t) for t in tasks]

    def close(self) -> None:
        pass


class LocalExecutor(Executor):
    """`workers` processes started by a forkserver; workers=1 runs in-process.

    Not plain fork: once torch (or any OpenMP runtime) has started threads in the parent, a forked
    child can deadlock on a lock held by a thread that does not exist in the child."""

    name = "local"

    def __init__(self, workers: int = 2, markers_dir: str | Path | None = None) -> None:
        super().__init__(markers_dir)
        self.workers = max(1, workers)

    def _execute(self, tasks: list[Task]) -> list[Any]:
        if self.workers == 1 or len(tasks) <= 1:
            return super()._execute(tasks)
        if "forkserver" in mp.get_all_start_methods():
            ctx = forkserver.context(["flowlm.data.shard_tasks"])
        else:
            ctx = mp.get_context("spawn")
        with ctx.Pool(min(self.workers, len(tasks))) as pool:
            return pool.map(_run_one, tasks, chunksize=1)


class RayExecutor(Executor):
    """Runs tasks as Ray remote functions; connects to `address` or starts a local Ray."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 markers_dir: str | Path | None = None) -> None:
        super().__init__(markers_dir)
        self.ray = ray = require("ray", "ray", "executor 'ray'")
        self._owns = not ray.is_initialized()
        if self._owns:
            ray.init(address=address, num_cpus=num_cpus, include_dashboard=False,
                     log_to_driver=False, ignore_reinit_error=True)
        self._remote = ray.remote(_run_one)

    def _execute(self, tasks: list[Task]) -> list[Any]:
        return self.ray.get([self._remote.remote(t) for t in tasks])

    def close(self) -> None:
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()


def make_executor(kind: str = "local", workers: int = 2, address: str | None = None) -> Executor:
    if kind == "serial":
        return Executor()
    if kind == "local":
        return LocalExecutor(workers)
    if kind == "ray":
        return RayExecutor(address=address, num_cpus=workers if address is None else None)
    raise ConfigError(f"executor: unknown kind '{kind}' (allowed: serial, local, ray)")
