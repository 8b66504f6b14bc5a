"""Keep hold of a program that daemonizes: its forked child becomes ours, reaped by us.

Why: a daemon forks and its parent exits; the child is reparented to the nearest *child
subreaper* ancestor (kernel/exit.c find_new_reaper), else to init, and a launcher holding only
the parent's Popen loses it (no exit status, no wait).  With prctl(PR_SET_CHILD_SUBREAPER) set
while the parent exits, the orphan becomes remap's own child: :class:`Adopted` then waits for
it, with a deadline, like a Popen.  The flag is set only for that moment, so other orphans of
the remap process are not collected afterwards.

EnergyMech daemonizes this way unless started with MECHRESET (src/main.c: fork, the parent
exits, the child calls setsid and writes its PID to mech.pid).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from .errors import RemapError, UnsupportedTarget

PR_SET_CHILD_SUBREAPER = 36  # include/uapi/linux/prctl.h
_libc = ctypes.CDLL(None, use_errno=True)


def _subreaper(on: bool) -> None:
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(e)}")


class Adopted:
    """A Popen-like handle of a process that became our child by reparenting: poll, wait
    (with a deadline: subprocess.TimeoutExpired), send_signal, kill; no pipes."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int, args: list[str]):
        self.pid, self.args = pid, args
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: gone, status unknown
                self.returncode = -1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.005)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def adopt_daemon(
    start: Callable[[], subprocess.Popen], pidfile: Path, timeout: float = 10.0
) -> tuple[subprocess.Popen, Adopted]:
    """Run START (it returns the parent's Popen), wait for the parent to exit and for PIDFILE
    to name its child, and return (parent, the adopted child).

    Raises UnsupportedTarget when the parent does not exit 0 within TIMEOUT, or no child of
    ours appears in PIDFILE (the program did not daemonize as expected); RemapError when the
    kernel refuses the subreaper flag.
    """
    try:
        _subreaper(True)
    except OSError as e:
        raise RemapError(f"cannot adopt a daemon: {e}") from None
    try:
        parent = start()
        try:
            rc = parent.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            parent.kill()
            parent.wait(timeout=5)
            raise UnsupportedTarget(
                f"{parent.args[0]} did not daemonize within {timeout:g} s"
            ) from None
        if rc != 0:
            raise UnsupportedTarget(f"{parent.args[0]}'s parent exited with status {rc}")
        child = _child_from(pidfile, time.monotonic() + timeout)
    finally:
        _subreaper(False)
    return parent, Adopted(child, list(parent.args))


def _child_from(pidfile: Path, deadline: float) -> int:
    """The PID PIDFILE names once it is a child of ours (reparented here), before DEADLINE."""
    from . import procfs

    while time.monotonic() < deadline:
        try:
            pid = int(pidfile.read_text().split()[0])
            if procfs.read_stat(pid).ppid == os.getpid():
                return pid
        except (OSError, ValueError, IndexError, RemapError):
            pass
        time.sleep(0.005)
    raise UnsupportedTarget(f"no daemon child of ours appeared in {pidfile}")
