"""Which pages of a process are present, from /proc/PID/pagemap -- read over holes, or scanned.

Two ways to the same answer (tests check they agree):

* :func:`present_read` -- ``os.pread`` of the pagemap entries of each VMA only (never the holes
  between them: a 47-bit address space is 256 GiB of entries), in big chunks, then a C-speed
  filter on bit 63 (the top byte of each little-endian entry).
* :func:`present_scan` -- the PAGEMAP_SCAN ioctl (Linux 6.7+): the kernel walks the page tables
  and returns only runs of present pages with their category bits (file, zero PFN, huge), so a
  sparse 1 GB address space costs a few ioctls instead of 2 MB of entries.

Both return :class:`Present` runs.  PFNs are only shown to CAP_SYS_ADMIN (since 4.2 an
unprivileged reader sees PFN 0): :func:`pfns_for` fills them when we may, and
:func:`kpageflags` / :func:`kpagecount` look the frames up (root only).

Example::

    >>> from remap import pagemap, procfs
    >>> vmas = procfs.read_maps(pid)
    >>> runs = pagemap.present(pid, [(v.start, v.end) for v in vmas])
"""

from __future__ import annotations

import errno
import fcntl
import os

from . import errors
from . import kconst as K
from .errors import AccessDenied
from .procfs import open_proc, translate, write_clear_refs
from .record import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

_CHUNK_PAGES = 1 << 16  # 512 KiB of entries per pread


class Present(record("Present", "start end file zero huge", defaults=(False, False))):
    """A run of present pages [start, end) sharing their category bits.

    ``file``: pagemap bit 61 (file page or shared anon) -- i.e. not an anonymous/CoW page.
    ``zero``: the shared zero page (None when unknown: plain read without PFNs).
    ``huge``: part of a huge page (PMD-mapped THP or hugetlb), when the scan says so.
    (A named tuple, not a frozen dataclass: thousands are built per snapshot; remap.record's,
    not typing.NamedTuple: importing typing costs every command ~3 ms.)
    """

    __slots__ = ()
    start: int
    end: int
    file: bool
    zero: bool | None
    huge: bool

    @property
    def npages(self) -> int:
        return (self.end - self.start) >> K.PAGE_SHIFT


# --------------------------------------------------------------------------- plain read
def read_entries(fd: int, start: int, end: int) -> memoryview:
    """The raw pagemap entries for [start, end), as native u64s (a read-only view of one
    bytes object: indexable, sliceable, ``tobytes()``), read with big preads."""
    return memoryview(_pread_span(fd, start, end)).cast("Q")


_Byte = None  # a one-byte ctypes type, made at the first _address


def _address(buf) -> int:
    """The address of writable buffer BUF's first byte (valid while BUF is neither resized nor
    closed).

    Why _ctypes, ctypes' C core (~0.5 ms to import): only ctypes (1-2 ms with its Python part)
    and array's buffer_info expose a buffer's address, and array imports collections.abc and
    so collections (~2.5 ms of every `remap map`, issue 15).  The type is built as ctypes
    builds its c_ubyte."""
    global _Byte
    import _ctypes

    if _Byte is None:
        _Byte = type("_Byte", (_ctypes._SimpleCData,), {"_type_": "B", "__slots__": ()})
    return _ctypes.addressof(_Byte.from_buffer(buf))  # the export ends with the temporary


def _words(n: int) -> tuple[memoryview, int]:
    """N zeroed native u64s for the kernel to write into: a writable view and its address
    (the view pins the bytearray under it, which cannot be resized while it is exported)."""
    buf = bytearray(8 * n)
    return memoryview(buf).cast("Q"), _address(buf)


