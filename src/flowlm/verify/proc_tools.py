"""Process bookkeeping via /proc: find and kill every process of a uid (sandbox cleanup)."""

from __future__ import annotations

import os
import signal
import time
from typing import Callable

# Environment variable holding a per-run token; inherited by everything the sandboxed program starts.
MARKER_VAR = "FLOWLM_SANDBOX_RUN"


def pids_of_uid(uid: int) -> list[int]:
    """PIDs whose real uid is `uid` (read from /proc/<pid>/status)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            found.append(int(name))
                        break
        except (OSError, ValueError):
            continue  # the process exited while we looked
    return found


def _kill_until_gone(find: Callable[[], list[int]], rounds: int) -> int:
    """SIGKILL what `find()` lists, again and again, until it lists nothing (forks may race us)."""
    killed = 0
    for _ in range(rounds):
        pids = find()
        if not pids:
            return killed
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        time.sleep(0.01)
    return killed


def kill_uid_processes(uid: int, rounds: int = 50) -> int:
    """SIGKILL every process of `uid` until none is left (a fork bomb may still be forking)."""
    if uid == 0 or uid == os.getuid():
        raise ValueError("refusing to kill processes of our own uid or root")
    return _kill_until_gone(lambda: pids_of_uid(uid), rounds)


def pids_with_marker(marker: str) -> list[int]:
    """PIDs whose environment contains `MARKER_VAR=marker` (readable for our own uid or as root)."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(name))
        except OSError:
            continue
    return found


def kill_marked_processes(marker: str, rounds: int = 50) -> int:
    """SIGKILL every process carrying the run marker until none is left."""
    return _kill_until_gone(lambda: pids_with_marker(marker), rounds)
