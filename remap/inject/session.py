"""The Session: a stopped process and the means to run syscalls in it (see the package
docstring for the guarantees).  It composes the pieces chosen once at attach: the ptrace
layer, the threads' saved state, the safety chain, the scratch area and the CPU pinning.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from collections.abc import Iterator, Sequence
from typing import Any

from .. import gadget as gadget_mod
from .. import kconst as K
from .. import procfs
from ..errors import NoSuchProcess, RemapError, UnsupportedTarget, UsageError
from . import batch, setup
from .abi import (
    MASK64,
    REFUSED_SYSCALLS,
    cached_number,
    encode,
    refuse_unsafe,
    syscall_name,
)
from .batch import GUARDED
from .chain import NoChain
from .interrupts import _Interrupts, atomic, trap_interrupts
from .memory import Memory
from .pinning import CpuPin
from .preflight import PidFd, gone, preflight
from .ptrace import Ptrace
from .scratch import Scratch
from .setup import INJECT_SIGMASK
from .threads import Thread, Threads

TIMEOUT_S = 10.0  # default deadline of every wait for a stop and of every injected call
_ZERO6 = (0, 0, 0, 0, 0, 0)


class Session:
    """A stopped process and the means to run syscalls in it.  Create with :func:`attach`.

    The thread that injects is the main thread unless a call passes ``tid=``.  Never keep a
    session across a fork of the driver, and never drive it from two Python threads.
    """

    def __init__(
        self,
        pid: int,
        *,
        pin: bool = True,
        suspend_seccomp: bool = False,
        timeout: float = TIMEOUT_S,
    ):
        if not timeout > 0:
            raise UsageError(f"a session's timeout must be positive, not {timeout!r}")
        self.pid = pid
        self.timeout = timeout  # seconds: every wait for a stop, every injected call
        self.pt = Ptrace(pid)
        self._lib, self._ffi = self.pt.lib, self.pt.ffi  # the helper's non-ptrace calls
        self.mem = Memory(pid, self._lib, self._ffi)
        self._pinning = pin
        self._pin = CpuPin(pid, self._lib, self._ffi)
        self._suspend_seccomp = suspend_seccomp
        self._threads = Threads(pid, self.pt, timeout)
        self.chain: NoChain = NoChain(self)  # chosen by setup.plan (see chain.py)
        self._plan_maps: list | None = None  # the maps setup.plan read before the stop
        self.scratch = Scratch(self)
        self._gadget: int | None = None
        self._gadget_hint: gadget_mod.Gadget | None = None
        self._borrowed: list[tuple[int, bytes]] = []
        self._t_stopped = 0
        self.released_ns = 0  # when close() let the last thread go
        self._maps_unchanged: list | None = None  # maps read while stopped, before any call
        # the last maps known from this stop, perhaps stale since: only for choosing a free gap
        # for scratch, where stale costs nothing but a fallback (Scratch._map)
        self._maps_seen: list | None = None
        self._closed = False
        self._marker = 0  # batch end signal (0: no ignorable signal, batches run call by call)
        self._mask = INJECT_SIGMASK
        self._pidfd = PidFd(pid, self._lib)  # the process checked is the one seized
        self.notes: list[str] = []  # why protection was dropped, if it was
        self.windows_ns: dict[str, int] = {}  # measured unprotected / leak windows
        self._t_unprotected = 0
        self._slots = 0  # guardian slots handed out (one per injecting thread)
        self.guardian = 0  # pid of the driver's guardian process (0: none)

    # ---- public views
    def __repr__(self) -> str:
        state = "detached" if self._closed else f"stopped {self.stopped_ns / 1e6:.1f} ms"
        return f"<remap.inject.Session pid={self.pid} threads={len(self._threads)} {state}>"

    @property
    def threads(self) -> list[int]:
        """Thread ids, all stopped (main thread first)."""
        return sorted(self._threads, key=lambda t: (t != self.pid, t))

    @property
    def stopped_ns(self) -> int:
        """How long the whole process has been stopped so far (ns)."""
        return time.monotonic_ns() - self._t_stopped if self._t_stopped else 0

    @property
    def scratch_area(self) -> tuple[int, int] | None:
        """(address, size) of the session's scratch area while it is mapped, else None:
        the fold's own tool, never the target's data (fold.plan.in_scratch)."""
        return (self.scratch.addr, self.scratch.size) if self.scratch.addr else None

    @property
    def chain_in_scratch(self) -> bool:
        """The safety chain in use runs through the scratch area's stub (no chain in the
        target's own code)."""
        return self.chain.in_scratch

    @property
    def gadget(self) -> int:
        """Address of the `syscall` instruction used for injection (found lazily)."""
        if self._gadget is None:
            g = self._gadget_hint if self._hint_still_mapped() else gadget_mod.find(self.pid)
            if g is None:
                raise UnsupportedTarget(
                    f"process {self.pid}: no `syscall` instruction in any executable mapping"
                )
            self.use_gadget(g.addr)
        return self._gadget  # type: ignore[return-value]

    def _hint_still_mapped(self) -> bool:
        """The gadget found before the seize (to keep the stop short) is still mapped there."""
        g = self._gadget_hint
        if g is None:
            return False
        with contextlib.suppress(OSError, RemapError):
            maps = self._maps_unchanged or gadget_mod.read_maps(self.pid)
            self._maps_unchanged = maps  # for the scratch mmap, if no call runs in between
            for m in maps:
                if m.start <= g.addr < m.end:
                    return m.path == g.path and "x" in m.perms
        return False

    def known_maps(self, maps: Sequence[Any]) -> None:
        """MAPS (objects with start, end, perms, path) were read while every thread was stopped
        and no call has been injected since: the first call's set-up uses them instead of
        reading /proc/PID/maps again (the fold passes its snapshot's VMAs)."""
        if self._t_stopped:
            self._maps_unchanged = list(maps)
            self._maps_seen = self._maps_unchanged

    def use_gadget(self, addr: int) -> None:
        """Inject through the `syscall` instruction at addr from now on (e.g. in a page the fold
        keeps).  The caller vouches that the two bytes at addr are 0f 05 and stay mapped."""
        self._gadget = addr
        for t in self._threads.values():
            if t.call is not None:
                t.call.regs.rip = addr

    # ---- before the stop
    def _open_pidfd(self) -> None:
        self._pidfd.open()

    def _close_pidfd(self) -> None:
        self._pidfd.close()

    def _same_process(self) -> None:
        self._pidfd.same_process()

    def pin_early(self) -> None:
        """Before the seize: move the tracer to the CPU the main thread last ran on."""
        if self._pinning:
            self._pin.early()

    @atomic
    def _seize(self) -> None:
        opts = K.PTRACE_O_TRACESYSGOOD
        if self._suspend_seccomp:
            opts |= K.PTRACE_O_SUSPEND_SECCOMP
        self._threads.seize_all(opts, self._same_process)
        self._t_stopped = time.monotonic_ns()
        self._maps_seen = None

    @functools.cached_property
    def _batch_by_stub(self) -> bool:
        """The stub ends by sending itself a marker signal; that needs one the target ignores
        (default action ignore, no handler), so that if the driver dies the kernel drops it.
        Read once, at the first batch (the target is stopped: its handlers cannot change)."""
        cgt = int(procfs.read_status(self.pid).get("SigCgt", 0))
        return self._marker != 0 and not (cgt >> (self._marker - 1) & 1)

    # ---- injection
    def _thread(self, tid: int | None) -> Thread:
        """The stopped thread tid (default main), prepared for injection."""
        tid = self.pid if tid is None else tid
        try:
            t = self._threads[tid]
        except KeyError:
            raise UsageError(
                f"thread {tid} is not a stopped thread of process {self.pid}"
            ) from None
        if self._closed:
            raise UsageError("session is closed (the process was detached)")
        if t.call is None:
            self._prepare(t)
        return t

    def _prepare(self, t: Thread) -> None:
        """First injection on t: save FP state, build the call template, arm, block signals."""
        sv = t.saved
        # A syscall preserves FP/SSE state, but a signal handler run by a stray signal would
        # not; saving the legacy area (PTRACE_GETFPREGS) is cheap insurance, restored at the cure.
        sv.fpregs = self.pt.getfpregs(t.tid)
        call = self._ffi.new("struct rn_call *")
        call.regs = sv.regs[0]
        call.regs.orig_rax = MASK64  # -1: "not in a syscall", so nothing gets restarted
        call.regs.rip = self.gadget
        self._slots += 1
        call.slot = self._slots  # the guardian's view of this thread's calls (0: none)
        t.call = call
        if self._pinning:
            self._pin.pin(t)
        self.chain.prepare(t)
        # Only now, with the registers already leading to a restore, block signals: a driver
        # killed after this point leaves a thread whose rt_sigreturn brings the mask back.
        # Without a chain the thread keeps its own mask: signals met during a call are
        # suppressed and re-queued at the cure.
        if t.frame is not None:
            self.pt.setsigmask(t.tid, self._mask)

    def unprotect(self, why: str) -> None:
        """Give up the chain (a killed driver then leaves a thread in the injected state);
        threads already armed are parked on their own rewound registers and mask."""
        self.chain.give_up(why)

    @atomic
    def syscall(self, name_or_nr: str | int, *args: int, tid: int | None = None) -> int:
        """Run one syscall in the target (thread tid, default the main thread) and return rax.

        Raises OSError(errno) when the kernel returns -4095..-1.  Example::

            >>> s.syscall("getpid") == pid
        """
        # This is the hot path of every remote call: plain statements, one C crossing.
        nr = name_or_nr if name_or_nr.__class__ is int else cached_number(name_or_nr)
        if nr in REFUSED_SYSCALLS:
            refuse_unsafe(nr)
        t = self._threads.get(self.pid if tid is None else tid)
        if t is None or t.call is None or self._closed:
            t = self._thread(tid)
        if t.cpu != self._pin.cpu and self._pinning:  # another thread, on another CPU
            self._pin.follow(t)
        self._maps_unchanged = None
        if nr in GUARDED and self.chain.protected:
            self.chain.guard([(nr, *args)])
        c = t.call
        regs = c.regs
        regs.rax = nr
        if len(args) > 6:
            raise UsageError("a syscall takes at most 6 arguments")
        a = args + _ZERO6[len(args) :]  # unused args are 0 (prctl and others check)
        try:
            regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9 = a
        except OverflowError:  # negative ints: the kernel sees the two's complement
            encode([(nr, *args)])  # refuses (UsageError) what does not fit in 64 bits
            regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9 = [x & MASK64 for x in a]
        r = self.chain.run(t, c, nr)
        t.ran = True
        if r or c.nsig:  # the slow path: signals met on the way, or the thread died
            t.signals.extend(c.sigs[0 : c.nsig])
            if r:
                self.pt.check(r, f"injected {syscall_name(nr)}", t.tid)
        res = c.result
        if -4095 <= res < 0:
            raise OSError(-res, f"{syscall_name(nr)}: {os.strerror(-res)}")
        return res

    def _unfinished(self, t: Thread, c: Any, r: int, nr: int, again: Any, done_at: int = 0) -> int:
        """A call whose wait the C side left unfinished: see Threads.unfinished."""
        return self._threads.unfinished(t, c, r, nr, again, done_at, self.chain.park)

    # typed helpers: thin, so the fold reads like the syscalls it makes
    def mmap(self, addr: int, length: int, prot: int, flags: int, fd: int = -1, off: int = 0):
        """mmap(2) in the target; returns the address."""
        return self.syscall("mmap", addr, length, prot, flags, fd, off)

    def munmap(self, addr: int, length: int) -> int:
        return self.syscall("munmap", addr, length)

    def mremap(self, old: int, old_size: int, new_size: int, flags: int = 0, new: int = 0):
        """mremap(2) in the target; returns the new address."""
        return self.syscall("mremap", old, old_size, new_size, flags, new)

    def madvise(self, addr: int, length: int, advice: int) -> int:
        return self.syscall("madvise", addr, length, advice)

    def mprotect(self, addr: int, length: int, prot: int) -> int:
        return self.syscall("mprotect", addr, length, prot)

    @atomic
    def syscalls(self, calls: Sequence[Sequence[Any]], *, tid: int | None = None) -> list[int]:
        """Run many syscalls in one trip each TABLE_PAGES*64 calls; return their results.

        Stops at the first failing call and raises :class:`BatchError` (an OSError) carrying
        the results before it.  Falls back to one call at a time when the target has no
        ignored signal to end the stub with (see batch.py)."""
        return batch.run_batch(self, calls, tid)

    @atomic
    def release_scratch(self) -> None:
        """Unmap the scratch area now (before measuring residency); every instant stays safe."""
        self.scratch.release()

    # ---- memory
    def read(self, addr: int, n: int) -> bytes:
        """n bytes of target memory (/proc/PID/mem: procfs.MemFile says why not process_vm_readv).

        Safety frames are invisible: where one lies on a stack, the dead bytes it covers (and
        will give back at the cure) are returned, so hashes see the process as it will be."""
        out = self.mem.read(addr, n)
        for t in self.stack_frames(addr, n):
            f = t.frame
            lo, hi = max(addr, f.orig_at), min(addr + n, f.orig_at + len(f.orig))
            out = out[: lo - addr] + f.orig[lo - f.orig_at : hi - f.orig_at] + out[hi - addr :]
        return out

    def stack_frames(self, addr: int, n: int) -> list[Thread]:
        """Threads whose safety frame borrowed stack bytes in [addr, addr + n)."""
        hi = addr + n
        return [t for t in self._threads.values() if t.frame and t.frame.covers(addr, hi)]

    def write(self, addr: int, data: bytes) -> None:
        """Write data into target memory (process_vm_writev; /proc/PID/mem for read-only pages,
        which turns a private file page into an anonymous copy -- callers know why they do it).
        A safety frame in the way moves to scratch first (the caller uses that dead stack)."""
        self.chain.clear_for_write(addr, len(data))
        self.mem.write(addr, data)

    @contextlib.contextmanager
    def borrow(self, addr: int, data: bytes) -> Iterator[int]:
        """Temporarily put data at addr; the original bytes come back on exit (or at the cure)."""
        orig = self.read(addr, len(data))
        entry = (addr, orig)
        self._borrowed.append(entry)
        self.write(addr, data)
        try:
            yield addr
        finally:
            self.write(addr, orig)
            self._borrowed.remove(entry)

    # ---- what threads resume with
    def regs(self, tid: int | None = None) -> dict[str, int]:
        """A copy of the registers thread tid (default main) will resume with."""
        return self._threads[self.pid if tid is None else tid].saved.reg_dict()

    @atomic
    def set_resume_regs(self, tid: int | None, regs: dict[str, int]) -> None:
        """Change registers thread tid resumes with (any subset of names), e.g. a moved rsp."""
        from ..native import REGS

        t = self._threads[self.pid if tid is None else tid]
        for name, val in regs.items():
            if name not in REGS:
                raise UsageError(f"unknown register {name!r}")
            setattr(t.saved.regs, name, val & MASK64)
        t.saved.regs_dirty = True
        if t.frame is not None:  # a driver killed from now on resumes it with these
            self.chain.write_frame(t)

    def sigmask(self, tid: int | None = None) -> int:
        """The signal mask thread tid will resume with."""
        return self._threads[self.pid if tid is None else tid].saved.resume_mask

    @atomic
    def set_resume_sigmask(self, tid: int | None, mask: int) -> None:
        """Make thread tid resume with this blocked-signal mask (kept after detach)."""
        t = self._threads[self.pid if tid is None else tid]
        t.saved.resume_mask = mask & MASK64
        if t.frame is not None:
            self.chain.write_frame(t)

    # ---- the cure: one way out
    @atomic
    def close(self) -> None:
        """Restore everything and detach.  Idempotent; keeps going past errors, raises the first."""
        if self._closed:
            return
        errors: list[BaseException] = []

        def attempt(fn, *a):
            try:
                fn(*a)
            except Exception as e:  # keep curing the rest
                errors.append(e)

        # the cure is not abandoned for a Ctrl-C (it is what makes Ctrl-C safe), only bounded
        self._lib.rn_set_wait(int(self.timeout * 1e9), 0)
        for addr, orig in reversed(self._borrowed):
            attempt(self.write, addr, orig)
        self._borrowed.clear()
        if self.scratch.addr:
            attempt(self.release_scratch)
        for t in list(self._threads.values()):
            attempt(self._release_thread, t)
        self.released_ns = time.monotonic_ns()  # the process runs again from here
        if self._t_unprotected:
            self.windows_ns["unprotected"] = time.monotonic_ns() - self._t_unprotected
        self._closed = True
        self.mem.close()
        self._lib.rn_set_wait(0, 0)  # no deadline for callers outside a session
        self._pin.restore()
        if errors:
            raise errors[0]

    def _release_thread(self, t: Thread, *, detach: bool = True) -> None:
        """Put t back as it will resume (regs, mask, FP state, affinity, signals met), then
        detach -- or PTRACE_CONT it and stay attached (see :meth:`run`)."""
        try:
            if not t.stopped:  # seized and interrupted, but we failed before its stop
                self._threads.wait_first_stop(t.tid, self._ffi.new("int *"))
            if t.saved is None:
                return
            armed = t.frame is not None
            if armed:
                self.chain.disarm(t)
            self._threads.restore(t, reinterrupted=armed)
            self._pin.unpin(t)
            self._threads.requeue(t)
        finally:
            self._pin.unpin(t)  # the try above failed before unpinning
            self._threads.let_go(t, detach=detach)

    @atomic
    def run(self, seconds: float) -> None:
        """Let the process run for `seconds` while staying attached, then stop it again.

        Every thread resumes exactly as it would on detach (restored registers and masks, an
        interrupted syscall restarts); signals that stop a thread meanwhile are passed on at
        once.  Afterwards all threads (and any new ones) are stopped again and their state is
        saved afresh: what the cure restores is the state at this new stop.  The scratch page
        and borrowed bytes stay in place.  For the fold's "does it still work" checks.
        """
        if self._closed:
            raise UsageError("session is closed (the process was detached)")
        threads = self._threads
        for t in list(threads.values()):
            self._release_thread(t, detach=False)
        self._t_stopped = 0
        status = self._ffi.new("int *")
        deadline = time.monotonic() + seconds
        while threads and time.monotonic() < deadline:
            for tid in list(threads):
                threads.forward_stops(tid, status, os.WNOHANG)
            time.sleep(0.0005)
        for tid in list(threads):
            self.pt.interrupt(tid)
        for tid in list(threads):
            threads.forward_stops(tid, status, 0)
        if self.pid not in threads:
            raise NoSuchProcess(self.pid, f"process {self.pid} exited while it ran")
        self._seize()  # new threads, then fresh saved state for all