# top byte of an entry -> 0 not present, 2 present file (bit 61), 1 present anonymous and
# PM_MMAP_EXCLUSIVE (bit 56: mapped once), 4 present anonymous and not exclusive (shared with
# a fork, or the shared zero page).  pagemap never marks a zero-page entry exclusive: it has
# no struct page to count (vm_normal_page, fs/proc/task_mmu.c), so only class 4 is searched
# for the zero page's frame, and a process with none (1 GB touched) needs no search at all.
_TOP_KIND = bytes((2 if b & 0x20 else 1 if b & 0x01 else 4) if b & 0x80 else 0 for b in range(256))
_SHARED_AS_ANON = bytes(1 if b == 4 else b for b in range(256))  # class 4 -> 1, once searched
# per class k (0 absent, 1 anonymous, 2 file, 3 zero page): k -> 0, any other byte -> 1, so
# that in KINDS translated by it, the first 1 at or after i is where a run of k from i ends
_NOT_KIND = [bytes(0 if b == k else 1 for b in range(256)) for k in range(4)]


def _class_runs(kinds: bytearray) -> list[tuple[int, int]]:
    """(first, past-last) index of each maximal run of one non-zero class in KINDS.

    Why a translate per class met and one find per run: the work per entry is C's (a table
    lookup, then a memchr), and Python's is per run -- 1 GB of one run was 5-8 ms inside the
    stop with the regex this replaces (and a loop per entry costs as much), ~0.3 ms now."""
    out = []
    n = len(kinds)
    not_k: dict[int, bytearray] = {}
    i = 0
    while i < n:
        k = kinds[i]
        t = not_k.get(k)
        if t is None:
            t = not_k[k] = kinds.translate(_NOT_KIND[k])
        j = t.find(1, i + 1)
        if j < 0:
            j = n
        if k:
            out.append((i, j))
        i = j
    return out


def runs_of_entries(start: int, data: bytes, zero_pfn: int | None) -> list[Present]:
    """Present runs in raw entries DATA of the pages from START (equal neighbours merged), with
    no per-page Python work: the top bytes are classified by one translate, mappings of
    the zero page (ZERO_PFN; None: unknown) found by searching their frame number, and the
    runs cut by finds in the classes (_class_runs) -- about a millisecond for 1 GB of
    entries, which the fold reads inside a stop anyway (remap.fold.plan.Prior.reuse)."""
    kinds = bytearray(data[7::8].translate(_TOP_KIND))
    if 4 in kinds:  # anonymous pages not exclusive: the zero page may be among them
        if zero_pfn is not None:
            # the frame's low bytes, its high zero bytes left off: a needle ending in 0 made
            # bytes.find crawl (every entry holds zeros there) -- 5 ms for 1 GB of entries
            low = zero_pfn.to_bytes(6, "little").rstrip(b"\0") or b"\0"
            i = data.find(low)  # each hit checked whole (aligned, class 4, frame equal)
            while i >= 0:
                if i % 8 == 0 and kinds[i >> 3] == 4:
                    e = int.from_bytes(data[i : i + 8], "little")
                    if e & K.PM_PFN_MASK == zero_pfn:
                        kinds[i >> 3] = 3
                i = data.find(low, i + 1)
        kinds = kinds.translate(_SHARED_AS_ANON)
    mk = Present._make
    zero: bool | None = False if zero_pfn is not None else None
    out = []
    for i, j in _class_runs(kinds):
        k = kinds[i]
        out.append(mk((start + (i << K.PAGE_SHIFT), start + (j << K.PAGE_SHIFT),
                       k == 2, True if k == 3 else zero, False)))  # fmt: skip
    return out


def present_read(pid: int, ranges: Iterable[tuple[int, int]], fd: int | None = None) -> list:
    """Present runs of each [start, end) in RANGES by reading pagemap (the fallback path).

    Returns one list of :class:`Present` per range.  ``zero`` is exact only with PFNs (root).
    """
    own = fd is None
    if own:
        fd = open_proc(pid, "pagemap")
    try:
        visible = pfns_visible()
        out = []
        for start, end in ranges:
            try:
                data = _pread_span(fd, start, end)
            except OSError as e:
                raise translate(pid, e, "pagemap") from None
            if visible and b"\x04" not in data[7::8].translate(_TOP_KIND):
                # no anonymous page is shared, so none maps the zero page: its frame number (a
                # probe that maps and faults a page of ours, for `map --json` reading [vvar])
                # is not needed
                out.append([r._replace(zero=False) for r in runs_of_entries(start, data, None)])
                continue
            out.append(runs_of_entries(start, data, zero_pfn() if visible else None))
        return out
    finally:
        if own:
            os.close(fd)


