"""``remap profile PID --for S`` and ``remap layout PROFILE.json``: from measurement to layout.

``profile`` single-steps a live process for S seconds (whatever drives it meanwhile is the
workload) and prints what its steady state executes and touches; ``-o`` saves the profile for
``layout``, which writes the linker script of the fewest-pages hot block (see remap.layout) or
refuses with the byte budget when the block needs more than ``--max-pages``.
"""

from __future__ import annotations

import argparse
import os

from ..errors import UsageError
from .common import add_json, console, path_arg, pid_arg, print_json


def register(sub: argparse._SubParsersAction) -> None:
    """Add `profile` and `layout` to the remap parser."""
    p = sub.add_parser(
        "profile",
        help="single-step a live process: functions executed, data touched, peak stack depth",
        description="Seize PID (no SIGSTOP), single-step it for S seconds while whatever "
        "drives it runs, and report the functions it executed and the objects it read or "
        "wrote (symbols from the ELF on disk, operands decoded with capstone), its peak live "
        "stack depth below the steady-state loop, signals whose handler could run, and the "
        "profiler's own overhead.  It ends early once the target waits in a syscall after S.",
    )
    p.add_argument("pid", type=pid_arg, metavar="PID")
    p.add_argument(
        "--for", "--seconds", dest="seconds", type=float, required=True, metavar="S",
        help="seconds to single-step (0 < S <= 600): longer than the program's idle timers "
        "(EnergyMech's 5 s) to have them in the profile",
    )  # fmt: skip
    p.add_argument("-o", "--output", type=path_arg, help="save the profile (JSON) for remap layout")
    p.add_argument("--png", type=path_arg, help="picture of the hot path across pages")
    add_json(p)
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser(
        "layout",
        help="write the linker script that packs a profile's hot path into the fewest pages",
        description="From a saved profile and the program's link inputs (objects built with "
        "-ffunction-sections -fdata-sections, static archives such as musl's libc.a), write a "
        "deterministic, commented linker script: hot code, the rodata it touches, all writable "
        "data and a stack reserve in the fewest page-aligned 4 kB pages (__hot_start/__hot_end, "
        "__hot_stack_lo/__hot_stack_hi), saying what lands in each page.  Refuses, with the "
        "byte budget and the largest items, when it needs more than --max-pages.",
    )
    p.add_argument("profile", type=path_arg, metavar="PROFILE.json")
    p.add_argument("--inputs", nargs="+", type=path_arg, metavar="FILE",
                   help="objects and archives of the link (add musl's libc.a: --musl)")  # fmt: skip
    p.add_argument("--estimate", action="store_true",
                   help="no link inputs at hand: print the executed-only budget from the "
                   "profile alone (no script is written)")  # fmt: skip
    p.add_argument("--musl", action="store_true", help="append musl's libc.a to the inputs")
    p.add_argument("-o", "--output", type=path_arg, metavar="SCRIPT.ld")
    p.add_argument("--margin", type=int, default=None,
                   help="stack bytes beyond the measured peak depth (default: red zone + the "
                   "fold's margin + argv + alignment)")  # fmt: skip
    p.add_argument("--max-pages", type=int, default=None, metavar="K",
                   help="refuse a hot block of more than K pages (default: no limit)")  # fmt: skip
    p.add_argument(
        "--no-closure",
        action="store_true",
        help="only executed functions (not those hot code can call but did not)",
    )
    add_json(p)
    p.set_defaults(func=cmd_layout)


def cmd_profile(args: argparse.Namespace) -> int:
    from ..profile import profile, render_png

    prof = profile(args.pid, seconds=args.seconds)
    if args.output:
        prof.save(args.output)
    if args.png:
        render_png(prof, args.png)
    if args.json:
        d = prof.to_json()
        d.pop("trace")
        print_json(d)
        return 0
    _print_profile(prof)
    return 0


