"""Proof that nothing was lost: every anonymous page that must survive a step, checked after it.

Two kinds of evidence, chosen per step by the runner (plan.run_plan):

* **Frames** (pagemap, root): before the step, the raw pagemap entry of every kept anonymous
  page -- present bit and page frame number (PFN) -- read in one pass; after it, the same
  entries must be equal.  Cost: 8 bytes a page, read by the kernel, compared as one bytes
  object: 11-15 ms a reading for 1 GB here (the kernel's page-table walk), against ~0.5 s
  to read and hash it.  Several pure
  drops in a row are proven by one pair of readings around all of them (plan._run_ahead); the
  "before" reading may be the one taken when the stop checked its prior model, with nothing
  but planning since (plan.Prior.reuse).
* **Hashes**: sha256 of each page's 4 kB, before and after.  Used for the pages a step writes
  or moves, for every page of a step that is not a pure drop, and for everything when PFNs are
  hidden (an unprivileged reader sees PFN 0, since 4.2): then the stop grows with anonymous
  memory again, and the runner says so in the report's notes.

Why an equal present+PFN entry proves "not zeroed, not dropped", for the steps it is used on
(those whose only action is MADV_DONTNEED of ranges, Action.drops): every thread of the target
is in a ptrace stop, so the only code that runs on its memory is remap's own injected calls.
An anonymous page's content can change only by a write to its frame, or by a new frame taking
its place.  (1) MADV_DONTNEED writes no user memory; a page it zaps loses its PTE: not present,
or -- if anything touched it again -- refaulted onto the shared zero page (read) or a fresh
zeroed frame (write).  Either way the entry differs, except in one case: a write refault may be
handed the very frame that was just freed (the per-CPU free lists are LIFO).  (2) A write
through process_vm_writev or /proc/PID/mem to a present page keeps its PFN while changing its
bytes.  Both need remap to *write* target memory between the two readings -- so a step that
writes is hashed, never proven by frames, and a pure drop writes nothing but the session's own
safety frames (Session.read shows the dead bytes they cover and give back at the cure, and
they are moved out of any range before it is dropped).  Nothing else can change an entry
without changing what it maps... except the kernel moving a page (compaction, NUMA balancing,
KSM merging, khugepaged collapsing): its PFN then differs with the bytes intact, and the step
is refused as unproven -- a false alarm on the safe side.  Bits 55-57 (soft-dirty, exclusively
mapped, uffd-wp) are masked off: a forked child exiting changes "exclusive", not the data.

Why hashes and not a diff where hashes are used: the pages are read once while the target is
stopped (they are present, so reading them faults nothing in) and 32-byte digests compared
afterwards; a mismatch stops the plan with the page's address, which is what a user needs.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from .. import pagemap
from ..errors import UnsafeStep
from ..kconst import PAGE_SHIFT, PAGE_SIZE, PM_PFN_MASK, PM_PRESENT, PM_SWAP, RED_ZONE

Reader = Callable[[int, int], bytes]
Holes = list[tuple[int, int]]  # (address, size) ranges the kernel may rewrite (rseq areas)
Ranges = list[tuple[int, int]]

# Masks over each entry's bytes 6 and 7: keep present (63), swap (62), file (61) and the PFN
# (0-54); drop soft-dirty (55), exclusively mapped (56), uffd-wp (57).
_BYTE6 = bytes(b & 0x7F for b in range(256))
_BYTE7 = bytes(b & 0xFC for b in range(256))
# top byte of a masked entry -> 1 if it guards data: present and not file (61), or swapped (62)
_GUARDED = bytes(1 if (b & 0x80 and not b & 0x20) or b & 0x40 else 0 for b in range(256))


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
    they are written: stackmove.close_stack_gap, singlepage.single_page.)"""
    for addr, digest in before.items():
        if _digest(read, addr, list(holes)) != digest:
            raise UnsafeStep(f"anonymous page {addr:#x} changed during the fold")
    return len(before) * PAGE_SIZE


