"""Shared fixtures for flowlm.verify tests: the real-data directory and a 2-worker pool."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Iterator

import pytest

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def data_dir(name: str) -> Path:
    """`shared/data/<name>`, or skip the test with a clear message when it is absent."""
    d = DATA / name
    if not d.is_dir():
        pytest.skip(f"../shared/data/{name} (the shared/ checkout beside the repo) not found")
    return d


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl or .jsonl.gz file."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="session")
def pool() -> Iterator[Any]:
    """One verification pool (2 workers) shared by the real-data tests."""
    from flowlm.verify.pool import VerifyPool

    with VerifyPool(workers=2, timeout=60) as p:
        yield p
