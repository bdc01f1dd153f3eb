"""A seccomp-BPF filter for sandboxed test programs, generated in pure Python (no libseccomp).

A denylist of what a test program never needs, applied after the namespaces are set up:

- sockets of any family but `AF_UNIX` (`socket()` fails with EAFNOSUPPORT): no network even if the
  network namespace were missing, no netlink;
- `ptrace` and `process_vm_readv/writev`, `pidfd_getfd`, `kcmp`: no reading or steering other
  processes;
- mount and namespace calls (`mount`, the new mount API, `pivot_root`, `chroot`, `unshare`,
  `setns`, and `clone` with any `CLONE_NEW*` flag): the sandbox cannot rebuild its own view;
  `clone3` answers ENOSYS, since its flags sit behind a pointer a filter cannot read (glibc then
  falls back to `clone`, whose flags are checked — the choice Docker's and Flatpak's filters make);
- kernel attack surface: `keyctl`/`add_key`/`request_key`, `bpf`, `perf_event_open`,
  `userfaultfd`, `io_uring_*` (whose operations would bypass this filter), module and kexec
  loading, `reboot`, swap, clocks, `acct`, `quotactl`, `syslog`, `personality`,
  `open_by_handle_at` (the classic container escape), `fanotify_init`, x86 `iopl`/`ioperm`/`modify_ldt`;
- any other syscall ABI than the native one (x86-64 processes may issue i386 `int 0x80` or x32
  calls, with other numbers): ENOSYS.

Everything else is allowed; denied calls fail with an errno (the program sees an ordinary
`PermissionError`/`OSError`) instead of killing it, so the verdict's reason stays readable.
Supported: x86-64 and aarch64 (numbers from the kernel's `unistd_64.h` / `asm-generic/unistd.h`);
`build_filter()` returns None elsewhere and the sandbox notes it. The program is loaded by bubblewrap
(`--seccomp FD`) or, for the `unsafe` backend, by `install()` between fork and exec.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import platform
import struct

# Classic BPF opcodes (linux/filter.h) and seccomp return values (linux/seccomp.h).
_LD_ABS_W = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JA = 0x05  # BPF_JMP | BPF_JA
_JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JSET = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RET = 0x06  # BPF_RET | BPF_K
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000

# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6] (low word first on LE).
_OFF_NR, _OFF_ARCH, _OFF_ARG0 = 0, 4, 16

_X32_SYSCALL_BIT = 0x40000000
_AF_UNIX = 1
# CLONE_NEWTIME | NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
CLONE_NEW_MASK = 0x80 | 0x20000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000

# Syscalls that may appear under an arch-independent name, with their numbers per architecture.
_COMMON = ("ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp", "mount", "umount2",
           "pivot_root", "chroot", "unshare", "setns", "open_tree", "move_mount", "fsopen", "fsconfig",
           "fsmount", "fspick", "mount_setattr", "keyctl", "add_key", "request_key", "bpf", "perf_event_open",
           "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "kexec_load",
           "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot", "swapon", "swapoff",
           "acct", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "quotactl", "quotactl_fd",
           "syslog", "personality", "lookup_dcookie", "name_to_handle_at", "open_by_handle_at",
           "fanotify_init", "vhangup", "process_madvise")

_NUMBERS: dict[str, dict[str, int]] = {
    "x86_64": dict(
        ptrace=101, process_vm_readv=310, process_vm_writev=311, pidfd_getfd=438, kcmp=312, mount=165,
        umount2=166, pivot_root=155, chroot=161, unshare=272, setns=308, open_tree=428, move_mount=429,
        fsopen=430, fsconfig=431, fsmount=432, fspick=433, mount_setattr=442, keyctl=250, add_key=248,
        request_key=249, bpf=321, perf_event_open=298, userfaultfd=323, io_uring_setup=425,
        io_uring_enter=426, io_uring_register=427, kexec_load=246, kexec_file_load=320, init_module=175,
        finit_module=313, delete_module=176, reboot=169, swapon=167, swapoff=168, acct=163,
        settimeofday=164, clock_settime=227, clock_adjtime=305, adjtimex=159, quotactl=179, quotactl_fd=443,
        syslog=103, personality=135, lookup_dcookie=212, name_to_handle_at=303, open_by_handle_at=304,
        fanotify_init=300, vhangup=153, process_madvise=440,
        iopl=172, ioperm=173, modify_ldt=154, uselib=134,  # x86 only
        socket=41, clone=56, clone3=435),
    "aarch64": dict(
        ptrace=117, process_vm_readv=270, process_vm_writev=271, pidfd_getfd=438, kcmp=272, mount=40,
        umount2=39, pivot_root=41, chroot=51, unshare=97, setns=268, open_tree=428, move_mount=429,
        fsopen=430, fsconfig=431, fsmount=432, fspick=433, mount_setattr=442, keyctl=219, add_key=217,
        request_key=218, bpf=280, perf_event_open=241, userfaultfd=282, io_uring_setup=425,
        io_uring_enter=426, io_uring_register=427, kexec_load=104, kexec_file_load=294, init_module=105,
        finit_module=273, delete_module=106, reboot=142, swapon=224, swapoff=225, acct=89,
        settimeofday=170, clock_settime=112, clock_adjtime=266, adjtimex=171, quotactl=60, quotactl_fd=443,
        syslog=116, personality=92, lookup_dcookie=18, name_to_handle_at=264, open_by_handle_at=265,
        fanotify_init=262, vhangup=58, process_madvise=440,
        socket=198, clone=220, clone3=435),
}
_EXTRA = {"x86_64": ("iopl", "ioperm", "modify_ldt", "uselib"), "aarch64": ()}
# AUDIT_ARCH_* (linux/audit.h): EM_* | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    """One `struct sock_filter` (u16 code, u8 jt, u8 jf, u32 k) in native byte order."""
    return struct.pack("=HBBI", code, jt, jf, k)


def denied_syscalls(arch: str) -> dict[str, int]:
    """Name -> number of every syscall the filter answers with EPERM on `arch` (documentation, tests)."""
    nums = _NUMBERS[arch]
    return {name: nums[name] for name in (*_COMMON, *_EXTRA[arch])}


def machine_arch() -> str:
    """`platform.machine()` normalised to the keys of the syscall tables (`arm64` -> `aarch64`)."""
    m = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


@functools.lru_cache(maxsize=4)
def build_filter(arch: str | None = None) -> bytes | None:
    """The BPF program (raw `sock_filter` array) for `arch` (default: this machine), or None if unsupported.

    Layout: check the ABI -> load nr -> (x86-64: reject x32) -> socket? clone? clone3? -> one JEQ
    per denied syscall -> fall through to ALLOW; jump targets are labels resolved at the end.
    """
    arch = arch or machine_arch()
    if arch not in _NUMBERS:
        return None
    nums = _NUMBERS[arch]
    head: list[tuple[int, int | str, int | str, int | str]] = [
        (_LD_ABS_W, 0, 0, _OFF_ARCH),
        (_JEQ, 0, "ENOSYS", _AUDIT_ARCH[arch]),
        (_LD_ABS_W, 0, 0, _OFF_NR),
    ]
    if arch == "x86_64":
        head.append((_JGE, "ENOSYS", 0, _X32_SYSCALL_BIT))
    head += [(_JEQ, "SOCKET", 0, nums["socket"]), (_JEQ, "CLONE", 0, nums["clone"]),
             (_JEQ, "ENOSYS", 0, nums["clone3"])]
    head += [(_JEQ, "EPERM", 0, n) for n in sorted(set(denied_syscalls(arch).values()))]
    head.append((_JA, 0, 0, "ALLOW"))  # jump always; k holds the label
    # BPF jumps only go forward: the argument checks come first, the shared returns last.
    tail: list[tuple[str | None, tuple[int, int | str, int | str, int | str]]] = [
        ("SOCKET", (_LD_ABS_W, 0, 0, _OFF_ARG0)),  # socket(domain, ...): AF_UNIX only
        (None, (_JEQ, "ALLOW", "EAFNOSUPPORT", _AF_UNIX)),
        ("CLONE", (_LD_ABS_W, 0, 0, _OFF_ARG0)),  # clone(flags, ...): no new namespaces
        (None, (_JSET, "EPERM", "ALLOW", CLONE_NEW_MASK)),
        ("ALLOW", (_RET, 0, 0, RET_ALLOW)),
        ("EPERM", (_RET, 0, 0, RET_ERRNO | errno.EPERM)),
        ("ENOSYS", (_RET, 0, 0, RET_ERRNO | errno.ENOSYS)),
        ("EAFNOSUPPORT", (_RET, 0, 0, RET_ERRNO | errno.EAFNOSUPPORT)),
    ]
    labels = {label: len(head) + i for i, (label, _) in enumerate(tail) if label}
    out = bytearray()
    for pc, (code, jt, jf, k) in enumerate([*head, *(insn for _, insn in tail)]):
        rel = [labels[t] - pc - 1 if isinstance(t, str) else t for t in (jt, jf)]
        if code == _JA:
            k = labels[str(k)] - pc - 1
        elif not all(0 <= r <= 255 for r in rel):  # one-byte forward jumps; only a table edit could break this
            raise AssertionError(f"BPF jump out of range at instruction {pc}")
        out += _insn(code, rel[0], rel[1], int(k))
    return bytes(out)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(prog: bytes) -> None:
    """Load `prog` into the calling thread (and its future children); raises OSError on failure.

    Sets `no_new_privs` first (required without CAP_SYS_ADMIN, and keeps setuid binaries from
    regaining privileges). Safe between fork and exec: no allocation beyond two small ctypes objects.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = _SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")
