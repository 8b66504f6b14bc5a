"""Running a fold plan: precondition -> remote syscalls -> verification, one step at a time.

Why this shape (CRIU's seize/infect/cure, rr's scoped sessions): every step first proves its
precondition on a snapshot taken while *every* thread is stopped, and refuses with a reason
(UnsafeStep) before touching anything; after it acts, the runner checks that every anonymous
page the step did not mean to touch is unchanged -- by its pagemap frame for a pure drop (root),
by its hash for anything else (remap.fold.verify says why both suffice).  The session's exit
cures the process whatever happened (registers, signal mask, scratch page, detach).

What the stop costs is kept independent of the process's size where it can be: the model is
built before the stop and reused when the stopped process still has its layout (Prior: the
maps text compared byte for byte, the present pages re-read), and a pure drop's evidence is
8 bytes of pagemap a page, read by the kernel.  Consecutive pure drops (the fence, dead stack,
clean file pages: planners marked plans_ahead) are planned ahead, run in one batch and proven
together -- the "before" entries being the ones the prior's check read, the "after" one
reading once the batch is done: two passes over the page tables for the whole squeeze
(~13 ms each for 1 GB), whatever the number of steps (bench/stop_time.py).
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import gc
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import pagemap, procfs, residency
from ..errors import UnsafeStep
from ..kconst import PAGE_SIZE
from . import verify
from .rseq import rseq_areas


class NeedsStop(UnsafeStep):
    """What a dry run cannot know without stopping the target (a running thread's registers,
    an answer only an injected call gives): the step is reported as decided at the stop."""


@dataclass
class Action:
    """What one step will do, computed from a stopped snapshot before anything is done."""

    name: str
    text: str  # one line for --dry-run and the report
    run: Callable[[FoldContext], dict[str, Any]]
    touches: set[int] = field(default_factory=set)  # anon pages it changes/drops on purpose
    detail: dict[str, Any] = field(default_factory=dict)
    # Set when the action does nothing but MADV_DONTNEED these [start, end) ranges: the runner
    # then checks in pagemap that they are gone and updates the snapshot, instead of reading
    # the whole address space again (about half a millisecond of the target's stop).
    drops: list[tuple[int, int]] | None = None
    # Set when the action changes which pages are present only inside these anonymous VMAs
    # (by their start; e.g. the stack it writes a moved block into): the runner re-walks just
    # them -- the maps checked unchanged apart from the session's scratch -- instead of the
    # whole address space.
    rewalk: list[int] | None = None
    # What the action leaves behind that later steps look at (moved registers, pages it makes
    # present), applied to the context by a dry run instead of running it: the dry run then
    # plans the next steps on the process as the real run would find it.
    predict: Callable[[FoldContext], None] | None = None
    # Set when the action is exactly these remote syscalls, in order (its run batches them):
    # consecutive pure drops planned ahead (planners marked plans_ahead) then run in one trip
    # of the batch stub, proven together by one reading of frames before and one after.
    calls: list[tuple] | None = None


@dataclass
class StepReport:
    name: str
    text: str
    applied: bool
    syscalls: int = 0
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "text": self.text,
            "applied": self.applied,
            "syscalls": self.syscalls,
            **self.detail,
        }


@dataclass
class FoldContext:
    """Everything a step may look at or use: the pid, the stopped session and a fresh snapshot."""

    pid: int
    session: Any  # remap.inject.Session
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (step, why): steps.optional
    calls: int = 0
    _snap: residency.Snapshot | None = None
    # taken before the stop (Prior): the first look inside it reuses it if nothing changed
    prior: Prior | None = None
    # VmFlags by VMA key (_vma_keys), from smaps read before the stop: a planner that needs
    # them for a VMA still listed identically does not read smaps inside it (vmflags_for)
    vmflags: dict[tuple, frozenset[str]] | None = None
    # frames evidence is used (root): the prior's check inside the stop reads the anonymous
    # spans' pagemap entries, kept in at_stop for the first pure drops (Prior.reuse)
    by_frames: bool = False
    at_stop: verify.Frames | None = None

    @property
    def snap(self) -> residency.Snapshot:
        """The residency as it is now (re-read lazily after a step changed the process)."""
        if self._snap is None:
            prior, self.prior = self.prior, None
            if prior is not None:
                self._snap = prior.reuse(self.session, frames=self.by_frames)
                self.at_stop = prior.at_stop if self._snap is not None else None
            if self._snap is None:  # pages came or went since: walked again, here
                like = prior.snap if prior is not None and prior.same_maps else None
                self._snap = stopped_snapshot(self.pid, like)
        return self._snap

    def call(self, name: str | int, *args: int) -> int:
        """One remote syscall, counted for the report."""
        self.calls += 1
        return self.session.syscall(name, *args)

    def batch(self, calls: list[tuple]) -> list[int]:
        """Many remote syscalls; single calls when there are few (no scratch page needed)."""
        if len(calls) <= 3:
            return [self.call(*c) for c in calls]
        self.calls += len(calls)
        return self.session.syscalls(calls)

    def invalidate(self) -> None:
        """A step changed the address space: the next look at .snap re-reads it."""
        self._snap = None

    def vmflags_for(self, vmas: list) -> list[frozenset[str]]:
        """VmFlags of each of VMAS: from the smaps read before the stop when every one of them
        is listed there with the same maps line, else from smaps read now (which walks every
        page table of the process: ~18 ms for 1 GB, inside the stop).  A flag a program sets
        on a whole VMA between that read and the stop leaves its maps line as it was; what
        reads the flags here is a readahead hint (steps.fence_fault_around), not a safety proof."""
        known = self.vmflags
        keys = _vma_keys(vmas)
        if known is None or any(k not in known for k in keys):
            known = {_vma_keys([e])[0]: e.vmflags for e in procfs.read_smaps(self.pid)}
        return [known.get(k, frozenset()) for k in keys]

    def rewalked(self, starts: list[int]) -> bool:
        """After an action that changed presence only inside the anonymous VMAs at STARTS:
        if /proc/PID/maps still lists the same VMAs (the session's scratch aside), re-read
        those VMAs' pages from pagemap and return True; else invalidate and return False."""
        snap = self._snap
        if snap is None:
            return False
        key = lambda v: (v.start, v.end, v.perms, v.path)  # noqa: E731
        now = [
            key(m)
            for m in procfs.read_maps(self.pid)
            if not in_scratch(self.session, m.start, m.end)
        ]
        old = [key(v) for v in snap.vmas if not in_scratch(self.session, v.start, v.end)]
        redo = [v for v in snap.vmas if v.start in starts]
        if now != old or len(redo) != len(starts) or any(v.is_file or v.pfnmap for v in redo):
            self.invalidate()
            return False
        walked = pagemap.present_read(self.pid, [(v.start, v.end) for v in redo])
        if any(r.file for runs in walked for r in runs):  # not a private anonymous VMA after all
            self.invalidate()
            return False
        for v, runs in zip(redo, walked, strict=True):
            v.pages = [
                residency.Page(a, "anon", False, v.label, None, None, None, None)
                for r in runs
                if not r.zero
                for a in range(r.start, r.end, PAGE_SIZE)
            ]
            v.anon_kb = v.rss_kb = 4 * len(v.pages)  # what _kept_spans looks at
        return True

    def dropped(self, ranges: list[tuple[int, int]]) -> bool:
        """After MADV_DONTNEED of RANGES: if pagemap shows none of their pages present, take
        them out of the snapshot and return True; else (something faulted one back in)
        invalidate the snapshot and return False."""
        if self._snap is None:
            return False
        if any(pagemap.present_read(self.pid, ranges)):
            self.invalidate()
            return False
        self.forget(ranges)
        return True

    def forget(self, ranges: list[tuple[int, int]]) -> None:
        """Take the pages in RANGES out of the snapshot (they were, or would be, dropped).
        Pages are sorted by address: each range is cut out by bisection, no per-page work."""
        vmas = self.snap.vmas
        starts = [v.start for v in vmas]
        for lo, hi in ranges:
            i = max(bisect.bisect_right(starts, lo) - 1, 0)
            while i < len(vmas) and vmas[i].start < hi:
                pages = vmas[i].pages
                if pages and vmas[i].end > lo:
                    a = bisect.bisect_left(pages, lo, key=_addr)
                    b = bisect.bisect_left(pages, hi, key=_addr)
                    if a < b:
                        del pages[a:b]
                i += 1

    def proven_dead(self, action: Action) -> int:
        """verify.check_drops on ACTION's drops, from this snapshot and the threads' registers
        (the independent second proof); bytes of anonymous memory it drops.  Raises
        UnsafeStep, before anything is done, for a page that is not proven droppable."""
        if not action.drops:
            return 0
        s = self.session
        stacks = {}
        for tid in s.threads:
            try:
                r = s.regs(tid)
            except NeedsStop:
                continue  # no registers, no proof: its pages cannot pass
            stacks[tid] = (r["rsp"], r.get("fs_base", 0))
        return verify.check_drops(action.name, action.drops, self.pid, self.snap.vmas,
                                  stacks, s.read)  # fmt: skip


# (VMAs by their maps line, runs of present pages by merge group (_groups), zero-page counts
# by VMA index where not 0)
Layout = tuple[list[tuple], list[tuple], dict[int, int]]
_BIG_SPAN = 256 * PAGE_SIZE  # an anonymous span this big is checked from its entries (reuse)


@dataclass
class Prior:
    """A stopped-style snapshot taken *before* the stop, with the layout it was built from.

    Why: building the model (one Page object per present page, ELF labels) costs ~100 ms for
    1 GB inside the stop, while reading maps and the present runs again costs a few ms.  The
    model is a function of the maps lines, the thread set and the runs of present pages (with
    their file bit, zero-page runs counted per VMA): when those read inside the stop equal the
    prior ones, the prior model *is* the stopped one.  (Only a thread-stack label could differ:
    a thread running at the first read has no sp; no step uses that label.)

    The runs are compared by merge group, not by VMA (_groups): once the maps are known equal,
    a run cut at every VMA boundary says no more than one cut only where VMAs do not touch,
    and a process the fault-around fence split (libpython: 2,000 one-page VMAs) is then a few
    ranges to scan and a few hundred runs to compare, not thousands (issue 15)."""

    snap: residency.Snapshot
    threads: list[int]
    layout: Layout
    maps_text: bytes | None = None  # /proc/PID/maps the model was built from, when known
    at_stop: verify.Frames | None = None  # entries read by reuse(frames=True)
    # reuse found /proc/PID/maps byte for byte the text the model was built from (its VMAs
    # hold, whatever the pages did): a walk inside the stop need not parse maps again
    same_maps: bool = False

    @functools.cached_property
    def _groups(self) -> list[int]:
        return _groups(self.snap.vmas)

    @classmethod
    def take(cls, pid: int) -> Prior:
        """Snapshot PID (running) and derive its layout from the model itself."""
        threads = sorted(procfs.thread_ids(pid))
        text = procfs.read_maps_text(pid)
        snap = stopped_snapshot(pid)
        if _vma_keys(procfs.parse_maps(text)) != _vma_keys(snap.vmas):
            text = None  # it mapped or unmapped meanwhile: the stop compares parsed lines
        gid = _groups(snap.vmas)
        pieces = []
        zero = {}
        for i, v in enumerate(snap.vmas):
            if v.zero_pages:
                zero[i] = v.zero_pages
            g = gid[i]
            pieces += [(p.addr, p.addr + PAGE_SIZE, p.backing == "anon", g) for p in v.pages]
        prior = cls(snap, threads, (_vma_keys(snap.vmas), _merged_runs(pieces), zero), text)
        prior._groups = gid
        prior._plans  # noqa: B018 -- computed now, not inside the stop
        return prior

    def reuse(self, session: Any, *, frames: bool = False) -> residency.Snapshot | None:
        """The prior model if the stopped process still has its layout, else None.

        FRAMES: read the raw pagemap entries (PFNs: root) of every VMA holding anonymous
        pages, from its first present page to its last, and derive the presence check there
        from them, the rest of the address space from PAGEMAP_SCAN; the entries are kept as
        ``at_stop`` (a verify.Frames): the first pure drops' "before" evidence, not read
        again (~13 ms for 1 GB: one pass over the page tables instead of two)."""
        self.at_stop = None
        self.same_maps = False
        if sorted(session.threads) != self.threads:
            return None
        if self.maps_text is not None and not session.scratch_area:
            # the same text, byte for byte: the same VMAs (no parsing inside the stop)
            if procfs.read_maps_text(self.snap.pid) != self.maps_text:
                return None
            self.same_maps = True
        else:
            maps = procfs.read_maps(self.snap.pid)
            maps = [m for m in maps if not in_scratch(session, m.start, m.end)]
            if _vma_keys(maps) != self.layout[0]:
                return None
        runs, zero = self._walk(frames)
        if runs != self.layout[1] or zero != self.layout[2]:
            self.at_stop = None
            return None
        return self.snap

    def _walk(self, frames: bool) -> tuple[list[tuple], dict[int, int]]:
        """The present runs as they are now, merged by group (_merged_runs), and the zero-page
        counts by VMA: read as _walk_plan decided before the stop (see reuse)."""
        pid, vmas, gid = self.snap.pid, self.snap.vmas, self._groups
        plan = self._plans[frames]
        pieces: list[tuple] = []
        zero: dict[int, int] = {}

        def add(rs: list[pagemap.Present], g: int, plain: bool) -> None:
            for r in rs:
                if r.zero:
                    _count_zero(zero, vmas, plan.starts, r.start, r.end)
                else:
                    pieces.append((r.start, r.end, plain and not r.file, g))

        for gs, ranges, pf in plan.walks:
            for g, rs in zip(gs, pagemap.walk(pid, ranges, pf)[0], strict=True):
                add(rs, g, plan.plain[g])
        if frames:
            entries = pagemap.entries_for(pid, plan.spans)
            zpfn = pagemap.zero_pfn()
            self.at_stop = verify.Frames(pid, plan.spans, entries, zpfn, now=entries)
            for i, (lo, _), data in zip(plan.span_vma, plan.spans, entries, strict=True):
                if i in plan.big:
                    add(pagemap.runs_of_entries(lo, data, zpfn), gid[i], plan.plain[gid[i]])
        return _merged_runs(pieces), zero

    @functools.cached_property
    def _plans(self) -> dict[bool, _WalkPlan]:
        """What reuse reads, by FRAMES, computed from the model before the stop."""
        vmas, gid = self.snap.vmas, self._groups
        return {False: _walk_plan(vmas, gid, False), True: _walk_plan(vmas, gid, True)}


def _groups(vmas: list[residency.Vma]) -> list[int]:
    """Per VMA, its merge group: neighbours that touch and are read alike (neither, or both, a
    PFN map; neither, or both, hugetlb) share one."""
    out: list[int] = []
    g, end, kind = -1, -1, None
    for v in vmas:
        k = (v.pfnmap, v.hugetlb)
        if v.start != end or k != kind:
            g += 1
        out.append(g)
        end, kind = v.end, k
    return out


def _merged_runs(pieces: list[tuple]) -> list[tuple]:
    """PIECES (start, end, anon, group) as (group, start, end, anon) runs in address order,
    each as long as it goes: the one form both sides of Prior.reuse's comparison take."""
    pieces.sort()
    out: list[tuple] = []
    g0 = s0 = e0 = -1
    a0 = False
    for s, e, a, g in pieces:
        if s == e0 and g == g0 and a == a0:
            e0 = e
            continue
        if g0 >= 0:
            out.append((g0, s0, e0, a0))
        g0, s0, e0, a0 = g, s, e, a
    if g0 >= 0:
        out.append((g0, s0, e0, a0))
    return out


def _count_zero(zero: dict[int, int], vmas: list, starts: list[int], lo: int, hi: int) -> None:
    """Add the zero-page run [lo, hi) to ZERO, by VMA (a run may cross VMAs of one group)."""
    i = bisect.bisect_right(starts, lo) - 1
    while lo < hi and 0 <= i < len(vmas):
        end = min(hi, vmas[i].end)
        if end > lo:
            zero[i] = zero.get(i, 0) + (end - lo) // PAGE_SIZE
        lo, i = end, i + 1


@dataclass
class _WalkPlan:
    """How Prior.reuse reads the present pages: WALKS, each (merge group per range, ranges,
    positions of PFN-map ranges) for pagemap.walk; with frames, SPANS (and their VMAs) whose
    entries are read, BIG the VMAs whose span's presence comes from those entries.  PLAIN:
    per group, neither a PFN map nor hugetlb (its pages count as anonymous or file); STARTS:
    the VMAs' starts (zero-page runs are counted by VMA)."""

    walks: list[tuple[list[int], list[tuple[int, int]], list[int]]]
    plain: list[bool]
    starts: list[int]
    spans: list[tuple[int, int]] = field(default_factory=list)
    span_vma: list[int] = field(default_factory=list)
    big: set[int] = field(default_factory=set)


def _walk_plan(vmas: list[residency.Vma], gid: list[int], frames: bool) -> _WalkPlan:
    """Without FRAMES: one walk over every VMA.  With: the anonymous spans (_anon_spans) are
    read as entries; big spans' presence comes from them, and everything else is scanned in
    walks that stop at each big span (one ioctl walk across it would cost as much as the read
    it saves).  Touching ranges of one group are scanned as one."""
    plain = [True] * (gid[-1] + 1 if gid else 0)
    for i, v in enumerate(vmas):
        if v.pfnmap or v.hugetlb:
            plain[gid[i]] = False
    spans = _anon_spans(vmas) if frames else []  # [(vma index, (start, end))]
    big = {i: sp for i, sp in spans if sp[1] - sp[0] >= _BIG_SPAN}
    pieces: list[tuple[int, int, int]] = []  # (vma index, start, end), address order
    cuts = [0]  # where a new walk starts in pieces: after each big span
    for i, v in enumerate(vmas):
        lo, hi = big.get(i, (v.end, v.end))
        if v.start < lo:
            pieces.append((i, v.start, lo))
        if i in big:
            cuts.append(len(pieces))
        if hi < v.end:
            pieces.append((i, hi, v.end))
    walks = []
    for c0, c1 in zip(cuts, [*cuts[1:], len(pieces)], strict=True):
        gs: list[int] = []
        ranges: list[tuple[int, int]] = []
        pf: list[int] = []
        for i, lo, hi in pieces[c0:c1]:
            g = gid[i]
            if ranges and gs[-1] == g and ranges[-1][1] == lo:
                ranges[-1] = (ranges[-1][0], hi)
                continue
            if vmas[i].pfnmap:
                pf.append(len(ranges))
            gs.append(g)
            ranges.append((lo, hi))
        if ranges:
            walks.append((gs, ranges, pf))
    starts = [v.start for v in vmas]
    return _WalkPlan(walks, plain, starts, [sp for _, sp in spans], [i for i, _ in spans],
                     set(big))  # fmt: skip


def _flags_of(snap: residency.Snapshot) -> dict[tuple, frozenset[str]]:
    """VmFlags by VMA key from a snapshot read with smaps (FoldContext.vmflags)."""
    return dict(zip(_vma_keys(snap.vmas), (v.vmflags for v in snap.vmas), strict=True))


def _addr(p: residency.Page) -> int:
    return p.addr


def _vma_keys(vmas: list) -> list[tuple]:
    return [(v.start, v.end, v.perms, v.offset, v.inode, v.path) for v in vmas]


def stopped_snapshot(pid: int, like: residency.Snapshot | None = None) -> residency.Snapshot:
    """The cheap snapshot taken while the target is stopped: maps + page walk, no smaps, no PFNs.
    LIKE: a snapshot whose maps the caller has just found byte for byte unchanged
    (Prior.same_maps): its VMAs' entries are used, not /proc/PID/maps parsed again.

    Why: every millisecond here is a millisecond the target cannot run (the fold's budget is
    5 ms); the page walk alone decides presence and backing, which is all a step needs."""
    entries = None if like is None else [v.entry for v in like.vmas]
    if entries is not None and any(e is None for e in entries):
        entries = None
    return residency.snapshot(pid, smaps=False, pfns=False, counters=False, entries=entries)


def brief(snap: residency.Snapshot) -> dict[str, Any]:
    """What a FoldReport keeps of a snapshot (its ``before``/``after``): RSS, pages, counters."""
    return {
        "rss_kb": snap.rss_kb,
        "present_pages": snap.present_pages,
        "vmas": len(snap.vmas),
        "counters_kb": dict(snap.counters_kb),
        "summary": snap.summary,
    }


@dataclass
class FoldReport:
    pid: int
    kind: str
    dry_run: bool
    before: dict[str, Any]
    after: dict[str, Any] | None
    steps: list[StepReport]
    stopped_us: float
    verified_bytes: int  # anonymous memory proven unchanged across a step (frames or hashes)
    notes: list[str]
    stop_breakdown_us: dict[str, float] = field(default_factory=dict)  # seize/snapshot/steps/cure
    dropped_anon_bytes: int = 0  # anonymous pages dropped, each re-proven dead stack first
    verified_by: dict[str, int] = field(default_factory=dict)  # {"frames"|"hashes": bytes}

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "kind": self.kind,
            "dry_run": self.dry_run,
            "before": self.before,
            "after": self.after,
            "steps": [s.to_json() for s in self.steps],
            "stopped_us": round(self.stopped_us, 1),
            "stop_breakdown_us": self.stop_breakdown_us,
            "verified_bytes": self.verified_bytes,
            "verified_by": self.verified_by,
            "dropped_anon_bytes": self.dropped_anon_bytes,
            "notes": self.notes,
        }


