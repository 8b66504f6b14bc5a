"""SIGINT/SIGTERM to the driver while a session is open: never lost, never half-way.

Why: a Ctrl-C between the kernel mapping scratch and Python recording it would leave the two
disagreeing.  While a session operation (a function wrapped in :func:`atomic`) runs, the
signal is only recorded; it is raised as KeyboardInterrupt when the outermost operation
returns.  Outside one it is raised at once, so the cure (Session.close) runs.
"""

from __future__ import annotations

import functools
import signal
import threading
from typing import Any


class _Interrupts:
    """SIGINT/SIGTERM to the driver while a session is open: raised as KeyboardInterrupt, but
    never in the middle of a session operation (e.g. between the kernel mapping scratch and
    Python recording it): inside one they are held and raised when it returns."""

    busy = 0
    pending = 0


def atomic(fn: Any) -> Any:
    """FN as one session operation: interrupts that arrive during it are raised after it."""

    @functools.wraps(fn)
    def wrapper(*a: Any, **kw: Any) -> Any:
        _Interrupts.busy += 1
        try:
            return fn(*a, **kw)
        finally:
            _Interrupts.busy -= 1
            if _Interrupts.pending and not _Interrupts.busy:
                sig, _Interrupts.pending = _Interrupts.pending, 0
                raise KeyboardInterrupt(signal.Signals(sig).name)

    return wrapper


def interrupt_pending() -> bool:
    """Has SIGINT/SIGTERM reached the driver during this session operation?  Called right
    after a C wait returned -EINTR: entering this function lets the interpreter run the Python
    handler first (_on_interrupt), which records the signal while an operation is busy."""
    return bool(_Interrupts.pending)


def _on_interrupt(signum: int, frame: Any) -> None:
    if _Interrupts.busy:
        _Interrupts.pending = signum
        return
    raise KeyboardInterrupt(signal.Signals(signum).name)


def trap_interrupts() -> dict[int, Any]:
    """While a session is open, SIGINT and SIGTERM (if nobody else handles them) become a
    KeyboardInterrupt at the next safe point, so the cure runs; returns what to put back."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    old = {}
    for sig, default in (
        (signal.SIGINT, signal.default_int_handler),
        (signal.SIGTERM, signal.SIG_DFL),
    ):
        h = signal.getsignal(sig)
        if h is default or (sig == signal.SIGINT and h is signal.SIG_DFL):
            old[sig] = h
            signal.signal(sig, _on_interrupt)
    return old
