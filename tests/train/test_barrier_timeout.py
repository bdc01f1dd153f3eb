"""A rank that never reaches a barrier makes the waiting rank fail with one clear line, not hang."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("_barrier_worker.py")


def test_barrier_timeout_is_a_one_line_error_naming_the_place():
    env = {**os.environ, "FLOWLM_DIST_TIMEOUT": "3", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run([*torchrun, str(WORKER), "12"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if "error: rank 0 of 2" in ln]
    assert lines, proc.stderr[-2000:]
    assert "did not reach the end of stage 'x' within 3 s" in lines[0] and "FLOWLM_DIST_TIMEOUT" in lines[0]