Planner = Callable[[FoldContext], Action | None]


def run_plan(
    pid: int,
    kind: str,
    planners: list[Planner],
    *,
    dry_run: bool = False,
    settle_s: float = 0.05,
    evidence: str = "auto",
) -> FoldReport:
    """Attach, plan and apply each step in order, verify, detach; measure before and after.

    A planner returns None when it has nothing to do and raises UnsafeStep to refuse.  The
    "after" snapshot is taken once the target runs again and is back asleep, because resuming a
    blocked syscall re-executes its `syscall` instruction and faults that code page back in --
    the number a user sees is the one after that.

    EVIDENCE: how a pure drop (Action.drops) proves the other anonymous pages unchanged --
    "auto": their pagemap frames when PFNs are visible (root; a stop that does not grow with
    anonymous memory, see remap.fold.verify), else sha256 of each page; "hash": always hashes
    (also REMAP_VERIFY=hash in the environment).  Every other step is hashed either way.
    """
    if dry_run:
        return _dry_run(pid, kind, planners)
    from ..inject import attach

    before = residency.snapshot(pid)
    by_frames, notes0 = _evidence_kind(evidence)
    prior = Prior.take(pid)  # the model the stop will most likely find: built while it runs
    reports: list[StepReport] = []
    dropped = 0
    verified_by = {"frames": 0, "hashes": 0}
    marks: dict[str, float] = {}
    verify_us = 0.0  # part of "steps": proving the kept pages unchanged
    calls_us = 0.0  # part of "steps": the actions themselves (their injected calls, writes)
    last: verify.Frames | None = None  # the last pure drop's frames, as its check found them
    proven: list[verify.Frames] = []  # every pure drop's frames, checked
    with _no_gc_pauses(), attach(pid) as s:
        marks["seize"] = s.stopped_ns / 1e3
        ctx = FoldContext(pid, s, dry_run, prior=prior, vmflags=_flags_of(before),
                          by_frames=by_frames)  # fmt: skip
        s.known_maps(ctx.snap.vmas)  # read now, while stopped: the plan's first view
        last = ctx.at_stop  # read with the check that the prior still holds: nothing ran since
        holes = rseq_areas(s.threads)
        marks["snapshot"] = s.stopped_ns / 1e3 - marks["seize"]
        ahead: list[tuple[Action, StepReport]] = []  # pure drops planned ahead (_run_ahead)

        def run_ahead() -> None:
            nonlocal last, verify_us, calls_us
            if ahead:
                acts = list(ahead)
                ahead.clear()
                last, us, run_us = _run_ahead(ctx, acts, last)
                proven.append(last)
                verify_us += us
                calls_us += run_us

        for i, planner in enumerate(planners):
            if ahead and not getattr(planner, "plans_ahead", False):
                run_ahead()  # a planner that must see the process as it is now
            action = _plan_step(ctx, planner, reports)
            if action is None:
                continue
            if by_frames and action.drops is not None and getattr(planner, "plans_ahead", False):
                dropped += ctx.proven_dead(action)  # proven on the state it will meet
                ctx.forget(action.drops)  # what the next planner sees: as after this drop
                report = StepReport(action.name, action.text, False, 0, dict(action.detail))
                reports.append(report)  # in plan order; applied once it has run
                ahead.append((action, report))
                continue
            run_ahead()
            # Proven unchanged: every anonymous page but the ones the step changes on purpose;
            # for a drop, exactly the pages it drops (re-proven dead first), whatever it claims.
            skip = action.touches if action.drops is None else _pages_in(action.drops)
            dropped += ctx.proven_dead(action)
            t0 = time.monotonic_ns()
            if by_frames and action.drops is not None:  # a pure drop: its frames suffice
                frames = last = verify.read_frames(pid, _kept_spans(ctx, action.drops), last)
                hashes = {}
            else:  # a step that writes or moves: every page it may not change, hashed
                frames = last = None
                hashes = verify.hash_pages(s.read, _kept(ctx, skip), holes)
            verify_us += (time.monotonic_ns() - t0) / 1e3
            calls0 = ctx.calls
            t0 = time.monotonic_ns()
            detail = action.run(ctx)
            calls_us += (time.monotonic_ns() - t0) / 1e3
            if action.drops is not None and ctx.dropped(action.drops):
                still = hashes  # madvise unmaps nothing: every hashed page is still mapped
            elif action.rewalk is not None and ctx.rewalked(action.rewalk):
                still = hashes  # the same VMAs as before: every hashed page is still mapped
            else:
                ctx.invalidate()
                if i + 1 < len(planners):  # the next step needs the fresh snapshot anyway
                    mapped = [(v.start, v.end) for v in ctx.snap.vmas]
                else:
                    mapped = [(m.start, m.end) for m in procfs.read_maps(pid)]
                still = {a: h for a, h in hashes.items() if any(lo <= a < hi for lo, hi in mapped)}
            t0 = time.monotonic_ns()
            if frames is not None:
                verify.check_frames(frames)
                proven.append(frames)  # its bytes are counted once the target runs again
            n_hashes = verify.check_same(still, s.read, holes=holes)
            verify_us += (time.monotonic_ns() - t0) / 1e3
            verified_by["hashes"] += n_hashes
            reports.append(
                StepReport(action.name, action.text, True, ctx.calls - calls0,
                           {**action.detail, **(detail or {})})
            )  # fmt: skip
        run_ahead()
        notes = notes0 + ctx.notes
        stopped_before_cure = s.stopped_ns
        marks["steps"] = stopped_before_cure / 1e3 - marks["seize"] - marks["snapshot"]
        marks["verify"] = verify_us
        marks["calls"] = calls_us
        t_cure = time.monotonic_ns()
    # until the last thread was let go (the tracer's own clean-up after that is not a stop)
    marks["cure"] = ((s.released_ns or time.monotonic_ns()) - t_cure) / 1e3
    stopped_us = stopped_before_cure / 1e3 + marks["cure"]
    verified_by["frames"] = sum(f.guarded() for f in proven)
    verified = verified_by["frames"] + verified_by["hashes"]
    after = None if dry_run else settled_snapshot(pid, settle_s)
    return FoldReport(
        pid, kind, dry_run, brief(before), after and brief(after), reports,
        stopped_us, verified, notes, {k: round(v, 1) for k, v in marks.items()}, dropped,
        verified_by,
    )  # fmt: skip


