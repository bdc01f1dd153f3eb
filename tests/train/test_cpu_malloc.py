"""The CPU malloc setting applied by the trainer (flowlm.train.cpu_malloc)."""

import ctypes
import platform

import pytest

from flowlm.train.cpu_malloc import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_keep_freed_memory_applies_and_is_idempotent():
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True
    # the process still allocates and frees large blocks normally afterwards
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    p = libc.malloc(64 << 20)
    assert p
    libc.free(ctypes.c_void_p(p))