def guardian_pid() -> int:
    """The pid of this driver's guardian (started on first use; 0 if it cannot be)."""
    from .. import native

    lib, _ = native.load()
    return max(lib.rn_guard_start(), 0)


def process_madvise(pid: int, addr: int, length: int, advice: int) -> int:
    """madvise from outside, no stop needed (5.10+: only COLD, PAGEOUT, WILLNEED, COLLAPSE).

    Returns the number of bytes advised; raises OSError(errno) on failure."""
    from .. import native

    lib, _ = native.load()
    fd = lib.rn_pidfd_open(pid)
    if fd < 0:
        raise gone(pid, -fd)
    try:
        r = lib.rn_process_madvise(fd, addr, length, advice)
    finally:
        os.close(fd)
    if r < 0:  # EPERM (no CAP_SYS_NICE), EACCES, ESRCH: remap's errors, from the one place
        err = OSError(-r, f"process_madvise: {os.strerror(-r)}")
        raise procfs.translate(pid, err, "process_madvise")
    return r


@contextlib.contextmanager
def attach(
    pid: int, *, pin: bool = True, suspend_seccomp: bool = False, timeout: float = TIMEOUT_S
) -> Iterator[Session]:
    """Stop every thread of pid and yield a :class:`Session`; restore and detach on exit.

    pin: run the tracer on the target's CPU while injecting (~20x cheaper wake-ups).
    timeout: seconds any thread may take to stop, and any injected call to return; past it
    the wait is abandoned (remap.errors.Timeout) and the target put back.  SIGINT/SIGTERM to
    the driver abort a wait the same way (KeyboardInterrupt).
    suspend_seccomp: inject into a process under a seccomp filter by suspending the filter for
    the injected calls (PTRACE_O_SUSPEND_SECCOMP, needs CAP_SYS_ADMIN); otherwise it is refused.
    """
    s = Session(pid, pin=pin, suspend_seccomp=suspend_seccomp, timeout=timeout)
    s._open_pidfd()  # the process we check is the one we seize (PIDs get reused)
    old = trap_interrupts()
    try:
        preflight(pid, suspend_seccomp=suspend_seccomp)
        setup.plan(s)  # file reads before the stop, not during
        setup.start_guard(s)
        s.pin_early()
        s._seize()
        setup.prefer_blocked_chain(s)
        yield s
    except BaseException:
        with contextlib.suppress(Exception):
            s.close()
        raise
    else:
        s.close()
    finally:
        s._close_pidfd()
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if _Interrupts.pending and not _Interrupts.busy:
            # held during the session's last operation and not raised yet: deliver it again,
            # now under the driver's own disposition, so an interrupt is never lost
            sig, _Interrupts.pending = _Interrupts.pending, 0
            os.kill(os.getpid(), sig)
