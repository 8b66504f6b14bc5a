"""Helpers every test file shares: the kernel's own files read as text, bounded waits, the
``remap`` command line in a subprocess, and the one-line-error promise.

Why their own module: the same status reader, CLI runner and "wait until it blocks" loop had
been copied into six test files, each a little different.  They read /proc directly, on
purpose: a test checks remap against the kernel's own words, not against remap's parsers.
Every wait here has a deadline and fails with an AssertionError naming what it waited for.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# setpriv prefix that runs a command as nobody with no groups (tests of refusals, run as root)
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
INTERNAL = 70  # remap.errors.InternalError.exit_code: a bug, never an acceptable refusal


# --------------------------------------------------------------------------- /proc as text
def _proc(pid: int, what: str, tid: int | None = None) -> str:
    return f"/proc/{pid}/{what}" if tid is None else f"/proc/{pid}/task/{tid}/{what}"


def status(pid: int, tid: int | None = None) -> dict[str, str]:
    """/proc/PID/status (or task/TID/status) as the kernel prints it: {field: text}, each value
    stripped ('0' for TracerPid, a 16-digit hex mask for SigBlk).  Raises OSError when gone."""
    with open(_proc(pid, "status", tid)) as f:
        return {k: v.strip() for k, _, v in (ln.partition(":") for ln in f) if v}


def state(pid: int, tid: int | None = None) -> str:
    """The one-letter state of PID (or thread TID) from stat (R, S, T, t, Z...)."""
    with open(_proc(pid, "stat", tid)) as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def maps_text(pid: int) -> str:
    """/proc/PID/maps, whole."""
    with open(_proc(pid, "maps")) as f:
        return f.read()


def rollup_kb(pid: int) -> dict[str, int]:
    """/proc/PID/smaps_rollup as {field: kB} ('Rss', 'Pss', 'Anonymous'...)."""
    with open(_proc(pid, "smaps_rollup")) as f:
        return {ln.split(":")[0]: int(ln.split()[1]) for ln in f if ln.endswith(" kB\n")}


def syscall_words(pid: int, tid: int | None = None) -> list[str]:
    """/proc/PID/syscall split in words: [nr, args..., sp, pc], ['running'] or ['-1', sp, pc]."""
    with open(_proc(pid, "syscall", tid)) as f:
        return f.read().split()


def children(pid: int) -> list[int]:
    """PIDs of the children of PID's main thread (the kernel's own list, task/PID/children)."""
    with open(_proc(pid, "children", pid)) as f:
        return [int(c) for c in f.read().split()]


# --------------------------------------------------------------------------- bounded waits
def wait_until(
    what: str,
    probe,
    timeout: float = 10.0,
    proc: subprocess.Popen | None = None,
    interval: float = 0.002,
):
    """Call PROBE every INTERVAL seconds until it returns something true (OSError counts as
    "not yet") and return that; AssertionError naming WHAT when TIMEOUT passes or PROC exits
    first."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {proc.returncode}")
        try:
            got = probe()
            if got:
                return got
        except OSError as e:
            last = e
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:g} s (last: {last!r})")


def wait_blocked(pid: int, timeout: float = 5.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until PID sleeps in the kernel (state S): it reached its idle loop or went back to
    it.  AssertionError after TIMEOUT, or at once when PROC (PID's Popen) exits."""
    wait_until(f"process {pid} blocked (state S)", lambda: state(pid) == "S", timeout, proc)


# --------------------------------------------------------------------------- the command line
def remap_cli(
    *args: str, timeout: float = 60, prefix: list[str] | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`python -m remap ARGS...` from the checkout (PREFIX: e.g. setpriv to run it as nobody),
    text output captured; REMAP_DEBUG is removed so that errors stay one line.  ENV entries
    are added to the environment.  subprocess.TimeoutExpired after TIMEOUT seconds."""
    full = {k: v for k, v in os.environ.items() if k != "REMAP_DEBUG"}
    full.update(PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run(
        [*(prefix or []), sys.executable, "-m", "remap", *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=full,
    )  # fmt: skip


def assert_one_line_error(r, code: int | None = None) -> None:
    """R (a CompletedProcess, or anything with returncode and stderr) is remap refusing the
    way it promises: a non-zero exit code (CODE when given; never 70, an internal error),
    exactly one line on stderr starting with 'remap: ', no traceback."""
    assert r.returncode not in (0, INTERNAL), (r.returncode, r.stderr)
    if code is not None:
        assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("remap: "), r.stderr
    assert "Traceback" not in r.stderr, r.stderr
