"""Raw access to a stopped target's memory: process_vm_readv/writev, and /proc/PID/mem
(remap.procfs.open_mem) for what those cannot reach (read-only pages: the scratch code page).

Raw means: no knowledge of safety frames.  Session.read/write add that (they hide the frames
and move them out of the way).
"""

from __future__ import annotations

import errno
import os
from typing import Any

from .. import procfs


class Memory:
    """Bytes of process PID.  Raises OSError (EFAULT) for addresses that are not mapped, and
    remap's errors (NoSuchProcess, AccessDenied) when /proc/PID/mem cannot be opened."""

    def __init__(self, pid: int, lib: Any, ffi: Any):
        self.pid = pid
        self._lib, self._ffi = lib, ffi
        # no zeroing: every byte handed out was written by the read (a short read goes to
        # mem_read); the fold reads megabytes of writable memory inside a stop
        self._new = ffi.new_allocator(should_clear_after_alloc=False)

    def read(self, addr: int, n: int) -> bytes:
        buf = self._new("char[]", n)
        got = self._lib.rn_vm_read(self.pid, buf, addr, n)
        if got == n:
            return bytes(self._ffi.buffer(buf, n))
        return self.mem_read(addr, n)

    def write(self, addr: int, data: bytes) -> None:
        got = self._lib.rn_vm_write(self.pid, data, addr, len(data))
        if got != len(data):
            self.mem_write(addr, data)

    def mem_read(self, addr: int, n: int) -> bytes:
        """Through /proc/PID/mem (reads pages process_vm_readv cannot)."""
        fd = procfs.open_mem(self.pid)
        try:
            out = os.pread(fd, n, addr)
        finally:
            os.close(fd)
        if len(out) != n:
            raise OSError(errno.EFAULT, f"cannot read {n} bytes at {addr:#x}")
        return out

    def mem_write(self, addr: int, data: bytes) -> None:
        """Through /proc/PID/mem, which may write a read-only private page (FOLL_FORCE)."""
        fd = procfs.open_mem(self.pid, write=True)
        try:
            if os.pwrite(fd, data, addr) != len(data):
                raise OSError(errno.EFAULT, f"short write at {addr:#x}")
        finally:
            os.close(fd)
