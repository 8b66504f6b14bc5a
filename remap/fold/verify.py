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


def hash_pages(read: Reader, addrs: Iterable[int]) -> dict[int, bytes]:
    """{page address: sha256 of its 4 kB} for ADDRS, read through READ(addr, n)."""
    return {a: hashlib.sha256(read(a, PAGE_SIZE)).digest() for a in sorted(addrs)}


def check_same(
    before: dict[int, bytes], read: Reader, *, moved: dict[int, int] | None = None
) -> int:
    """Re-hash every page of BEFORE (at its new address when MOVED maps old -> new) and raise
    UnsafeStep naming the first page that changed.  Returns the number of bytes verified."""
    moved = moved or {}
    for addr, digest in before.items():
        where = moved.get(addr, addr)
        now = hashlib.sha256(read(where, PAGE_SIZE)).digest()
        if now != digest:
            extra = f" (moved to {where:#x})" if where != addr else ""
            raise UnsafeStep(f"anonymous page {addr:#x}{extra} changed during the fold")
    return len(before) * PAGE_SIZE
