"""Stopping every thread, saving what it had, and putting it back (the seize and restart
rules of the package docstring, remap/inject/__init__.py).

Two kinds of state per thread, kept apart as in CRIU's compel (saved thread state vs the
infection's control):

- :class:`Saved` -- what the thread had at its stop and what it will resume with (registers,
  signal mask, FP state); the cure's only input, changed only through the session's
  set_resume_regs/set_resume_sigmask;
- :class:`Thread` -- the session's control of it: whether its stop was seen, its call
  template, whether it ran since, the signals it met on the way, the CPU it is kept on, and
  its safety frame (chain.Frame, None when it injects unprotected).
"""

from __future__ import annotations

import errno as errno_mod
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import kconst as K
from ..errors import InternalError, NoSuchProcess, Timeout, UnsupportedTarget
from ..native import REGS
from .abi import interrupted, signed, syscall_name
from .chain import Frame
from .interrupts import interrupt_pending
from .preflight import thread_state, tids
from .ptrace import WAIT_ENDED, Ptrace

_SEIZE_ROUNDS = 1000  # rescans of /proc/PID/task before a thread-spawning target is refused


@dataclass
class Saved:
    """One thread as it was stopped, and as it will resume."""

    regs: Any  # struct user_regs_struct * (cffi): the registers it resumes with
    sigmask: int  # the mask it had when stopped
    resume_mask: int  # the mask it resumes with (set_resume_sigmask changes it)
    fpregs: Any = None  # legacy FP area (PTRACE_GETFPREGS), saved on first injection
    xsave: bytes = b""  # its XSAVE area, as a signal frame holds it (abi.fp_area)
    regs_dirty: bool = False  # set_resume_regs changed regs: the cure must write them

    def reg_dict(self) -> dict[str, int]:
        """A copy of the registers it resumes with, by name."""
        return {n: getattr(self.regs, n) for n in REGS}


@dataclass
class Thread:
    """The session's control of one stopped thread."""

    tid: int
    saved: Saved | None = None  # None until its first stop was seen and saved
    stopped: bool = False  # its interrupt stop has been reported to us
    ran: bool = False  # resumed by us at least once: the cure must re-interrupt it
    call: Any = None  # struct rn_call * (cffi), prepared on first injection
    signals: list[int] = field(default_factory=list)  # met on the way; re-queued at the cure
    cpu: int = -1  # the CPU the tracer follows it to (-1: none)
    pinned: bool = False  # its affinity is the tracer's CPU until the cure
    frame: Frame | None = None  # its safety frame (None: it injects unprotected)

    @property
    def frame_at(self) -> int:
        """Address of its safety frame, 0 when it has none."""
        return self.frame.at if self.frame is not None else 0


