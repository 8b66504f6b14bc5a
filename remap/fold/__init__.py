"""Fold: reshape a live process so its working set lives in fewer pages.

Three plans, each a list of steps (steps.py: the drops and the fence; stackmove.py: exec's
gap closed; singlepage.py: the hot-block fold) run by plan.run_plan:
- :func:`squeeze` -- any process: drop clean file pages and dead stack, after closing the stack
  gap where that is safe (skipped, with the reason, where it is not).  Generic.
- :func:`fold` -- the same with the stack relocation required: it refuses instead of skipping,
  so the live stack sits in as few pages as it fits in, every run (not only when ASLR is kind).
- :func:`fold` with a hot page -- the single-page fold: live frames into the hot page's stack
  reserve, every other mapping unmapped: one resident 4 kB page.

Example::

    >>> import remap.fold
    >>> r = remap.fold.squeeze(pid)
    >>> r.before["rss_kb"], r.after["rss_kb"]
    (24, 12)
    >>> r.stopped_us < 5000, [s.name for s in r.steps]
    (True, ['drop-clean-file'])
"""

from __future__ import annotations

from .. import procfs, unwind
from . import singlepage, stackmove, steps
from .hotpage import find_hot_page
from .plan import FoldReport, run_plan


def squeeze(
    pid: int, *, dry_run: bool = False, move: bool = True, fence: bool = True
) -> FoldReport:
    """Drop what is clean and file-backed, and whole stack pages below rsp-128 of each thread
    whose stack is proven (steps.proven_stack; the others are skipped with the reason); first
    close exec's stack gap when that frees a page and is safe.  DRY_RUN: the same plan,
    computed without stopping the target.

    Why the move belongs here: drops alone leave the live stack wherever exec's random gap put
    it -- one, two or three pages (frames straddling a boundary, strings a page away): the seed
    author's "12 kB reproducible, 8 kB unreproducible", and 16 kB in one run of five on the
    demo bot.  Moving the frames and tables up against the strings (stackmove.close_stack_gap)
    loses nothing: it is a copy, every pointer fixed, verified.  Where it is not safe (threads,
    a kernel-held pointer, swap) or costs the stop too much (more than 4 MB of writable memory
    to scan for pointers: stackmove.SQUEEZE_MOVE_SCAN_MAX_PAGES) it is skipped with the reason, and
    the squeeze goes on.  MOVE=False: drops only, nothing in the process is moved.
    FENCE=False: file mappings are not split into one-page VMAs (steps.fence_fault_around),
    so the kernel's fault-around brings up to 16 pages back per fault, as without remap.
    """
    plan = [steps.use_own_syscall]
    if move:
        plan.append(steps.optional(stackmove.squeeze_stack_gap, "relocate-stack"))
    if fence:  # first: the drops' own calls and the cure refault the chain's pages, one each
        plan.append(steps.fence_fault_around)
    plan += [steps.drop_dead_stack, steps.drop_clean_file]
    return run_plan(pid, "squeeze", plan, dry_run=dry_run)


def pageout(pid: int, *, dry_run: bool = False) -> FoldReport:
    """Squeeze without stopping the target: process_madvise(MADV_PAGEOUT) on its clean file
    pages, from outside (5.10+).

    Why offer it: no ptrace, no stop, works on a process another tracer holds.  Why it is not
    the default: PAGEOUT reclaims the page cache page for the whole system (and skips a page
    another process maps too), so on a shared library it may do nothing, and on a private binary
    it costs every user of that file a re-read."""
    import time

    from .. import residency
    from ..inject import process_madvise
    from ..kconst import MADV_PAGEOUT
    from .plan import StepReport, brief, settled_snapshot
    from .ranges import coalesce

    before = residency.snapshot(pid)
    pages = [p.addr for v in before.vmas if v.is_file for p in v.pages if p.clean_file]
    ranges = coalesce(pages)
    text = f"process_madvise(PAGEOUT) {len(pages)} clean file pages in {len(ranges)} ranges"
    step = StepReport("pageout-clean-file", text, False, 0, {"pages": len(pages)})
    if not dry_run:
        t0 = time.monotonic_ns()
        for a, e in ranges:
            process_madvise(pid, a, e - a, MADV_PAGEOUT)
        step.applied, step.syscalls = True, len(ranges)
        step.detail["elapsed_us"] = round((time.monotonic_ns() - t0) / 1e3, 1)
    after = None if dry_run else settled_snapshot(pid, 0.0)
    notes = ["not stopped: PAGEOUT reclaims page-cache pages mapped by this process only"]
    return FoldReport(pid, "pageout", dry_run, brief(before), after and brief(after),
                      [step] if pages else [], 0.0, 0, notes)  # fmt: skip


def fold(pid: int, *, dry_run: bool = False, single_page: bool | None = None) -> FoldReport:
    """Relocate the live stack (and, for a hot-page program, fold it into that one page).

    single_page=None chooses the single-page fold when the executable has a hot page.  An open
    block (remap.layout without the call closure) is fenced after the fold: its kept cold code
    split into one-page VMAs, so that a cold path maps back only the pages it touches.
    """
    hot = find_hot_page(pid)  # parsed now, not inside the stop (the step asks again, cached)
    if single_page is None:
        single_page = hot is not None
    if single_page:
        if hot is not None:  # the frame walk's tables, read now too
            unwind.prepare(procfs.read_exe(pid))
        plan = [steps.use_own_syscall, singlepage.single_page]
        if hot is not None and hot.cold_reachable:
            # an open block keeps its cold code mapped: a path no profile saw faults it back,
            # and without a fence fault-around maps 16 pages for each such fault
            plan.append(steps.optional(steps.fence_fault_around, "fence-fault-around"))
        return run_plan(pid, "single-page", plan, dry_run=dry_run)
    plan = [
        steps.use_own_syscall,
        stackmove.close_stack_gap,
        steps.drop_dead_stack,
        steps.drop_clean_file,
    ]
    return run_plan(pid, "stack", plan, dry_run=dry_run)


__all__ = ["FoldReport", "find_hot_page", "fold", "pageout", "squeeze"]
