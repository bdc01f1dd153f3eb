"""First code to run inside the sandbox: rlimits and Landlock rules, then the untrusted program.

Not imported by flowlm: `sandbox.py` passes this file's code to `python -I -S -B -c`, with argv
`[LIMITS, ABI, WRITABLE_DIRS, SITE_DIRS, UID, SCRIPT]`: LIMITS = `cpu,as,fsize,nproc,nofile`; ABI = the
Landlock ABI the host saw (0 = none); WRITABLE_DIRS and SITE_DIRS joined by `:` (SITE_DIRS `?`: ask
`site`, for an interpreter other than the host's); UID = the fresh uid to drop to (`-`: stay). Standard library only, and cheap: it runs once per
sandboxed test (it calls the kernel through `_ctypes` directly: the `ctypes` package would add ~4 ms
of CPU per test, measured with `getrusage` on the 2-core dev machine).

Everything here runs before the first untrusted line and cannot be undone by it:
- rlimits (CPU seconds, address space, file size, processes, open files, no core dumps);
- the drop from root to the run's fresh uid (bwrap backends): supplementary groups cleared, real,
  effective and saved gid and uid set, which clears every capability; no_new_privs; checked, or the
  program does not run;
- Landlock (kernel >= 5.13): file writes, creations, deletions, renames and truncation only beneath
  WRITABLE_DIRS (plus writing `/dev/null`); with ABI >= 4 no TCP bind/connect; with ABI >= 6 no
  signals to, nor abstract Unix sockets of, processes outside the sandbox. Reads are left to the
  mount namespace. If the host saw Landlock but it cannot be applied, the program does not run
  (exit 121: fail closed).
Under bwrap the boot is the pid namespace's init (`--as-pid-1`): after the steps above it forks the
program, reaps orphans, and exits with the program's status. The kernel kills whatever is left in the
namespace before that exit becomes visible to bwrap, so a run that ends by itself leaves nothing
running, and the host needs no process scan for it. The init re-arms the parent-death signal that
the uid drop cleared, so killing bwrap from outside still takes the namespace down.

The interpreter runs with -S: site-packages stay importable (SITE_DIRS), but their `.pth` files
(editable installs, CA-bundle hooks) are not executed, which saved ~40 ms of CPU per test here. The
boot imports neither `os` nor `site` (`posix` and `_sitebuiltins` do its work, ~1.5 ms less per test);
`sandbox.py` hands it over precompiled, as a `.pyc` in the work dir.
"""

import _ctypes
import posix as os  # `os` itself costs ~1.4 ms to import; these calls are all in `posix`
import sys

_SYS_CREATE, _SYS_ADD_RULE, _SYS_RESTRICT = 444, 445, 446  # same numbers on every architecture
_FS_WRITE_V1 = 1 << 1 | (0x1FF << 4)  # WRITE_FILE, REMOVE_DIR/FILE, MAKE_CHAR/DIR/REG/SOCK/FIFO/BLOCK/SYM
_FS_REFER, _FS_TRUNCATE = 1 << 13, 1 << 14  # ABI 2, ABI 3
_NET_TCP = 1 << 0 | 1 << 1  # BIND_TCP, CONNECT_TCP (ABI 4)
_SCOPE = 1 << 0 | 1 << 1  # ABSTRACT_UNIX_SOCKET, SIGNAL (ABI 6)


def _fail(msg: str) -> None:
    sys.stderr.write(f"sandbox: {msg}\n")
    sys.stderr.flush()
    os._exit(121)


class _Long(_ctypes._SimpleCData):
    _type_ = "l"


class _Fn(_ctypes.CFuncPtr):
    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = _Long


class _Process:  # what `CFuncPtr((name, library))` reads: the library's dlopen handle
    _handle = _ctypes.dlopen(None)


def _libc(name: str, *args: object) -> int:
    """Call libc's `name` (`syscall`, `prctl`): ints travel as C longs, bytes as pointers; -errno on failure."""
    r = _Fn((name, _Process))(*(_Long(a) if isinstance(a, int) else a for a in args))
    return r if r >= 0 else -_ctypes.get_errno()


def _limits(spec: str) -> None:
    import resource as r

    cpu, mem, fsize, nproc, nofile = (int(x) for x in spec.split(","))
    for which, soft, hard in ((r.RLIMIT_CPU, cpu, cpu + 1), (r.RLIMIT_AS, mem, mem), (r.RLIMIT_FSIZE, fsize, fsize),
                              (r.RLIMIT_NPROC, nproc, nproc), (r.RLIMIT_NOFILE, nofile, nofile), (r.RLIMIT_CORE, 0, 0)):
        cur = r.getrlimit(which)[1]
        cap = hard if cur == r.RLIM_INFINITY else min(hard, cur)  # an unprivileged uid can only lower them
        r.setrlimit(which, (min(soft, cap), cap))


