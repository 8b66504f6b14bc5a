"""busybox init as PID 1 of a private PID namespace, respawning one child.

Why a namespace: init must be PID 1 (busybox refuses otherwise: "must be run as PID 1"), and
this machine's own PID 1 is not ours to touch.  ``unshare --pid --fork --mount-proc`` gives a
new PID namespace (and mount namespace, private propagation) whose first process execs
busybox init; remap attaches to it from outside by its host PID.  busybox reads its inittab
only from /etc/inittab, so inside that mount namespace (and only there) a folder of ours
holding the inittab is bind-mounted over /etc: the host's /etc is never written to.  The
inittab respawns one child, ``busybox sleep``; init's health is its own job: a killed child is
respawned, seen as a new PID among init's children.

Stopping: SIGKILL to init from the host namespace ends every process of the namespace (the
kernel's zap_pid_ns_processes); unshare then exits and is reaped.

Example::

    >>> run = start(sources.build(sources.recipe("busybox")))
    >>> old = child(run)
    >>> respawn(run)           # kills OLD, waits for a new child
    (4242, 4243)
    >>> stop(run)
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import procfs
from .errors import ExperimentError, NoSuchProcess, UnsupportedTarget
from .launch import Launched, launch

CHILD_ARGS = ("sleep", "86400")
START_TIMEOUT_S = 10.0
RESPAWN_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0
# Run inside the new namespaces by the host's sh: hide /etc behind our folder, become init.
_ENTER = 'mount --bind "$1" /etc && exec "$2" init'


@dataclass
class InitRun:
    """A started init: ``launched.pid`` is init's host PID, ``launched.proc`` the unshare."""

    launched: Launched
    binary: Path
    workdir: Path  # holds etc/inittab


def inittab(binary: Path) -> str:
    """One respawn line: busybox init runs it without a shell (no metacharacters in it)."""
    return f"::respawn:{binary} {' '.join(CHILD_ARGS)}\n"


def start(binary: Path, *, aslr: bool = True, timeout: float = START_TIMEOUT_S) -> InitRun:
    """Start BINARY (busybox) as init of a new PID namespace; return once its child runs.

    Raises UnsupportedTarget (no unshare), ExperimentError (init or its child did not appear
    within TIMEOUT; everything started is stopped then).
    """
    if shutil.which("unshare") is None:
        raise UnsupportedTarget(
            "init in a PID namespace needs unshare (apt-get install util-linux)"
        )
    workdir = Path(tempfile.mkdtemp(prefix="remap-init-"))
    etc = workdir / "etc"
    etc.mkdir()
    (etc / "inittab").write_text(inittab(binary))
    argv = [
        "unshare", "--pid", "--fork", "--mount-proc", "--propagation", "private",
        "--kill-child", "sh", "-c", _ENTER, "sh", str(etc), str(binary),
    ]  # fmt: skip
    try:
        outer = launch(argv, aslr=aslr)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    run = InitRun(outer, binary, workdir)
    try:
        pid = _wait(lambda: _child_running(outer.pid, binary), timeout, "busybox init", outer.proc)
        run.launched = dataclasses.replace(outer, pid=pid, argv=[str(binary), "init"])
        _wait(lambda: child(run), timeout, "init's first child", outer.proc)
    except BaseException:
        stop(run)
        raise
    return run


def child(run: InitRun) -> int | None:
    """The PID of init's live respawned child once it runs ``busybox sleep`` (None: none
    right now; a child forked but not yet exec'd still runs init's image, "busybox init")."""
    c = _child_running(run.launched.pid, run.binary)
    try:
        return c if c is not None and procfs.read_cmdline(c)[1:] == list(CHILD_ARGS) else None
    except NoSuchProcess:
        return None


def respawn(run: InitRun, timeout: float = RESPAWN_TIMEOUT_S) -> tuple[int, int]:
    """Kill init's child and wait for init to start a new one: (old PID, new PID).

    ExperimentError: no child to kill, or none respawned within TIMEOUT.
    """
    old = child(run)
    if old is None:
        raise ExperimentError(f"init {run.launched.pid} has no child to kill")
    os.kill(old, signal.SIGTERM)
    new = _wait(lambda: (c if (c := child(run)) not in (None, old) else None), timeout,
                f"a respawned child (killed {old})", run.launched.proc)  # fmt: skip
    return old, new


def stop(run: InitRun) -> None:
    """SIGKILL init (and so its namespace), reap unshare, remove the inittab folder."""
    try:
        if run.launched.pid != run.launched.proc.pid and run.launched.alive():
            try:
                os.kill(run.launched.pid, signal.SIGKILL)
                run.launched.proc.wait(timeout=STOP_TIMEOUT_S)  # unshare reaps init, then exits
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        run.launched.stop()
    finally:
        shutil.rmtree(run.workdir, ignore_errors=True)


def _child_running(parent: int, binary: Path) -> int | None:
    """A live (not zombie) child of PARENT running BINARY: unshare's once sh has exec'd init,
    init's respawned one (None: none right now)."""
    for c in procfs.read_children(parent):
        try:
            if procfs.read_stat(c).state != "Z" and procfs.read_exe(c) == str(binary):
                return c
        except NoSuchProcess:
            continue
    return None


def _wait(probe, timeout: float, what: str, proc):
    """Poll PROBE until it returns non-None (bounded by TIMEOUT); ExperimentError otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ExperimentError(f"{what}: unshare exited with status {proc.returncode}")
        got = probe()
        if got is not None:
            return got
        time.sleep(0.005)
    raise ExperimentError(f"{what} did not appear within {timeout:g} s")
