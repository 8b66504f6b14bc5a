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


def check_drops(
    name: str,
    drops: list[tuple[int, int]],
    pid: int,
    vmas: list,
    stacks: dict[int, tuple[int, int]],
    read: Reader,
) -> int:
    """Re-prove, before step NAME runs, that every page of DROPS may go; raise UnsafeStep
    naming the first that may not.  Returns the bytes of anonymous memory it drops.

    Why a second proof: the runner's hashes skip what a step drops on purpose (a dropped page
    reads as zeros afterwards, by design), so a planner that takes live data for dead stack
    would pass every hash -- 400 kB of heap were zeroed that way while the check said
    "unchanged".  This proof shares no code with the planners: from the snapshot's VMAS and
    each thread's (rsp, fs_base) in STACKS it accepts a page only if it is (a) a present, clean
    page of a file mapping, or (b) a whole page below rsp - 128 of a thread whose rsp lies in
    ``[stack]`` (the main thread, pid == tid, and only there) or, for another thread, in a
    private anonymous rw mapping with its self-pointing TCB above rsp and a PROT_NONE mapping
    right below."""
    clean = {p.addr for v in vmas if v.is_file for p in v.pages if p.clean_file}
    dead = [
        span
        for tid, (rsp, fs) in stacks.items()
        if (span := _dead_span(pid, tid, rsp, fs, vmas, read))
    ]
    anon = 0
    for lo, hi in drops:
        for a in range(lo, hi, PAGE_SIZE):
            if a in clean:
                continue
            if not any(s <= a and a + PAGE_SIZE <= e for s, e in dead):
                raise UnsafeStep(
                    f"{name} would drop page {a:#x}, which is neither a clean file page nor "
                    "proven dead stack; refused before anything was done"
                )
            anon += PAGE_SIZE
    return anon


def _dead_span(pid: int, tid: int, rsp: int, fs: int, vmas: list, read: Reader):
    """[start, end) of the pages provably dead below TID's rsp - 128, or None."""
    at = [i for i, v in enumerate(vmas) if v.start <= rsp < v.end]
    if not at:
        return None
    v = vmas[at[0]]
    end = (rsp - 128) & ~(PAGE_SIZE - 1)
    if tid == pid or v.path == "[stack]":
        return (v.start, end) if tid == pid and v.path == "[stack]" else None
    guard = at[0] > 0 and vmas[at[0] - 1].end == v.start and vmas[at[0] - 1].perms[:3] == "---"
    anon_rw = v.perms.startswith("rw") and v.perms.endswith("p") and not v.is_file
    plain = not v.path or v.path.startswith("[anon:")
    tcb = rsp < fs < v.end and read(fs, 8) == fs.to_bytes(8, "little")
    return (v.start, end) if guard and anon_rw and plain and tcb else None
