"""Host-process tuning for CPU training: keep freed activation memory in glibc's heap.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh `mmap` and
returns it to the kernel on `free`, and it trims the top of the heap once more than twice the threshold
lies free there. A training step frees and re-allocates the same activation tensors every step, so on
CPU each step pays first-touch page faults for many of them again (measured on our 2-core machine: a
`[4096, 256] @ [256, 2048]` GEMM into a fresh 32 MiB output takes 45-59 ms, 34-40 ms with this on;
a whole tiny-model training step is ~25% faster). `keep_freed_memory()` turns both off with
`mallopt`: allocations come from the heap and freed blocks stay there for the next step. The cost is
that the process holds its peak heap until it exits, which is what a training process does anyway.

This is the effect PyTorch's CPU performance guide gets by preloading jemalloc or tcmalloc, done
in-process so `flowlm` users get it without an `LD_PRELOAD`. It changes the whole process; it is a no-op
off glibc. `EngineConfig.keep_freed_memory` (default on) lets the trainer apply it on CPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

_applied = False


def keep_freed_memory() -> bool:
    """Disable glibc's mmap for large blocks and heap trimming; True when applied (or already was)."""
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    _applied = ok
    return ok
