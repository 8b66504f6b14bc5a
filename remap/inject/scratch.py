"""The scratch area: a private mapping in the target for the batch stub, its tables and
evicted safety frames (never the stack being folded); mapped on first use, unmapped before any
measurement (tests/test_torture.py checks that none is ever left behind).

Layout: 1 code page (the stub, read-only + executable: never RWX), TABLE_PAGES for batch
tables and caller data, then pages of frame slots (chain.Home.SLOT).  How it is mapped and
unmapped without leaving it behind if the driver dies is the session chain's business
(chain.Chain.map_guarded / before_release); this object only keeps the area's facts.
"""

from __future__ import annotations

import struct
import time
from typing import TYPE_CHECKING

from .. import kconst as K
from .. import native
from .abi import TABLE_PAGES, slot_size

if TYPE_CHECKING:
    from .session import Session

FRAME_PAGES = 4  # scratch pages for evicted safety frames, at least (one slot per thread)
MAX_FRAME_SLOTS = 512  # beyond that many threads an evicted frame falls back to unprotected


class Scratch:
    """The session's scratch area: ADDR, SIZE bytes (ADDR 0: not mapped)."""

    def __init__(self, s: Session):
        self.s = s
        self.addr = 0
        self.size = 0
        self.tables_writable = False  # the table and frame pages are RW (the code page never)

    @property
    def tables(self) -> int:
        """Address of the first table page."""
        return self.addr + K.PAGE_SIZE

    def ensure(self, tid: int | None = None, *, rw_later: bool = False) -> int:
        """The area's address, mapping it first if need be.  Its code is written through
        /proc/PID/mem (which may write a read-only private page): the fewest steps between
        the mmap and the moment every frame's first return unmaps it again.  Tables and frames
        become RW after (RW_LATER: when the caller says, see make_writable).

        The one unprotected moment: if the driver dies after the kernel has mapped it and
        before the frames' first return points at the stub's cleanup, the area stays mapped
        (unused, harmless; windows_ns["scratch_leak"] holds its measured width).
        Raises OSError when the target refuses the mapping."""
        if self.addr:
            return self.addr
        s = self.s
        code = native.stub_code()[: native.STUB_HEADER].ljust(native.STUB_HEADER, b"\xcc")
        size = K.PAGE_SIZE * (1 + TABLE_PAGES + self._frame_pages())
        addr, guarded = self._map(size, K.PROT_READ | K.PROT_EXEC, tid)
        t0 = time.monotonic_ns()
        self.addr, self.size = addr, size
        s.mem.mem_write(addr, code + struct.pack("<QQQ", addr, size, s.chain.cleanup_gadget()))
        s.chain.scratch_mapped(addr, s._threads.get(s.pid if tid is None else tid))
        s.windows_ns["scratch_leak"] = 0 if guarded else time.monotonic_ns() - t0
        self.tables_writable = False
        if not rw_later:
            self.make_writable(tid)
        return addr

    def _frame_pages(self) -> int:
        """Scratch pages for evicted safety frames: a slot for every stopped thread (the fold
        may drop the dead stack of all of them), FRAME_PAGES at least.  A thread count past
        MAX_FRAME_SLOTS gets no more room: its extra evictions inject unprotected (a note)."""
        threads = self.s._threads.values()
        sizes = [t.frame.size for t in threads if t.frame is not None]
        slot = slot_size(max(sizes, default=2 * K.PAGE_SIZE - 64))
        slots = min(len(threads), MAX_FRAME_SLOTS)
        return max(FRAME_PAGES, -(-slots * slot // K.PAGE_SIZE))

    def make_writable(self, tid: int | None = None) -> None:
        """Make the table and frame pages writable (once; after the chain is in place when the
        chain lives in scratch: one injected call less in the unprotected bootstrap)."""
        if self.addr and not self.tables_writable:
            self.tables_writable = True
            rw = K.PROT_READ | K.PROT_WRITE
            self.s.syscall("mprotect", self.tables, self.size - K.PAGE_SIZE, rw, tid=tid)

    def _map(self, size: int, prot: int, tid: int | None) -> tuple[int, bool]:
        """mmap the area: through the chain's boot frame when it can (True: no instant leaves
        it behind), else plainly (False: a leak window)."""
        s = self.s
        t = s._thread(tid)
        maps, s._maps_unchanged = s._maps_unchanged, None
        # Maps known from this stop, even if calls ran since: the gap is mapped with
        # MAP_FIXED_NOREPLACE, which fails (EEXIST) rather than replace anything, and then the
        # area is mapped plainly -- a stale list costs a fallback, never a mapping (and saves
        # parsing thousands of lines after a fault-around fence, inside the stop).
        addr = s.chain.map_guarded(t, size, prot, maps or s._maps_seen)
        if addr is not None:
            return addr, True
        flags = K.MAP_PRIVATE | K.MAP_ANONYMOUS
        return s.syscall("mmap", 0, size, prot, flags, -1, 0, tid=t.tid), False

    def release(self) -> None:
        """Unmap the area now; every instant stays safe (chain.Chain.before_release)."""
        if not self.addr:
            return
        s = self.s
        if s.chain.in_scratch:
            s.unprotect("releasing the scratch area that holds the chain")
        main = s._thread(None)
        armed = s.chain.before_release(main)
        try:
            s.munmap(self.addr, self.size)
        finally:
            if armed and main.frame is not None:
                main.call.regs.rsp = main.frame.at
        self.addr = 0
        if armed:
            s.chain.after_release(main)
