"""Helpers shared by every subcommand: --json output and PID and path argument parsing.

Imports are kept light (no json, pathlib, argparse at import time): `remap map` loads this
module without building a parser (remap.cli.fast_map_args).
"""

from __future__ import annotations

import sys

from ..errors import UsageError

TYPE_CHECKING = False  # argparse for annotations only: `remap map` runs without it (remap.cli)
if TYPE_CHECKING:
    import argparse


def console(**kw):
    """A rich Console for stdout on which a closed pipe raises BrokenPipeError.

    Why: rich's own on_broken_pipe exits 1, so `remap explain PID | head` failed where
    `remap map PID | head` ends with 0; remap.cli._run treats a reader that went away as
    success, for every command alike."""
    return _quiet_console_class()(**kw)


def _quiet_console_class():
    from rich.console import Console

    global _QUIET_CONSOLE
    if _QUIET_CONSOLE is None:

        class PipeConsole(Console):
            def on_broken_pipe(self) -> None:
                self.quiet = True  # nothing more is written; the caller's handler says 0
                raise BrokenPipeError("stdout closed by its reader")

        _QUIET_CONSOLE = PipeConsole
    return _QUIET_CONSOLE


_QUIET_CONSOLE = None


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


def pid_arg(text: str) -> int:
    """argparse type for a PID: plain ASCII decimal digits, 1..2**22; a one-line usage error
    otherwise.

    Why not int(): it also takes ' 1', '+5', '1_0' and other scripts' digits ('٣' is 3), so a
    typo would act on another process."""
    if not (text.isascii() and text.isdigit()):
        raise UsageError(f"not a PID (decimal digits only): {text!r}")
    pid = int(text, 10)
    if pid <= 0 or pid > 2**22:
        raise UsageError(f"not a PID: {text!r}")
    return pid


def int_at_least(minimum: int):
    """argparse type: an integer >= MINIMUM (--count, --repeat, --env-size...), a one-line
    usage error otherwise."""
    what = {0: "a non-negative integer", 1: "a positive integer"}.get(
        minimum, f"an integer >= {minimum}"
    )

    def parse(text: str) -> int:
        try:
            v = int(text, 10)
        except ValueError:
            raise UsageError(f"not {what}: {text!r}") from None
        if v < minimum:
            raise UsageError(f"not {what}: {text!r}")
        return v

    return parse


def path_arg(text: str):
    """argparse type for a file or directory path (a pathlib.Path, imported when used)."""
    from pathlib import Path

    return Path(text)


def print_json(obj: object) -> None:
    import json

    json.dump(obj, sys.stdout, indent=None, separators=(",", ":"), default=_default)
    sys.stdout.write("\n")


def _default(o: object) -> object:
    if hasattr(o, "to_json"):
        return o.to_json()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if isinstance(o, bytes):
        return o.hex()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
