"""The safety chain: what brings every injecting thread home if the driver dies (SIGKILL).

Chosen once per session, before the stop (like rr's AutoRemoteSyscalls picks its path in its
constructor), as one of three objects with the same methods:

- :class:`Chain` -- the target's own code has a `syscall; ret` and an rt_sigreturn restorer
  (glibc, musl programs that install a handler): each injecting thread gets a safety frame
  below its rsp - RED_ZONE and is parked on the chain between calls;
- :class:`Unbuilt` -- no chain in the target's code: on the first injection the scratch area
  is mapped (two unprotected calls) and a :class:`ScratchChain` through the batch stub's own
  `syscall; ret` and restorer takes over;
- :class:`NoChain` -- no protection (a shadow stack, no FP state readable, or a chain that had
  to be given up: Session.unprotect): every call is parked at once on the thread's own
  registers, so only its in-flight time is a window.

A frame lives either on the thread's stack (:attr:`Home.STACK`, over dead bytes it gives back
at the cure) or in a scratch slot (:attr:`Home.SLOT`: when the fold drops or writes that dead
stack; the stub's evict_cleanup copies it back onto the stack if the driver dies).
"""

from __future__ import annotations

import contextlib
import enum
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import gadget as gadget_mod
from .. import kconst as K
from .. import native
from ..errors import RemapError
from .abi import (
    BOOT_SIZE,
    MASK64,
    TABLE_PAGES,
    build_boot_frame,
    build_frame,
    fp_area,
    frame_size,
    frame_spot,
    free_gap,
    rewound,
    slot_size,
    syscall_name,
)
from .ptrace import WAIT_ENDED

if TYPE_CHECKING:
    from .session import Session
    from .threads import Thread


class Home(enum.Enum):
    """Where a safety frame lives."""

    STACK = "stack"  # below the thread's rsp - RED_ZONE
    SLOT = "scratch"  # a slot of the scratch area


@dataclass
class Frame:
    """One thread's safety frame: AT, SIZE bytes; on the stack, the dead bytes it covers
    (ORIG, from ORIG_AT: the boot frame's spot, then the frame) are given back at the cure."""

    at: int
    size: int
    home: Home
    orig_at: int = 0
    orig: bytes = b""

    def covers(self, lo: int, hi: int) -> bool:
        """Do the stack bytes this frame borrowed overlap [lo, hi)?"""
        return self.home is Home.STACK and lo < self.orig_at + len(self.orig) and self.orig_at < hi


# madvise advice that neither unmaps nor zeroes a byte: hints and reclaim that keeps the data
# (mm/madvise.c); the fault-around fence sends thousands of MADV_RANDOM in one batch
_MADV_KEEPS_DATA = frozenset({K.MADV_NORMAL, K.MADV_RANDOM, K.MADV_COLD, K.MADV_PAGEOUT,
                              K.MADV_WILLNEED})  # fmt: skip


