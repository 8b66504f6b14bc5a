"""Proof that nothing was lost: hash every anonymous page that must survive, before and after.

Why hashes and not a diff: the fold reads the pages once while the target is stopped (they are
present, so reading them faults nothing in) and compares 32-byte digests afterwards; a mismatch
stops the plan with the page's address, which is what a user needs to know.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

from ..errors import UnsafeStep
from ..kconst import PAGE_SIZE

Reader = Callable[[int, int], bytes]
Holes = list[tuple[int, int]]  # (address, size) ranges the kernel may rewrite (rseq areas)


def _digest(read: Reader, addr: int, holes: Holes) -> bytes:
    data = bytearray(read(addr, PAGE_SIZE))
    for h, n in holes:
        lo, hi = max(h, addr), min(h + n, addr + PAGE_SIZE)
        if lo < hi:
            data[lo - addr : hi - addr] = bytes(hi - lo)
    return hashlib.sha256(data).digest()


def hash_pages(read: Reader, addrs: Iterable[int], holes: Holes = ()) -> dict[int, bytes]:
    """{page address: sha256 of its 4 kB} for ADDRS, read through READ(addr, n); bytes in
    HOLES (kernel-owned, e.g. rseq areas) count as zero."""
    return {a: _digest(read, a, list(holes)) for a in sorted(addrs)}


def check_same(before: dict[int, bytes], read: Reader, *, holes: Holes = ()) -> int:
    """Re-hash every page of BEFORE and raise UnsafeStep naming the first page that changed.
    Returns the number of bytes verified.  (Moved blocks are verified by read-back where
    they are written: steps.close_stack_gap, steps.single_page.)"""
    for addr, digest in before.items():
        if _digest(read, addr, list(holes)) != digest:
            raise UnsafeStep(f"anonymous page {addr:#x} changed during the fold")
    return len(before) * PAGE_SIZE