# --------------------------------------------------------------------------- PAGEMAP_SCAN
# struct pm_scan_arg (include/uapi/linux/fs.h, 6.7+): twelve u64 fields, in this order; the
# output vector is an array of struct page_region {u64 start, end, categories}.  Both are
# native u64 words in memoryviews (the vector's address from _words), not ctypes structures
# or struct: importing ctypes costs every `remap map` ~1-2 ms, struct ~0.7 ms (issue 15).
_PM_SCAN_WORDS = 12
_WALK_END = 4  # index of walk_end among the twelve fields
assert _PM_SCAN_WORDS * 8 == K.PM_SCAN_ARG_SIZE
_REGION_WORDS = 3


def _region_vec(n: int) -> tuple[memoryview, int]:
    """An output vector of N zeroed page_region entries and its address (one zeroed
    allocation: ~0.15 ms of each `remap map --json` when it was a zeroed bytes copied in)."""
    return _words(_REGION_WORDS * n)


_scan_supported: bool | None = None
_KERNEL_HALF = 1 << 63
_VEC_LEN = 4096


def scan_supported() -> bool:
    """Whether this kernel has PAGEMAP_SCAN (probed once, on our own pagemap)."""
    global _scan_supported
    if _scan_supported is None:
        fd = os.open("/proc/self/pagemap", os.O_RDONLY)
        try:
            _ioctl_scan(fd, 0, K.PAGE_SIZE, *_region_vec(1))
            _scan_supported = True
        except OSError as e:
            _scan_supported = e.errno not in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP)
        finally:
            os.close(fd)
    return _scan_supported


def _ioctl_scan(fd: int, start: int, end: int, vec: memoryview, addr: int) -> tuple[int, int]:
    """(regions written into VEC at ADDR, walk_end) of one PAGEMAP_SCAN call over [start, end)."""
    want = K.PAGE_IS_PRESENT | K.PAGE_IS_FILE | K.PAGE_IS_PFNZERO | K.PAGE_IS_HUGE
    arg = memoryview(bytearray(K.PM_SCAN_ARG_SIZE)).cast("Q")
    for i, word in enumerate((
        K.PM_SCAN_ARG_SIZE, 0, start, end, 0, addr, len(vec) // _REGION_WORDS, 0, 0,
        K.PAGE_IS_PRESENT, 0, want,
    )):  # fmt: skip
        arg[i] = word
    n = fcntl.ioctl(fd, K.PAGEMAP_SCAN, arg, True)  # copies ARG in and walk_end back out
    return n, arg[_WALK_END]


_vec: list = []


def _scan_vec() -> tuple[memoryview, int]:
    """The scan's output vector, allocated once (96 kB zeroed per call cost ~20 us: the fold
    snapshots a stopped process several times).  Single-threaded use, like the rest of remap."""
    if not _vec:
        _vec.append(_region_vec(_VEC_LEN))
    return _vec[0]


