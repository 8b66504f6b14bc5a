"""The ``remap`` command line: one entry point, subcommands registered by their own modules.

Why a registry: each subject (residency, injection, experiments, folding) keeps its commands next
to its code; this module only owns the shared behaviour every command promises -- ``--json``,
one-line errors on stderr, and an exit code per error class (see remap.errors).
"""

from __future__ import annotations

import gc
import os
import sys

from ..errors import InternalError, RemapError, UsageError, translate

TYPE_CHECKING = False  # argparse is imported only where a parser is built (remap.cli.parser)
if TYPE_CHECKING:
    import argparse

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


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The remap parser (remap.cli.parser.build_parser: with COMMAND, only the parsers of the
    module that registers it)."""
    from .parser import build_parser as build

    return build(command)


class _Args:
    """What argparse's parse_args returns (a namespace: vars() gives its attributes)."""

    def __init__(self, **kw: object):
        self.__dict__.update(kw)


_MAP_FLAGS = ("--json", "--pages")


def fast_map_args(words: list[str]) -> _Args | None:
    """The parsed command line when WORDS is ``map PID`` with --json and/or --pages, in any
    order, each at most once -- exactly the namespace argparse makes of it -- else None.

    Why: ``remap map`` is run on live processes by scripts, and argparse alone (re, gettext,
    locale, the parser) costs more than the whole ``map --json`` of a small process (issue 15).
    Only well-formed lines take this path, so every usage error, abbreviation (``--js``), help
    and other option is still argparse's, worded and exited as before: anything else -- a PID
    that is not plain digits, a repeated flag, --png FILE -- returns None and goes there.
    tests/test_cli_residency.py compares both paths on real processes.
    """
    if not 2 <= len(words) <= 4 or words[0] != "map":
        return None
    rest = words[1:]
    pids = [w for w in rest if w not in _MAP_FLAGS]
    if (
        len(pids) != 1
        or len(set(rest)) != len(rest)
        or not (pids[0].isascii() and pids[0].isdigit())
    ):
        return None
    from .common import pid_arg
    from .residency import cmd_map

    try:
        pid = pid_arg(pids[0])
    except UsageError:  # out of range: argparse says so, in its words
        return None
    return _Args(
        command="map", pid=pid, pages="--pages" in rest, png=None, json="--json" in rest,
        func=cmd_map,
    )  # fmt: skip


def main(argv: list[str] | None = None, *, quick_exit: bool = False) -> int:
    """Run the CLI; return the exit code (the console script exits with it).

    QUICK_EXIT (bin/remap and ``python -m remap`` only: it ends the process): after a ``map``
    line parsed without argparse (:func:`fast_map_args`), stdout and stderr are flushed and the
    process exits at once, without the interpreter's teardown -- freeing every module and
    object is ~3-5 ms of a ~40 ms ``map`` here (issue 15).  Such a command only reads: it
    leaves no file open, no child and no atexit handler to finalise.  Every other command, and
    a flush that fails (a closed pipe: the teardown then reports it as before), returns.  Such
    a ``map`` also runs with the cyclic garbage collector off: its tuples and strings hold no
    cycles, yet the collector walked them 6 times, ~2 ms of a 30 MB process's ``map --json``."""
    words = sys.argv[1:] if argv is None else argv
    fast: list[bool] = []
    rc = _run(words, fast, quick_exit)
    if quick_exit and fast:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:  # whatever it is, the normal way out reports it as before
            return rc
        os._exit(rc)
    return rc


def _run(words: list[str], fast: list[bool], quick_exit: bool = False) -> int:
    """The exit code of one command line; appends True to FAST when it took the fast ``map``
    path (the handler then ran, whatever it returned or raised).  QUICK_EXIT: see main."""
    # a refusal is then a JSON document on stdout as well; argparse also takes --json
    # abbreviated (--js), and no other option starts with --j
    as_json = any(w.startswith("--j") and "--json".startswith(w) for w in words)
    try:
        args = fast_map_args(words)
        if args is None:
            parser = build_parser(words[0] if words else None)
            args = parser.parse_args(words)
            if not getattr(args, "func", None):
                parser.print_help(sys.stderr)
                return UsageError.exit_code
        else:
            fast.append(True)
            if quick_exit:  # the process ends with this command (main)
                gc.disable()
        rc = args.func(args)
        return int(rc or 0)
    except RemapError as e:
        return _refuse(e, as_json)
    except BrokenPipeError:  # the reader went away (| head): not a refusal, not a bug
        _silence_stdout()
        return 0
    except OSError as e:  # a refusal no lower layer named (EPERM...): the one errno table
        err = translate(e)
        if not isinstance(err, RemapError):
            return _internal(e)
        return _refuse(err, as_json)
    except KeyboardInterrupt:
        print("remap: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the one place a bug is turned into one line
        return _internal(e)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's own flush at exit does not fail on
    the closed pipe a second time ("Exception ignored ... BrokenPipeError")."""
    import contextlib  # here: contextlib (functools, types) is ~3 ms of every `map` (issue 15)

    with contextlib.suppress(OSError, ValueError):
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)


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
    sys.exit(main(quick_exit=True))
