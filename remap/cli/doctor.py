"""``remap doctor [--json]``: what this machine allows and what each feature needs (remap.doctor).

Always exits 0: it is a report, and a missing item only turns one feature off; each such line
says the exact fix.
"""

from __future__ import annotations

import argparse

from .common import add_json, print_json


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the remap parser."""
    p = sub.add_parser("doctor", help="check what this machine allows; the fix for what is missing")
    add_json(p)
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    from .. import doctor

    found = doctor.checks()
    if args.json:
        print_json({"ok": all(c.ok for c in found), "checks": [c.to_json() for c in found]})
        return 0
    width = max(len(c.name) for c in found)
    for c in found:
        print(f"{'ok ' if c.ok else 'NO '} {c.name:<{width}}  {c.found}")
        print(f"    {'':<{width}}  needed for: {c.needed_for}")
        if c.fix:
            print(f"    {'':<{width}}  fix: {c.fix}")
    missing = sum(not c.ok for c in found)
    print(f"{len(found) - missing}/{len(found)} ok" + (f"; {missing} to fix" if missing else ""))
    return 0
