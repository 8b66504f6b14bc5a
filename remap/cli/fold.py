"""``remap squeeze PID`` and ``remap fold PID``: shrink a live process, print what changed.

Both stop the process for milliseconds, print the plan with ``--dry-run`` without stopping
or changing anything (remap.fold.peek), and report before/after counters, the steps applied,
how long the target was stopped, the anonymous bytes verified unchanged and the dead-stack
bytes dropped (``--json`` for all of it).
"""

from __future__ import annotations

import argparse

from .common import add_json, console, pid_arg, print_json


def register(sub: argparse._SubParsersAction) -> None:
    """Add `squeeze` and `fold` to the remap parser."""
    p = sub.add_parser(
        "squeeze",
        help="drop clean file pages and dead stack of any process (safe, generic)",
        description="Drop every clean file-backed page and every whole stack page below "
        "rsp-128 of each thread whose stack is proven ([stack] for the main thread, a libc "
        "thread stack with its TCB and guard for the others; any other thread is skipped, with "
        "the reason), with every thread stopped; first move the live stack up against "
        "its argument strings when that frees a page and is safe (skipped, with the reason, "
        "when it is not).  Anonymous data is never dropped.",
    )
    p.add_argument("pid", type=pid_arg, metavar="PID")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan the run would make, without stopping the target or changing anything",
    )
    p.add_argument(
        "--no-move",
        action="store_true",
        help="drops only: never move the live stack (the result then depends on where exec's "
        "random gap put it)",
    )
    p.add_argument(
        "--no-fence",
        action="store_true",
        help="leave file mappings whole: the kernel's fault-around then maps up to 16 pages back "
        "per fault (by default each is split into one-page VMAs with MADV_RANDOM)",
    )
    p.add_argument(
        "--no-stop",
        action="store_true",
        help="do not stop the target: process_madvise(MADV_PAGEOUT) its clean file pages "
        "from outside (evicts them from the page cache; skips pages other processes map)",
    )
    add_json(p)
    p.set_defaults(func=cmd_squeeze)

    p = sub.add_parser(
        "fold",
        help="relocate the live stack into as few pages as it fits in; one page with a hot page",
        description="Move the live stack against its argument strings (closing exec's random "
        "gap), fixing every pointer into it; for a program linked with a hot page, move the "
        "live frames into the page's stack reserve and unmap everything else.",
    )
    p.add_argument("pid", type=pid_arg, metavar="PID")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan the run would make, without stopping the target or changing anything",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--stack-only", action="store_true", help="relocate the stack even if a hot page exists"
    )
    g.add_argument(
        "--single-page", action="store_true", help="require the single-page fold (hot page)"
    )
    add_json(p)
    p.set_defaults(func=cmd_fold)


def cmd_squeeze(args: argparse.Namespace) -> int:
    from .. import fold

    if args.no_stop:
        return _show(fold.pageout(args.pid, dry_run=args.dry_run), args.json)
    rep = fold.squeeze(
        args.pid, dry_run=args.dry_run, move=not args.no_move, fence=not args.no_fence
    )
    return _show(rep, args.json)


def cmd_fold(args: argparse.Namespace) -> int:
    from .. import fold
    from ..inject import preflight

    preflight(args.pid)  # one-line refusals (gone, zombie, kernel thread...) before any /proc read
    single = True if args.single_page else False if args.stack_only else None
    return _show(fold.fold(args.pid, dry_run=args.dry_run, single_page=single), args.json)


def _show(report, as_json: bool) -> int:
    if as_json:
        print_json(report.to_json())
        return 0
    from rich.markup import escape
    from rich.table import Table

    con = console()
    t = Table(
        title=f"remap {report.kind} pid {report.pid}" + (" (dry run)" if report.dry_run else "")
    )
    for col in ("step", "what", "syscalls"):
        t.add_column(col, justify="right" if col == "syscalls" else "left")
    for s in report.steps:
        # escaped: a step's text names mappings like [stack] and [heap], not markup
        t.add_row(s.name, escape(s.text), str(s.syscalls) if s.applied else "-")
    if not report.steps:
        t.add_row("-", "nothing to do", "-")
    con.print(t)
    b, a = report.before, report.after
    con.print(f"before: {b['rss_kb']} kB in {b['present_pages']} pages, {b['vmas']} mappings")
    con.print(f"        {b['summary']}")
    if a:
        con.print(f"after:  {a['rss_kb']} kB in {a['present_pages']} pages, {a['vmas']} mappings")
        con.print(f"        {escape(a['summary'])}")
    if report.dry_run:
        con.print(f"not stopped; would drop {report.dropped_anon_bytes} bytes of proven dead stack")
    else:
        con.print(
            f"stopped {report.stopped_us / 1000:.2f} ms; verified {report.verified_bytes} bytes "
            f"of anonymous memory unchanged; dropped {report.dropped_anon_bytes} bytes of "
            "proven dead stack"
        )
    for n in report.notes:
        con.print(f"note: {escape(n)}")
    return 0
