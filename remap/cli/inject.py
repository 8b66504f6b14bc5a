"""CLI commands for the inject side of remap (see remap.cli for the shared contract).

``remap syscall PID NAME ARGS...`` runs one syscall inside a live process and prints its result
(or the errno name); handy to poke a process from the shell::

    $ remap syscall 1234 getpid
    1234
    $ remap syscall 1234 close 99 --json
    {"pid":1234,"syscall":"close","nr":3,"args":[99],"result":-9,"errno":"EBADF",...}
"""

from __future__ import annotations

import argparse
import errno
import os

from ..errors import EXIT_FAILED, UsageError
from .common import add_json, pid_arg, print_json


def int_arg(text: str) -> int:
    """An integer argument: decimal, 0x hex, 0o/0b, or negative; it must fit a 64-bit register
    (-2**63 .. 2**64-1), else a one-line usage error (never silently truncated)."""
    try:
        v = int(text, 0)
    except ValueError:
        raise UsageError(f"not an integer: {text!r}") from None
    if not -(1 << 63) <= v < 1 << 64:
        raise UsageError(f"does not fit in 64 bits: {text!r}")
    return v


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the remap parser."""
    p = sub.add_parser(
        "syscall",
        help="run one syscall inside a live process (stopped, then restored and detached)",
        description="Run one syscall inside PID through ptrace and print its result.",
    )
    p.add_argument("pid", type=pid_arg, metavar="PID")
    p.add_argument("name", metavar="NAME", help="syscall name (getpid, madvise...) or number")
    p.add_argument("args", nargs="*", type=int_arg, metavar="ARG", help="integers (0x.. ok)")
    p.add_argument(
        "--suspend-seccomp",
        action="store_true",
        help="inject into a seccomp-filtered process by suspending its filter (root)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="give up on a call that has not returned after S seconds, putting the target back "
        "(default 10; Ctrl-C and SIGTERM abort it the same way)",
    )
    add_json(p)
    p.set_defaults(func=cmd_syscall)


def cmd_syscall(args: argparse.Namespace) -> int:
    from ..inject import TIMEOUT_S, attach, refuse_unsafe, syscall_name, syscall_number

    name = args.name
    nr = syscall_number(int_arg(name) if name[:1].isdigit() else name)
    if len(args.args) > 6:
        raise UsageError("a syscall takes at most 6 arguments")
    err = 0
    result = 0
    timeout = TIMEOUT_S if args.timeout is None else args.timeout
    if not 0 < timeout < 1e6:
        raise UsageError(f"--timeout must be a positive number of seconds, not {args.timeout}")
    refuse_unsafe(nr)  # before the target is stopped at all
    with attach(args.pid, suspend_seccomp=args.suspend_seccomp, timeout=timeout) as s:
        try:
            result = s.syscall(nr, *args.args)
        except OSError as e:
            err = e.errno or 0
            result = -err
        stopped_us = s.stopped_ns / 1000
    ename = errno.errorcode.get(err, str(err)) if err else None
    if args.json:
        print_json(
            {
                "pid": args.pid,
                "syscall": syscall_name(nr),
                "nr": nr,
                "args": args.args,
                "result": result,
                "errno": ename,
                "stopped_us": round(stopped_us, 1),
            }
        )
    elif err:
        print(f"-1 {ename} ({os.strerror(err)})")
    else:
        print(hex(result) if result > 0xFFFF and syscall_name(nr) in _ADDR_RESULTS else result)
    return EXIT_FAILED if err else 0


_ADDR_RESULTS = {"mmap", "mremap", "brk"}
