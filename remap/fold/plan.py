"""Running a fold plan: precondition -> remote syscalls -> verification, one step at a time.

Why this shape (CRIU's seize/infect/cure, rr's scoped sessions): every step first proves its
precondition on a snapshot taken while *every* thread is stopped, and refuses with a reason
(UnsafeStep) before touching anything; after it acts, the runner re-snapshots and checks that
every anonymous page the step did not mean to touch hashes the same.  The session's exit cures
the process whatever happened (registers, signal mask, scratch page, detach).
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import pagemap, procfs, residency
from ..errors import UnsafeStep
from ..kconst import PAGE_SIZE
from . import verify
from .rseq import rseq_areas


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

    @property
    def snap(self) -> residency.Snapshot:
        """The residency as it is now (re-read lazily after a step changed the process)."""
        if self._snap is None:
            self._snap = stopped_snapshot(self.pid)
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
        for v in self._snap.vmas:
            if any(lo < v.end and v.start < hi for lo, hi in ranges):
                v.pages = [p for p in v.pages if not any(lo <= p.addr < hi for lo, hi in ranges)]
        return True


def stopped_snapshot(pid: int) -> residency.Snapshot:
    """The cheap snapshot taken while the target is stopped: maps + page walk, no smaps, no PFNs.

    Why: every millisecond here is a millisecond the target cannot run (the fold's budget is
    5 ms); the page walk alone decides presence and backing, which is all a step needs."""
    return residency.snapshot(pid, smaps=False, pfns=False, counters=False)


def _brief(snap: residency.Snapshot) -> dict[str, Any]:
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
    verified_bytes: int
    notes: list[str]
    stop_breakdown_us: dict[str, float] = field(default_factory=dict)  # seize/snapshot/steps/cure

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
            "notes": self.notes,
        }


Planner = Callable[[FoldContext], Action | None]


def run_plan(
    pid: int, kind: str, planners: list[Planner], *, dry_run: bool = False, settle_s: float = 0.05
) -> FoldReport:
    """Attach, plan and apply each step in order, verify, detach; measure before and after.

    A planner returns None when it has nothing to do and raises UnsafeStep to refuse.  The
    "after" snapshot is taken once the target runs again and is back asleep, because resuming a
    blocked syscall re-executes its `syscall` instruction and faults that code page back in --
    the number a user sees is the one after that.
    """
    from ..inject import attach

    before = residency.snapshot(pid)
    reports: list[StepReport] = []
    verified = 0
    marks: dict[str, float] = {}
    with _no_gc_pauses(), attach(pid) as s:
        marks["seize"] = s.stopped_ns / 1e3
        ctx = FoldContext(pid, s, dry_run)
        s.known_maps(ctx.snap.vmas)  # read now, while stopped: the plan's first view
        holes = rseq_areas(s.threads)
        marks["snapshot"] = s.stopped_ns / 1e3 - marks["seize"]
        for i, planner in enumerate(planners):
            n_skipped = len(ctx.skipped)
            action = planner(ctx)
            for name, why in ctx.skipped[n_skipped:]:
                reports.append(StepReport(name, f"skipped: {why}", False, 0, {"skipped": why}))
            if action is None:
                continue
            if dry_run:
                reports.append(StepReport(action.name, action.text, False, 0, action.detail))
                continue
            keep = {
                p.addr
                for p in ctx.snap.anon_pages()
                if p.addr not in action.touches and not in_scratch(s, p.addr)
            }
            hashes = verify.hash_pages(s.read, keep, holes)
            calls0 = ctx.calls
            detail = action.run(ctx)
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
            verified += verify.check_same(still, s.read, holes=holes)
            reports.append(
                StepReport(action.name, action.text, True, ctx.calls - calls0,
                           {**action.detail, **(detail or {})})
            )  # fmt: skip
        notes = ctx.notes
        stopped_before_cure = s.stopped_ns
        marks["steps"] = stopped_before_cure / 1e3 - marks["seize"] - marks["snapshot"]
        t_cure = time.monotonic_ns()
    # until the last thread was let go (the tracer's own clean-up after that is not a stop)
    marks["cure"] = ((s.released_ns or time.monotonic_ns()) - t_cure) / 1e3
    stopped_us = stopped_before_cure / 1e3 + marks["cure"]
    after = None if dry_run else _settled_snapshot(pid, settle_s)
    return FoldReport(
        pid, kind, dry_run, _brief(before), after and _brief(after), reports,
        stopped_us, verified, notes, {k: round(v, 1) for k, v in marks.items()},
    )  # fmt: skip


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
    base = getattr(s, "_scratch", 0)
    size = getattr(s, "_scratch_len", 0) or PAGE_SIZE
    return bool(base) and lo < base + size and base < (lo + PAGE_SIZE if hi is None else hi)


def _settled_snapshot(pid: int, settle_s: float) -> residency.Snapshot:
    """Snapshot once the target is asleep again (state S), within a bounded wait."""

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