def _masked(raw: bytes) -> bytes:
    b = bytearray(raw)
    b[6::8] = b[6::8].translate(_BYTE6)
    b[7::8] = b[7::8].translate(_BYTE7)
    return bytes(b)


@dataclass
class Frames:
    """Raw pagemap entries of spans of the address space, read before a step; what must hold
    after it is in :func:`check_frames`.  See the module docstring for why it suffices."""

    pid: int
    spans: Ranges
    entries: list[bytes]
    zero_pfn: int | None  # the shared zero page's frame: a mapping of it holds no data
    now: list[bytes] | None = None  # the entries as check_frames found them after the step

    def guarded(self) -> int:
        """Bytes of memory the entries guard: present anonymous pages (the zero page aside)
        and swapped-out ones.  Counted for the report once the target runs again."""
        n = 0
        for e in self.entries:
            m = _masked(e)
            n += m[7::8].translate(_GUARDED).count(1) - len(self._zero_at(m))
        return n * PAGE_SIZE

    def _zero_at(self, e: bytes) -> list[int]:
        """Offsets (in entries) of the mappings of the zero page in masked entries E."""
        if self.zero_pfn is None:
            return []
        pat = (PM_PRESENT | self.zero_pfn).to_bytes(8, "little")
        out, i = [], e.find(pat)
        while i >= 0:
            if i % 8 == 0:
                out.append(i // 8)
            i = e.find(pat, i + 1)
        return out


def read_frames(pid: int, spans: Ranges, prev: Frames | None = None) -> Frames:
    """The pagemap entries of every page in SPANS (sorted, disjoint), in one pass: the
    evidence a pure drop is checked against.  PREV: the previous pure drop's frames, checked
    since with nothing but planning in between -- a span inside one of PREV's is cut from
    what its check read (the state just proven) instead of being read again.
    Raises NoSuchProcess / AccessDenied."""
    entries: list[bytes | None] = [None] * len(spans)
    if prev is not None and prev.now is not None:
        starts = [lo for lo, _ in prev.spans]
        for i, (lo, hi) in enumerate(spans):
            j = bisect.bisect_right(starts, lo) - 1
            if j >= 0 and hi <= prev.spans[j][1]:
                base = prev.spans[j][0]
                entries[i] = prev.now[j][(lo - base) >> 9 : (hi - base) >> 9]  # 8 B a page
    fresh = [i for i, e in enumerate(entries) if e is None]
    for i, e in zip(fresh, pagemap.entries_for(pid, [spans[i] for i in fresh]), strict=True):
        entries[i] = e
    return Frames(pid, spans, entries, pagemap.zero_pfn())  # type: ignore[arg-type]


def check_frames(before: Frames) -> None:
    """Re-read BEFORE's spans: every entry that was a present anonymous page (not the zero
    page) or a swapped-out one must be equal but for bits 55-57.  Pages that were not present
    may have come in (a safety frame's page, a read).  Raises UnsafeStep naming the first page
    no longer present or now mapping another frame.  (Equal bytes, the rule, cost one
    comparison; only a span that differs is masked and walked.)"""
    now = before.now = pagemap.entries_for(before.pid, before.spans)
    for (lo, _hi), raw_old, raw_new in zip(before.spans, before.entries, now, strict=True):
        if raw_old == raw_new:
            continue
        old, new = _masked(raw_old), _masked(raw_new)
        if old == new:  # only bits 55-57 differ (e.g. exclusivity): nothing to walk
            continue
        zero = set(before._zero_at(old))
        for k in _differing(old, new):
            if not _GUARDED[old[k + 7]] or k // 8 in zero:
                continue
            a = lo + (k << (PAGE_SHIFT - 3))
            e0, e1 = (int.from_bytes(x[k : k + 8], "little") for x in (old, new))
            if not e1 & (PM_PRESENT | PM_SWAP):
                why = "is gone (dropped)"
            elif e0 & PM_SWAP or e1 & PM_SWAP:
                why = "was swapped in or out"
            else:
                why = f"now maps frame {e1 & PM_PFN_MASK:#x}, not {e0 & PM_PFN_MASK:#x}"
            raise UnsafeStep(f"anonymous page {a:#x} {why} during the fold: its data is unproven")


def _differing(old: bytes, new: bytes, block: int = 4096) -> Iterator[int]:
    """Byte offsets of the 8-byte entries that differ between OLD and NEW (equal lengths):
    blocks of 512 entries compared whole first, so a span with a few changed pages is walked
    a block at a time, not an entry at a time (a 1 GB span is 2 MB of entries)."""
    for b in range(0, len(old), block):
        if old[b : b + block] != new[b : b + block]:
            for k in range(b, min(b + block, len(old)), 8):
                if old[k : k + 8] != new[k : k + 8]:
                    yield k


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
    dead = [
        span
        for tid, (rsp, fs) in stacks.items()
        if (span := _dead_span(pid, tid, rsp, fs, vmas, read))
    ]
    starts = [v.start for v in vmas]
    anon = 0
    for lo, hi in drops:
        a = lo
        while a < hi:  # a run at a time: a run of clean file pages, or one dead span's part
            n = _clean_run(vmas, starts, a, hi)
            if n:
                a += n
                continue
            span = next(((s, e) for s, e in dead if s <= a and a + PAGE_SIZE <= e), None)
            if span is None:
                raise UnsafeStep(
                    f"{name} would drop page {a:#x}, which is neither a clean file page nor "
                    "proven dead stack; refused before anything was done"
                )
            end = min(hi, span[1])
            anon += end - a
            a = end
    return anon


def _clean_run(vmas: list, starts: list[int], a: int, hi: int) -> int:
    """Bytes of consecutive present clean file pages (pagemap bit 61 in a file mapping) from
    page A, below HI and within A's VMA; 0 when A is not one.  Bisection finds the VMA and the
    page; no set of every clean page of the process is built."""
    i = bisect.bisect_right(starts, a) - 1
    if i < 0 or not vmas[i].is_file or vmas[i].end <= a:
        return 0
    pages = vmas[i].pages
    j = bisect.bisect_left(pages, a, key=_addr)
    cand = pages[j : j + ((min(hi, vmas[i].end) - a) >> PAGE_SHIFT)]
    # sorted, distinct addresses: cand[m] is page a + m pages exactly while no page is missing
    # before it, so the present prefix is found by bisection
    n = bisect.bisect_right(range(len(cand)), 0, key=lambda m: cand[m].addr - a - m * PAGE_SIZE)
    backs = [p.backing for p in cand[:n]]
    if backs.count("file") != n:  # backing "file" is Page.clean_file; stop at the first other
        n = next(m for m, b in enumerate(backs) if b != "file")
    return n * PAGE_SIZE


def _addr(p) -> int:
    return p.addr


def _dead_span(pid: int, tid: int, rsp: int, fs: int, vmas: list, read: Reader):
    """[start, end) of the pages provably dead below TID's rsp - 128, or None."""
    at = [i for i, v in enumerate(vmas) if v.start <= rsp < v.end]
    if not at:
        return None
    v = vmas[at[0]]
    end = (rsp - RED_ZONE) & ~(PAGE_SIZE - 1)
    if tid == pid or v.path == "[stack]":
        return (v.start, end) if tid == pid and v.path == "[stack]" else None
    guard = at[0] > 0 and vmas[at[0] - 1].end == v.start and vmas[at[0] - 1].perms[:3] == "---"
    anon_rw = v.perms.startswith("rw") and v.perms.endswith("p") and not v.is_file
    plain = not v.path or v.path.startswith("[anon:")
    tcb = rsp < fs < v.end and read(fs, 8) == fs.to_bytes(8, "little")
    return (v.start, end) if guard and anon_rw and plain and tcb else None
