"""Where exec put a process's stack, and how many pages its live part spans.

Why: the seed author's "12 kB reproducible, 8 kB unreproducible" is the stack.  At exec the
kernel copies the exec filename, the env and argv strings to the top of the new stack, then
``create_elf_tables`` lowers the pointer by ``arch_align_stack`` -- a random 0..8191 bytes with
ASLR, rounded down to 16 -- before writing the platform string, AT_RANDOM bytes, auxv, envp,
argv and argc.  Whether the frames the program then uses cross one more page boundary therefore
changes from run to run.  This module measures it from the kernel's own files:

* /proc/PID/stat: start_stack (where argc is), arg_start/arg_end, env_start/env_end;
* /proc/PID/auxv: AT_PLATFORM (the string written right below the aligned pointer) and
  AT_RANDOM (16 bytes below that) -- together they pin the pointer after arch_align_stack;
* /proc/PID/syscall: rsp while the process is blocked in a system call;
* the [stack] VMA from /proc/PID/maps and its present pages from /proc/PID/pagemap.

Example::

    >>> stack_layout(pid).gap, stack_layout(pid).live_pages
    (4528, 2)
"""

from __future__ import annotations

import os
import struct
from dataclasses import asdict, dataclass

from . import procfs
from .errors import UnsupportedTarget
from .kconst import AT_PLATFORM, AT_RANDOM, PAGE_SIZE, PM_PRESENT, RED_ZONE


@dataclass(frozen=True)
class StackLayout:
    """The stack of one process, addresses as ints (JSON: see to_json)."""

    vma_start: int
    vma_end: int
    arg_start: int
    arg_end: int
    env_start: int
    env_end: int
    start_stack: int  # address of argc
    aligned_top: int  # the pointer after arch_align_stack (0 if auxv lacked the anchors)
    gap: int  # arg_start - aligned_top: the random gap (+ <16 bytes of rounding)
    rsp: int | None  # user stack pointer while blocked (None if it was running)
    live_lo: int | None  # rsp - red zone: lowest byte the live stack may touch
    live_pages: int | None  # pages spanned from live_lo up to the top of the strings
    frames_straddle: bool | None  # do rsp and argc sit in different pages?
    present_pages: int  # resident pages of the [stack] VMA (pagemap)
    present: tuple[int, ...]  # their page indexes counted down from the VMA's top page (0)

    @property
    def gap_page_offset(self) -> int:
        """Where the aligned pointer falls inside its page (what the gap changes)."""
        return self.aligned_top % PAGE_SIZE

    @property
    def rsp_page_offset(self) -> int | None:
        return None if self.rsp is None else self.rsp % PAGE_SIZE

    def to_json(self) -> dict:
        d = asdict(self)
        d["present"] = list(self.present)
        d["gap_page_offset"] = self.gap_page_offset
        d["rsp_page_offset"] = self.rsp_page_offset
        d["start_stack_page_offset"] = self.start_stack % PAGE_SIZE
        d["arg_start_page_offset"] = self.arg_start % PAGE_SIZE
        return d


def stack_vma(pid: int) -> tuple[int, int]:
    """(start, end) of the main thread's [stack] mapping."""
    for e in procfs.read_maps(pid):
        if getattr(e, "path", "") == "[stack]" or getattr(e, "name", "") == "[stack]":
            return e.start, e.end
    raise UnsupportedTarget(f"process {pid} has no [stack] mapping")


def present_indexes(pid: int, start: int, end: int) -> tuple[int, ...]:
    """Present pages of [start, end) as indexes from the top page down (0 = highest page).

    Reads /proc/PID/pagemap directly: the stack VMA is small (132 kB by default), so one read
    of its entries is cheaper than anything cleverer, and it never touches the target's memory.
    """
    n = (end - start) // PAGE_SIZE
    fd = procfs.open_proc(pid, "pagemap")
    try:
        data = os.pread(fd, n * 8, (start // PAGE_SIZE) * 8)
    finally:
        os.close(fd)
    ents = struct.unpack(f"<{len(data) // 8}Q", data)
    return tuple(n - 1 - i for i in reversed(range(len(ents))) if ents[i] & PM_PRESENT)


def stack_layout(pid: int) -> StackLayout:
    """Measure PID's stack layout now (best while it is blocked in a syscall, e.g. idle)."""
    st = procfs.check_target(pid)
    if not st.start_stack or not st.arg_start:
        raise UnsupportedTarget(f"process {pid}: stack addresses hidden (need ptrace access)")
    aux = dict(procfs.read_auxv(pid))
    platform_len = len(os.uname().machine.encode()) + 1  # the kernel copies ELF_PLATFORM + NUL
    aligned = 0
    if AT_PLATFORM in aux:
        aligned = aux[AT_PLATFORM] + platform_len
    elif AT_RANDOM in aux:
        aligned = aux[AT_RANDOM] + 16
    gap = st.arg_start - aligned if aligned else 0
    vstart, vend = stack_vma(pid)
    sc = procfs.read_syscall(pid)
    rsp = None if sc.running else sc.sp
    live_lo = live_pages = straddle = None
    if rsp:
        live_lo = rsp - RED_ZONE
        top = st.env_end or st.arg_end
        live_pages = (top - 1) // PAGE_SIZE - live_lo // PAGE_SIZE + 1
        straddle = rsp // PAGE_SIZE != st.start_stack // PAGE_SIZE
    present = present_indexes(pid, vstart, vend)
    return StackLayout(
        vma_start=vstart,
        vma_end=vend,
        arg_start=st.arg_start,
        arg_end=st.arg_end,
        env_start=st.env_start,
        env_end=st.env_end,
        start_stack=st.start_stack,
        aligned_top=aligned,
        gap=gap,
        rsp=rsp,
        live_lo=live_lo,
        live_pages=live_pages,
        frames_straddle=straddle,
        present_pages=len(present),
        present=present,
    )
