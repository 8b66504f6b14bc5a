"""``remap floor PID``: the page budget of a live process (remap.floor).

It single-steps PID for S seconds (remap.profile: whatever drives the program meanwhile is the
workload; the default covers one tick of a 5 s timer), then prints every class of page it
needs at steady state beside today's page-walk RSS, and the largest objects of each class;
``--json`` lists every page with its class and reason, ``--png`` draws them.  Nothing is
dropped: the target is only stepped, and restored by the profiler.
"""

from __future__ import annotations

import argparse

from .common import add_json, path_arg, pid_arg, print_json


def register(sub: argparse._SubParsersAction) -> None:
    """Add `floor` to the remap parser."""
    from ..floor import DEFAULT_SECONDS

    p = sub.add_parser(
        "floor",
        help="the pages a process needs at steady state, and why (a page budget)",
        description="Profile PID for S seconds (single-step: exact pages executed, read, "
        "written; peak stack depth), then classify every present page: written data, heap, "
        "live stack (after remap's stack move), code and rodata the profile touched, special "
        "pages, and what is droppable (with the reason).  Prints the floor in kB beside "
        "today's RSS (page walk) and the largest objects of each class.  Nothing is dropped.",
    )
    p.add_argument("pid", type=pid_arg, metavar="PID")
    p.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, metavar="S",
                   help=f"how long to profile (0 < S <= 600; default {DEFAULT_SECONDS:g}: one "
                   "tick of a 5 s timer)")  # fmt: skip
    p.add_argument("--no-profile", action="store_true",
                   help="do not step the target: count every present file page as needed "
                   "(for programs the profiler refuses; said in the output)")  # fmt: skip
    p.add_argument("--png", type=path_arg, help="picture of the pages, coloured by class")
    add_json(p)
    p.set_defaults(func=cmd_floor)


def cmd_floor(args: argparse.Namespace) -> int:
    from ..floor import floor, render_png, table

    fl = floor(args.pid, seconds=args.seconds, use_profile=not args.no_profile)
    if args.png:
        render_png(fl, str(args.png))
    if args.json:
        print_json(fl.to_json())
    else:
        print(table(fl), end="")
    return 0
