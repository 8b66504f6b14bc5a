"""The argparse parser of the ``remap`` command, built on demand (see remap.cli).

Why its own module: argparse (with the re, gettext and locale it loads) and building the parsers
cost more than all of ``remap map --json``'s own work on a small process (issue 15); the common
``map`` command lines are parsed without it (remap.cli's fast path), every other one here.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import __version__
from ..errors import UsageError
from . import COMMAND_MODULES, COMMANDS


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2 (not a usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")

    def _get_formatter(self) -> argparse.HelpFormatter:
        # argparse builds a formatter per add_argument; left to itself each one imports shutil
        # (and with it bz2, lzma, fnmatch) for the terminal width: ~3 ms of every command
        return self.formatter_class(prog=self.prog, width=_columns() - 2)


def _columns() -> int:
    """The terminal's width as shutil.get_terminal_size reads it ($COLUMNS, stdout, else 80)."""
    try:
        n = int(os.environ["COLUMNS"])
        if n > 0:
            return n
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The remap parser; with COMMAND (a known subcommand), only the parsers of the module that
    registers it -- enough to parse a command line that starts with it."""
    parser = _Parser(prog="remap", description=sys.modules[__package__].__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"remap {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    modules = [COMMANDS[command]] if command in COMMANDS else COMMAND_MODULES
    for name in modules:
        importlib.import_module(f".{name}", __package__).register(sub)
    return parser
