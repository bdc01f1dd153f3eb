"""Per-op intra-op thread counts for the CPU decode path, changed for the calling thread only.

A decode step on a small model is a chain of small ops. With `OMP_WAIT_POLICY=PASSIVE` (the setting
for a shared machine) every parallel region wakes the sleeping OpenMP threads, which cost more than
they save below some size: on our 2-core machine `silu(gate) * up` on [64, 2048] took 117 us on 2
threads and 45 us on 1, and a decode step at 2 live slots 9.5 ms against 6.7 ms. `Threads` lets the
native runner and the sampler run such ops on one thread and the big matmuls on all of them.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


@functools.cache
def _omp_set_num_threads() -> Callable[[int], None] | None:
    """`omp_set_num_threads` of the OpenMP runtime torch's CPU ops use, or None where it cannot be found.

    Unlike `torch.set_num_threads`, which also stores the count that threads starting their first
    parallel op take (so a learner thread starting while a decode step holds 1 thread would stay at 1
    thread for good), this changes the calling thread's own OpenMP setting only. Checked once: the
    call must change what `torch.get_num_threads()` reports in this thread.
    """
    try:
        fn = ctypes.CDLL(None).omp_set_num_threads
    except (AttributeError, OSError, TypeError):  # TypeError: Windows has no CDLL(None)
        return None
    fn.argtypes, fn.restype = [ctypes.c_int], None
    before = torch.get_num_threads()
    fn(1 if before > 1 else 2)
    works = torch.get_num_threads() != before
    fn(before)
    return fn if works else None


class Threads:
    """Intra-op thread count per op inside one decode step (CPU): `narrow()` (1 thread) for the step's
    small ops, `wide(macs, threshold)` before a matmul (all of the calling thread's threads when `macs`
    reaches the threshold), `restore()` at the end. Changes the calling thread only; inert off CPU,
    with one thread, or where the OpenMP runtime cannot be reached."""

    __slots__ = ("caller", "now", "set")

    def __init__(self, device: torch.device) -> None:
        self.caller = self.now = torch.get_num_threads() if device.type == "cpu" else 1
        self.set = _omp_set_num_threads() if self.caller > 1 else None

    def _to(self, n: int) -> None:
        if n != self.now and self.set is not None:
            self.set(n)
            self.now = n

    def narrow(self) -> None:
        self._to(1)

    def wide(self, macs: int, threshold: int) -> None:
        self._to(self.caller if macs >= threshold else 1)

    def restore(self) -> None:
        self._to(self.caller)


@contextmanager
def one_thread(device: torch.device) -> Iterator[None]:
    """Run the block on one intra-op thread (CPU; the calling thread only), then restore."""
    threads = Threads(device)
    try:
        threads.narrow()
        yield
    finally:
        threads.restore()
