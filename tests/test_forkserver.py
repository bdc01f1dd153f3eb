"""A long TMPDIR does not break the forkserver (`flowlm.forkserver`): Unix socket paths stop at 107 bytes,
and multiprocessing puts the forkserver's socket under `$TMPDIR/pymp-…/`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.cli_entry import flowlm_command


@pytest.fixture
def long_tmpdir():
    """A TMPDIR of 90 characters: with `/pymp-XXXXXXXX/listener-XXXXXXXX` the socket path would be 122 bytes."""
    name = "/tmp/flowlm-long-tmpdir-" + uuid.uuid4().hex
    path = Path(name + "-" + "x" * (90 - len(name) - 1))
    assert len(str(path)) == 90
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _env(tmpdir: Path) -> dict[str, str]:
    return {**os.environ, "TMPDIR": str(tmpdir), "OMP_NUM_THREADS": "1"}


def test_data_pipeline_workers_start_under_a_long_tmpdir(long_tmpdir):
    inputs = []
    for part in range(2):
        f = long_tmpdir / f"part{part}.jsonl"
        f.write_text("".join(json.dumps({"id": f"{part}-{i}", "text": f"document {i} of part {part} " * 30}) + "\n"
                             for i in range(10)))
        inputs.append(str(f))
    proc = subprocess.run([*flowlm_command(), "data", "dedup", *inputs, "--workers", "2",
                           "--out", str(long_tmpdir / "out")],
                          capture_output=True, text=True, env=_env(long_tmpdir), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "AF_UNIX" not in proc.stderr
    stats = json.loads((long_tmpdir / "out" / "stats.json").read_text())
    assert stats  # the run finished and wrote its accounting
    # nothing of multiprocessing's was left in (or put into) the user's TMPDIR
    assert not [p.name for p in long_tmpdir.iterdir() if p.name.startswith("pymp-")]


_POOL = """
from flowlm.verify.pool import Task, VerifyPool
with VerifyPool(workers=1, context="forkserver") as pool:
    verdict, = pool.map([Task("math", "so \\\\boxed{4}", "4", {})])
print(verdict.score)
"""


def test_verifier_pool_forkserver_starts_under_a_long_tmpdir(long_tmpdir):
    proc = subprocess.run([sys.executable, "-c", _POOL], capture_output=True, text=True,
                          env=_env(long_tmpdir), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1.0"


_CACHED_LONG = """
import multiprocessing.util as util
from flowlm import forkserver
from flowlm.errors import FlowError
util.get_temp_dir()  # other code created multiprocessing's temp dir under the long TMPDIR first
try:
    forkserver.context(["flowlm.verify.builtin"])
except FlowError as e:
    print(e)
"""


def test_a_long_temp_dir_created_earlier_is_a_clear_error(long_tmpdir):
    proc = subprocess.run([sys.executable, "-c", _CACHED_LONG], capture_output=True, text=True,
                          env=_env(long_tmpdir), timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.strip()
    assert out.startswith(f"multiprocessing's temp dir {long_tmpdir}/pymp-") and "set TMPDIR" in out