def present_scan(pid: int, ranges: Sequence[tuple[int, int]], fd: int | None = None) -> list:
    """Like :func:`present_read`, via the PAGEMAP_SCAN ioctl.

    One walk covers all ranges at once (the kernel skips unmapped holes itself); the runs it
    returns are cut at range boundaries.  Note the kernel skips VM_PFNMAP VMAs (vvar) here,
    which the plain read reports as present.
    """
    own = fd is None
    if own:
        fd = open_proc(pid, "pagemap")
    try:
        out: list[list[Present]] = [[] for _ in ranges]
        if not ranges:
            return out
        # [vsyscall] lives in the kernel half: the walk stops at TASK_SIZE (EFAULT beyond)
        order = sorted(
            (i for i in range(len(ranges)) if ranges[i][0] < _KERNEL_HALF),
            key=lambda i: ranges[i][0],
        )
        if not order:
            return out
        lo = ranges[order[0]][0]
        hi = max(ranges[i][1] for i in order)
        vec, vec_addr = _scan_vec()
        regions: list[tuple[int, int, int]] = []
        pos = lo
        while pos < hi:
            try:
                n, walk_end = _ioctl_scan(fd, pos, hi, vec, vec_addr)
            except OSError as e:
                raise translate(pid, e, "pagemap") from None
            if n:
                q = vec[: 3 * n]  # C-speed slicing
                got = list(zip(q[0::3], q[1::3], q[2::3], strict=True))
                # A resumed walk must not repeat what the last one returned (see below).
                while got and regions and got[0][0] < regions[-1][1]:
                    rs, re_, cat = got[0]
                    got[0] = (regions[-1][1], re_, cat)
                    if got[0][0] >= re_:
                        got.pop(0)
                regions.extend(got)
            # Only a full vector means the walk stopped early.  With room left it reached HI,
            # whatever walk_end says: 6.18 returned 1,600 of 4,096 regions, the last one ending
            # at HI, with walk_end at the start of the last 64 -- where its internal 512-entry
            # buffer was last flushed.  Resuming there repeated those 64 regions (and the runs
            # cut from them came out with end < start).  tests/test_residency.py has the case.
            if n < len(vec) // _REGION_WORDS or walk_end <= pos:
                break
            pos = max(walk_end, regions[-1][1]) if regions else walk_end
        # distribute the (sorted) regions over the (sorted) ranges, cutting at boundaries
        cats: dict[int, tuple[bool, bool, bool]] = {}
        mk = Present._make  # thousands of runs: skip the generated __new__
        nreg = len(regions)
        j = 0
        for idx in order:
            s, e = ranges[idx]
            while j < nreg and regions[j][1] <= s:
                j += 1
            k = j
            dst = out[idx]
            while k < nreg and regions[k][0] < e:
                rs, re_, cat = regions[k]
                c = cats.get(cat)
                if c is None:
                    c = cats[cat] = (
                        bool(cat & K.PAGE_IS_FILE),
                        bool(cat & K.PAGE_IS_PFNZERO),
                        bool(cat & K.PAGE_IS_HUGE),
                    )
                if rs < s:
                    rs = s
                if re_ > e:
                    re_ = e
                dst.append(mk((rs, re_, *c)))
                k += 1
        return out
    finally:
        if own:
            os.close(fd)


def present(pid: int, ranges: Sequence[tuple[int, int]], *, method: str = "auto") -> list:
    """Present runs per range: PAGEMAP_SCAN when the kernel has it, else the plain read."""
    if method == "scan" or (method == "auto" and scan_supported()):
        return present_scan(pid, ranges)
    return present_read(pid, ranges)


def walk(
    pid: int,
    ranges: Sequence[tuple[int, int]],
    pfnmap: Sequence[int] = (),
    *,
    method: str = "auto",
    pfns: bool = False,
) -> tuple[list, dict[int, int], str]:
    """(present runs per range, {addr: pfn}, "scan" | "read") in one open of pagemap.

    PFNMAP: indexes of VM_PFNMAP ranges (vvar), which PAGEMAP_SCAN skips: their entries are read
    directly so both methods report the same pages.  PFNS: also read the frame numbers (root).
    """
    use_scan = method == "scan" or (method == "auto" and scan_supported())
    fd = open_proc(pid, "pagemap")
    try:
        if use_scan:
            runs = present_scan(pid, ranges, fd=fd)
            if pfnmap:
                for i, r in zip(
                    pfnmap, present_read(pid, [ranges[i] for i in pfnmap], fd=fd), strict=True
                ):
                    runs[i] = r
        else:
            runs = present_read(pid, ranges, fd=fd)
        frames = pfns_for(pid, [r for rs in runs for r in rs], fd=fd) if pfns else {}
    finally:
        os.close(fd)
    return runs, frames, "scan" if use_scan else "read"


