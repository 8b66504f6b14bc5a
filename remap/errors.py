"""One error vocabulary for remap, raised from the few places that touch the kernel.

Why: psutil's lesson -- raw ``OSError``s from /proc and ptrace mean different things depending
on whether the process still exists, so they are translated once, near the syscall, into a
handful of classes: :func:`translate` is the one errno -> class table (remap.procfs adds the
zombie check for /proc files).  The CLI's top level is the only place that turns a class into
one line on stderr and its exit code (see ``EXIT_CODES``); nothing else in remap prints
tracebacks for these or picks exit numbers.
"""

from __future__ import annotations

import errno as _errno


class RemapError(Exception):
    """Base of every error remap reports to a user; ``exit_code`` is what the CLI exits with."""

    exit_code = 70  # internal error unless a subclass says otherwise


class UsageError(RemapError):
    """The command line or an argument value is wrong."""

    exit_code = 2


class NoSuchProcess(RemapError):
    """The PID does not exist (or exited while we looked)."""

    exit_code = 3

    def __init__(self, pid: int, msg: str | None = None):
        self.pid = pid
        super().__init__(msg or f"no such process: {pid}")


class ZombieProcess(NoSuchProcess):
    """The PID is a zombie: it has no address space left to look at or change."""

    def __init__(self, pid: int, msg: str | None = None):
        super().__init__(pid, msg or f"process {pid} is a zombie (it has exited; no memory left)")


class AccessDenied(RemapError):
    """The kernel refused: not root, or not allowed to ptrace/read this process."""

    exit_code = 4


class UnsupportedTarget(RemapError):
    """A process remap cannot safely work on: kernel thread, 32-bit, foreign arch, seccomp..."""

    exit_code = 5


class AlreadyTraced(UnsupportedTarget):
    """Another tracer (strace, gdb, a debugger) already holds the process."""


class UnsafeStep(RemapError):
    """A step's precondition failed; the target was left as it was."""

    exit_code = 6


class Timeout(RemapError):
    """The target did not reach a stop (or an injected call did not return) within the
    session's deadline; the wait was abandoned and the target put back as it was."""

    exit_code = 9


class ExperimentError(RemapError):
    """An experiment file is malformed, unknown, or its target cannot be built."""

    exit_code = 7


class KernelError(RemapError):
    """A kernel for the matrix cannot be listed, fetched or booted, or its guest failed or hung
    (neither a usage nor an experiment mistake: its own line and exit code)."""

    exit_code = 8


class InternalError(RemapError):
    """A bug in remap: something it believed could not happen."""

    exit_code = 70


# A command that ran to its end but whose result is a failure (the syscall returned -1, a run
# did not keep its target working): its output is printed, then it exits with this.
EXIT_FAILED = 1

EXIT_CODES = {
    "usage": UsageError.exit_code,
    "no such process": NoSuchProcess.exit_code,
    "permission": AccessDenied.exit_code,
    "unsupported target": UnsupportedTarget.exit_code,
    "unsafe step": UnsafeStep.exit_code,
    "experiment": ExperimentError.exit_code,
    "kernel": KernelError.exit_code,
    "timeout": Timeout.exit_code,
    "internal": InternalError.exit_code,
}


# ------------------------------------------------------------------------- OSError -> remap error
GONE_ERRNOS = (_errno.ENOENT, _errno.ESRCH)
DENIED_ERRNOS = (_errno.EACCES, _errno.EPERM, _errno.EROFS)  # EROFS: a write refused too

# Refusals whose cause the kernel documents, by (what was done, errno): the reason shown.
_DENIED_WHY = {
    # mm/madvise.c, process_madvise(): after mm_access(PTRACE_MODE_READ), "if (mm !=
    # current->mm && !capable(CAP_SYS_NICE)) return -EPERM" -- any process but the caller
    # itself needs CAP_SYS_NICE in the initial user namespace, even one the user owns
    ("process_madvise", _errno.EPERM): (
        "advising another process's memory needs CAP_SYS_NICE, even for a process you own "
        "(mm/madvise.c); run as root, or without --no-stop (ptrace)"
    ),
    ("process_madvise", _errno.EACCES): (
        "the kernel's ptrace read check (PTRACE_MODE_READ) refused access to its memory"
    ),
    # fs/proc/page.c: /proc/kpageflags and /proc/kpagecount are mode 0400, root's
    ("/proc/kpageflags", _errno.EACCES): "page frame flags need root (CAP_SYS_ADMIN)",
    ("/proc/kpagecount", _errno.EACCES): "page frame counts need root (CAP_SYS_ADMIN)",
}


def translate(
    exc: OSError, *, pid: int | None = None, what: str = "", zombie: bool = False
) -> Exception:
    """The remap error a raw OSError stands for -- the one errno -> error class table.

    EPERM/EACCES become :class:`AccessDenied` (exit 4); with a PID, ENOENT/ESRCH become
    :class:`NoSuchProcess` (exit 3), or :class:`ZombieProcess` when the caller found PID a
    zombie (``zombie``; remap.procfs looks before blaming the process, psutil's lesson).  WHAT
    names the file or call that failed.  Anything else is returned unchanged: a bug, which the
    CLI reports as an internal error (70).  Returns the error; the caller raises it.
    """
    if pid is not None and exc.errno in GONE_ERRNOS:
        return ZombieProcess(pid) if zombie else NoSuchProcess(pid)
    if exc.errno in DENIED_ERRNOS:
        why = _DENIED_WHY.get((what, exc.errno))
        if why:
            code = _errno.errorcode[exc.errno]
            on = "" if pid is None else f" on process {pid}"
            return AccessDenied(f"{what}{on} refused ({code}): {why}")
        if pid is not None:
            return AccessDenied(f"permission denied reading /proc/{pid}/{what} (try as root)")
        where = what or exc.filename or "operation"
        return AccessDenied(f"permission denied: {where} ({exc.strerror}; try as root)")
    return exc
