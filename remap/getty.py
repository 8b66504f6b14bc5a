"""agetty on a pseudo-terminal, at its login prompt, driven from the pty's master side.

Why a pty: agetty is the program that waits on a terminal for a login name (issue 17 squeezes
it there), but it must never be pointed at a serial line or a real tty of this machine.  A pty
pair made here is all it gets: agetty opens the slave by its name under /dev (``pts/N``), makes
it its controlling terminal, prints the issue text and ``HOST login: `` and sleeps in select
until a name is typed.  Its health is its own behaviour: the prompt appears on the master, and
a login name typed afterwards is accepted -- agetty execs its login program (``-l``), a small
script of ours that prints :data:`LOGIN_MARKER` and the arguments agetty gave it
(``-- NAME``), and exits 0.  Nothing logs anybody in: no /bin/login runs.

Example::

    >>> run = start(sources.build(sources.recipe("agetty")))
    >>> run.prompt
    'vm login: '
    >>> login(run, "alice")
    'REMAP-LOGIN-OK -- alice'
    >>> stop(run)
"""

from __future__ import annotations

import errno
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ExperimentError
from .launch import Launched, launch

LOGIN_MARKER = "REMAP-LOGIN-OK"
PROMPT = "login: "
TERM = "vt100"
PROMPT_TIMEOUT_S = 10.0  # agetty sleeps 1 s before its prompt (line flush); then it is at once
EXIT_TIMEOUT_S = 5.0


@dataclass
class AgettyRun:
    """A started agetty: its process, the pty master we hold, and what it has printed."""

    launched: Launched
    master: int  # our end of the pty; closing it hangs agetty up (-1 once closed)
    tty: str  # the slave, as agetty was given it: "pts/N"
    workdir: Path  # holds the login program
    screen: bytearray = field(default_factory=bytearray, repr=False)
    prompt: str = ""  # the prompt line agetty printed last ("HOST login: ")


def login_program(workdir: Path) -> Path:
    """Write the login program agetty execs: print the marker and its arguments, exit 0."""
    prog = workdir / "login"
    prog.write_text(f'#!/bin/sh\necho "{LOGIN_MARKER} $*"\n')
    prog.chmod(0o755)
    return prog


def start(
    binary: Path, *, aslr: bool = True, vdso: bool = True, timeout: float = PROMPT_TIMEOUT_S
) -> AgettyRun:
    """Start BINARY (agetty) on a new pty and wait until its login prompt is on the master.

    Raises ExperimentError (no prompt within TIMEOUT; agetty is stopped then), and what
    remap.launch.launch raises.
    """
    workdir = Path(tempfile.mkdtemp(prefix="remap-agetty-"))
    master, slave = os.openpty()
    try:
        tty = os.ttyname(slave).removeprefix("/dev/")
        argv = [str(binary), "-L", "--noclear", "-l", str(login_program(workdir)), tty, TERM]
        # its own session: a controlling tty for it; VDSO=False: hidden at exec (remap.fold.vdso)
        launched = launch(argv, aslr=aslr, vdso=vdso, new_session=True)
    except BaseException:
        os.close(master)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    finally:
        os.close(slave)  # agetty opens (and hangs up) the slave itself
    run = AgettyRun(launched, master, tty, workdir)
    try:
        read_until(run, PROMPT, timeout)
    except BaseException:
        stop(run)
        raise
    run.prompt = run.screen.decode(errors="replace").rsplit("\n", 1)[-1]
    return run


def read_until(run: AgettyRun, text: str, timeout: float) -> str:
    """Read the master until TEXT has appeared (bounded by TIMEOUT); return the screen so far.

    EIO from the master means no slave is open at the moment (before agetty opened it, or
    during its vhangup): it is waited out, not taken as the end.  ExperimentError on timeout.
    """
    want = text.encode()
    deadline = time.monotonic() + timeout
    while want not in run.screen:
        left = deadline - time.monotonic()
        if left <= 0:
            seen = run.screen.decode(errors="replace")[-200:]
            raise ExperimentError(
                f"agetty on {run.tty}: no {text!r} within {timeout:g} s: {seen!r}"
            )
        ready, _, _ = select.select([run.master], [], [], min(left, 0.05))
        if not ready:
            continue
        try:
            run.screen += os.read(run.master, 4096)
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            time.sleep(0.01)
    return run.screen.decode(errors="replace")


def login(run: AgettyRun, name: str, timeout: float = PROMPT_TIMEOUT_S) -> str:
    """Type NAME at the prompt; return the login program's marker line once it ran and exited.

    ExperimentError: agetty is not running, the marker does not come, or it exits non-zero.
    """
    if not run.launched.alive():
        code = run.launched.proc.returncode
        raise ExperimentError(f"agetty exited (status {code}) before a login name was typed")
    os.write(run.master, name.encode() + b"\r")
    line = f"{LOGIN_MARKER} -- {name}"
    read_until(run, line, timeout)
    try:
        rc = run.launched.proc.wait(timeout=EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ExperimentError(
            f"the login program did not exit within {EXIT_TIMEOUT_S:g} s"
        ) from None
    if rc != 0:
        raise ExperimentError(f"the login program exited with status {rc}")
    return line


def stop(run: AgettyRun) -> None:
    """Kill agetty if it still runs, reap it, close the master, remove the login program."""
    try:
        run.launched.stop(timeout=EXIT_TIMEOUT_S)
    finally:
        if run.master >= 0:
            os.close(run.master)
            run.master = -1
        shutil.rmtree(run.workdir, ignore_errors=True)
