"""Raw access to a stopped target's memory: reads through /proc/PID/mem (procfs.MemFile: a
read that pins nothing, so it never unshares a page a forked child still shares), writes by
process_vm_writev, and /proc/PID/mem for the writes that cannot (read-only pages: the scratch
code page).

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
        self._file: procfs.MemFile | None = None  # opened at the first read, kept

    def read(self, addr: int, n: int) -> bytes:
        if self._file is None:
            self._file = procfs.MemFile(self.pid)
        return self._file.read_exact(addr, n)

    def write(self, addr: int, data: bytes) -> None:
        got = self._lib.rn_vm_write(self.pid, data, addr, len(data))
        if got != len(data):
            self.mem_write(addr, data)

    def close(self) -> None:
        """Close /proc/PID/mem (the session's end)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def mem_write(self, addr: int, data: bytes) -> None:
        """Through /proc/PID/mem, which may write a read-only private page (FOLL_FORCE)."""
        fd = procfs.open_mem(self.pid, write=True)
        try:
            if os.pwrite(fd, data, addr) != len(data):
                raise OSError(errno.EFAULT, f"short write at {addr:#x}")
        finally:
            os.close(fd)
