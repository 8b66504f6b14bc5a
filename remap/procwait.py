"""Waiting for a process to reach a state, read from /proc with a deadline.

Why its own module, below launch and the experiment layer: starting a target
(:meth:`remap.launch.Launched.wait_blocked`) and measuring one (remap.experiment.measure) both
wait until the process sleeps in a syscall; the wait reads only procfs, so it lives under
both instead of launch reaching up into the experiment layer for it.
"""

from __future__ import annotations

import subprocess
import time

from . import procfs
from .errors import ExperimentError, NoSuchProcess

POLL_S = 0.002  # "same syscall twice this far apart" is what blocked means here


def wait_blocked(pid: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Return once PID sleeps in a syscall (state S, same syscall twice 2 ms apart).

    Why both checks: state S alone is also seen for a moment while a process faults or takes
    a lock; the same syscall number, pc and sp on two reads mean it is parked in that call.
    Raises ExperimentError when PROC (if given) exits or TIMEOUT seconds pass first,
    NoSuchProcess when PID is a zombie.
    """
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ExperimentError(f"target {pid} exited with status {proc.returncode}")
        st = procfs.read_stat(pid)
        if st.state == "Z":
            raise NoSuchProcess(pid, f"target {pid} exited (zombie)")
        if st.state == "S":
            sc = procfs.read_syscall(pid)
            cur = None if sc.running else (sc.nr, sc.pc, sc.sp)
            if cur is not None and cur == last:
                return
            last = cur
        else:
            last = None
        time.sleep(POLL_S)
    raise ExperimentError(f"target {pid} did not block in a syscall within {timeout:g} s")
