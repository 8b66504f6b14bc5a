"""Helpers shared by every subcommand: --json output and PID argument parsing."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import UsageError


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


def pid_arg(text: str) -> int:
    """argparse type for a PID: a positive integer, one-line error otherwise."""
    try:
        pid = int(text, 10)
    except ValueError:
        raise UsageError(f"not a PID: {text!r}") from None
    if pid <= 0 or pid > 2**22:
        raise UsageError(f"not a PID: {text!r}")
    return pid


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=None, separators=(",", ":"), default=_default)
    sys.stdout.write("\n")


def _default(o: Any) -> Any:
    if hasattr(o, "to_json"):
        return o.to_json()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if isinstance(o, bytes):
        return o.hex()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
