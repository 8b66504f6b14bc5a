"""Find a target's hot page: the linker-script block holding its steady state in 4 kB.

A hot-page program (see csrc/targets/minibot-hotpage.ld) exports four symbols:
``__hot_start``/``__hot_end`` bound one page-aligned RWX page holding the steady-state code,
rodata and *all* writable data; ``__hot_stack_lo``/``__hot_stack_hi`` bound the stack reserve
inside it.  We read them from the executable *on disk* (through /proc/PID/exe, which stays valid
even if the path was replaced), never from the target's memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from elftools.elf.elffile import ELFFile

from ..errors import UnsafeStep
from ..kconst import PAGE_SIZE

HOT_SYMBOLS = ("__hot_start", "__hot_end", "__hot_stack_lo", "__hot_stack_hi")


@dataclass(frozen=True)
class HotPage:
    start: int
    end: int
    stack_lo: int
    stack_hi: int
    syscall_insns: tuple[int, ...]  # addresses of `syscall` (0f 05) instructions in the page
    writable: tuple[tuple[int, int], ...]  # SHF_WRITE sections below the reserve, 8-aligned

    def contains(self, addr: int) -> bool:
        return self.start <= addr < self.end

    @property
    def reserve(self) -> int:
        return self.stack_hi - self.stack_lo


_cache: dict[tuple[int, int, int], HotPage | None] = {}


def find_hot_page(pid: int) -> HotPage | None:
    """The hot page of PID's executable, or None when it has none (an ordinary program).

    Cached by the executable's (device, inode, mtime): the fold asks again while the target is
    stopped, and parsing ELF there would stretch the stop."""
    st = os.stat(f"/proc/{pid}/exe")
    key = (st.st_dev, st.st_ino, st.st_mtime_ns)
    if key not in _cache:
        _cache[key] = _parse_hot_page(pid)
    return _cache[key]


def _parse_hot_page(pid: int) -> HotPage | None:
    with open(f"/proc/{pid}/exe", "rb") as f:
        elf = ELFFile(f)
        if elf["e_type"] != "ET_EXEC":
            return None  # position-dependent only: the hot page must sit at a fixed address
        symtab = elf.get_section_by_name(".symtab")
        if symtab is None:
            return None
        found = {}
        for name in HOT_SYMBOLS:
            syms = symtab.get_symbol_by_name(name)
            if syms:
                found[name] = syms[0]["st_value"]
        if len(found) < len(HOT_SYMBOLS):
            return None
        start, end = found["__hot_start"], found["__hot_end"]
        if start % PAGE_SIZE or end - start > PAGE_SIZE or end <= start:
            raise UnsafeStep(
                f"hot page symbols of pid {pid} do not bound one aligned page ({start:#x}-{end:#x})"
            )
        page = _bytes_at(elf, start, PAGE_SIZE)
        insns = tuple(start + i for i in _find_syscalls(page[: end - start]))
        lo = found["__hot_stack_lo"]
        writable = []
        for sec in elf.iter_sections():
            a, n = sec["sh_addr"], sec["sh_size"]
            if sec["sh_flags"] & 1 and n and start <= a < lo:  # SHF_WRITE, below the reserve
                writable.append((a & ~7, min((a + n + 7) & ~7, lo)))
        return HotPage(start, start + PAGE_SIZE, lo, found["__hot_stack_hi"], insns,
                       tuple(sorted(writable)))  # fmt: skip


def _bytes_at(elf: ELFFile, vaddr: int, n: int) -> bytes:
    """File bytes of the PT_LOAD covering VADDR (zero past p_filesz, like the kernel maps it)."""
    for seg in elf.iter_segments():
        if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= vaddr < seg["p_vaddr"] + seg["p_memsz"]:
            off = vaddr - seg["p_vaddr"]
            data = seg.data()[off : off + n]
            return data + bytes(n - len(data))
    return bytes(n)


def _find_syscalls(code: bytes) -> list[int]:
    """Offsets of 0f 05 byte pairs. Not every pair is an instruction boundary; the caller
    prefers the bot's own syscall sites, which it confirms against the interrupted rip."""
    out, i = [], code.find(b"\x0f\x05")
    while i >= 0:
        out.append(i)
        i = code.find(b"\x0f\x05", i + 1)
    return out