def _print_profile(prof) -> None:
    from rich.table import Table

    con = console()
    t = Table(title=f"remap profile pid {prof.pid}: {os.path.basename(prof.exe)}")
    for col in ("function", "address", "size", "steps", "section"):
        t.add_column(col, justify="right" if col in ("size", "steps") else "left")
    for f in sorted(prof.functions, key=lambda f: -f.steps):
        t.add_row(f.name, f"{f.addr:#x}", str(f.size), str(f.steps), f.section)
    con.print(t)
    t = Table(title="data touched")
    for col in ("object", "address", "size", "reads", "writes", "section", "by"):
        t.add_column(col, justify="right" if col in ("size", "reads", "writes") else "left")
    for d in prof.data:
        t.add_row(d.name, f"{d.addr:#x}", str(d.size), str(d.reads), str(d.writes), d.section,
                  ", ".join(d.by))  # fmt: skip
    con.print(t)
    s, o = prof.stack, prof.overhead
    con.print(f"stack: root {s.root}, peak depth {s.peak_depth} B below its frame")
    con.print(f"signals that could run a handler (SigCgt): {s_or_none(prof.signals.caught)}")
    if prof.outside:
        con.print(f"steps outside the executable: {prof.outside}")
    con.print(
        f"overhead: {o.steps} steps in {o.wall_s} s ({o.us_per_step} us/step, tracer CPU "
        f"{o.tracer_cpu_s} s); ended: {prof.reason_stopped}; results not checked (no workload: "
        "use remap.profile.profile(pid, workload=..., baseline=...))"
    )


def s_or_none(xs: list[int]) -> str:
    return ", ".join(map(str, xs)) or "none"


def cmd_layout(args: argparse.Namespace) -> int:
    from ..layout import DEFAULT_MARGIN, musl_libc, plan_layout
    from ..profile import Profile

    prof = Profile.load(args.profile)
    margin = DEFAULT_MARGIN if args.margin is None else args.margin
    if not 0 <= margin <= 16384:
        raise UsageError(f"--margin must be 0..16384 bytes (got {margin})")
    if args.estimate:
        return _print_estimate(prof, margin, args.json)
    if not args.inputs or args.output is None:
        raise UsageError("layout needs --inputs and -o SCRIPT.ld (or --estimate)")
    inputs = list(args.inputs) + ([musl_libc()] if args.musl else [])
    lay = plan_layout(
        prof, inputs, margin=margin, closure=not args.no_closure, max_pages=args.max_pages
    )
    args.output.write_text(lay.script)
    if args.json:
        print_json({**lay.to_json(), "script": str(args.output)})
        return 0
    import json

    b = lay.budget
    print(
        f"wrote {args.output}: {len(lay.code)} hot code sections, {len(lay.rodata)} rodata, "
        f"{b['pages']} page(s)"
    )
    keys = ("code", "rodata", "data", "stack_min", "total", "pages", "block", "outside")
    print("budget: " + json.dumps({k: b[k] for k in keys}))
    for p in lay.pages:
        parts = [f"{k} {', '.join(p[k])}" for k in ("code", "rodata", "data") if p[k]]
        parts += [f"stack {p['stack']} B"] if p["stack"] else []
        print(f"  page {p['page']}: " + ("; ".join(parts) or "(empty)"))
    return 0


def _print_estimate(prof, margin: int, as_json: bool) -> int:
    import json

    from ..layout import estimate_budget

    b = estimate_budget(prof, margin=margin)
    if as_json:
        print_json({"budget": b})
        return 0
    print(
        f"estimate from the profile alone ({os.path.basename(prof.exe)}): code {b['code']} B + "
        f"rodata {b['rodata']} B + writable data {b['data']} B + stack {b['stack_min']} B = "
        f"{b['total']} B: {b['pages']} page(s); outside the block {b['outside']} B"
    )
    print("budget: " + json.dumps(b))
    return 0
