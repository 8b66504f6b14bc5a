"""Where each thread's rseq area is: bytes the kernel itself rewrites, so verification skips them.

Why: glibc (2.35+) registers a ``struct rseq`` per thread; on every return to user space after a
preemption or migration the kernel writes the current CPU into it.  A fold that compares page
hashes before and after would blame itself for the kernel's bookkeeping.  The tracer asks the
kernel where each area is (PTRACE_GET_RSEQ_CONFIGURATION, 5.13+) rather than guessing.
"""

from __future__ import annotations

from ..inject.ptrace import Ptrace


def rseq_areas(tids: list[int]) -> list[tuple[int, int]]:
    """[(address, size)] of the registered rseq areas of TIDS (all in a ptrace stop); a
    thread the kernel cannot answer for (older kernel, not ours to ask) has nothing to skip."""
    if not tids:
        return []
    pt = Ptrace(tids[0])
    return [a for a in map(pt.rseq_configuration, tids) if a is not None]
