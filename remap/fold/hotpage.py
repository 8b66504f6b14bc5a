"""Find a target's hot page: the linker-script block holding its steady state in K pages.

A hot-page program (see csrc/targets/minibot-hotpage.ld, or a script from remap.layout)
exports four symbols: ``__hot_start``/``__hot_end`` bound one page-aligned RWX block of
K <= MAX_HOT_PAGES whole pages (K = 1: the hot page) holding the steady-state code, rodata
and *all* writable data; ``__hot_stack_lo``/``__hot_stack_hi`` bound the stack reserve inside
it.  A script made without the call closure also defines ``__hot_cold_reachable``: code
outside the block may still run, so the fold must keep it mapped.  We read them from the
executable *on disk* (through /proc/PID/exe, which stays valid even if the path was
replaced), never from the target's memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import elftables, procfs
from .. import kconst as K
from ..errors import UnsafeStep

HOT_SYMBOLS = ("__hot_start", "__hot_end", "__hot_stack_lo", "__hot_stack_hi")
MAX_HOT_PAGES = 256  # the same bound as remap.layout's: 1 MiB


@dataclass(frozen=True)
class HotPage:
    start: int
    end: int  # page-aligned: start + pages * 4096
    stack_lo: int
    stack_hi: int
    syscall_insns: tuple[int, ...]  # addresses of `syscall` (0f 05) instructions in the page
    writable: tuple[tuple[int, int], ...]  # SHF_WRITE sections below the reserve, 8-aligned
    cold_reachable: bool = False  # __hot_cold_reachable: keep the cold code mapped (dropped)
    stack_peak: int = 0  # __hot_stack_peak: the profiled peak depth below the root frame

    def contains(self, addr: int) -> bool:
        return self.start <= addr < self.end

    @property
    def reserve(self) -> int:
        return self.stack_hi - self.stack_lo

    @property
    def pages(self) -> int:
        return (self.end - self.start) // K.PAGE_SIZE

    def holds(self, lo: int, hi: int) -> bool:
        """Does [LO, HI) lie inside the block (a VMA of the block: the file-backed part, or
        the anonymous pages of a .bss that spans whole pages)?"""
        return self.start <= lo and hi <= self.end


_cache: dict[tuple[int, int, int], HotPage | None] = {}


def find_hot_page(pid: int) -> HotPage | None:
    """The hot page of PID's executable, or None when it has none (an ordinary program).

    Cached by the executable's (device, inode, mtime): the fold asks again while the target is
    stopped, and parsing ELF there would stretch the stop.  Raises NoSuchProcess/AccessDenied
    (remap.procfs) when PID's executable cannot be reached, UnsafeStep when its hot-page
    symbols are inconsistent."""
    st = procfs.stat_exe(pid)
    key = (st.st_dev, st.st_ino, st.st_mtime_ns)
    if key not in _cache:
        _cache[key] = _parse_hot_page(pid)
    return _cache[key]


def _parse_hot_page(pid: int) -> HotPage | None:
    try:
        elf = elftables.open_elf(procfs.path(pid, "exe"))  # the mapped inode, even if replaced
    except OSError as e:
        raise procfs.translate(pid, e, "exe") from None
    if elf is None or elf.etype != K.ET_EXEC:
        return None  # position-dependent only: the hot page must sit at a fixed address
    found = elf.symbol_values(HOT_SYMBOLS)
    if len(found) < len(HOT_SYMBOLS):
        return None
    start, end = found["__hot_start"], found["__hot_end"]
    if start % K.PAGE_SIZE or end - start > MAX_HOT_PAGES * K.PAGE_SIZE or end <= start:
        raise UnsafeStep(
            f"hot page symbols of pid {pid} do not bound an aligned block of at most "
            f"{MAX_HOT_PAGES} pages ({start:#x}-{end:#x})"
        )
    top = (end + K.PAGE_SIZE - 1) & ~(K.PAGE_SIZE - 1)
    page = elf.bytes_at(start, top - start)
    insns = tuple(start + i for i in _find_syscalls(page[: end - start]))
    lo = found["__hot_stack_lo"]
    writable = []
    for sec in elf.sections:
        a, n = sec.addr, sec.size
        if sec.flags & K.SHF_WRITE and n and start <= a < lo:  # below the reserve
            writable.append((a & ~7, min((a + n + 7) & ~7, lo)))
    extra = elf.symbol_values(("__hot_cold_reachable", "__hot_stack_peak"))
    return HotPage(start, top, lo, found["__hot_stack_hi"], insns, tuple(sorted(writable)),
                   "__hot_cold_reachable" in extra, extra.get("__hot_stack_peak", 0))  # fmt: skip


def _find_syscalls(code: bytes) -> list[int]:
    """Offsets of 0f 05 byte pairs. Not every pair is an instruction boundary; the caller
    prefers the bot's own syscall sites, which it confirms against the interrupted rip."""
    out, i = [], code.find(b"\x0f\x05")
    while i >= 0:
        out.append(i)
        i = code.find(b"\x0f\x05", i + 1)
    return out