def _pread_span(fd: int, start: int, end: int) -> bytes:
    """The entries of [start, end) as one bytes object, read with big preads (no copy on the
    way: 1 GB of address space is 2 MB of entries, read inside a stop)."""
    first, last = start >> K.PAGE_SHIFT, end >> K.PAGE_SHIFT
    parts = []
    pos = first
    while pos < last:
        b = os.pread(fd, min(_CHUNK_PAGES << 2, last - pos) * 8, pos * 8)
        if len(b) < 8:
            break
        parts.append(b if len(b) % 8 == 0 else b[: len(b) // 8 * 8])
        pos += len(b) // 8
    return parts[0] if len(parts) == 1 else b"".join(parts)


def entries_for(pid: int, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    """The raw pagemap entries (u64 little-endian, 8 bytes a page) of each sorted, disjoint
    [start, end) in RANGES, in one open of pagemap.

    Ranges closer than _COALESCE pages share one pread (the entries between them are read and
    dropped, cheaply): a process's anonymous runs cost a few syscalls, not one each.  PFNs in
    them are 0 unless :func:`pfns_visible`.  Raises NoSuchProcess / AccessDenied (translated).
    """
    out: list[bytes] = []
    if not ranges:
        return out
    fd = open_proc(pid, "pagemap")
    try:
        i = 0
        while i < len(ranges):
            j = i
            while j + 1 < len(ranges) and (
                ranges[j + 1][0] - ranges[j][1] <= _COALESCE << K.PAGE_SHIFT
            ):
                j += 1
            lo, hi = ranges[i][0], ranges[j][1]
            try:
                span = _pread_span(fd, lo, hi)
            except OSError as e:
                raise translate(pid, e, "pagemap") from None
            for s, e in ranges[i : j + 1]:
                out.append(span[(s - lo) >> (K.PAGE_SHIFT - 3) : (e - lo) >> (K.PAGE_SHIFT - 3)])
            i = j + 1
    finally:
        os.close(fd)
    return out


# --------------------------------------------------------------------------- PFNs and frames
_pfns_visible: bool | None = None
_zero_pfn: int | None = None


def _own_entry(buf) -> int:
    """Our own pagemap entry of the page holding writable buffer BUF's first byte (the three
    probes below ask it of a page they just touched).  Raises OSError."""
    addr = _address(buf)
    fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return int.from_bytes(os.pread(fd, 8, (addr >> K.PAGE_SHIFT) * 8), "little")
    finally:
        os.close(fd)


def pfns_visible() -> bool:
    """Whether pagemap shows us real PFNs (CAP_SYS_ADMIN); checked on a page of our own."""
    global _pfns_visible
    if _pfns_visible is None:
        # a word just written: its page is present, so its entry shows a frame or 0 (hidden)
        e = _own_entry(bytearray(b"\x01" * 8))
        if e & K.PM_PRESENT:
            _pfns_visible = bool(e & K.PM_PFN_MASK)
        else:  # not present after all (swapped out at once?): the zero-page probe decides
            _pfns_visible = zero_pfn() is not None
    return _pfns_visible


def zero_pfn() -> int | None:
    """PFN of the shared zero page, learned by read-faulting a fresh anonymous page of our own.

    Why: the plain pagemap read cannot otherwise tell a zero-page mapping (which smaps does not
    count) from a real anonymous page.  None when PFNs are hidden from us.
    """
    global _zero_pfn, _pfns_visible
    if _pfns_visible is False:
        return None
    if _zero_pfn is None:
        import mmap  # here: `map --json` never needs it (~0.4 ms)

        m = mmap.mmap(-1, K.PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            _ = m[0]  # read fault: maps the shared zero page
            e = _own_entry(m)
        finally:
            m.close()
        pfn = e & K.PM_PFN_MASK
        if not (e & K.PM_PRESENT) or pfn == 0:
            _pfns_visible = False
            return None
        _zero_pfn = pfn
    return _zero_pfn


def pfns_for(pid: int, runs: Iterable[Present], fd: int | None = None) -> dict[int, int]:
    """{addr: pfn} for every page in RUNS; {} without CAP_SYS_ADMIN (PFNs are hidden then).

    Runs closer than _COALESCE pages are read with one pread (the entries of a hole between
    them read as zeros, cheaply): 5,000 small VMAs cost a few syscalls, not 5,000.
    """
    if not pfns_visible():
        return {}
    spans: list[list[int]] = []
    for r in sorted(runs, key=lambda r: r.start):
        if spans and r.start - spans[-1][1] <= _COALESCE << K.PAGE_SHIFT:
            spans[-1][1] = max(spans[-1][1], r.end)
            spans[-1].append(r.start)
            spans[-1].append(r.end)
        else:
            spans.append([r.start, r.end, r.start, r.end])
    own = fd is None
    if own:
        fd = open_proc(pid, "pagemap")
    out: dict[int, int] = {}
    try:
        for sp in spans:
            try:
                ent = read_entries(fd, sp[0], sp[1])
            except OSError as e:
                raise translate(pid, e, "pagemap") from None
            base = sp[0] >> K.PAGE_SHIFT
            for k in range(2, len(sp), 2):
                for a in range(sp[k], sp[k + 1], K.PAGE_SIZE):
                    e = ent[(a >> K.PAGE_SHIFT) - base]
                    if e & K.PM_PRESENT:
                        out[a] = e & K.PM_PFN_MASK
    finally:
        if own:
            os.close(fd)
    return out


# Pages between two ranges read with one pread.  Reading the entries between costs the kernel a
# walk of every VMA there: on a CPython whose file mappings the fault-around fence split into
# 2,300 VMAs, its 361 anonymous spans read in 1.8 ms at 4,096 pages (4 preads), 0.9 ms at 16-64.
_COALESCE = 64


def _frames(path: str, pfns: Iterable[int]) -> dict[int, int]:
    """Look PFNs up in a /proc/kpage* file (u64 per frame), one pread per contiguous run."""
    want = sorted(set(p for p in pfns if p))
    out: dict[int, int] = {}
    if not want:
        return out
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise errors.translate(e, what=path) from None
    try:
        i = 0
        while i < len(want):
            j = i
            while j + 1 < len(want) and want[j + 1] == want[j] + 1 and j - i < 4095:
                j += 1
            b = os.pread(fd, (j - i + 1) * 8, want[i] * 8)
            for k, v in enumerate(memoryview(b).cast("Q")):
                out[want[i] + k] = v
            i = j + 1
    finally:
        os.close(fd)
    return out


KPAGEFLAGS = "/proc/kpageflags"  # fs/proc/page.c: u64 KPF_* bits per frame
KPAGECOUNT = "/proc/kpagecount"  # fs/proc/page.c: u64 map count per frame
IDLE_BITMAP = "/sys/kernel/mm/page_idle/bitmap"  # mm/page_idle.c (CONFIG_IDLE_PAGE_TRACKING)


def idle_bitmap_access() -> str:
    """Whether idle page tracking can be used here: 'ok', 'missing' (kernel built without
    CONFIG_IDLE_PAGE_TRACKING) or 'denied' (not root)."""
    if not os.path.exists(IDLE_BITMAP):
        return "missing"
    return "ok" if os.access(IDLE_BITMAP, os.R_OK | os.W_OK) else "denied"


def soft_dirty_supported() -> bool:
    """Does this kernel keep soft-dirty bits (CONFIG_MEM_SOFT_DIRTY)?  Asked of our own
    process: a page written after clear_refs '4' must show pagemap bit 55.  False when the
    probe cannot run (never raises)."""
    import mmap

    m = mmap.mmap(-1, K.PAGE_SIZE)
    try:
        m[0:1] = b"x"
        write_clear_refs(os.getpid(), "4")
        m[0:1] = b"y"
        return bool(_own_entry(m) & K.PM_SOFT_DIRTY)
    except (OSError, AccessDenied):  # AccessDenied: clear_refs refused
        return False
    finally:
        m.close()


def kpageflags(pfns: Iterable[int]) -> dict[int, int]:
    """{pfn: KPF_* bit set} from /proc/kpageflags (root only; PFN 0 = 'no PFN' is skipped)."""
    return _frames(KPAGEFLAGS, pfns)


def kpagecount(pfns: Iterable[int]) -> dict[int, int]:
    """{pfn: number of mappings} from /proc/kpagecount (root only)."""
    return _frames(KPAGECOUNT, pfns)