class Threads(dict[int, Thread]):
    """Every seized thread of one process by tid, and the ptrace dance of stopping them."""

    def __init__(self, pid: int, pt: Ptrace, timeout: float):
        super().__init__()
        self.pid, self.pt, self.timeout = pid, pt, timeout

    def seize_all(self, options: int, same_process: Callable[[], None]) -> None:
        """PTRACE_SEIZE + PTRACE_INTERRUPT every thread not held yet, rescanning
        /proc/PID/task until no new one appears; then save each one's state.

        SAME_PROCESS raises if the process checked before is not the one found now.
        Raises NoSuchProcess, AccessDenied, AlreadyTraced, Timeout, UnsupportedTarget."""
        status = self.pt.ffi.new("int *")
        for _round in range(_SEIZE_ROUNDS):
            new = tids(self.pid) - set(self)
            if not new:
                break
            if self.pid in new:
                same_process()
            seized = []
            for tid in sorted(new):
                if not self.pt.seize(tid, options):
                    continue  # exited meanwhile
                seized.append(tid)
                self[tid] = Thread(tid)  # now, so a failure below still detaches it
                self.pt.interrupt(tid)
            for tid in seized:
                self.wait_first_stop(tid, status)
        else:
            raise UnsupportedTarget(f"process {self.pid} keeps creating threads; cannot stop it")
        if self.pid not in self:
            raise NoSuchProcess(self.pid)
        same_process()  # died between the check and the seize: what we hold is not it
        for t in self.values():
            self.save(t)

    def wait_first_stop(self, tid: int, status: Any) -> None:
        """Wait for tid's PTRACE_EVENT_STOP; a signal that stops it first is kept for later."""
        pt = self.pt
        for _ in range(64):
            r = pt.wait(tid, status, 0)
            while r == -errno_mod.EINTR:  # a signal to the driver: Ctrl-C aborts, others wait on
                if interrupt_pending():
                    raise KeyboardInterrupt(f"interrupted while waiting for thread {tid} to stop")
                r = pt.wait(tid, status, 0)
            if r == -errno_mod.ETIMEDOUT:
                raise Timeout(
                    f"thread {tid} of process {self.pid} did not stop within {self.timeout:g} s "
                    f"(state {thread_state(self.pid, tid)}: e.g. a vfork parent or an "
                    "uninterruptible wait); not injecting"
                )
            st = status[0]
            if r < 0 or os.WIFEXITED(st) or os.WIFSIGNALED(st):
                self.pop(tid, None)  # the thread is gone: nothing to restore
                return
            if (st >> 16) == K.PTRACE_EVENT_STOP:
                self[tid].stopped = True
                return
            if (st >> 16) == 0:  # signal-delivery stop: suppress now, re-queue at the cure
                self[tid].signals.append(os.WSTOPSIG(st))
            pt.cont(tid)
        raise InternalError(f"thread {tid} never reached its interrupt stop")

    def unfinished(
        self, t: Thread, c: Any, r: int, nr: int, again: Any, done_at: int, park: Any
    ) -> int:
        """A call whose wait the C side left unfinished (-EINTR: a signal reached the driver;
        -ETIMEDOUT: the deadline passed).  A signal that is not an interrupt of the driver
        (its Python handler ran and did not ask to stop) resumes the wait; Ctrl-C, SIGTERM and
        the deadline abort the call: the thread is interrupted out of it and parked as between
        calls (the cure then puts it back).

        A call that had already completed when the abort stopped the thread (rip at DONE_AT,
        just past its `syscall`, not an interrupted call) is not lost: its result is kept
        (c.result, return 0) and the interrupt is raised when the session operation ends
        (atomic).  One that had not is abandoned: Timeout, or KeyboardInterrupt -- never an
        OSError, which a caller could take for the syscall's own failure and carry on.  PARK puts
        the thread 'between calls' (the session chain's park)."""
        while r == WAIT_ENDED[0] and not interrupt_pending():
            r = again()
        if r not in WAIT_ENDED:
            return r
        at = self.pt.ffi.new("struct user_regs_struct *")
        a = self.pt.abort(t.tid, c, at)
        self.pt.lib.rn_guard_clear(c.slot)
        t.ran = True
        t.signals.extend(c.sigs[0 : c.nsig])
        if a:
            self.pt.check(a, f"aborting injected {syscall_name(nr)}", t.tid)
        park(t)
        if done_at and at.rip == done_at and not interrupted(at.orig_rax, at.rax):
            c.result = signed(at.rax)
            if r == WAIT_ENDED[0]:
                return 0  # completed: the held interrupt is raised at the operation's end
        if r == WAIT_ENDED[1]:
            raise Timeout(
                f"injected {syscall_name(nr)} did not return within {self.timeout:g} s; "
                f"interrupted it (process {self.pid} is put back as it was)"
            )
        raise KeyboardInterrupt(f"interrupted during injected {syscall_name(nr)}")

    def save(self, t: Thread) -> None:
        mask = self.pt.getsigmask(t.tid)
        t.saved = Saved(self.pt.getregs(t.tid), mask, mask)

    def reinterrupt(self, t: Thread) -> tuple[int, Any]:
        """rn_reinterrupt (back to a fresh interrupt stop with the saved registers), waiting
        through the driver's own signals (the cure is never abandoned half-way for a Ctrl-C)
        but not past the deadline.  Returns the helper's result and its call record."""
        assert t.saved is not None
        c = self.pt.ffi.new("struct rn_call *")
        r = self.pt.reinterrupt(t.tid, t.saved.regs, c)
        while r == -errno_mod.EINTR:
            r = self.pt.reinterrupt(t.tid, t.saved.regs, c)
        if r == -errno_mod.ETIMEDOUT:
            raise Timeout(f"thread {t.tid} did not stop again within {self.timeout:g} s")
        t.signals.extend(c.sigs[0 : c.nsig])
        self.pt.check(r, "re-interrupt", t.tid)
        return r, c

    def restore(self, t: Thread, *, reinterrupted: bool = False) -> None:
        """Put t back as it will resume: registers (a fresh interrupt stop when it ran, so an
        interrupted call restarts exactly; REINTERRUPTED: chain.disarm did that already), FP
        state and mask."""
        pt, sv = self.pt, t.saved
        assert sv is not None
        if reinterrupted:
            pass
        elif t.ran:
            # Not only for DETACH (whose wake-up alone would make the kernel rewind an
            # ERESTART* call): PTRACE_CONT from a syscall-exit stop would hand -512 to
            # userspace.  From a fresh interrupt stop both restart exactly.
            self.reinterrupt(t)
        elif sv.regs_dirty:
            pt.setregs(t.tid, sv.regs)
        if sv.fpregs is not None:
            pt.setfpregs(t.tid, sv.fpregs)
        if t.call is not None or sv.resume_mask != sv.sigmask:
            pt.setsigmask(t.tid, sv.resume_mask)

    def requeue(self, t: Thread) -> None:
        """Signals met while stopped: delivered as it resumes."""
        for sig in t.signals:
            self.pt.lib.rn_tgkill(self.pid, t.tid, sig)

    def let_go(self, t: Thread, *, detach: bool) -> None:
        """Detach t -- or PTRACE_CONT it, staying attached, with its control state reset."""
        if detach:
            self.pt.detach(t.tid)
            self.pop(t.tid, None)
            return
        self.pt.cont(t.tid)
        t.stopped = t.ran = False
        t.call = t.frame = None
        t.cpu = -1
        t.signals = []
        if t.saved is not None:
            t.saved.fpregs = None
            t.saved.regs_dirty = False

    def forward_stops(self, tid: int, status: Any, flags: int) -> None:
        """Handle tid's stops while it runs traced: pass signals on, keep job-control stops,
        and (flags=0) return once it reaches its interrupt stop."""
        pt = self.pt
        for _ in range(256):
            r = pt.wait(tid, status, flags)
            if r == -errno_mod.EINTR:
                if interrupt_pending():
                    raise KeyboardInterrupt(f"interrupted while thread {tid} ran attached")
                continue
            if r == -errno_mod.ETIMEDOUT:
                raise Timeout(f"thread {tid} did not stop within {self.timeout:g} s")
            st = status[0]
            if r == 0:
                return
            if r < 0 or os.WIFEXITED(st) or os.WIFSIGNALED(st):
                self.pop(tid, None)
                return
            event, sig = st >> 16, os.WSTOPSIG(st)
            if event == K.PTRACE_EVENT_STOP:
                if sig == K.SIGTRAP:  # our PTRACE_INTERRUPT landed
                    self[tid].stopped = True
                    return
                pt.listen(tid)  # group stop: stay stopped, traced
            elif event == 0 and sig != (K.SIGTRAP | 0x80):
                pt.cont(tid, sig)  # deliver the signal it stopped for
            else:
                pt.cont(tid)
        raise InternalError(f"thread {tid}: endless stops while running attached")
