"""`flowlm.generate.threads`: per-op thread counts change the calling thread only."""

from __future__ import annotations

import threading

import pytest
import torch

from flowlm.generate.threads import Threads, _omp_set_num_threads, one_thread


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _threads_of_a_new_thread() -> int:
    seen: list[int] = []

    def first_op() -> None:
        torch.ones(64, 1024).exp()  # a thread's first parallel op sets up its OpenMP state
        seen.append(torch.get_num_threads())

    t = threading.Thread(target=first_op)
    t.start()
    t.join()
    return seen[0]


@pytest.mark.skipif(_omp_set_num_threads() is None, reason="OpenMP runtime not reachable from Python")
def test_narrow_changes_the_calling_thread_only_and_restores(two_threads) -> None:
    threads = Threads(torch.device("cpu"))
    threads.narrow()
    assert torch.get_num_threads() == 1
    # a thread that starts while the decode step is narrow must not inherit 1 thread for good
    # (what torch.set_num_threads(1) here would do)
    assert _threads_of_a_new_thread() == 2
    threads.wide(macs=10, threshold=100)
    assert torch.get_num_threads() == 1
    threads.wide(macs=100, threshold=100)
    assert torch.get_num_threads() == 2
    threads.narrow()
    threads.restore()
    assert torch.get_num_threads() == 2
    with pytest.raises(ValueError):
        with one_thread(torch.device("cpu")):
            assert torch.get_num_threads() == 1
            raise ValueError("the block fails")
    assert torch.get_num_threads() == 2  # restored on the way out


def test_threads_are_inert_off_cpu_and_with_one_thread(two_threads) -> None:
    with one_thread(torch.device("meta")):
        assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    threads = Threads(torch.device("cpu"))
    threads.wide(macs=10**9, threshold=1)
    assert torch.get_num_threads() == 1
