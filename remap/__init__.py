"""remap: see which pages a process keeps resident, explain every RSS figure, reshape it live.

Interactive use (drgn-style): ``remap.snapshot(pid)`` for a read-only residency model,
``with remap.attach(pid) as s: s.syscall("getpid")`` to act inside a stopped process.
"""

from __future__ import annotations

__version__ = "0.1.0"


def attach(pid: int, **kw):
    """Stop every thread of PID and return a session context manager (see remap.inject)."""
    from .inject import attach as _attach

    return _attach(pid, **kw)


def snapshot(pid: int, **kw):
    """Read PID's residency at one instant (see remap.residency)."""
    from .residency import snapshot as _snapshot

    return _snapshot(pid, **kw)
