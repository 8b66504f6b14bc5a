"""Every load, section header and symbol of one ELF program, from its bytes (:class:`ElfTables`).

Why apart from remap.elfmap, whose struct readers it shares: the page labeller (elfmap) is on
every `remap map`'s path, the whole tables only on the profiler's, the hot page finder's and
the layout writer's; a module imported is paid by every run (its two named tuple types alone
are ~0.3 ms, issue 15).
"""

from __future__ import annotations

from . import kconst as K
from .elfmap import _RELA, _SYM, _SYM_SIZE, _cstr, _elf64_header, _loads, _raw_tables
from .record import record


class SectionHeader(
    record("SectionHeader", "index name type flags addr offset size link info align entsize")
):
    """One section header (any section, allocated or not), its name resolved."""

    __slots__ = ()
    index: int
    name: str
    type: int  # SHT_*
    flags: int  # SHF_*
    addr: int
    offset: int
    size: int
    link: int
    info: int
    align: int
    entsize: int


class Symbol(record("Symbol", "name value size type bind shndx")):
    """One .symtab entry: TYPE is STT_* (kconst), BIND is STB_* (0 local, 1 global, 2 weak),
    SHNDX the section index (kconst.SHN_UNDEF, SHN_ABS... as the raw numbers)."""

    __slots__ = ()
    name: str
    value: int
    size: int
    type: int
    bind: int
    shndx: int

    @property
    def in_section(self) -> bool:
        """Defined inside one of the file's sections (not undefined, absolute or common):
        SHNDX then indexes :attr:`ElfTables.sections`."""
        return self.shndx not in (K.SHN_UNDEF, K.SHN_ABS, K.SHN_COMMON)


