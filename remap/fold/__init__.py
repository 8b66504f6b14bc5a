"""Fold: reshape a live process so its working set lives in fewer pages.

Three plans, each a list of steps (see steps.py) run by plan.run_plan:
- :func:`squeeze` -- any process: drop clean file pages and dead stack.  Safe, generic.
- :func:`fold` -- squeeze plus relocating the live stack against its argument strings, so the
  live stack sits in as few pages as it fits in, every run (not only when ASLR is kind).
- :func:`fold` with a hot page -- the single-page fold: live frames into the hot page's stack
  reserve, every other mapping unmapped: one resident 4 kB page.

Example::

    >>> import remap.fold
    >>> r = remap.fold.squeeze(pid)
    >>> r.before["rss_kb"], r.after["rss_kb"]
    (24, 12)
"""

from __future__ import annotations

from . import steps
from .hotpage import find_hot_page
from .plan import FoldReport, run_plan


def squeeze(pid: int, *, dry_run: bool = False) -> FoldReport:
    """Drop what is clean and file-backed, and whole stack pages below each thread's rsp-128."""
    return run_plan(
        pid,
        "squeeze",
        [steps.use_own_syscall, steps.drop_dead_stack, steps.drop_clean_file],
        dry_run=dry_run,
    )


def fold(pid: int, *, dry_run: bool = False, single_page: bool | None = None) -> FoldReport:
    """Relocate the live stack (and, for a hot-page program, fold it into that one page).

    single_page=None chooses the single-page fold when the executable has a hot page.
    """
    if single_page is None:
        single_page = find_hot_page(pid) is not None
    if single_page:
        plan = [steps.use_own_syscall, steps.single_page]
        return run_plan(pid, "single-page", plan, dry_run=dry_run)
    plan = [
        steps.use_own_syscall,
        steps.close_stack_gap,
        steps.drop_dead_stack,
        steps.drop_clean_file,
    ]
    return run_plan(pid, "stack", plan, dry_run=dry_run)


__all__ = ["FoldReport", "find_hot_page", "fold", "squeeze"]