def _run_ahead(
    ctx: FoldContext, ahead: list[tuple[Action, StepReport]], last: verify.Frames | None
) -> tuple[verify.Frames, float, float]:
    """Run the actions of AHEAD -- consecutive pure drops, each proven droppable (proven_dead)
    on the state it meets, planned ahead on the snapshot with the earlier ones' drops
    forgotten -- and prove that together they lost nothing else: one reading of the kept
    anonymous pages' frames before the first call, one after the last (remap.fold.verify),
    instead of a pair per step (a reading is ~13 ms for 1 GB).  When every action is a list of
    calls (Action.calls) they run in one trip of the batch stub (inject.batch), in plan order.
    A page lost by any of them is named, and the plan stops there, before any step that
    writes.  Each action's report is marked applied with its calls.
    Returns (the frames as checked, microseconds spent reading and checking them,
    microseconds spent running the actions)."""
    acts = [a for a, _ in ahead]
    drops = sorted(r for a in acts for r in a.drops or ())
    t0 = time.monotonic_ns()
    frames = verify.read_frames(ctx.pid, _kept_spans(ctx, drops), last)
    us = (time.monotonic_ns() - t0) / 1e3
    t0 = time.monotonic_ns()
    if all(a.calls is not None for a in acts):
        ctx.batch([c for a in acts for c in a.calls or ()])
        done = [(len(a.calls or ()), {}) for a in acts]
    else:
        done = []
        for a in acts:
            n0 = ctx.calls
            d = a.run(ctx) or {}
            done.append((ctx.calls - n0, d))
    run_us = (time.monotonic_ns() - t0) / 1e3
    ctx.dropped(drops)  # the snapshot learns what came back, if anything did
    t0 = time.monotonic_ns()
    verify.check_frames(frames)
    us += (time.monotonic_ns() - t0) / 1e3
    for (_, report), (n, d) in zip(ahead, done, strict=True):
        report.applied, report.syscalls = True, n
        report.detail.update(d)
    return frames, us, run_us


