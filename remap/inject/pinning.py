"""CPU pinning while injecting: a ptrace round trip within one CPU is several
times cheaper than one between two, and an unpinned thread woken from its stop lands on
either (bench/inject.py measures both).

The tracer follows the thread it injects into; each injecting thread is kept on the CPU it
last ran on until the cure -- or until the guardian puts its affinity back, if the driver dies
first (rn_pin_thread keeps it in the thread's guardian slot).  Pinned to the CPU it last ran
on, the kernel has no reason to move it, and its rseq area (whose cpu_id the kernel rewrites
on a migration) is a hole in the fold's hashes anyway.
"""

from __future__ import annotations

from typing import Any

from .preflight import last_cpu
from .threads import Thread

_MASK_BYTES = 128  # cpu_set_t as sched_setaffinity takes it (1024 CPUs)


class CpuPin:
    """The tracer's CPU (cpu, -1: not pinned) and the affinity it had before the session."""

    def __init__(self, pid: int, lib: Any, ffi: Any):
        self.pid = pid
        self._lib, self._ffi = lib, ffi
        self.cpu = -1
        self._own: bytes | None = None

    def early(self) -> None:
        """Before the seize: move the tracer to the CPU the main thread last ran on.

        Why before: the move itself (a migration of the tracer) takes ~300 us here; done while
        the target still runs, it is not part of the stop.  A thread that wakes into its ptrace
        stop on another CPU is followed later (pin)."""
        cpu = last_cpu(self.pid, self.pid)
        if cpu is not None:
            self.move_to(cpu)

    def pin(self, t: Thread) -> None:
        """Run the tracer on the CPU t last ran on, and keep t there while the session lasts."""
        cpu = last_cpu(self.pid, t.tid)
        if cpu is None:
            return
        if cpu != self.cpu:  # not there already (attach pins the tracer before the seize)
            self.move_to(cpu)
        t.cpu = self.cpu
        if t.cpu == cpu and t.call is not None:
            t.pinned = self._lib.rn_pin_thread(t.call.slot, t.tid, cpu) == 0

    def follow(self, t: Thread) -> None:
        """Move the tracer to the CPU thread t is kept on (another thread injected before)."""
        if t.pinned and t.cpu >= 0:
            self.move_to(t.cpu)
        else:
            self.pin(t)

    def unpin(self, t: Thread) -> None:
        """Give t its own affinity back."""
        if t.pinned and t.call is not None:
            self._lib.rn_unpin_thread(t.call.slot)
        t.pinned = False

    def move_to(self, cpu: int) -> None:
        lib, ffi = self._lib, self._ffi
        one = bytearray(_MASK_BYTES)
        one[cpu // 8] |= 1 << (cpu % 8)
        if self._own is None:
            own = ffi.new("unsigned char[]", _MASK_BYTES)
            if lib.rn_getaffinity(0, _MASK_BYTES, own) < 0:
                return
            self._own = bytes(ffi.buffer(own))
        if lib.rn_setaffinity(0, _MASK_BYTES, bytes(one)) < 0:
            return
        self.cpu = cpu

    def restore(self) -> None:
        """The tracer's own affinity, as before the session."""
        if self._own is not None:
            self._lib.rn_setaffinity(0, len(self._own), self._own)
