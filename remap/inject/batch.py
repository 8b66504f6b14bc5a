"""Many calls in one trip: the batch stub (csrc/native/) in the scratch area walks a table of
(nr, 6 args, result) entries and ends with tgkill(self, marker) -- a signal the target
ignores, so that a dead tracer's is dropped and the stub `ret`s into the chain.  Without such
a marker the calls run one by one.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .. import kconst as K
from .abi import REFUSED_SYSCALLS, STUB_ENTRY, TABLE_PAGES, encode, refuse_unsafe, syscall_name
from .ptrace import WAIT_ENDED

if TYPE_CHECKING:
    from .session import Session

# calls that can unmap or zero memory: checked against frames and the chain's code
GUARDED = frozenset({K.NR_MMAP, K.NR_MUNMAP, K.NR_MREMAP, K.NR_MADVISE})
PER_TRIP = TABLE_PAGES * K.PAGE_SIZE // STUB_ENTRY


class BatchError(OSError):
    """One call of a batch failed; `results` holds the results of the calls before it."""

    def __init__(self, err: int, msg: str, index: int, results: list[int]):
        super().__init__(err, msg)
        self.index = index
        self.results = results


def run_batch(s: Session, calls: Sequence[Sequence[Any]], tid: int | None) -> list[int]:
    """Session.syscalls: refuse, guard, then one trip per PER_TRIP calls (or call by call).
    Raises BatchError at the first failing call, UnsafeStep for a refused one."""
    table_bytes = encode(calls)  # 64 bytes per call: nr, 6 args, result slot
    n = len(table_bytes) // STUB_ENTRY
    words = memoryview(table_bytes).cast("q")
    numbers = set(words[0::8].tolist())
    for nr in numbers & REFUSED_SYSCALLS.keys():
        refuse_unsafe(nr)
    if s.chain.protected and not GUARDED.isdisjoint(numbers):
        s.chain.guard([words[8 * i : 8 * i + 7].tolist() for i in range(n)])
    if not s._batch_by_stub:
        out = []
        for i in range(n):
            try:
                out.append(s.syscall(*words[8 * i : 8 * i + 7].tolist(), tid=tid))
            except OSError as ex:
                raise BatchError(ex.errno or 0, str(ex), i, out) from None
        return out
    t = s._thread(tid)
    if t.cpu != s._pin.cpu and s._pinning:
        s._pin.follow(t)
    s._maps_unchanged = None  # ensure() below must not trust an older read
    base = s.scratch.ensure(t.tid)
    s.scratch.make_writable(t.tid)
    table = s.scratch.tables
    out = []
    c = s.pt.ffi.new("struct rn_call *")
    for lo in range(0, n, PER_TRIP):
        k = min(PER_TRIP, n - lo)
        s.write(table, table_bytes[STUB_ENTRY * lo : STUB_ENTRY * (lo + k)])
        c.regs = t.call.regs
        c.regs.rip = base
        c.regs.r12 = table
        c.regs.r13 = k
        c.regs.rbx = s._marker  # the stub finds its own ids (PID namespaces)
        c.slot = t.call.slot
        park = s.chain.stub_park(t)
        r = s.pt.run_stub(t.tid, c, s._marker, park)
        if r in WAIT_ENDED:
            again = functools.partial(s.pt.run_stub, t.tid, c, s._marker, park)
            r = s._unfinished(t, c, r, -1, again)
        t.ran = True
        s.chain.after_stub(t, r)
        if c.nsig:
            t.signals.extend(c.sigs[0 : c.nsig])
        if r:
            s.pt.check(r, "batch stub", t.tid)
        ok = k - c.regs.r13  # the stub decrements r13 only after a success
        res = memoryview(s.read(table, k * STUB_ENTRY)).cast("q")[7::8].tolist()
        out.extend(res[:ok])
        if ok < k:  # stopped early: entry `ok` failed
            err = -res[ok]
            (nr,) = struct.unpack_from("<q", table_bytes, STUB_ENTRY * (lo + ok))
            raise BatchError(err, f"{syscall_name(nr)}: {os.strerror(err)}", lo + ok, out)
    return out
