"""Which ELF section, symbol and label each page of a file mapping holds -- from the file on disk.

Why from disk: reading the target's memory to label it would fault its pages in and change the
very residency we measure (DESIGN §5.6).  The mapped file is opened by path, checked against the
inode in /proc/PID/maps, parsed once with pyelftools and cached by (path, inode, mtime).

Addresses: a file mapped at load bias B puts ELF virtual address v at B + v.  :func:`load_bias`
finds B from the lowest mapping of the file (file offset 0 holds the first PT_LOAD), which stays
right when mprotect (RELRO) splits the mappings or the kernel adds an anonymous .bss tail.

Example::

    >>> info = elfmap.load("/usr/lib/x86_64-linux-gnu/libc.so.6")
    >>> info.describe(0x28000)            # (label, section, symbol) of the page at vaddr 0x28000
    ('code', '.text', '__libc_start_call_main')
"""

from __future__ import annotations

import bisect
import os
import struct
from dataclasses import dataclass, field

from . import kconst as K

_SHF_WRITE, _SHF_ALLOC, _SHF_EXECINSTR = 0x1, 0x2, 0x4
_PF_X, _PF_W = 0x1, 0x2
_STT_OBJECT, _STT_FUNC = 1, 2
_PAGE_MASK = ~(K.PAGE_SIZE - 1)


@dataclass(slots=True, frozen=True)
class Segment:
    """A PT_LOAD program header."""

    offset: int
    vaddr: int
    filesz: int
    memsz: int
    flags: int


@dataclass(slots=True, frozen=True)
class Section:
    """An allocated section with the label its pages get (code, rodata, data, bss)."""

    name: str
    addr: int
    end: int
    kind: str


@dataclass(slots=True)
class ElfInfo:
    """What remap needs from one ELF file: loads, allocated sections, sorted symbols."""

    path: str
    segments: list[Segment]
    sections: list[Section]
    sym_addr: list[int] = field(default_factory=list)
    sym_end: list[int] = field(default_factory=list)
    sym_name: list[str] = field(default_factory=list)
    _sec_addr: list[int] = field(default_factory=list)

    @property
    def base_vaddr(self) -> int:
        """Page-aligned vaddr of the first PT_LOAD (the one holding the ELF header)."""
        return min(s.vaddr for s in self.segments) & _PAGE_MASK if self.segments else 0

    @property
    def end_vaddr(self) -> int:
        """End of the highest PT_LOAD in memory (including its .bss)."""
        return max(s.vaddr + s.memsz for s in self.segments) if self.segments else 0

    def section_at(self, lo: int, hi: int) -> list[Section]:
        """Allocated sections overlapping vaddr range [lo, hi), sorted by address."""
        i = max(0, bisect.bisect_right(self._sec_addr, lo) - 1)
        out = []
        while i < len(self.sections) and self.sections[i].addr < hi:
            s = self.sections[i]
            if s.end > lo and s.end > s.addr:
                out.append(s)
            i += 1
        return out

    def symbol_at(self, lo: int, hi: int) -> str | None:
        """The symbol containing vaddr LO, else the first symbol starting in [lo, hi)."""
        a = self.sym_addr
        i = bisect.bisect_right(a, lo) - 1
        # several symbols may start at or before lo; look back over a few for one containing lo
        j = i
        while j >= 0 and j > i - 8:
            if self.sym_end[j] > lo:
                return self.sym_name[j]
            j -= 1
        if i + 1 < len(a) and a[i + 1] < hi:
            return self.sym_name[i + 1]
        return None

    def describe(self, vaddr: int) -> tuple[str | None, str | None, str | None]:
        """(label, section, symbol) of the page at ELF vaddr VADDR (page-aligned).

        Label precedence inside one page: elf-header > code > data > rodata > bss, so a page that
        mixes the end of .data with the start of .bss is 'data' (it came from the file).
        """
        lo, hi = vaddr, vaddr + K.PAGE_SIZE
        secs = self.section_at(lo, hi)
        section = None
        for s in secs:
            if s.addr <= lo < s.end:
                section = s.name
                break
        if section is None and secs:
            section = secs[0].name
        symbol = self.symbol_at(lo, hi)
        if lo == self.base_vaddr:
            return "elf-header", section, symbol
        kinds = {s.kind for s in secs}
        for k in ("code", "data", "rodata", "bss"):
            if k in kinds:
                return k, section, symbol
        seg = self.segment_at(lo)
        if seg is None:
            return None, section, symbol
        if seg.flags & _PF_X:
            return "code", section, symbol
        if seg.flags & _PF_W:
            past_file = lo >= ((seg.vaddr + seg.filesz + K.PAGE_SIZE - 1) & _PAGE_MASK)
            return ("bss" if past_file else "data"), section, symbol
        return "rodata", section, symbol

    def segment_at(self, vaddr: int) -> Segment | None:
        for s in self.segments:
            if (s.vaddr & _PAGE_MASK) <= vaddr < s.vaddr + s.memsz:
                return s
        return None


