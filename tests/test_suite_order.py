"""The suite's own running order (tests/conftest.py) names files that exist, and the README's test command
runs on the two workers that order is for."""

import os
import tomllib
from pathlib import Path

import pytest

from tests.conftest import SLOWEST_FIRST, SPLIT

ROOT = Path(__file__).resolve().parents[1]


def test_the_slowest_first_list_names_existing_test_files_once():
    assert len(set(SLOWEST_FIRST)) == len(SLOWEST_FIRST)
    missing = [p for p in SLOWEST_FIRST if not (ROOT / p).is_file()]
    assert not missing, f"tests/conftest.py SLOWEST_FIRST names files that are gone: {missing}"


def test_the_split_files_are_in_the_slowest_first_list():
    assert SPLIT <= set(SLOWEST_FIRST)


def test_addopts_run_two_workers_by_group_in_collection_order():
    opts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"].split()
    assert opts[opts.index("-n") + 1] == "2" and opts[opts.index("--dist") + 1] == "loadgroup"
    assert "--no-loadscope-reorder" in opts


def test_the_workers_get_whole_files(request):
    """Under the README's command each file is one xdist group (tests/conftest.py), which xdist marks by a
    suffix on the node id. pytest 9.2 with pytest-xdist 3.8 dropped the groups without a word
    (pytest-xdist#1386): each module fixture (the docs commands' shared run, the Ray cluster) was then built
    on both workers, and CI took 30 minutes instead of 21. pyproject pins pytest below 9.2 for that."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.skip("not under pytest-xdist (-n 0): no groups to check")
    assert request.node.nodeid.endswith("@tests/test_suite_order.py"), request.node.nodeid