class NoChain:
    """Injection without a chain: each call parked at once on the thread's own registers."""

    protected = False
    in_scratch = False

    def __init__(self, s: Session):
        self.s = s

    def prepare(self, t: Thread) -> None:
        """First injection on t: nothing to arm."""

    def guard(self, calls: Sequence[Sequence[int]]) -> None:
        """Before calls that unmap or zero memory: nothing to move."""

    def give_up(self, why: str) -> None:
        """Nothing to give up."""

    def clear_for_write(self, addr: int, n: int) -> None:
        """Before a write into the target: no frame in the way."""

    def run(self, t: Thread, c: Any, nr: int) -> int:
        """Inject the call prepared in c; back on its own registers at once (a kill then
        restarts the thread's own call).  The in-flight time is the window."""
        s, parked = self.s, self.s.pt.inject_parked
        t0 = time.monotonic_ns()
        r = parked(t.tid, c, t.saved.regs)
        if r in WAIT_ENDED:
            r = s._unfinished(t, c, r, nr, lambda: parked(t.tid, c, t.saved.regs), c.regs.rip + 2)
        w = s.windows_ns
        w["in_flight"] = w.get("in_flight", 0) + time.monotonic_ns() - t0
        return r

    def park(self, t: Thread) -> None:
        """'Between calls': on its own registers."""
        self.s.pt.setregs(t.tid, t.saved.regs)

    def stub_park(self, t: Thread) -> Any:
        """The registers the batch stub's thread is parked on (the C side)."""
        return t.saved.regs

    def after_stub(self, t: Thread, r: int) -> None:
        if not r:  # park it on its own registers
            self.s.pt.interrupt(t.tid)
            self.s.pt.setregs(t.tid, t.saved.regs)

    def cleanup_gadget(self) -> int:
        """The `syscall; ret` the stub's cleanup unmaps scratch through (0: none)."""
        return 0

    def scratch_mapped(self, addr: int, main: Thread | None) -> None:
        """Scratch was just mapped at addr: frames' first return may now unmap it."""

    def map_guarded(self, t: Thread, size: int, prot: int, maps: list | None) -> int | None:
        """mmap scratch so that a dead driver leaves none behind; None: cannot."""
        return None

    def disarm(self, t: Thread) -> None:
        """The cure of t's frame: it has none without a chain."""
        t.frame = None

    def before_release(self, main: Thread) -> bool:
        """Scratch is about to be unmapped: True if main's frame needs after_release."""
        return False

    def after_release(self, main: Thread) -> None:
        """Scratch is gone."""


class Unbuilt(NoChain):
    """No chain in the target's code: the first injection builds one in scratch."""

    def prepare(self, t: Thread) -> None:
        """Map scratch now (unprotected: two injected calls, windows_ns["bootstrap"]) and use
        the `syscall; ret` and restorer of the stub.  A kill later leaves the scratch area
        behind (it cannot unmap the code it runs)."""
        s = self.s
        t0 = time.monotonic_ns()
        native.stub_code()  # read before the window opens
        s.chain = NoChain(s)  # whatever happens now, this is tried once
        try:
            base = s.scratch.ensure(t.tid, rw_later=True)
        except OSError as e:
            s.notes.append(f"unprotected: cannot map scratch for the chain ({e.strerror})")
            return
        code = gadget_mod.Chain(
            base + native.STUB_SYSCALL_RET, base + native.STUB_RESTORER, ("[scratch]",) * 2
        )
        s.chain = chain = ScratchChain(s, code)
        chain.arm(t)
        now = time.monotonic_ns()
        s.windows_ns["bootstrap"] = now - t0
        if s._t_unprotected:
            w = s.windows_ns
            w["unprotected"] = w.get("unprotected", 0) + now - s._t_unprotected
            s._t_unprotected = 0


