"""Where each thread's rseq area is: bytes the kernel itself rewrites, so verification skips them.

Why: glibc (2.35+) registers a ``struct rseq`` per thread; on every return to user space after a
preemption or migration the kernel writes the current CPU into it.  A fold that compares page
hashes before and after would blame itself for the kernel's bookkeeping.  The tracer asks the
kernel where each area is (PTRACE_GET_RSEQ_CONFIGURATION, 5.13+) rather than guessing.
"""

from __future__ import annotations

import struct

from .. import kconst as K
from .. import native

CONF_SIZE = 24  # struct ptrace_rseq_configuration: u64 pointer, u32 size, u32 sig, flags, pad


def rseq_areas(tids: list[int]) -> list[tuple[int, int]]:
    """[(address, size)] of the registered rseq areas of TIDS (all in a ptrace stop)."""
    lib, ffi = native.load()
    buf = ffi.new(f"unsigned char[{CONF_SIZE}]")
    out = []
    for tid in tids:
        r = lib.rn_ptrace(
            K.PTRACE_GET_RSEQ_CONFIGURATION, tid, CONF_SIZE, int(ffi.cast("uintptr_t", buf))
        )
        if r < 0:
            continue  # older kernel, or not ours to ask: nothing to skip
        ptr, size = struct.unpack_from("<QI", bytes(ffi.buffer(buf)))
        if ptr and size:
            out.append((ptr, size))
    return out
