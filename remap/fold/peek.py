"""A look at a running process that never stops it: the session a dry run plans with.

Why: ``--dry-run`` promises to change nothing, and a ptrace stop is a change (2-16 ms in which
the target cannot run).  Everything the planners need can be read from outside: a blocked
thread's sp, pc and syscall from /proc/PID/task/TID/syscall (the kernel reads the saved user
registers of a task that is not running; no tracer is attached), memory through /proc/PID/mem.
Two things cannot, and :class:`NeedsStop` says so where they are asked for: the registers of a
thread that is running at that instant, and an answer only an injected call gives.

Peek has the subset of remap.inject.Session the planners use (threads, regs, read,
set_resume_regs, use_gadget, scratch_area), with the same meaning, so a dry run runs the very
planners the real run does.
"""

from __future__ import annotations

import errno
import struct
from typing import Any

from .. import pagemap, procfs
from ..errors import NoSuchProcess
from ..kconst import ERESTART_RESTARTBLOCK, ERESTARTNOHAND, ERESTARTSYS, MASK64, PAGE_SIZE
from ..residency import Snapshot
from .plan import NeedsStop
from .ranges import page_floor

TCB_SCAN = 16 * PAGE_SIZE  # glibc and musl put struct pthread in the top pages of the stack
EINTR = errno.EINTR
# What rax holds when a stop interrupts a thread blocked in these (measured on 6.18 with
# PTRACE_INTERRUPT; every other blocking call shows -ERESTARTSYS).  poll always restarts
# through a restart block, futex only with a timeout (its 4th argument); epoll_wait returns
# -EINTR to the program instead of restarting.
_STOP_CODE = {
    "nanosleep": ERESTART_RESTARTBLOCK,
    "clock_nanosleep": ERESTART_RESTARTBLOCK,
    "poll": ERESTART_RESTARTBLOCK,
    "pause": ERESTARTNOHAND,
    "select": ERESTARTNOHAND,
    "pselect6": ERESTARTNOHAND,
    "ppoll": ERESTARTNOHAND,
    "rt_sigsuspend": ERESTARTNOHAND,
    "epoll_wait": EINTR,
    "epoll_pwait": EINTR,
    "epoll_pwait2": EINTR,
}


def looks_like_tcb(addr: int, first: int, second: int) -> bool:
    """Do the two words at ADDR look like a libc thread control block?  glibc's tcbhead_t and
    musl's struct pthread both start with a pointer to themselves followed by the dtv pointer
    (a real address, not the block itself: an empty list head points to itself twice)."""
    return first == addr and second != addr and second >= 1 << 16


class _Regs(dict):
    """A thread's registers as far as they are known without a stop; asking for any other
    (rbp, say) is a question only the stop answers."""

    def __missing__(self, key: str) -> int:
        raise NeedsStop(f"register {key} is read at the stop")


class Peek:
    """The running process PID, seen from outside (see the module docstring)."""

    # Session.scratch_area's answer for a look that maps nothing (fold.plan.in_scratch)
    scratch_area: tuple[int, int] | None = None

    def __init__(self, pid: int, snap: Snapshot):
        self.pid = pid
        self.notes: list[str] = []
        self._snap = snap
        self._mem: procfs.MemFile | None = None  # opened at the first read (closed with the Peek)
        self._regs: dict[int, _Regs | None] = {}
        for tid in procfs.thread_ids(pid):
            try:
                self._regs[tid] = self._observe(tid)
            except NoSuchProcess:
                if tid == pid:
                    raise
                # that thread exited meanwhile: it has no stack left to plan for
        self.threads = list(self._regs)

    def _observe(self, tid: int) -> _Regs | None:
        sc = procfs.read_syscall(self.pid, tid)
        if sc.running:
            return None
        regs = _Regs(rsp=sc.sp, rip=sc.pc, orig_rax=MASK64, rax=0)
        if sc.nr is not None and sc.nr >= 0:
            from ..inject import syscall_name

            code = _STOP_CODE.get(syscall_name(sc.nr), ERESTARTSYS)
            if syscall_name(sc.nr) == "futex" and sc.args and sc.args[3]:
                code = ERESTART_RESTARTBLOCK
            regs.update(orig_rax=sc.nr, rax=-code & MASK64)
        return regs

    def regs(self, tid: int | None = None) -> dict[str, int]:
        """Thread TID's registers (sp, pc, syscall; fs_base where a TCB is found above sp in
        the mapping holding it).  Raises NeedsStop for a thread that is running."""
        tid = self.pid if tid is None else tid
        regs = self._regs.get(tid)
        if regs is None:
            raise NeedsStop(f"thread {tid} was running: its registers are read at the stop")
        if "fs_base" not in regs:
            regs["fs_base"] = self._find_tcb(regs["rsp"])
        return _Regs(regs)

    def _find_tcb(self, sp: int) -> int:
        """The highest TCB-looking block in the present top pages above SP of the anonymous
        mapping holding SP, or 0.  Only present pages are read: reading a page faults it in."""
        v = self._snap.vma_at(sp)
        if v is None or v.is_file or (v.path and not v.path.startswith("[anon:")):
            return 0  # [stack], [heap]...: no libc puts a thread's TCB there
        lo = max(page_floor(sp), v.end - TCB_SCAN)
        for run in reversed(
            [r for runs in pagemap.present_read(self.pid, [(lo, v.end)]) for r in runs]
        ):
            for page in range(run.end - PAGE_SIZE, run.start - PAGE_SIZE, -PAGE_SIZE):
                words = struct.unpack(f"<{PAGE_SIZE // 8}Q", self.read(page, PAGE_SIZE))
                for i in range(len(words) - 2, -1, -1):
                    a = page + 8 * i
                    if a > sp and looks_like_tcb(a, words[i], words[i + 1]):
                        return a
        return 0

    def set_resume_regs(self, tid: int | None, regs: dict[str, int]) -> None:
        """What the real run would leave thread TID with (a planned stack move's new rsp)."""
        tid = self.pid if tid is None else tid
        self.regs(tid)  # NeedsStop for a running thread
        self._regs[tid].update({k: v & MASK64 for k, v in regs.items()})  # type: ignore[union-attr]

    def read(self, addr: int, n: int) -> bytes:
        """N bytes of the target's memory, read from outside (procfs.MemFile: a read that
        pins nothing, so a page the target still shares with a forked child stays shared)."""
        if self._mem is None:
            self._mem = procfs.MemFile(self.pid)
        return self._mem.read(addr, n)

    def close(self) -> None:
        """Close /proc/PID/mem, if a read opened it."""
        if self._mem is not None:
            self._mem.close()
            self._mem = None

    def use_gadget(self, addr: int) -> None:
        """Nothing is injected in a dry run: no instrument to choose."""

    def syscall(self, name: str | int, *args: Any, **kw: Any) -> int:
        raise NeedsStop(f"{name} is asked of the stopped process")

    syscalls = syscall
