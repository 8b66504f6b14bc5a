"""The residency model: every present page of a process, labelled, and every RSS counter beside it.

Why one snapshot: counters, tables, JSON, PNG and the fold's preconditions must all describe the
same instant (psutil's ``oneshot``).  :func:`snapshot` reads status, statm, smaps, smaps_rollup
and pagemap once, back to back, and every view is computed from the :class:`Snapshot`.
(VMAs come from smaps, whose header lines are the maps lines: reading maps too would only add a
second, possibly different, view of the same instant.)

The model knows no colours or tables (remap.render does).

Example::

    >>> s = remap.snapshot(pid)
    >>> s.summary
    'VM 20 kB (Max 20 kB), RSS 12 kB [ Code 4 kB, Data 8 kB, Libs 0 kB, Stack 132 kB ]'
    >>> [p.label for p in s.anon_pages()]
    ['data', 'stack']
"""

from __future__ import annotations

import bisect
import re
from dataclasses import asdict, dataclass, field

from . import kconst as K
from . import labels, pagemap, procfs
from .rsslag import RssLag, rss_lag
from .seedline import seed_summary


@dataclass(slots=True)
class Page:
    """One present page.  ``backing``: file | anon | shmem | pfnmap | hugetlb ("anon" includes
    CoW; hugetlb pages are counted by no RSS figure, see Vma.hugetlb)."""

    addr: int
    backing: str
    cow: bool  # anonymous page inside a private file mapping (e.g. written .data)
    label: str
    section: str | None
    symbol: str | None
    pfn: int | None
    flags: int | None  # KPF_* bits from /proc/kpageflags (root, snapshot(kpageflags=True))

    @property
    def clean_file(self) -> bool:
        """Present and backed by the file itself (pagemap bit 61): droppable without loss."""
        return self.backing == "file"

    def to_json(self) -> dict:
        return {
            "addr": self.addr,
            "backing": self.backing,
            "label": self.label,
            "section": self.section,
            "symbol": self.symbol,
        }


@dataclass(slots=True)
class Vma:
    """One mapping with its smaps figures (kB) and its PRESENT pages (sorted by address)."""

    start: int
    end: int
    perms: str
    offset: int
    dev: str
    inode: int
    path: str
    label: str
    rss_kb: int
    anon_kb: int
    file_kb: int
    shmem_kb: int
    swap_kb: int
    pages: list[Page] = field(default_factory=list)
    vmflags: frozenset[str] = frozenset()
    zero_pages: int = 0  # present in pagemap but mapping the shared zero page (no RSS)
    entry: procfs.SmapsEntry | None = None  # the raw smaps record (all fields, lazily)

    @property
    def smaps(self) -> dict[str, int]:
        """Every smaps field of this VMA in kB (Rss, Pss, Referenced, AnonHugePages, ...)."""
        return self.entry.fields if self.entry is not None else {}

    def smaps_kb(self, key: str) -> int:
        """One smaps field in kB, without building the whole dict."""
        return self.entry.get(key) if self.entry is not None else 0

    @property
    def size_kb(self) -> int:
        return (self.end - self.start) >> 10

    @property
    def npages(self) -> int:
        return (self.end - self.start) >> K.PAGE_SHIFT

    def contains(self, addr: int) -> bool:
        return self.start <= addr < self.end

    @property
    def is_file(self) -> bool:
        """Backed by a real file (not anonymous, not a [special] mapping)."""
        return self.inode != 0 and not self.path.startswith("[")

    @property
    def pfnmap(self) -> bool:
        """VM_PFNMAP/VM_IO (smaps 'pf'/'io'): raw frames that no RSS counter ever counts."""
        return labels.is_pfnmap(self.vmflags)

    @property
    def hugetlb(self) -> bool:
        """A hugetlbfs mapping (VmFlags 'ht'): smaps counts it in *_Hugetlb, never in Rss, so
        its present pages (backing 'hugetlb') are in no rss_kb and no RSS figure."""
        return "ht" in self.vmflags

    def to_json(self, pages: bool = True) -> dict:
        d = {
            "start": self.start,
            "end": self.end,
            "perms": self.perms,
            "path": self.path,
            "label": self.label,
            "rss_kb": self.rss_kb,
        }
        if pages:
            d["pages"] = [p.to_json() for p in self.pages]
        return d