class Chain(NoChain):
    """The safety chain through code of the target (see the module docstring)."""

    protected = True

    def __init__(self, s: Session, code: gadget_mod.Chain):
        super().__init__(s)
        self.code = code

    @property
    def live(self) -> bool:
        """Still the session's chain (not given up meanwhile)."""
        return self.s.chain is self

    @property
    def ret(self) -> int:
        """The `ret` right after the chain's `syscall`: where threads are parked."""
        return self.code.syscall_ret + 2

    # ---- one call
    def run(self, t: Thread, c: Any, nr: int) -> int:
        inject = self.s.pt.inject
        r = inject(t.tid, c)
        if r in WAIT_ENDED:
            r = self.s._unfinished(t, c, r, nr, lambda: inject(t.tid, c), c.regs.rip + 2)
        return r

    def park(self, t: Thread) -> None:
        """Set t's registers to 'between calls': on the `ret` after the gadget's `syscall`
        with rsp on its frame, so a driver killed now sends it down the chain."""
        if t.frame is None:
            return super().park(t)
        p = self.s.pt.ffi.new("struct user_regs_struct *")
        p[0] = t.call.regs
        p.rip = self.ret
        self.s.pt.setregs(t.tid, p)

    def stub_park(self, t: Thread) -> Any:
        return self.s.pt.ffi.NULL

    def after_stub(self, t: Thread, r: int) -> None:
        """The stub `ret`s into the chain by itself."""

    # ---- arming
    def prepare(self, t: Thread) -> None:
        self.arm(t)

    def arm(self, t: Thread) -> None:
        """Give t a safety frame below its rsp - RED_ZONE and park it on the chain: from now
        on, whenever the driver dies, t finishes the call it is in and rt_sigreturns home."""
        s, sv = self.s, t.saved
        xstate = s.pt.xstate(t.tid)
        if len(xstate) > 512:
            sv.xsave = fp_area(xstate)
        elif sv.fpregs is not None:
            sv.xsave = bytes(s.pt.ffi.buffer(sv.fpregs))
        else:
            s.unprotect(f"thread {t.tid}: no FP state readable")
            return
        size = frame_size(sv.xsave)
        rsp = sv.regs.rsp
        at = frame_spot(rsp, size, resident_only=True)
        if not at and self.in_scratch:  # scratch is there anyway: fault in no stack page
            t.call.regs.rip = self.code.syscall_ret
            self.to_slot(t, size)
            return
        try:
            frame = self._stack_frame(at or frame_spot(rsp, size), size)
        except OSError:
            s.unprotect(f"thread {t.tid}: no room for a frame below its stack pointer")
            return
        t.call.regs.rip = self.code.syscall_ret
        self._settle(t, frame)

    def _stack_frame(self, at: int, size: int) -> Frame:
        """A frame of SIZE at AT on a stack, with the dead bytes it (and the boot frame
        below it) will cover.  Raises OSError when they cannot be read."""
        orig = self.s.mem.read(at - BOOT_SIZE, size + BOOT_SIZE)
        return Frame(at, size, Home.STACK, at - BOOT_SIZE, orig)

    def _settle(self, t: Thread, frame: Frame) -> None:
        """Make FRAME t's safety frame: written, rsp on it, t parked on it."""
        t.frame = frame
        self.write_frame(t)
        t.call.regs.rsp = frame.at
        self.park(t)

    def first_return(self, t: Thread) -> int:
        """Where the chain goes after the injected call: unmap scratch first, if scratch holds
        nothing the frame needs; else straight to the restorer (a bare `ret`)."""
        scratch = self.s.scratch.addr
        if scratch and t.frame.home is Home.STACK and not self.in_scratch:
            return scratch + native.STUB_CLEANUP
        return self.ret

    def write_frame(self, t: Thread) -> None:
        """(Re)write t's frame from what it resumes with now."""
        s, f, sv = self.s, t.frame, t.saved
        regs = rewound(sv.reg_dict())
        if f.home is Home.SLOT and not self.in_scratch:
            # a slot: [evict_cleanup][destination][length][pad], then the frame built for that
            # destination on the stack, where the stub copies it if the driver dies
            dest = frame_spot(sv.regs.rsp, f.size)
            img = build_frame(dest, regs, sv.resume_mask, sv.xsave, self.ret, self.code.restorer)
            head = struct.pack("<QQQ", s.scratch.addr + native.STUB_EVICT, dest, len(img))
            s.mem.write(f.at, head.ljust(64, b"\0") + img)
            return
        first, restorer = self.first_return(t), self.code.restorer
        s.mem.write(f.at, build_frame(f.at, regs, sv.resume_mask, sv.xsave, first, restorer))

    def disarm(self, t: Thread) -> None:
        """The cure of an armed thread: mask and FP state first (the frame holds the same, so
        a driver killed from here on still leaves it right), then back to a fresh interrupt
        stop on its registers (rn_reinterrupt), then the stack bytes the frame borrowed."""
        s, sv = self.s, t.saved
        if sv.fpregs is not None:
            s.pt.setfpregs(t.tid, sv.fpregs)
        s.pt.setsigmask(t.tid, sv.resume_mask)
        s._threads.reinterrupt(t)
        self.give_back(t)

    def give_back(self, t: Thread) -> None:
        """Put back the stack bytes t's frame covers; t has no frame afterwards."""
        f, t.frame = t.frame, None
        if f is not None and f.home is Home.STACK:
            with contextlib.suppress(OSError):
                self.s.mem.write(f.orig_at, f.orig)

    def give_up(self, why: str) -> None:
        """Fall back to NoChain for the rest of the session: each armed thread is parked on
        its own rewound registers and mask, and its frame's stack bytes are put back."""
        s = self.s
        if not self.live:
            return
        s.notes.append(f"unprotected: {why}")
        s._t_unprotected = time.monotonic_ns()
        s.chain = NoChain(s)
        for t in s._threads.values():
            if t.frame is not None:
                regs = rewound(t.saved.reg_dict())
                regs["orig_rax"] = MASK64
                s.pt.setregs(t.tid, s.pt.ffi.new("struct user_regs_struct *", regs))
                with contextlib.suppress(RemapError):
                    s.pt.setsigmask(t.tid, t.saved.resume_mask)
                t.call.regs.rip = s.gadget
                t.call.regs.rsp = t.saved.regs.rsp
                self.give_back(t)

    # ---- moving frames out of the way
    def guard(self, calls: Sequence[Sequence[int]]) -> None:
        """Before calls that unmap or zero memory: move safety frames out of their way (into
        scratch) and give up the chain if its own code is about to go."""
        s = self.s
        code = (self.code.syscall_ret, self.code.restorer)
        for c in calls:
            nr, a = c[0], (*c[1:], 0, 0, 0)
            if nr == K.NR_MMAP and not a[3] & (K.MAP_FIXED | K.MAP_FIXED_NOREPLACE):
                continue
            if nr == K.NR_MADVISE and a[2] in _MADV_KEEPS_DATA:
                continue
            lo, hi = a[0] & ~4095, a[0] + (a[1] & MASK64)
            # madvise only zeroes anonymous memory (frames); file-backed code just refaults
            if nr != K.NR_MADVISE and any(lo <= x < hi + 16 for x in code):
                s.unprotect(f"{syscall_name(nr)} over the chain's code at {lo:#x}")
                return
            for t in s._threads.values():
                if not self.live:  # an eviction had to give the chain up
                    return
                f = t.frame
                if f is None:
                    continue
                if f.covers(lo, hi):
                    self.evict(t, lo, hi)
                elif f.home is Home.SLOT and lo < f.at + f.size and f.at < hi:
                    self.home_to_stack(t)  # its slot is being unmapped

    def clear_for_write(self, addr: int, n: int) -> None:
        for t in self.s.stack_frames(addr, n):
            self.evict(t, addr, addr + n)

    def evict(self, t: Thread, lo: int, hi: int) -> None:
        """Move t's frames out of [lo, hi) (dead stack the caller is about to drop or use):
        below t's current resume rsp if that spot is outside [lo, hi) and already resident,
        else into a scratch slot, from which the stub copies it back onto the stack (faulting
        that page in) if the driver dies, before unmapping scratch."""
        s, old = self.s, t.frame
        at = frame_spot(t.saved.regs.rsp, old.size, resident_only=True)
        if at and not (at - BOOT_SIZE < hi and lo < at + old.size):
            self._settle(t, self._stack_frame(at, old.size))
            with contextlib.suppress(OSError):
                s.mem.write(old.orig_at, old.orig)
            return
        self.to_slot(t, old.size)

    def to_slot(self, t: Thread, size: int) -> None:
        """Home t's frame (SIZE bytes) in a free scratch slot and park it there."""
        s = self.s
        base = s.scratch.ensure()
        slot = slot_size(size)
        used = {u.frame.at for u in s._threads.values() if u.frame and u.frame.home is Home.SLOT}
        area = base + K.PAGE_SIZE * (1 + TABLE_PAGES)
        end = base + s.scratch.size
        at = next((a for a in range(area, end - slot + 1, slot) if a not in used), 0)
        if not at or not self.live:
            s.unprotect(f"no free scratch slot for thread {t.tid}'s safety frame")
            return
        old = t.frame
        self._settle(t, Frame(at, size, Home.SLOT))  # it was parked on the old frame, if any
        if old is not None and old.home is Home.STACK:
            with contextlib.suppress(OSError):
                s.mem.write(old.orig_at, old.orig)

    def home_to_stack(self, t: Thread) -> None:
        """Bring an evicted frame back below t's resume rsp (before scratch goes): in the
        resident part of its stack page if it fits, else just below (faulting a page in)."""
        s, size, rsp = self.s, t.frame.size, t.saved.regs.rsp
        at = frame_spot(rsp, size, resident_only=True) or frame_spot(rsp, size)
        try:
            frame = self._stack_frame(at, size)
        except OSError:
            s.unprotect(f"thread {t.tid}: no stack left for its frame")
            return
        self._settle(t, frame)

    # ---- the scratch area's life
    def cleanup_gadget(self) -> int:
        return self.code.syscall_ret

    def scratch_mapped(self, addr: int, main: Thread | None) -> None:
        s = self.s
        for t in s._threads.values():
            if t.frame and t.frame.home is Home.STACK:
                s.mem.write(t.frame.at, struct.pack("<Q", addr + native.STUB_CLEANUP))
        if main is not None and main.frame and main.frame.home is Home.STACK:
            self.park(main)  # off the boot frame: the ordinary chain now unmaps scratch

    def map_guarded(self, t: Thread, size: int, prot: int, maps: list | None) -> int | None:
        """mmap SIZE bytes at an address chosen in a free gap (MAP_FIXED_NOREPLACE; every
        thread is stopped, so the gap stays free) through the boot frame: were the driver to
        die once the kernel has mapped it, the thread's `ret` goes to the restorer, whose
        rt_sigreturn lands on munmap(that address) through the `syscall; ret` gadget and from
        there on the thread's ordinary frame.  None when t has no frame on its stack or there
        is no gap (or the fixed mmap fails): the caller maps it plainly."""
        s, f = self.s, t.frame
        if f is None or f.home is not Home.STACK:
            return None
        if maps is None:
            try:
                maps = gadget_mod.read_maps(s.pid)
            except (OSError, RemapError):
                return None
        hole = free_gap(maps, size)
        if hole is None:
            return None
        regs = {n: getattr(t.call.regs, n) for n in native.REGS}
        # its munmap returns past the frame's first slot (which may already say "cleanup",
        # i.e. run code in the area just unmapped) straight into the restorer
        regs.update(rip=self.code.syscall_ret, rsp=f.at + 8, rax=K.NR_MUNMAP, rdi=hole)
        regs.update(rsi=size, orig_rax=MASK64)
        s.mem.write(f.orig_at, build_boot_frame(f.orig_at, regs, s._mask, self.code.restorer))
        t.call.regs.rsp = f.orig_at
        fixed = K.MAP_PRIVATE | K.MAP_ANONYMOUS | K.MAP_FIXED_NOREPLACE
        try:
            return s.syscall("mmap", hole, size, prot, fixed, -1, 0, tid=t.tid)
        except OSError:
            t.call.regs.rsp = f.at
            self.park(t)
            return None
        finally:
            t.call.regs.rsp = f.at

    def before_release(self, main: Thread) -> bool:
        """Every instant stays safe: evicted frames go back onto the stack first; the other
        threads' first return stops pointing at the stub's cleanup; the injecting thread keeps
        it (a driver killed before the munmap runs still unmaps scratch) and makes the munmap
        with rsp one slot up, so that its `ret` skips the cleanup and goes to the restorer."""
        if main.frame is None:
            return False
        s = self.s
        for t in s._threads.values():
            if t.frame and t.frame.home is Home.SLOT:
                self.home_to_stack(t)
        for t in s._threads.values():
            if t is not main and t.frame:
                s.mem.write(t.frame.at, struct.pack("<Q", self.ret))
        if main.frame is None:  # homing a frame gave the chain up
            return False
        main.call.regs.rsp = main.frame.at + 8
        return True

    def after_release(self, main: Thread) -> None:
        if self.live and main.frame:
            self.s.mem.write(main.frame.at, struct.pack("<Q", self.ret))
            self.park(main)


class ScratchChain(Chain):
    """The chain through the batch stub's own code, in the scratch area (see Unbuilt)."""

    in_scratch = True