def _kind(flags: int, is_nobits: bool) -> str:
    if flags & _SHF_EXECINSTR:
        return "code"
    if flags & _SHF_WRITE:
        return "bss" if is_nobits else "data"
    return "rodata"


def _parse(path: str) -> ElfInfo | None:
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        f = open(path, "rb")
    except OSError:
        return None
    with f:
        try:
            elf = ELFFile(f)
            segs = [
                Segment(p["p_offset"], p["p_vaddr"], p["p_filesz"], p["p_memsz"], p["p_flags"])
                for p in elf.iter_segments()
                if p["p_type"] == "PT_LOAD"
            ]
            secs = []
            symtab = dynsym = None
            for s in elf.iter_sections():
                h = s.header
                if h["sh_type"] == "SHT_SYMTAB":
                    symtab = s
                elif h["sh_type"] == "SHT_DYNSYM":
                    dynsym = s
                if h["sh_flags"] & _SHF_ALLOC and h["sh_addr"] and h["sh_size"]:
                    nobits = h["sh_type"] == "SHT_NOBITS"
                    if h["sh_flags"] & 0x400 and nobits:  # SHF_TLS .tbss takes no address space
                        continue
                    secs.append(
                        Section(
                            s.name,
                            h["sh_addr"],
                            h["sh_addr"] + h["sh_size"],
                            _kind(h["sh_flags"], nobits),
                        )
                    )
            secs.sort(key=lambda s: s.addr)
            info = ElfInfo(path, segs, secs, _sec_addr=[s.addr for s in secs])
            tab = symtab if symtab is not None else dynsym
            if tab is not None and elf.elfclass == 64 and elf.little_endian:
                _load_symbols(info, f, tab, elf.get_section(tab.header["sh_link"]))
            return info
        except (ELFError, ValueError, struct.error, OSError):
            return None


def _load_symbols(info: ElfInfo, f, tab, strtab) -> None:
    """Read Elf64_Sym entries directly (pyelftools' per-symbol objects are ~50x slower)."""
    f.seek(tab.header["sh_offset"])
    raw = f.read(tab.header["sh_size"])
    f.seek(strtab.header["sh_offset"])
    strs = f.read(strtab.header["sh_size"])
    syms = []
    for name, info_b, _other, shndx, value, size in struct.iter_unpack("<IBBHQQ", raw):
        if value == 0 or shndx == 0 or (info_b & 0xF) not in (_STT_FUNC, _STT_OBJECT):
            continue
        end = strs.find(b"\0", name)
        syms.append((value, value + size, strs[name:end].decode(errors="replace")))
    syms.sort()
    info.sym_addr = [s[0] for s in syms]
    info.sym_end = [s[1] for s in syms]
    info.sym_name = [s[2] for s in syms]


_cache: dict[tuple[str, int, int], ElfInfo | None] = {}


def load(path: str, inode: int | None = None) -> ElfInfo | None:
    """Parsed ELF info for PATH (cached by path, inode, mtime); None if it is not a readable ELF
    or (when INODE is given) the file on disk is no longer the one mapped."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if inode is not None and st.st_ino != inode:
        return None
    key = (path, st.st_ino, st.st_mtime_ns)
    if key not in _cache:
        _cache[key] = _parse(path)
    return _cache[key]


def load_bias(info: ElfInfo, lowest_start: int, lowest_offset: int) -> int:
    """Load bias from the file's lowest mapping (start address and file offset)."""
    return lowest_start - lowest_offset - info.base_vaddr
