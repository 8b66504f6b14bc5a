"""Wall time of a child process, not rounded up by the wait.

Why: ``subprocess.run(..., timeout=T)`` waits by polling, sleeping up to 50 ms between polls
(Popen._wait), so each time it measures is rounded up towards the next ~50 ms step:
output_speed printed 64, 116, 165 and 216 ms, and stop_time's ``pmap -XX`` yardstick 64 and
114 ms, for commands that take 20-60 ms.  Here the wait blocks in waitpid and a timer kills the
child at the deadline instead, so the bound stays and the clock is exact.
"""

from __future__ import annotations

import subprocess
import threading
import time


def run_timed(argv: list[str], deadline_s: float, **popen_kw) -> tuple[float, int, bytes]:
    """(seconds, exit status, stderr) of ARGV run to completion; killed after DEADLINE_S
    (status then negative).  stdout goes to /dev/null unless POPEN_KW says otherwise."""
    popen_kw.setdefault("stdout", subprocess.DEVNULL)
    popen_kw.setdefault("stderr", subprocess.PIPE)
    t0 = time.perf_counter()
    with subprocess.Popen(argv, **popen_kw) as p:
        timer = threading.Timer(deadline_s, p.kill)
        timer.start()
        try:
            err = p.stderr.read() if p.stderr is not None else b""
            rc = p.wait()  # no timeout: blocks in waitpid, returns the moment the child exits
        finally:
            timer.cancel()
    return time.perf_counter() - t0, rc, err
