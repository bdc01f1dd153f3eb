"""Scratch directories for the benchmarks that are removed on success, failure, Ctrl-C and SIGTERM.

    with scratch_dir("dedupbench-") as tmp:
        ...

Ctrl-C raises KeyboardInterrupt, which unwinds through `with` and removes the directory; SIGTERM
(a CI timeout, `kill`) would end the process without unwinding, so `scratch_dir` first makes SIGTERM
raise `SystemExit(143)` in the benchmark's own process. Worker processes forked from it (pools,
datatrove's executor) still die on SIGTERM as before: they own none of the scratch directories.
"""

from __future__ import annotations

import os
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def sigterm_raises() -> None:
    """From now on SIGTERM raises `SystemExit(143)` in this process (so `with` / `finally` blocks run)."""
    owner = os.getpid()

    def handler(signum: int, frame: object) -> None:
        if os.getpid() != owner:  # a forked child inherited the handler: die as SIGTERM would
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A fresh directory under the temp dir (TMPDIR), removed however the `with` block ends."""
    sigterm_raises()
    with tempfile.TemporaryDirectory(prefix=prefix) as d:
        yield Path(d)
