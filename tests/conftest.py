"""How the suite is shared between the two pytest-xdist workers the README's test command runs.

pyproject's addopts run the suite on 2 workers with `--dist loadgroup` and `--no-loadscope-reorder`: a group
of tests goes to one worker, and groups are handed out in collection order. Here every test gets the group of
its file, so a module fixture (test_docs_commands' shared run, test_ray's cluster) is built once, except in
`SPLIT` files, whose tests share nothing costly and go out one by one. Most of the suite's wall time is
subprocesses, actor start-ups and waits that leave a core idle, so two workers finish well before one
would. The slowest groups go out first, so that none of them starts last and runs alone at the end:
`SLOWEST_FIRST` lists the slowest files of a full run (`--durations`, 2026-12-06), longest first; every
other file keeps pytest's order. `-n 0` runs everything in one process, in the same order.
"""

from __future__ import annotations

import pytest

SLOWEST_FIRST = [
    "tests/test_benchmarks.py",
    "tests/rl/test_ray.py",
    "tests/rl/test_rl_flow.py",
    "tests/test_docs_commands.py",
    "tests/flow/test_flow.py",
    "tests/train/test_engine.py",
    "tests/test_gpu_check_script.py",
    "tests/flow/test_post_flow.py",
    "tests/flow/test_seams.py",
    "tests/eval/test_suites_data.py",
    "tests/rl/test_async.py",
    "tests/eval/test_flow_eval.py",
    "tests/train/test_rank_kill.py",
]
# files whose tests run independently (no module or session fixture): each test is its own group
SPLIT = {"tests/test_benchmarks.py"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable: the rest keep order
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        item.add_marker(pytest.mark.xdist_group(item.nodeid if path in SPLIT else path))
