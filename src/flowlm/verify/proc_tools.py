"""Process bookkeeping for the sandbox: pump a run's output under a deadline and a cap, and kill every
process of a run afterwards (by uid or by environment marker, found via /proc)."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
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


def pump_output(proc: subprocess.Popen, timeout: float, output_bytes: int) -> tuple[bytes, bytes, bool, bool]:
    """Read stdout/stderr until EOF, `timeout` seconds or `output_bytes` per stream; returns (out, err,
    timed_out, truncated)."""
    sel = selectors.DefaultSelector()
    bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    for f in bufs:
        os.set_blocking(f.fileno(), False)
        sel.register(f, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    timed_out = truncated = False
    while sel.get_map():
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        for key, _ in sel.select(timeout=min(left, 0.5)):
            chunk = key.fileobj.read(65536)
            if not chunk:
                sel.unregister(key.fileobj)
                continue
            buf = bufs[key.fileobj]
            buf.extend(chunk[: max(0, output_bytes - len(buf))])
            if len(buf) >= output_bytes:
                truncated = True
        if truncated:
            break
    sel.close()
    return bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr]), timed_out, truncated


def exited_soon(proc: subprocess.Popen, grace: float = 2.0) -> bool:
    """Did the process end by itself? Its output is at EOF, so it is exiting; wait briefly for that."""
    try:
        proc.wait(timeout=grace)
        return True
    except subprocess.TimeoutExpired:
        return False


def kill_run(proc: subprocess.Popen, uid: int | None, marker: str) -> None:
    """Kill the process group, then every straggler: by uid when we switched uid, else by env marker."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    if uid is not None:
        kill_uid_processes(uid)
    else:
        kill_marked_processes(marker)
