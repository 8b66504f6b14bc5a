"""Start a target the way experiments need it: ASLR on or off, a fixed environment, vdso or not.

Why a launcher: the resident size of a tiny process depends on where exec put its stack
(``arch_align_stack`` randomises up to 8 KiB below the argv/env strings) and on how many bytes of
environment sit above it.  To compare runs, both must be controlled: a minimal, deterministic
environment (optionally padded to an exact size) and ``personality(ADDR_NO_RANDOMIZE)`` for the
runs that must agree.

Isolation (issue 16): ``user=`` runs the target as an unprivileged user (no supplementary
groups) and ``netns=`` inside a private network namespace (remap.netns) through ``nsenter``,
which execs in place: the PID returned is the target's host PID, and remap attaches from outside.

Example::

    >>> t = launch(["/bin/sleep", "100"], aslr=False, env_size=256)
    >>> t.pid, t.env_size
    (12345, 256)
    >>> t.stop()
"""

from __future__ import annotations

import ctypes
import os
import pwd
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import procfs
from .errors import RemapError, UnsupportedTarget, UsageError
from .kconst import ADDR_NO_RANDOMIZE
from .netns import NetNamespace
from .procwait import wait_blocked

DEFAULT_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C"}
PAD_VAR = "REMAP_PAD"
_personality_lock = threading.Lock()
_libc = ctypes.CDLL(None, use_errno=True)
_libc.personality.argtypes = [ctypes.c_ulong]
_libc.personality.restype = ctypes.c_int


@dataclass
class Launched:
    """A started target: the Popen object, its PID, and exactly how it was launched."""

    proc: subprocess.Popen
    pid: int
    argv: list[str]
    aslr: bool
    vdso: bool
    env: dict[str, str] = field(repr=False)
    env_size: int  # bytes of "K=V\\0" strings exec copied to the stack
    user: str | None = None  # the unprivileged user it runs as (None: remap's own)
    netns: bool = False  # inside a private network namespace holding only loopback

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_blocked(self, timeout: float = 5.0) -> None:
        """Wait until the target sleeps in a syscall (state S), e.g. reached its idle read.

        Why: Popen returns once exec passed its point of no return, before the kernel has
        built the new stack (env_start/env_end are still 0 then); measure only after this.
        """
        wait_blocked(self.pid, timeout, self.proc)

    def stop(self, timeout: float = 5.0) -> int:
        """Kill the target (if still running) and reap it; return its exit status."""
        if self.proc.poll() is None:
            self.proc.kill()
        rc = self.proc.wait(timeout=timeout)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f:
                f.close()
        return rc

    def to_json(self) -> dict:
        return {
            "pid": self.pid,
            "argv": self.argv,
            "aslr": self.aslr,
            "vdso": self.vdso,
            "env_size": self.env_size,
            "env_keys": sorted(self.env),
            "user": self.user,
            "netns": self.netns,
        }


def env_bytes(env: dict[str, str]) -> int:
    """Bytes exec copies for ENV: each "KEY=VALUE" string plus its NUL."""
    return sum(len(k.encode()) + len(v.encode()) + 2 for k, v in env.items())


def build_env(env: dict[str, str] | None = None, env_size: int | None = None) -> dict[str, str]:
    """The environment to launch with: ENV (default DEFAULT_ENV), padded to ENV_SIZE bytes.

    The pad is one variable ``REMAP_PAD=xxx...`` so the total of the env strings is exactly
    env_size; a size too small to hold the base environment plus the pad is a UsageError.
    """
    out = dict(DEFAULT_ENV if env is None else env)
    if env_size is None:
        return out
    base = env_bytes(out)
    need = env_size - base - len(PAD_VAR) - 2  # "REMAP_PAD=" + NUL
    if need < 0:
        raise UsageError(
            f"--env-size {env_size} is too small: the base environment alone is {base} bytes "
            f"(+{len(PAD_VAR) + 2} for the pad variable)"
        )
    out[PAD_VAR] = "x" * need
    return out


def launch(
    argv: list[str],
    *,
    aslr: bool = True,
    env: dict[str, str] | None = None,
    env_size: int | None = None,
    vdso: bool = True,
    stdin=subprocess.DEVNULL,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
    cwd: str | Path | None = None,
    new_session: bool = False,
    user: str | None = None,
    netns: NetNamespace | None = None,
    daemonizes: bool = False,
) -> Launched:
    """Start ARGV and return a :class:`Launched` (no tracer attached; it just runs).

    DAEMONIZES: ARGV forks and its parent exits 0 at once (remap.adopt keeps the child); that
    exit is then expected, not a failure to start.

    aslr=False: the child execs with ADDR_NO_RANDOMIZE, so stack, vdso and mmap bases repeat.
    vdso=False: delegated to remap.fold.vdso (ptrace injection hides AT_SYSINFO_EHDR and unmaps
    the vdso before the target's first instruction; UnsupportedTarget where it cannot).
    user: a user name (its uid and primary gid, no supplementary groups); netns: the network
    namespace to run in; with vdso=False the vdso is hidden at the exec of ARGV itself.
    """
    if not argv:
        raise UsageError("launch: no command given")
    exe = argv[0]
    if os.sep not in exe:  # a bare name: resolve it now, so argv[0] (and the stack) is a path
        found = shutil.which(exe)
        if found is None:
            raise UsageError(f"launch: {exe!r} not found in PATH")
        argv = [found, *argv[1:]]
        exe = found
    if not os.access(exe, os.X_OK) or not os.path.isfile(exe):
        raise UsageError(f"launch: {exe} is not an executable file")
    full_env = build_env(env, env_size)
    popen_kw = dict(
        stdin=stdin, stdout=stdout, stderr=stderr, cwd=cwd, env=full_env, close_fds=True
    )
    if new_session:
        popen_kw["start_new_session"] = True
    if not vdso:
        # imported here: it loads remap.fold (~90 ms), which launches keeping the vdso never need
        from .fold import vdso as hider

        start = lambda: _start_hidden(hider, argv, user, netns, popen_kw)  # noqa: E731
        proc = _with_personality(aslr, start)
    elif user or netns:
        start = lambda: _start_isolated(argv, user, netns, popen_kw, daemonizes)  # noqa: E731
        proc = _with_personality(aslr, start)
    else:
        proc = _with_personality(aslr, lambda: subprocess.Popen(list(argv), **popen_kw))
    _wait_exec_done(proc)  # every path: nsenter's and the hider's return at the exec too
    out = Launched(proc, proc.pid, list(argv), aslr, vdso, full_env, env_bytes(full_env))
    out.user, out.netns = user, netns is not None
    return out