@dataclass(slots=True)
class Snapshot:
    """A process's residency at one instant (see module docstring)."""

    pid: int
    kernel: str
    vmas: list[Vma]
    status: dict
    statm: procfs.Statm
    smaps_rollup: dict[str, int]
    counters_kb: dict[str, int]
    summary: str
    notes: list[str]
    exe: str = ""
    method: str = ""  # "scan" (PAGEMAP_SCAN) or "read"

    @property
    def rss_kb(self) -> int:
        """RSS from the page walk (present pages that some RSS counts), in kB."""
        return self.counters_kb["pagemap_present"]

    @property
    def present_pages(self) -> int:
        return sum(len(v.pages) for v in self.vmas if not v.pfnmap and not v.hugetlb)

    def vma_at(self, addr: int) -> Vma | None:
        i = bisect.bisect_right([v.start for v in self.vmas], addr) - 1
        if i >= 0 and self.vmas[i].contains(addr):
            return self.vmas[i]
        return None

    def find(self, label: str) -> list[Vma]:
        """VMAs whose label is LABEL or that hold a page labelled LABEL (e.g. 'code', 'bss')."""
        return [v for v in self.vmas if v.label == label or any(p.label == label for p in v.pages)]

    def anon_pages(self) -> list[Page]:
        return [p for v in self.vmas for p in v.pages if p.backing == "anon"]

    def pages(self) -> list[Page]:
        return [p for v in self.vmas for p in v.pages]

    def to_json(self, pages: bool = True) -> dict:
        """The ``remap map --json`` shape of issue 2."""
        return {
            "pid": self.pid,
            "kernel": self.kernel,
            "vmas": [v.to_json(pages) for v in self.vmas],
        }

    def explain_json(self) -> dict:
        """The ``remap explain --json`` shape: counters (issue 2) and fault-around (issue 17)."""
        return {
            "pid": self.pid,
            "kernel": self.kernel,
            "summary": self.summary,
            "counters_kb": dict(self.counters_kb),
            "fault_around": fault_around(self).to_json(),
            "rss_lag": rss_lag_of(self).to_json(),
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------- kernel mechanisms
def _version(release: str) -> tuple[int, int, int]:
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if not m:
        return (0, 0, 0)
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def split_rss_counting(kernel_release: str) -> bool:
    """Does this release keep per-thread RSS caches (SPLIT_RSS_COUNTING, 2.6.34 to 6.1)?"""
    return (2, 6, 34) <= _version(kernel_release) < (6, 2, 0)


def mechanism_for(kernel_release: str) -> str:
    """How status/statm RSS counters are kept on this kernel release (one sentence).

    Why a function: explain, records and reports all need the same wording for the same kernel.
    """
    v = _version(kernel_release)
    if v < (2, 6, 34):
        return (
            f"Linux {kernel_release}: mm RSS counters are updated atomically at every fault, "
            "so status/statm match the page walk"
        )
    if split_rss_counting(kernel_release):
        return (
            f"Linux {kernel_release}: split RSS counting (SPLIT_RSS_COUNTING, 2.6.34-6.1): each "
            "thread caches its RSS deltas and folds them into the mm counters only every 64 "
            "page faults (TASK_RSS_EVENTS_THRESH), at exec and at exit, so status/statm lag the "
            "page walk; a process with fewer than ~64 faults can show VmRSS 4 kB forever"
        )
    if v < (6, 16, 0):
        return (
            f"Linux {kernel_release}: per-CPU RSS counters (percpu_counter since 6.2, 'mm: "
            "convert mm's rss stats into percpu_counter'): status/statm read the global count "
            "without summing the per-CPU deltas, off by up to batch x nr_cpus pages, until the "
            "2025 fix 'mm: fix the inaccurate memory statistics issue for users'"
        )
    return (
        f"Linux {kernel_release}: per-CPU RSS counters (since 6.2), summed exactly for status and "
        "statm since the 2025 fix 'mm: fix the inaccurate memory statistics issue for users' "
        "(6.16), so they should match the page walk of a process that is not faulting"
    )


def rss_lag_of(snap: Snapshot) -> RssLag:
    """How far SNAP's status counters trail its page walk, per class (remap.rsslag); reads the
    threads' fault counts now (they change only when the process faults)."""
    c = snap.counters_kb
    counted = {k: c.get(f"status_rss_{k}") or 0 for k in ("anon", "file", "shmem")}
    walked = {
        "anon": sum(v.anon_kb for v in snap.vmas),
        "file": sum(v.file_kb for v in snap.vmas),
        "shmem": sum(v.shmem_kb for v in snap.vmas),
    }
    return rss_lag(snap.pid, split_rss_counting(snap.kernel), counted, walked)


@dataclass
class FaultAround:
    """What the kernel's fault-around does to one process's file pages.

    Since 3.15 (mm/memory.c do_fault_around) a read fault on a file mapping maps up to
    fault_around_bytes of the neighbouring pages already in the page cache -- within the VMA
    and the naturally aligned window around the fault -- not the one page touched, as 2.4
    did.  So a squeezed program that touches one dropped code page gets up to 16 back.  Which
    present page was touched and which came in around it the page tables do not say (x86
    maps prefaulted PTEs young); what can be shown is how present file pages sit in those
    windows: a window with several present pages is one where a single fault may have brought
    them all.  Measured on 6.18 (tests/test_cli_residency.py): a 1 MiB ext4 file written and
    synced, mapped privately at an address 0x6000-0xe000 past a 64 KiB boundary, page 5 read:
    in 3 of 6 runs file pages 0-15 came in (the whole 64 KiB large folio, aligned in the file,
    not the virtual address), in 3 only page 5 -- the page cache's folios decide as much as
    fault_around_bytes.  The windows counted here are virtual-address windows."""

    active: bool  # the kernel has it (3.15+)
    window_bytes: int  # fault_around_bytes; the default when debugfs cannot be read
    window_source: str  # "debugfs" or "default"
    file_pages: int  # present pages of private file mappings
    windows: int  # aligned windows (clipped to their VMA) holding at least one of them
    pages_in_shared_windows: int  # of file_pages, those sharing a window with another

    def to_json(self) -> dict:
        return asdict(self)

    def sentence(self) -> str:
        if not self.active:
            return "no fault-around on this kernel (before 3.15): a fault maps one page"
        pages = self.window_bytes // K.PAGE_SIZE
        return (
            f"fault-around: a read fault on a file mapping maps up to {self.window_bytes} bytes "
            f"({pages} pages, {self.window_source}) of cached neighbours, within the VMA and the "
            f"aligned window; here {self.file_pages} present file pages lie in {self.windows} "
            f"windows, {self.pages_in_shared_windows} of them beside another present page"
        )


def fault_around(snap: Snapshot) -> FaultAround:
    """The fault-around figures of SNAP (see FaultAround): windows counted per file VMA."""
    active = _version(snap.kernel) >= (3, 15, 0)
    found = procfs.read_fault_around_bytes()
    window = found or procfs.FAULT_AROUND_DEFAULT
    pages = windows = crowded = 0
    for v in snap.vmas:
        if not v.is_file or v.hugetlb or v.pfnmap:
            continue
        per: dict[int, int] = {}
        for p in v.pages:
            if p.backing != "anon":  # a copy-on-written page is no page-cache page
                w = p.addr // window  # the aligned window (clipped to V: counted per VMA)
                per[w] = per.get(w, 0) + 1
        for n in per.values():
            pages += n
            crowded += n if n > 1 else 0
        windows += len(per)
    return FaultAround(active, window, "debugfs" if found else "default", pages, windows, crowded)


# --------------------------------------------------------------------------- snapshot
@dataclass(slots=True)
class _Instant:
    """What the kernel said at the snapshot's instant, before any of it is interpreted."""

    status: dict
    statm: procfs.Statm
    entries: list[procfs.SmapsEntry]  # smaps, or maps dressed as smaps entries without fields
    rollup: dict


def snapshot(
    pid: int,
    *,
    method: str = "auto",
    kpageflags: bool = False,
    pfns: bool = True,
    smaps: bool = True,
    counters: bool = True,
    entries: list[procfs.SmapsEntry] | None = None,
) -> Snapshot:
    """Read PID's residency at one instant.

    METHOD: "auto" (PAGEMAP_SCAN if the kernel has it), "scan" or "read" (plain pagemap read).
    KPAGEFLAGS: also fill Page.flags from /proc/kpageflags (root only; costs a pread per run).
    PFNS: fill Page.pfn (root only; False skips reading them: ~10% faster on big processes).
    Three modes, by what is read (:func:`_read_full`, :func:`_read_stopped`):
    - SMAPS and COUNTERS (the default): smaps, status, statm, smaps_rollup, every note;
    - SMAPS False reads maps instead of smaps (about 8x cheaper for thousands of VMAs): per-VMA
      rss/anon/file/shmem kB then come from the page walk -- equal to smaps for a process that
      is not faulting (tests check it) -- swap_kb is 0, counters_kb["smaps_rss"] is None, and
      VMAs carry no VmFlags ([vvar*] are still known as PFN maps by name).  ``map --json``
      output is this view's to_json(), written directly by remap.mapjson;
    - COUNTERS False (with SMAPS False) reads only maps and pagemap -- no status, statm,
      smaps_rollup, no notes: the fold's view of a process it holds stopped, where every
      microsecond counts (counters_kb then holds pagemap_present alone, summary is "").
      ENTRIES (only there): the VMAs as a caller holding the process stopped knows them to be
      still (/proc/PID/maps read again, byte for byte the text they were parsed from): maps
      is not parsed again, only the pages are walked (0.7 of 2.7 ms for 229 VMAs).
    Raises NoSuchProcess / ZombieProcess / AccessDenied / UnsupportedTarget (remap.errors),
    ValueError for COUNTERS False with SMAPS True.
    """
    if not counters and smaps:
        raise ValueError("snapshot(counters=False) needs smaps=False")
    if entries is not None and counters:
        raise ValueError("snapshot(entries=...) needs counters=False")
    kernel = procfs.kernel_release()
    got = _read_full(pid, smaps) if counters else _read_stopped(pid, entries)
    ranges = [(e.start, e.end) for e in got.entries]
    pfnmap = [i for i, e in enumerate(got.entries) if labels.is_pfnmap(e.vmflags)]
    runs, frames, used = pagemap.walk(
        pid, ranges, pfnmap, method=method, pfns=pfns or kpageflags
    )  # fmt: skip
    # --- everything below is computed from what was read
    notes: list[str] = []
    exe = procfs.read_exe(pid)
    flags_of = pagemap.kpageflags(frames.values()) if kpageflags and frames else {}
    vmas, zero_unknown = _vmas(pid, got, runs, frames, flags_of, exe, notes, smaps)
    counted = [v for v in vmas if not v.pfnmap and not v.hugetlb]
    present_kb = 4 * sum(len(v.pages) for v in counted)
    if not counters:
        return Snapshot(pid=pid, kernel=kernel, vmas=vmas, status=got.status, statm=got.statm,
                        smaps_rollup=got.rollup, counters_kb={"pagemap_present": present_kb},
                        summary="", notes=notes, exe=exe, method=used)  # fmt: skip
    figures = _counters_kb(got, vmas, present_kb, smaps)
    visible = bool(frames) or pagemap.pfns_visible()
    notes[:0] = _reconcile(kernel, figures, vmas, got.rollup, zero_unknown, visible)
    return Snapshot(
        pid=pid,
        kernel=kernel,
        vmas=vmas,
        status=got.status,
        statm=got.statm,
        smaps_rollup=got.rollup,
        counters_kb=figures,
        summary=seed_summary(got.status),
        notes=notes,
        exe=exe,
        method=used,
    )


def _read_full(pid: int, smaps: bool) -> _Instant:
    """The instant of a running process: the kernel's files back to back (smaps or maps)."""
    procfs.check_target(pid)
    status = procfs.read_status(pid)
    statm = procfs.read_statm(pid)
    entries = procfs.read_smaps(pid) if smaps else _maps_entries(pid)
    return _Instant(status, statm, entries, procfs.read_smaps_rollup(pid))


def _read_stopped(pid: int, entries: list[procfs.SmapsEntry] | None = None) -> _Instant:
    """The instant of a stopped process we hold: only what labelling needs (maps, threads);
    ENTRIES: the maps as the caller knows them still to be."""
    status = {"Threads": str(len(procfs.thread_ids(pid)))}
    got = _maps_entries(pid) if entries is None else entries
    return _Instant(status, procfs.Statm(0, 0, 0, 0, 0, 0, 0), got, {})


def _maps_entries(pid: int) -> list[procfs.SmapsEntry]:
    """/proc/PID/maps as smaps entries without fields (VmFlags guessed from the name)."""
    return [
        procfs.SmapsEntry(
            m.start,
            m.end,
            m.perms,
            m.offset,
            m.dev,
            m.inode,
            m.path,
            fields={},
            vmflags=labels.name_flags(m.path),
        )
        for m in procfs.read_maps(pid)
    ]


def _vmas(
    pid: int,
    got: _Instant,
    runs: list,
    frames: dict[int, int],
    flags_of: dict[int, int],
    exe: str,
    notes: list[str],
    smaps: bool,
) -> tuple[list[Vma], int]:
    """The labelled VMAs and their present pages; and how many anonymous pages might be the
    shared zero page (unknown without PFNs).  Labelling notes are appended to NOTES."""
    sps = labels.thread_sps(pid, got.status, notes)
    fstypes = labels.fstypes_for(pid, got.entries)
    views = labels.elf_views(got.entries, exe, pid)
    vmas: list[Vma] = []
    zero_unknown = 0
    for e, rs, view in zip(got.entries, runs, views, strict=True):
        label, kind, is_exe_part = labels.classify(e, view, exe, fstypes, sps)
        if smaps:
            rss, anon, swap = e.get("Rss"), e.get("Anonymous"), e.get("Swap")
        else:
            rss = anon = swap = 0  # filled from the page walk below
        shmem_kb = rss - anon if kind == "shmem" else 0
        # maps alone has no VmFlags: a hugetlb mapping is known by its device (labels)
        vmflags = e.vmflags | {"ht"} if kind == "hugetlb" else e.vmflags
        v = Vma(
            e.start, e.end, e.perms, e.offset, e.dev, e.inode, e.path, label,
            rss, anon, rss - anon - shmem_kb, shmem_kb, swap,
            vmflags=vmflags, entry=e,
        )  # fmt: skip
        zero_unknown += _fill_pages(v, rs, view, kind, is_exe_part, frames, flags_of)
        if not smaps and v.pages and not v.hugetlb:  # per-VMA figures from the page walk
            n_anon = sum(1 for p in v.pages if p.backing == "anon")
            n_shmem = sum(1 for p in v.pages if p.backing == "shmem")
            v.rss_kb, v.anon_kb, v.shmem_kb = 4 * len(v.pages), 4 * n_anon, 4 * n_shmem
            v.file_kb = v.rss_kb - v.anon_kb - v.shmem_kb
        if is_exe_part and e.path:
            top = labels.exe_vma_label(e, view, [p.label for p in v.pages])
            if top:
                v.label = top
        vmas.append(v)
    return vmas, zero_unknown


def _fill_pages(v: Vma, rs: list, view, kind: str, is_exe_part: bool,
                frames: dict[int, int], flags_of: dict[int, int]) -> int:  # fmt: skip
    """Append V's present pages from its runs RS; return the anonymous pages that may be the
    shared zero page (the walk could not tell without PFNs)."""
    private_file = v.is_file and v.perms[3] == "p"
    pfnmap_vma = labels.is_pfnmap(v.vmflags)
    pages, label = v.pages, v.label
    zero_unknown = 0
    for r in rs:
        if r.zero:
            v.zero_pages += r.npages
            continue
        if r.zero is None and not r.file:
            zero_unknown += r.npages
        backing, cow = labels.backing(r.file, pfnmap_vma, kind, private_file)
        if view is None and not flags_of:  # the common case, kept tight for big processes
            pages.extend(
                [
                    Page(a, backing, cow, label, None, None, frames.get(a), None)
                    for a in range(r.start, r.end, K.PAGE_SIZE)
                ]
            )
            continue
        described = view.describe_pages(r.start, r.end) if view is not None else None
        for n, a in enumerate(range(r.start, r.end, K.PAGE_SIZE)):
            pl, sec, sym = label, None, None
            if described is not None:
                pl2, sec, sym = described[n]
                if is_exe_part and pl2:
                    pl = pl2
            pfn = frames.get(a)
            pages.append(Page(a, backing, cow, pl, sec, sym, pfn, flags_of.get(pfn)))
    return zero_unknown


def _counters_kb(got: _Instant, vmas: list[Vma], present_kb: int, smaps: bool) -> dict:
    """Every RSS figure in kB, by where it comes from (smaps_rss None when smaps was not read)."""
    status, statm, rollup = got.status, got.statm, got.rollup
    return {
        "status_vmrss": int(status.get("VmRSS", 0)),
        "status_rss_anon": int(status.get("RssAnon", 0)),
        "status_rss_file": int(status.get("RssFile", 0)),
        "status_rss_shmem": int(status.get("RssShmem", 0)),
        "statm_rss": statm.resident * (K.PAGE_SIZE >> 10),
        "smaps_rss": sum(v.rss_kb for v in vmas) if smaps else None,
        "smaps_rollup_rss": int(rollup.get("Rss", 0)),
        "pagemap_present": present_kb,
    }


def _reconcile(
    kernel: str,
    c: dict[str, int],
    vmas: list[Vma],
    rollup: dict[str, int],
    zero_unknown: int,
    pfns: bool,
) -> list[str]:
    """Notes: where counters disagree, which one is exact and the kernel mechanism behind it."""
    notes: list[str] = []
    walk = c["pagemap_present"]
    if c["smaps_rss"] is None:
        notes.append(
            "smaps was not read (fast snapshot): per-mapping kB come from the page walk, per-"
            "mapping swap is unknown; run `remap explain` for the smaps figures"
        )
    elif c["smaps_rss"] == c["smaps_rollup_rss"] == walk:
        notes.append(
            f"page walk: smaps Rss sum, smaps_rollup and pagemap all say {walk} kB (exact: "
            "they walk the page tables at read time)"
        )
    else:
        notes.append(
            f"page walks disagree (smaps {c['smaps_rss']} kB, smaps_rollup "
            f"{c['smaps_rollup_rss']} kB, pagemap {walk} kB): the process faulted or freed "
            "pages between the reads (it was not blocked); each figure is exact for its instant"
        )
    st = c["status_vmrss"]
    parts = c["status_rss_anon"] + c["status_rss_file"] + c["status_rss_shmem"]
    exact = c["smaps_rss"] if c["smaps_rss"] is not None else walk
    if st == c["statm_rss"] == exact:
        notes.append(f"status VmRSS and statm agree with the page walk. {mechanism_for(kernel)}.")
    else:
        notes.append(
            f"status VmRSS {st} kB / statm {c['statm_rss']} kB differ from the page walk "
            f"{exact} kB: the page walk is exact, the counters are not. "
            f"{mechanism_for(kernel)}."
        )
    if parts != st:
        notes.append(f"RssAnon+RssFile+RssShmem = {parts} kB but VmRSS = {st} kB (read racing)")
    pf = [v for v in vmas if v.pfnmap and v.pages]
    if pf:
        n = sum(len(v.pages) for v in pf)
        names = ", ".join(sorted({v.path or v.label for v in pf}))
        notes.append(
            f"{n} present page(s) in PFN maps ({names}): VM_PFNMAP frames have no struct page "
            "to count, so no RSS counter includes them (vvar never counts; vdso does, once "
            "touched)"
        )
    z = sum(v.zero_pages for v in vmas)
    if z:
        notes.append(
            f"{z} page(s) map the shared zero page (read but never written): present in "
            "pagemap, counted by no RSS figure, excluded from pagemap_present"
        )
    if zero_unknown and not pfns:
        notes.append(
            "PFNs are hidden from unprivileged readers (pagemap shows PFN 0 without "
            "CAP_SYS_ADMIN since 4.2): shared-zero-page mappings cannot be told from real "
            "anonymous pages on the plain read path; pfn/flags are None and "
            "kpageflags/kpagecount are unavailable -- run as root for them"
        )
    elif not pfns:
        notes.append(
            "no PFNs: pagemap hides them without CAP_SYS_ADMIN, so pfn/flags are None and "
            "kpageflags/kpagecount are unavailable (run as root for them)"
        )
    thp = sum(rollup.get(k, 0) for k in ("AnonHugePages", "FilePmdMapped", "ShmemPmdMapped"))
    if thp:
        notes.append(
            f"{thp} kB are PMD-mapped huge pages: counted as 2 MB units by every RSS figure and "
            "as 512 present 4 kB entries by pagemap"
        )
    ht = [v for v in vmas if v.hugetlb]
    if ht:
        if c["smaps_rss"] is None:
            kb, whose = 4 * sum(len(v.pages) for v in ht), "the page walk"
        else:
            kb = sum(v.smaps_kb("Private_Hugetlb") + v.smaps_kb("Shared_Hugetlb") for v in ht)
            whose = "smaps"
        notes.append(
            f"{kb} kB present in {len(ht)} hugetlb mapping(s) (by {whose}): smaps reports "
            "hugetlb in Private_Hugetlb/Shared_Hugetlb, not in Rss, and no RSS counter includes "
            "it, so their rss_kb is 0 and their pages (backing 'hugetlb') are excluded from "
            "pagemap_present"
        )
    swap = rollup.get("Swap", 0)
    if swap:
        notes.append(f"{swap} kB are swapped out: not resident, counted by VmSwap only")
    return notes
