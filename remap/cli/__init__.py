"""The ``remap`` command line: one entry point, subcommands registered by their own modules.

Why a registry: each subject (residency, injection, experiments, folding) keeps its commands next
to its code; this module only owns the shared behaviour every command promises -- ``--json``,
one-line errors on stderr, and an exit code per error class (see remap.errors).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import __version__
from ..errors import InternalError, RemapError, UsageError, translate

# Each module defines register(subparsers) and sets func=handler(args) -> int on its parsers.
COMMAND_MODULES = [
    "residency", "inject", "experiment", "fold", "kernels", "profile", "floor", "doctor",
]  # fmt: skip
# Which module registers each subcommand: `remap map ...` then imports and builds only that
# module's parsers (every import is paid by every run; tests/test_cli_basics.py checks the map).
COMMANDS = {
    "map": "residency", "explain": "residency", "watch": "residency",
    "syscall": "inject",
    "run": "experiment", "experiments": "experiment", "launch": "experiment",
    "report": "experiment",
    "squeeze": "fold", "fold": "fold",
    "kernels": "kernels",
    "profile": "profile", "layout": "profile",
    "floor": "floor",
    "doctor": "doctor",
}  # fmt: skip


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
    parser = _Parser(prog="remap", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"remap {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    modules = [COMMANDS[command]] if command in COMMANDS else COMMAND_MODULES
    for name in modules:
        importlib.import_module(f".{name}", __name__).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code (the console script exits with it)."""
    words = sys.argv[1:] if argv is None else argv
    as_json = "--json" in words  # a refusal is then a JSON document on stdout as well
    try:
        parser = build_parser(words[0] if words else None)
        args = parser.parse_args(words)
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return UsageError.exit_code
        rc = args.func(args)
        return int(rc or 0)
    except RemapError as e:
        return _refuse(e, as_json)
    except OSError as e:  # a refusal no lower layer named (EPERM...): the one errno table
        err = translate(e)
        if not isinstance(err, RemapError):
            return _internal(e)
        return _refuse(err, as_json)
    except KeyboardInterrupt:
        print("remap: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # the one place a bug is turned into one line
        return _internal(e)


def _refuse(e: RemapError, as_json: bool = False) -> int:
    """One line on stderr; the exit code of E's class (remap.errors).  With --json, also
    ``{"error": {"kind", "message", "exit_code"}}`` on stdout: a script reading the command's
    JSON gets a document either way, not an empty stdout (issue 18: `fold --single-page --json`
    printed nothing when it refused)."""
    msg = _one_line(str(e))
    print(f"remap: {msg}", file=sys.stderr)
    if as_json:
        from json.encoder import encode_basestring_ascii as enc

        kind = type(e).__name__
        sys.stdout.write(
            f'{{"error":{{"kind":{enc(kind)},"message":{enc(msg)},"exit_code":{e.exit_code}}}}}\n'
        )
    return e.exit_code


def _internal(e: Exception) -> int:
    """A bug: one line (a traceback with REMAP_DEBUG=1), exit 70."""
    if os.environ.get("REMAP_DEBUG"):
        raise e
    print(
        f"remap: internal error: {type(e).__name__}: {_one_line(str(e))} "
        "(set REMAP_DEBUG=1 for a traceback)",
        file=sys.stderr,
    )
    return InternalError.exit_code


def _one_line(msg: str) -> str:
    """Control characters (a newline in a path the user typed...) escaped: one line, always."""
    import re  # only on the way out with an error

    return re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], msg)


if __name__ == "__main__":
    sys.exit(main())
