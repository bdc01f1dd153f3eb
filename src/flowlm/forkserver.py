"""The forkserver start method, made safe for long temporary-directory paths.

The forkserver listens on a Unix socket at `<multiprocessing temp dir>/listener-XXXXXXXX`, and that
multiprocessing temp dir is `$TMPDIR/pymp-XXXXXXXX`. Linux caps a socket path at 107 bytes, so a TMPDIR
longer than about 80 characters made every forkserver start fail with "AF_UNIX path too long" (the data
executor's workers, the RL verifier pools). `context` creates multiprocessing's temp dir in a short
system directory first when the user's would be too long; nothing else changes where temporary files go.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
from multiprocessing import util
from multiprocessing.context import BaseContext

from flowlm.errors import FlowError

SOCKET_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_SUFFIX = len("/pymp-XXXXXXXX/listener-XXXXXXXX")
_SHORT_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


def _listener_fits(tempdir: str) -> bool:
    return len(os.fsencode(tempdir)) + _SUFFIX <= SOCKET_PATH_MAX


def ensure_short_socket_dir() -> str:
    """Multiprocessing's temp dir, created in a short directory when `$TMPDIR` would make the forkserver's
    socket path too long. FlowError when the process already has a too-long one (created earlier by
    other multiprocessing code), naming the path and the fix."""
    current = mp.current_process()._config.get("tempdir")  # multiprocessing.util.get_temp_dir's cache
    if current is not None:
        if not _listener_fits(os.path.dirname(current) or current):
            raise FlowError(f"multiprocessing's temp dir {current} is too long for a forkserver socket "
                            f"(Unix socket paths stop at {SOCKET_PATH_MAX} bytes): set TMPDIR to a shorter directory")
        return current
    if _listener_fits(tempfile.gettempdir()):
        return util.get_temp_dir()
    for short in _SHORT_DIRS:
        if os.path.isdir(short) and os.access(short, os.W_OK | os.X_OK):
            saved = tempfile.tempdir
            tempfile.tempdir = short
            try:
                return util.get_temp_dir()
            finally:
                tempfile.tempdir = saved
    raise FlowError(f"TMPDIR {tempfile.gettempdir()} is too long for a forkserver socket (Unix socket paths "
                    f"stop at {SOCKET_PATH_MAX} bytes) and none of {', '.join(_SHORT_DIRS)} is writable: "
                    "set TMPDIR to a shorter directory")


def context(preload: list[str]) -> BaseContext:
    """A forkserver context whose server imports `preload` once (children start warm); socket path checked."""
    ensure_short_socket_dir()
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(preload)
    return ctx