def _evidence_kind(evidence: str) -> tuple[bool, list[str]]:
    """(prove pure drops by pagemap frames?, notes for the report), decided before the stop."""
    if evidence not in ("auto", "hash"):
        raise ValueError(f"evidence must be 'auto' or 'hash', not {evidence!r}")
    if evidence == "hash" or os.environ.get("REMAP_VERIFY") == "hash":
        return False, ["verified by sha256 of every kept anonymous page (hashes asked for)"]
    if not pagemap.pfns_visible():
        return False, [
            "PFNs are hidden from this user (pagemap shows them to CAP_SYS_ADMIN only): kept "
            "anonymous pages were verified by sha256, a stop that grows with anonymous memory"
        ]
    # learned now, not by the frames evidence inside the stop: its probe maps a page, faults
    # it and reads our own pagemap (it imported ctypes once, ~3 ms: static musl's first
    # squeeze stopped 9-11 ms instead of 5, issue 15)
    pagemap.zero_pfn()
    return True, []


def _kept_spans(ctx: FoldContext, drops: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted spans whose pagemap entries prove a pure drop lost nothing else: in each VMA
    holding anonymous pages, from its first present page to its last (never a whole sparse
    reservation), minus DROPS and the scratch area.  Pages not present there are ignored by
    verify.check_frames; no per-page work here (a 1 GB heap is one span)."""
    spans = [sp for _, sp in _anon_spans(ctx.snap.vmas)]
    cut = sorted([*drops, *_scratch_span(ctx.session)])
    out = []
    j = 0  # both sorted: the first cut that may still overlap a span
    for lo, hi in spans:
        while j < len(cut) and cut[j][1] <= lo:
            j += 1
        k = j
        while k < len(cut) and cut[k][0] < hi:
            c_lo, c_hi = cut[k]
            if lo < c_lo:
                out.append((lo, c_lo))
            lo = max(lo, c_hi)
            k += 1
        if lo < hi:
            out.append((lo, hi))
    return out


def _anon_spans(vmas: list[residency.Vma]) -> list[tuple[int, tuple[int, int]]]:
    """[(index, (first present page, end of the last))] of the VMAs holding anonymous pages
    (never a whole sparse reservation), in address order; PFN maps, hugetlb and the kernel
    half left out.  anon_kb comes from the page walk (stopped snapshots), kept by rewalked."""
    out = []
    for i, v in enumerate(vmas):
        if v.pages and v.anon_kb and not (v.pfnmap or v.hugetlb) and v.start < 1 << 63:
            out.append((i, (v.pages[0].addr, v.pages[-1].addr + PAGE_SIZE)))
    return out


def _kept(ctx: FoldContext, skip: set[int]) -> list[int]:
    """Sorted addresses of the snapshot's anonymous pages outside SKIP and the scratch area."""
    s = ctx.session
    out: list[int] = []
    for v in ctx.snap.vmas:
        anon = [p.addr for p in v.pages if p.backing == "anon"]
        if anon and in_scratch(s, v.start, v.end):
            anon = [a for a in anon if not in_scratch(s, a)]
        out += [a for a in anon if a not in skip] if skip else anon
    return out


def _plan_step(ctx: FoldContext, planner: Planner, reports: list[StepReport]) -> Action | None:
    """Run one PLANNER; what it skipped (ctx.skipped, e.g. a thread whose stack is not
    proven) goes into REPORTS as skipped steps, with the reason.  Returns its action."""
    n_skipped = len(ctx.skipped)
    try:
        return planner(ctx)
    finally:
        for name, why in ctx.skipped[n_skipped:]:
            reports.append(StepReport(name, f"skipped: {why}", False, 0, {"skipped": why}))


def _pages_in(ranges: list[tuple[int, int]]) -> set[int]:
    return {a for lo, hi in ranges for a in range(lo, hi, PAGE_SIZE)}


def _dry_run(pid: int, kind: str, planners: list[Planner]) -> FoldReport:
    """The plan the real run would make, computed without ever stopping the target.

    Registers come from /proc/PID/task/TID/syscall, memory from /proc/PID/mem (remap.fold.peek);
    each action's effect on what later steps see (a moved stack: new rsp, newly present
    pages; dropped pages) is applied to the context instead of running it, so the dry run
    counts the dead stack the real run finds after the move.  What only a stop can tell (a
    running thread's registers, an answer from an injected call) is reported as decided at
    the stop, or noted."""
    from .peek import Peek

    before = residency.snapshot(pid)
    snap = stopped_snapshot(pid)
    s = Peek(pid, snap)
    ctx = FoldContext(pid, s, True, _snap=snap, vmflags=_flags_of(before))
    reports: list[StepReport] = []
    dropped = 0
    try:
        for planner in planners:
            try:
                action = _plan_step(ctx, planner, reports)
            except NeedsStop as e:
                why = f"decided at the stop: {e}"
                name = getattr(planner, "step_name", planner.__name__.replace("_", "-"))
                reports.append(StepReport(name, why, False, 0,
                                          {"decided_at_stop": str(e)}))  # fmt: skip
                continue
            if action is None:
                continue
            dropped += ctx.proven_dead(action)
            reports.append(StepReport(action.name, action.text, False, 0, action.detail))
            if action.predict is not None:
                action.predict(ctx)
            if action.drops:
                ctx.forget(action.drops)
    finally:
        s.close()
    return FoldReport(pid, kind, True, brief(before), None, reports, 0.0, 0,
                      ctx.notes + s.notes, {}, dropped)  # fmt: skip


@contextlib.contextmanager
def _no_gc_pauses():
    """No cyclic garbage collection while the target is stopped: a full collection in a
    driver holding many objects (an experiment's records) takes milliseconds -- the whole
    stop budget.  Collected once the target runs again."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def in_scratch(s: Any, lo: int, hi: int | None = None) -> bool:
    """Does [lo, hi) (one page at lo by default) overlap the session's scratch area -- the code
    page and the table pages, which may be several VMAs?  Scratch is the fold's own tool,
    never the target's data: it is neither hashed nor unmapped as if it were."""
    return any(lo < e and b < (lo + PAGE_SIZE if hi is None else hi) for b, e in _scratch_span(s))


def _scratch_span(s: Any) -> list[tuple[int, int]]:
    """[(start, end)] of the session's scratch area, or [] when it has none (a dry run's Peek
    has none: it maps nothing)."""
    area = s.scratch_area
    return [(area[0], area[0] + area[1])] if area else []


def settled_snapshot(pid: int, settle_s: float) -> residency.Snapshot:
    """Snapshot once the target is asleep again (state S), within a bounded wait (SETTLE_S + 2 s).

    Raises UnsafeStep when the process has no mappings left."""
    deadline = time.monotonic() + max(settle_s, 0.0) + 2.0
    time.sleep(settle_s)
    while time.monotonic() < deadline:
        if procfs.read_stat(pid).state in ("S", "D", "T", "t", "Z"):
            break
        time.sleep(0.002)
    snap = residency.snapshot(pid)
    if not snap.vmas:
        raise UnsafeStep(f"process {pid} has no mappings left after the fold")
    return snap