def _wait_exec_done(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """Wait (bounded) until the kernel has finished exec'ing PROC: its auxv is filled in.

    Why: Popen returns when its close-on-exec error pipe closes, which happens in
    begin_new_exec, after the new mm exists but before the ELF segments, the vdso and the
    auxiliary vector are mapped.  A caller that read /proc/PID/maps at once saw only
    ``[stack]`` and ``[vsyscall]`` (CI, stop 19).  create_elf_tables fills mm->saved_auxv after
    all of them, so a non-empty auxv means the image is complete.  A process that exits first
    or cannot be read ends the wait; after TIMEOUT the caller gets the process as it is.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if procfs.read_auxv(proc.pid):
                return
        except (OSError, RemapError):
            return
        time.sleep(0.0005)


def _start_isolated(
    argv: list[str], user: str | None, ns: NetNamespace | None, popen_kw, daemonizes: bool = False
):
    """Popen ARGV as USER and/or inside NS, and wait (bounded) until the PID runs ARGV[0].

    Why wait: with a namespace the child first runs nsenter, which execs ARGV in place; a
    caller that measured at once would see nsenter.  As a user alone, Popen drops the
    privileges itself (setgroups, setgid, setuid in the child, before exec).
    """
    uid, gid = _user_ids(user)
    if ns is None:
        return subprocess.Popen(list(argv), user=uid, group=gid, extra_groups=[], **popen_kw)
    proc = subprocess.Popen(_nsenter_argv(ns, argv, uid, gid), pass_fds=(ns.fd,), **popen_kw)
    want = os.path.realpath(argv[0])
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if procfs.read_exe(proc.pid) == want:
                return proc
        except (OSError, RemapError):
            pass
        time.sleep(0.002)
    if proc.poll() is not None:
        if daemonizes and proc.returncode == 0:
            return proc  # its parent's work is done: the child carries on
        raise UsageError(f"launch: {argv[0]} exited at once with status {proc.returncode}")
    proc.kill()
    proc.wait(timeout=5)
    raise UnsupportedTarget(f"launch: {argv[0]} did not start inside the namespace (nsenter)")


def _start_hidden(hider, argv: list[str], user: str | None, ns: NetNamespace | None, popen_kw):
    """remap.fold.vdso's launch of ARGV, as USER and/or inside NS: Popen switches the user
    itself; nsenter is followed through its exec of ARGV[0] (the vdso is hidden there)."""
    uid, gid = _user_ids(user)
    kw = dict(popen_kw)
    if ns is None:
        if uid is not None:
            kw.update(user=uid, group=gid, extra_groups=[])
        return hider.launch(list(argv), **kw)
    return hider.launch(_nsenter_argv(ns, argv, uid, gid), program=argv[0],
                        pass_fds=(ns.fd,), **kw)  # fmt: skip


def _nsenter_argv(ns: NetNamespace, argv: list[str], uid: int | None, gid: int | None):
    """ARGV run by nsenter inside NS as UID/GID (UnsupportedTarget without nsenter)."""
    if shutil.which("nsenter") is None:
        raise UnsupportedTarget("launch: --netns needs nsenter (apt-get install util-linux)")
    return ns.enter_argv(list(argv), uid=uid, gid=gid)


def _user_ids(user: str | None) -> tuple[int | None, int | None]:
    """(uid, primary gid) of USER; (None, None) for None.  UsageError for an unknown name."""
    if user is None:
        return None, None
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise UsageError(f"launch: no user {user!r} on this machine") from None
    return pw.pw_uid, pw.pw_gid


def _with_personality(aslr: bool, start):
    """Run start() with ADDR_NO_RANDOMIZE set on this thread if aslr is False, then restore.

    Why in the parent and not in a preexec_fn: the persona is inherited by fork and only read at
    exec, so setting it around Popen is equivalent, works with vfork/posix_spawn and is safe in
    a threaded parent (preexec_fn is not).  The lock keeps two launches from interleaving.
    """
    if aslr:
        return start()
    with _personality_lock:
        old = _libc.personality(0xFFFFFFFF)  # query
        if old < 0:
            raise OSError(ctypes.get_errno(), "personality")
        _libc.personality(old | ADDR_NO_RANDOMIZE)
        try:
            return start()
        finally:
            _libc.personality(old)


def personality(pid: int) -> int:
    """The persona of a running process (from /proc/PID/personality; needs ptrace access).
    Raises NoSuchProcess when PID is gone, AccessDenied without ptrace access."""
    return procfs.read_personality(pid)
