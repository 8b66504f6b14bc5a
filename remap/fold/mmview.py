"""The kernel's own view of where a process's code, data, stack and arguments are.

Why it matters: after the fold moves the stack or argument strings, ``ps``, /proc/PID/cmdline,
/proc/PID/stat and /proc/PID/status (VmExe) read these mm fields; PR_SET_MM_MAP updates them all
at once, atomically checked by the kernel (kernel/sys.c, prctl_set_mm_map).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

from .. import procfs


@dataclass(frozen=True)
class MmMap:
    """struct prctl_mm_map (include/uapi/linux/prctl.h), minus the auxv pointer and exe_fd."""

    start_code: int
    end_code: int
    start_data: int
    end_data: int
    start_brk: int
    brk: int
    start_stack: int
    arg_start: int
    arg_end: int
    env_start: int
    env_end: int

    def with_(self, **kw: int) -> MmMap:
        return replace(self, **kw)

    def pack(self, auxv_addr: int = 0, auxv_size: int = 0, exe_fd: int = -1) -> bytes:
        """The 104-byte struct as the kernel reads it (PR_SET_MM_MAP_SIZE)."""
        return struct.pack(
            "<11QQII",
            self.start_code, self.end_code, self.start_data, self.end_data,
            self.start_brk, self.brk, self.start_stack, self.arg_start, self.arg_end,
            self.env_start, self.env_end, auxv_addr, auxv_size, exe_fd & 0xFFFFFFFF,
        )  # fmt: skip


MM_MAP_SIZE = 104


def read_mm_map(pid: int, brk: int) -> MmMap:
    """The current mm fields from /proc/PID/stat; the current program break is not in /proc,
    so the caller passes it (an injected brk(0) returns it)."""
    st = procfs.read_stat(pid)
    return MmMap(
        start_code=st.start_code,
        end_code=st.end_code,
        start_data=st.start_data,
        end_data=st.end_data,
        start_brk=st.start_brk,
        brk=brk,
        start_stack=st.start_stack,
        arg_start=st.arg_start,
        arg_end=st.arg_end,
        env_start=st.env_start,
        env_end=st.env_end,
    )