class ElfTables:
    """Every load, section header and symbol of one ELF64 little-endian file, from its bytes.

    Why beside :class:`remap.elfmap.ElfInfo`: the page labeller needs only allocated sections
    and sorted symbols, read piecemeal and cached; the tools that read a program's own tables
    (the hot page finder, the profiler, the layout writer) need all of them, their flags and
    the file's bytes.  Both come from the same struct readers, so remap has one ELF parser.

    Example::

        >>> t = elftables.open_elf("/proc/self/exe")
        >>> t.etype == kconst.ET_DYN, t.symbol_values(["main"])
    """

    __slots__ = ("raw", "etype", "machine", "entry", "loads", "interpreter", "sections")
    __slots__ += ("_symbols", "_cfi")

    def __init__(self, raw: bytes):
        """Parse RAW (a whole ELF64 little-endian file); raises ValueError for anything else
        (not ELF, 32-bit, big-endian, or truncated)."""
        import struct

        h = _elf64_header(raw[:64])
        if h is None:
            raise ValueError("not an ELF64 little-endian file")
        try:
            ph, sh, names = _raw_tables(lambda off, n: raw[off : off + n], h)
        except struct.error as e:
            raise ValueError(f"truncated ELF file: {e}") from None
        self.raw = raw
        self.etype, self.machine, self.entry = h["e_type"], h["e_machine"], h["e_entry"]
        self.loads = _loads(ph)
        interp = next((p for p in ph if p[0] == K.PT_INTERP), None)  # None: statically linked
        self.interpreter = (
            None if interp is None else _cstr(raw[interp[2] : interp[2] + interp[5]] + b"\0", 0)
        )
        self.sections = [
            SectionHeader(i, _cstr(names, x[0]), *x[1:]) for i, x in enumerate(sh)
        ]  # fmt: skip
        self._symbols: list[Symbol] | None = None
        self._cfi = None  # pyelftools' CallFrameInfo over .eh_frame, built at its first use

    def __repr__(self) -> str:
        return (
            f"ElfTables(type {self.etype}, {len(self.loads)} loads, {len(self.sections)} sections)"
        )

    def section(self, name: str) -> SectionHeader | None:
        """The first section called NAME, or None."""
        return next((s for s in self.sections if s.name == name), None)

    @property
    def symbols(self) -> list[Symbol]:
        """Every entry of .symtab (SHT_SYMTAB) in table order; [] for a stripped file."""
        if self._symbols is None:
            import struct

            out: list[Symbol] = []
            for tab in self.sections:
                if tab.type != K.SHT_SYMTAB or tab.link >= len(self.sections):
                    continue
                strs = self.sections[tab.link]
                names = self.raw[strs.offset : strs.offset + strs.size]
                body = self.raw[tab.offset : tab.offset + tab.size]
                for name, info, _other, shndx, value, size in struct.iter_unpack(
                    _SYM, body[: len(body) // _SYM_SIZE * _SYM_SIZE]
                ):
                    out.append(
                        Symbol(_cstr(names, name), value, size, info & 0xF, info >> 4, shndx)
                    )
            self._symbols = out
        return self._symbols

    def symbol_values(self, names) -> dict[str, int]:
        """{name: st_value} of the first .symtab symbol of each of NAMES the file defines."""
        want, out = set(names), {}
        for sym in self.symbols:
            if sym.name in want and sym.name not in out:
                out[sym.name] = sym.value
        return out

    def plt_entries(self) -> list[tuple[int, int, str]]:
        """(address, size, "TARGET@plt") of every PLT stub (.plt, .plt.sec, .plt.got) whose
        ``jmp *GOT(%rip)`` reads a GOT slot a dynamic relocation names: the function a call
        through it reaches (in a shared library).  [] for a static file.

        Why decoded and not counted: ld's PLT layouts differ (lazy .plt with PLT0, IBT's
        .plt.sec, .plt.got for -z now); the jump's own displacement says which slot it uses."""
        import struct

        slots: dict[int, str] = {}
        for rel in self.sections:
            if rel.type != K.SHT_RELA or rel.link >= len(self.sections) or not rel.entsize:
                continue
            dyn = self.sections[rel.link]
            if dyn.type != K.SHT_DYNSYM or dyn.link >= len(self.sections):
                continue
            strs = self.sections[dyn.link]
            names = self.raw[strs.offset : strs.offset + strs.size]
            body = self.raw[rel.offset : rel.offset + rel.size]
            for off, info, _addend in struct.iter_unpack(_RELA, body[: len(body) // 24 * 24]):
                at = dyn.offset + (info >> 32) * _SYM_SIZE
                if info >> 32 and at + _SYM_SIZE <= len(self.raw):
                    name = _cstr(names, struct.unpack_from(_SYM, self.raw, at)[0])
                    if name:
                        slots[off] = name
        out = []
        for sec in self.sections:
            if sec.name not in (".plt", ".plt.sec", ".plt.got") or not sec.entsize:
                continue
            code = self.raw[sec.offset : sec.offset + sec.size]
            for i in range(0, len(code) - 5, sec.entsize):
                for j in range(i, min(i + sec.entsize, len(code)) - 5):  # jmp *disp32(%rip)
                    if code[j : j + 2] == b"\xff\x25":
                        disp = struct.unpack_from("<i", code, j + 2)[0]
                        target = slots.get(sec.addr + j + 6 + disp)
                        if target:
                            out.append((sec.addr + i, sec.entsize, f"{target}@plt"))
                        break
        return out

    def eh_frame_fdes(self) -> list:
        """The FDEs of .eh_frame (pyelftools ``callframe.FDE`` objects, their rows decoded on
        demand); [] when the file has no .eh_frame.  remap.unwind walks frames with them where
        :meth:`eh_frame_index` gives no search table.  Raises ValueError on a malformed
        .eh_frame."""
        from elftools.dwarf.callframe import FDE

        if self.section(".eh_frame") is None:
            return []
        return [e for e in self._cfi_call(lambda cfi: cfi.get_entries()) if isinstance(e, FDE)]

    def eh_frame_index(self) -> tuple[list[int], list[int]] | None:
        """.eh_frame_hdr's search table: (the FDEs' sorted initial locations, each FDE's offset
        in .eh_frame), for :meth:`eh_frame_fde`; None when the file has none remap reads (no
        .eh_frame_hdr, or a table not in the datarel/sdata4 encoding the GNU, gold, lld and
        mold linkers write, or a pyelftools without the one-entry parser :meth:`eh_frame_fde`
        uses): the caller then parses every FDE.

        Why: pyelftools decodes every FDE's instructions as it parses it, ~3 s for python3.11's
        9,000 FDEs, while a stack walk needs a dozen (issue 15: `remap floor`).  The table is
        the one the C runtime's own unwinder searches (PT_GNU_EH_FRAME)."""
        import struct

        from elftools.dwarf.callframe import CallFrameInfo

        hdr, eh = self.section(".eh_frame_hdr"), self.section(".eh_frame")
        if (
            not hasattr(CallFrameInfo, "_parse_entry_at")
            or hdr is None
            or eh is None
            or hdr.type == K.SHT_NOBITS
        ):
            return None
        data = self.raw[hdr.offset : hdr.offset + hdr.size]
        if len(data) < 4 or data[0] != 1:  # version 1, the only one
            return None
        ptr_enc, count_enc, table_enc = data[1], data[2], data[3]
        widths = {K.DW_EH_PE_absptr: 8, K.DW_EH_PE_udata4: 4, K.DW_EH_PE_sdata4: 4,
                  K.DW_EH_PE_udata8: 8, K.DW_EH_PE_sdata8: 8}  # fmt: skip
        ptr_width = 0 if ptr_enc == K.DW_EH_PE_omit else widths.get(ptr_enc & 0x0F)
        if ptr_width is None or count_enc != K.DW_EH_PE_udata4:
            return None
        if table_enc != K.DW_EH_PE_datarel | K.DW_EH_PE_sdata4:
            return None
        pos = 4 + ptr_width
        if len(data) < pos + 4:
            return None
        (count,) = struct.unpack_from("<I", data, pos)
        table = data[pos + 4 : pos + 4 + 8 * count]
        if not count or len(table) != 8 * count:
            return None  # empty (a linker that could not sort them all) or cut short
        pairs = sorted(
            (hdr.addr + loc, hdr.addr + fde - eh.addr)
            for loc, fde in struct.iter_unpack("<ii", table)
        )  # sorted by the linker already; sorted here so that a bisect is right whatever
        if any(not 0 <= off < eh.size for _loc, off in pairs):
            return None
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def eh_frame_fde(self, offset: int):
        """The FDE at OFFSET of .eh_frame (a pyelftools ``callframe.FDE``, its CIE parsed with
        it and kept), or None when a CIE or terminator is there.  Raises ValueError on a
        malformed .eh_frame."""
        from elftools.dwarf.callframe import FDE

        entry = self._cfi_call(lambda cfi: cfi._parse_entry_at(offset))
        return entry if isinstance(entry, FDE) else None

    def _cfi_call(self, use):
        """USE(the CallFrameInfo of .eh_frame), pyelftools' errors as ValueError.

        Why pyelftools here: DWARF CFI is a byte-code (CIE/FDE, LEB128, pointer encodings) the
        struct readers above do not speak.  ``_parse_entry_at`` is pyelftools' own one-entry
        parser (the one its full parse loops over), not a public method: eh_frame_index checks
        that it is there."""
        import io
        import struct

        from elftools.common.exceptions import DWARFError, ELFError
        from elftools.dwarf.callframe import CallFrameInfo
        from elftools.elf.elffile import ELFFile

        try:
            if self._cfi is None:
                dw = ELFFile(io.BytesIO(self.raw)).get_dwarf_info(relocate_dwarf_sections=False)
                sec = dw.eh_frame_sec
                self._cfi = CallFrameInfo(stream=sec.stream, size=sec.size, address=sec.address,
                                          base_structs=dw.structs, for_eh_frame=True)  # fmt: skip
            return use(self._cfi)
        except (DWARFError, ELFError, struct.error) as e:
            raise ValueError(f"malformed .eh_frame: {e}") from None

    def bytes_at(self, vaddr: int, n: int) -> bytes:
        """N file bytes of the PT_LOAD covering VADDR, zero past p_filesz (as the kernel maps
        it); N zero bytes when no load covers VADDR."""
        for seg in self.loads:
            if seg.vaddr <= vaddr < seg.vaddr + seg.memsz:
                off = vaddr - seg.vaddr
                lo = seg.offset + min(off, seg.filesz)
                data = self.raw[lo : seg.offset + min(off + n, seg.filesz)]
                return data + bytes(n - len(data))
        return bytes(n)


def open_elf(path: str) -> ElfTables | None:
    """The whole tables of the ELF file at PATH (read in one go: meant for one program, not
    for every mapped library); None when it is not an ELF64 little-endian file.  Raises
    OSError when PATH cannot be read."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return ElfTables(raw)
    except ValueError:
        return None
