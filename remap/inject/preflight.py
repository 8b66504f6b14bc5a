"""Refuse, before touching it, a process remap cannot inject into; and the /proc facts a
session needs about its target (threads, states, CPUs), read through remap.procfs.

Why apart from the session: the profiler and ``remap fold --dry-run`` refuse the same targets
without ever stopping them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import struct
from typing import Any

from .. import kconst as K
from .. import procfs
from ..errors import (
    AccessDenied,
    AlreadyTraced,
    NoSuchProcess,
    RemapError,
    UnsupportedTarget,
    UsageError,
    ZombieProcess,
)

CAP_SYS_ADMIN = 21  # include/uapi/linux/capability.h


def tids(pid: int) -> set[int]:
    """PID's thread ids; empty once it is gone."""
    try:
        return set(procfs.thread_ids(pid))
    except (OSError, RemapError):
        return set()


def thread_state(pid: int, tid: int) -> str:
    """The one-letter state of thread TID ('?' when unreadable), for messages."""
    with contextlib.suppress(OSError, RemapError):
        return procfs.read_stat(pid, tid).state
    return "?"


def is_zombie(pid: int) -> bool:
    return thread_state(pid, pid) == "Z"


def last_cpu(pid: int, tid: int) -> int | None:
    """The CPU thread TID last ran on (stat field 39), None if unreadable."""
    try:
        return procfs.read_stat(pid, tid).processor
    except (OSError, RemapError):
        return None


def pidfd_exited(fd: int) -> bool:
    """A pidfd polls readable once its process has exited -- zombie, reaped, or its PID
    already given to another process (pidfd_open(2))."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(0))


class PidFd:
    """A pidfd on PID, opened before preflight: proves the process seized is the one checked
    (PIDs get reused)."""

    def __init__(self, pid: int, lib: Any):
        self.pid, self._lib, self.fd = pid, lib, -1

    def open(self) -> None:
        """Raises NoSuchProcess, ZombieProcess or AccessDenied."""
        if self.pid <= 0:
            raise NoSuchProcess(self.pid)
        fd = self._lib.rn_pidfd_open(self.pid)
        if fd < 0:
            raise gone(self.pid, -fd)
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def same_process(self) -> None:
        """Refuse if the process preflight looked at has exited (its PID may name another)."""
        if self.fd >= 0 and pidfd_exited(self.fd):
            if is_zombie(self.pid):
                raise ZombieProcess(self.pid)
            raise NoSuchProcess(self.pid, f"process {self.pid} exited before it could be seized")


def gone(pid: int, err: int) -> RemapError:
    """The error for a failed pidfd_open (or another open of PID) with errno ERR."""
    if err in (errno.EPERM, errno.EACCES):
        return AccessDenied(f"permission denied: cannot inspect process {pid}")
    return ZombieProcess(pid) if is_zombie(pid) else NoSuchProcess(pid)


def _have_cap(cap: int) -> bool:
    eff = procfs.read_status(os.getpid()).get("CapEff", 0)
    return bool(int(eff) >> cap & 1)


def preflight(pid: int, *, suspend_seccomp: bool = False) -> None:
    """Refuse, with one clear line and without touching it, a process remap cannot inject into.

    Reads only /proc: existence, zombie, kernel thread, job-control stop, tracer, the ELF header
    of /proc/PID/exe (64-bit x86_64 only) and the seccomp mode of every thread.  Raises
    NoSuchProcess, ZombieProcess, AccessDenied, AlreadyTraced, UnsupportedTarget or UsageError.
    """
    if pid <= 0:
        raise NoSuchProcess(pid)
    st = procfs.read_status(pid)
    stat = procfs.read_stat(pid)
    tgid = st.get("Tgid", pid)
    if tgid != pid:
        raise UsageError(f"{pid} is a thread of process {tgid}; give the process id")
    if stat.state in ("Z", "X"):
        raise ZombieProcess(pid)
    if stat.flags & K.PF_KTHREAD:
        raise UnsupportedTarget(f"process {pid} is a kernel thread: it has no user memory")
    tracer = st.get("TracerPid", 0)
    if tracer:
        raise AlreadyTraced(f"process {pid} is already traced by process {tracer}")
    if stat.state == "T":
        raise UnsupportedTarget(f"process {pid} is stopped by job control; SIGCONT it first")
    _check_elf(pid, procfs.read_exe_header(pid, 20))
    for tid in tids(pid) or {pid}:
        _check_seccomp(pid, tid, suspend_seccomp)


def _check_elf(pid: int, ehdr: bytes) -> None:
    if len(ehdr) < 20 or ehdr[:4] != b"\x7fELF":
        raise UnsupportedTarget(f"process {pid}: its executable is not an ELF file")
    (machine,) = struct.unpack_from("<H", ehdr, 18)
    if ehdr[4] != K.ELFCLASS64 or machine != K.EM_X86_64:
        kind = "32-bit" if ehdr[4] == K.ELFCLASS32 else "64-bit"
        raise UnsupportedTarget(
            f"process {pid} is a {kind} e_machine={machine} program; remap injects into "
            "x86_64 (64-bit) processes only"
        )


def _check_seccomp(pid: int, tid: int, suspend: bool) -> None:
    try:
        mode = int(procfs.read_task_status(pid, tid).get("Seccomp", 0))
    except (OSError, RemapError, ValueError):
        return  # the thread exited meanwhile
    if mode == K.SECCOMP_MODE_DISABLED:
        return
    if not suspend:
        raise UnsupportedTarget(
            f"process {pid} runs under seccomp (mode {mode}): an injected syscall could "
            "kill it; pass suspend_seccomp=True (root) to suspend the filter while injecting"
        )
    if not _have_cap(CAP_SYS_ADMIN):
        raise AccessDenied(f"process {pid} runs under seccomp; suspending it needs CAP_SYS_ADMIN")