def _drop_to(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if _libc("prctl", 38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        _fail("cannot set no_new_privs")
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (uid, uid, uid) or os.getgroups():
        _fail(f"uid switch to {uid} did not hold")


def _u64(*xs: int) -> bytes:
    return b"".join(x.to_bytes(8, sys.byteorder) for x in xs)


def _landlock(abi_seen: int, writable: list[str]) -> None:
    abi = _libc("syscall", _SYS_CREATE, None, 0, 1)  # LANDLOCK_CREATE_RULESET_VERSION
    if abi < abi_seen:
        _fail(f"Landlock ABI {abi} here, {abi_seen} on the host")
    fs = _FS_WRITE_V1 | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)
    attr = _u64(fs, *([_NET_TCP] if abi >= 4 else []), *([_SCOPE] if abi >= 6 else []))
    ruleset = _libc("syscall", _SYS_CREATE, attr, len(attr), 0)
    if ruleset < 0:
        _fail(f"landlock_create_ruleset: {os.strerror(-ruleset)}")
    file_rights = fs & (1 << 1 | _FS_TRUNCATE)  # a rule on a file may only carry file rights
    for path, rights in [*((d, fs) for d in writable), ("/dev/null", file_rights)]:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue  # e.g. no /dev/shm in this backend: nothing to allow
        rule = _u64(rights) + fd.to_bytes(4, sys.byteorder, signed=True)  # landlock_path_beneath_attr, packed
        err = _libc("syscall", _SYS_ADD_RULE, ruleset, 1, rule, 0)
        if err < 0:
            _fail(f"landlock_add_rule({path}): {os.strerror(-err)}")
        os.close(fd)
    err = _libc("prctl", 38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: required to restrict without privileges
    if err == 0:
        err = _libc("syscall", _SYS_RESTRICT, ruleset, 0)
    if err < 0:
        _fail(f"landlock_restrict_self: {os.strerror(-err)}")
    os.close(ruleset)


def _be_init() -> None:
    """Fork the program and stay behind as the namespace's init; returns only in the program's process."""
    if _libc("prctl", 1, 9, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG = SIGKILL (the uid drop cleared bwrap's)
        _fail("cannot set the parent-death signal")
    program = os.fork()
    if program == 0:
        return
    while True:  # reap orphans until the program itself ends
        pid, status = os.waitpid(-1, 0)
        if pid == program:
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else 128 - code)  # killed by signal N: 128 + N, as bwrap reports it


def _builtins(b: object) -> None:
    """`exit()`, `quit()` and `help()`, which programs written for a normal interpreter may call (what
    `site` would add; not its `copyright`/`license` printers, which import `os`)."""
    import _sitebuiltins

    b = b if isinstance(b, dict) else b.__dict__
    b["quit"] = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")
    b["exit"] = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
    b["help"] = _sitebuiltins._Helper()


def _main() -> None:
    limits, abi_seen, writable, site_dirs, uid, script = sys.argv[1:7]
    _limits(limits)
    if uid != "-":
        _drop_to(int(uid))
    if int(abi_seen) > 0:
        _landlock(int(abi_seen), [d for d in writable.split(":") if d])
    if os.getpid() == 1:  # bwrap --as-pid-1
        _be_init()
    if site_dirs == "?":  # another interpreter than the host's: it knows its own site-packages
        import site  # with -S it is imported, not run: no .pth files

        dirs = site.getsitepackages()
    else:
        dirs = site_dirs.split(":")
    sys.path.extend(p for p in dirs if p and p not in sys.path)
    sys.argv = [script]
    with open(script, "rb") as f:
        code = compile(f.read(), script, "exec")
    # Run it as __main__ itself (not via runpy, whose imports cost ~10 ms per test): the module
    # namespace is emptied first, so the program sees a fresh `__main__` (pickling by reference works).
    run, ns = exec, sys.modules["__main__"].__dict__
    builtins = ns["__builtins__"]
    _builtins(builtins)
    ns.clear()
    ns.update(__name__="__main__", __file__=script, __builtins__=builtins, __doc__=None, __spec__=None,
              __loader__=None, __package__=None, __cached__=None)
    run(code, ns)


_main()
