"""The suite's own running order (tests/conftest.py) names files that exist, and the README's test command
runs on the two workers that order is for."""

import tomllib
from pathlib import Path

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
