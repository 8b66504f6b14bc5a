"""Which ELF section, symbol and label each page of a file mapping holds -- from the file on disk.

Why from disk: reading the target's memory to label it would fault its pages in and change the
very residency we measure (a read through /proc/PID/mem faults a page in as a touch does).  The
mapped file is opened by path, checked against the inode in /proc/PID/maps, parsed once (struct
readers, pyelftools for what they do not handle) and cached by (path, inode, mtime).

Addresses: a file mapped at load bias B puts ELF virtual address v at B + v.  :func:`load_bias`
finds B from the lowest mapping of the file (file offset 0 holds the first PT_LOAD), which stays
right when mprotect (RELRO) splits the mappings or the kernel adds an anonymous .bss tail.

Example::

    >>> info = elfmap.load("/usr/lib/x86_64-linux-gnu/libc.so.6")
    >>> info.describe(0x28000)            # (label, section, symbol) of the page at vaddr 0x28000
    ('code', '.text', '__libc_start_call_main')
"""

from __future__ import annotations

import os

from . import kconst as K
from .record import record

_PAGE_MASK = ~(K.PAGE_SIZE - 1)
_NO_WORDS = memoryview(b"").cast("Q")


class Segment(record("Segment", "offset vaddr filesz memsz flags")):
    """A PT_LOAD program header."""

    __slots__ = ()
    offset: int
    vaddr: int
    filesz: int
    memsz: int
    flags: int


class Section(record("Section", "name addr end kind")):
    """An allocated section with the label its pages get (code, rodata, data, bss)."""

    __slots__ = ()
    name: str
    addr: int
    end: int
    kind: str


class ElfInfo:
    """What remap needs from one ELF file: loads, allocated sections, sorted symbols."""

    __slots__ = ("path", "segments", "sections", "sym_addr", "sym_end", "sym_name", "_strs")
    __slots__ += ("_sec_addr", "_base", "_strbase", "_strend", "_pages", "_pages_raw")

    def __init__(self, path: str, segments: list[Segment], sections: list[Section]):
        self.path, self.segments, self.sections = path, segments, sections
        self._sec_addr = [s.addr for s in sections]
        self._base = min(s.vaddr for s in segments) & _PAGE_MASK if segments else 0
        # sorted symbol starts, ends and name offsets into _strs (decoded on demand): native
        # u64 memoryviews, of the parse's packed words or of a mapped cache entry (its columns
        # used in place: _load_cached); not arrays, whose module imports collections (issue 15)
        self.sym_addr = self.sym_end = self.sym_name = _NO_WORDS
        self._strs = b""  # the string table, or a mapped cache entry holding it at _strbase
        self._strbase = 0
        self._strend: int | None = None  # where it ends in that entry (None: at its end)
        # describe_pages of every page from base_vaddr, when a cache entry brought them (the
        # entry's marshalled list, unmarshalled at the first describe_pages: _page_table)
        self._pages: list[tuple] | None = None
        self._pages_raw: memoryview | None = None

    def __repr__(self) -> str:
        return (
            f"ElfInfo({self.path!r}, {len(self.segments)} loads, {len(self.sections)} sections, "
            f"{len(self.sym_addr)} symbols)"
        )

    @property
    def base_vaddr(self) -> int:
        """Page-aligned vaddr of the first PT_LOAD (the one holding the ELF header)."""
        return self._base

    @property
    def end_vaddr(self) -> int:
        """End of the highest PT_LOAD in memory (including its .bss)."""
        return max(s.vaddr + s.memsz for s in self.segments) if self.segments else 0

    def section_at(self, lo: int, hi: int) -> list[Section]:
        """Allocated sections overlapping vaddr range [lo, hi), sorted by address."""
        from bisect import bisect_right  # here and below: not on `remap map`'s path (issue 15)

        i = max(0, bisect_right(self._sec_addr, lo) - 1)
        out = []
        while i < len(self.sections) and self.sections[i].addr < hi:
            s = self.sections[i]
            if s.end > lo and s.end > s.addr:
                out.append(s)
            i += 1
        return out

    def symbol_at(self, lo: int, hi: int) -> str | None:
        """The symbol containing vaddr LO, else the first symbol starting in [lo, hi)."""
        from bisect import bisect_right

        a = self.sym_addr
        i = bisect_right(a, lo) - 1
        # several symbols may start at or before lo; look back over a few for one containing lo
        j = i
        while j >= 0 and j > i - 8:
            if self.sym_end[j] > lo:
                return self._name(j)
            j -= 1
        if i + 1 < len(a) and a[i + 1] < hi:
            return self._name(i + 1)
        return None

    def _name(self, i: int) -> str:
        s, off = self._strs, self._strbase + self.sym_name[i]
        return s[off : s.find(b"\0", off)].decode(errors="replace")

    def strtab(self) -> bytes:
        """The symbols' string table (names at the offsets in sym_name)."""
        return bytes(self._strs[self._strbase : self._strend])

    def describe_pages(self, lo: int, hi: int) -> list[tuple[str | None, str | None, str | None]]:
        """:meth:`describe` of every page in [LO, HI) (page-aligned ELF vaddrs).

        Equal to ``[describe(a) for a in range(lo, hi, PAGE_SIZE)]`` (tests check it on real
        files).  Why not that: a run of present pages in a big library is hundreds of pages
        (~1,800 on a CPython process: most of ``map --json``'s own time, issue 15).  A cache
        entry holds every page's description (:func:`page_table`), so this is a slice of it;
        otherwise :meth:`walk_pages` computes them in one pass."""
        table = self._page_table()
        first = lo - self._base
        if table is not None and first >= 0 and not first % K.PAGE_SIZE:
            i, j = first >> K.PAGE_SHIFT, (hi - self._base + K.PAGE_SIZE - 1) >> K.PAGE_SHIFT
            if j <= len(table):
                return table[i:j]
        return self.walk_pages(lo, hi)

    def _page_table(self) -> list[tuple] | None:
        """The cache entry's page descriptions, unmarshalled once; None without them, or when
        they are not one per page from base_vaddr (then describe_pages computes)."""
        raw = self._pages_raw
        if raw is not None:
            self._pages_raw = None
            import marshal

            try:
                table = marshal.loads(raw)
            except (EOFError, ValueError, TypeError):
                table = None
            if type(table) is list and len(table) == self._page_count():
                self._pages = table
        return self._pages

    def _page_count(self) -> int:
        """Pages from base_vaddr to the end of the highest PT_LOAD, its .bss included."""
        return (self.end_vaddr - self._base + K.PAGE_SIZE - 1) >> K.PAGE_SHIFT

    def walk_pages(self, lo: int, hi: int) -> list[tuple[str | None, str | None, str | None]]:
        """:meth:`describe_pages` computed: the sorted sections and symbols walked alongside
        the pages, each name decoded once -- a fraction of a bisect per page and table."""
        from bisect import bisect_right

        out = []
        append = out.append
        secs, sec_addr, nsec = self.sections, self._sec_addr, len(self.sections)
        a, ends, nsym = self.sym_addr, self.sym_end, len(self.sym_addr)
        names: dict[int, str] = {}  # symbol index -> name: a long function spans many pages
        i = bisect_right(a, lo) - 1  # the last symbol starting at or before the page
        k = max(0, bisect_right(sec_addr, lo) - 1)  # the same for sections
        page_size, base = K.PAGE_SIZE, self._base
        for page in range(lo, hi, page_size):
            top = page + page_size
            if i + 1 < nsym and a[i + 1] <= page:  # dense code: a dozen symbols a page
                i = bisect_right(a, page, i + 1) - 1
            j = i
            stop = i - 8  # as symbol_at: a few back for one containing the page
            while j > stop and j >= 0 and ends[j] <= page:
                j -= 1
            if j > stop and j >= 0:
                symbol = names.get(j)
                if symbol is None:
                    symbol = names[j] = self._name(j)
            elif i + 1 < nsym and a[i + 1] < top:
                symbol = names.get(i + 1)
                if symbol is None:
                    symbol = names[i + 1] = self._name(i + 1)
            else:
                symbol = None
            while k + 1 < nsec and sec_addr[k + 1] <= page:
                k += 1
            if k + 1 >= nsec or sec_addr[k + 1] >= top:  # at most one section starts in the page
                s0 = secs[k] if k < nsec else None
                if s0 is not None and s0.addr <= page and top <= s0.end:  # wholly inside it
                    append(("elf-header" if page == base else s0.kind, s0.name, symbol))
                    continue
            label, section, _ = self.describe(page)
            append((label, section, symbol))
        return out

    def describe(self, vaddr: int) -> tuple[str | None, str | None, str | None]:
        """(label, section, symbol) of the page at ELF vaddr VADDR (page-aligned).

        Label precedence inside one page: elf-header > code > data > rodata > bss, so a page that
        mixes the end of .data with the start of .bss is 'data' (it came from the file).
        """
        lo, hi = vaddr, vaddr + K.PAGE_SIZE
        secs = self.section_at(lo, hi)
        section = None
        best = 4  # index into _PRECEDENCE of the best kind seen in the page
        for s in secs:
            if section is None and s.addr <= lo < s.end:
                section = s.name
            rank = _PRECEDENCE.get(s.kind, 4)
            if rank < best:
                best = rank
        if section is None and secs:
            section = secs[0].name
        symbol = self.symbol_at(lo, hi)
        if lo == self._base:
            return "elf-header", section, symbol
        if best < 4:
            return _KINDS[best], section, symbol
        seg = self.segment_at(lo)
        if seg is None:
            return None, section, symbol
        if seg.flags & K.PF_X:
            return "code", section, symbol
        if seg.flags & K.PF_W:
            past_file = lo >= ((seg.vaddr + seg.filesz + K.PAGE_SIZE - 1) & _PAGE_MASK)
            return ("bss" if past_file else "data"), section, symbol
        return "rodata", section, symbol

    def segment_at(self, vaddr: int) -> Segment | None:
        for s in self.segments:
            if (s.vaddr & _PAGE_MASK) <= vaddr < s.vaddr + s.memsz:
                return s
        return None


_KINDS = ("code", "data", "rodata", "bss")  # a page's label when sections of several kinds share it
_PRECEDENCE = {k: i for i, k in enumerate(_KINDS)}


def _kind(flags: int, is_nobits: bool) -> str:
    if flags & K.SHF_EXECINSTR:
        return "code"
    if flags & K.SHF_WRITE:
        return "bss" if is_nobits else "data"
    return "rodata"


# --------------------------------------------------------------------------- raw ELF64 tables
# include/uapi/linux/elf.h: Elf64_Ehdr after e_ident, Elf64_Phdr, Elf64_Shdr, Elf64_Sym, as
# struct formats: struct is imported by the functions that parse (`remap map` reads cached
# entries and needs none: ~0.7 ms with _struct, issue 15), which cache the compiled formats
_EHDR = "<HHIQQQIHHHHHH"
_EHDR_KEYS = ("e_type e_machine e_version e_entry e_phoff e_shoff e_flags e_ehsize "
              "e_phentsize e_phnum e_shentsize e_shnum e_shstrndx").split()  # fmt: skip
_PHDR, _PHDR_SIZE = "<IIQQQQQQ", 56
_SHDR, _SHDR_SIZE = "<IIQQQQIIQQ", 64
_SYM, _SYM_SIZE = "<IBBHQQ", 24
_RELA = "<QQq"  # Elf64_Rela: r_offset, r_info (sym << 32 | type), r_addend


def class_and_machine(head: bytes) -> tuple[int, int] | None:
    """(EI_CLASS, e_machine) of any ELF file from its first 20 bytes (ELFCLASS64 and EM_X86_64
    for the only processes remap injects into); None when HEAD is not an ELF header."""
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    return head[4], int.from_bytes(head[18:20], "little" if head[5] == K.ELFDATA2LSB else "big")


def _elf64_header(ident: bytes) -> dict[str, int] | None:
    """The ELF header fields of a little-endian ELF64 file from its first 64 bytes; None for
    any other file (not ELF, 32-bit, big-endian)."""
    if len(ident) < 64 or ident[:4] != b"\x7fELF":
        return None
    if ident[4] != K.ELFCLASS64 or ident[5] != K.ELFDATA2LSB:
        return None
    import struct

    return dict(zip(_EHDR_KEYS, struct.unpack_from(_EHDR, ident, 16), strict=True))


def _raw_tables(read, h: dict[str, int]) -> tuple[list[tuple], list[tuple], bytes]:
    """(program headers, section headers, section-name string table) of an ELF64 file whose
    header is H; READ(offset, n) returns the file's bytes there."""
    import struct

    n = h["e_phnum"]
    ph = list(struct.iter_unpack(_PHDR, read(h["e_phoff"], n * h["e_phentsize"])[: n * _PHDR_SIZE]))
    n = h["e_shnum"]
    sh = list(struct.iter_unpack(_SHDR, read(h["e_shoff"], n * h["e_shentsize"])[: n * _SHDR_SIZE]))
    names = b""
    if 0 < h["e_shstrndx"] < len(sh):
        st = sh[h["e_shstrndx"]]
        names = read(st[4], st[5])
    return ph, sh, names


def _cstr(table: bytes, off: int) -> str:
    """The NUL-terminated string at OFF of a string table."""
    return table[off : table.find(b"\0", off)].decode(errors="replace")


def _loads(phdrs: list[tuple]) -> list[Segment]:
    """The PT_LOAD headers among PHDRS (raw Elf64_Phdr tuples)."""
    return [
        Segment(p_offset, p_vaddr, p_filesz, p_memsz, p_flags)
        for p_type, p_flags, p_offset, p_vaddr, _pa, p_filesz, p_memsz, _al in phdrs
        if p_type == K.PT_LOAD
    ]


def _parse(path: str) -> ElfInfo | None:
    """Read an ELF file's PT_LOADs, allocated sections and symbols; None if it is not ELF.

    Why two paths: importing pyelftools alone costs ~50 ms and its construct-based parsing
    ~0.2 ms per section header -- paid on every ``remap`` command, for every mapped library.
    x86_64 files (ELF64 little-endian, the only ones a process here maps) are read with struct;
    anything else goes through pyelftools.  tests/test_residency.py cross-checks the result
    against pyelftools.
    """
    try:
        f = open(path, "rb")
    except OSError:
        return None
    with f:
        try:
            ident = f.read(64)
        except OSError:
            return None
        if ident[:4] != b"\x7fELF":  # a locale archive, a font: `remap map` reads no further
            return None
        import struct

        try:
            h = _elf64_header(ident)
            if h is not None:
                return _parse_raw64(path, f, h)
            from elftools.common.exceptions import ELFError
            from elftools.elf.elffile import ELFFile

            try:
                return _parse_elftools(path, f, ELFFile(f))
            except ELFError:
                return None
        except (ValueError, struct.error, OSError, IndexError):
            return None


def _file_reader(f):
    """READ(offset, n) over an open file (for :func:`_raw_tables`)."""

    def read(off: int, n: int) -> bytes:
        f.seek(off)
        return f.read(n)

    return read


def _parse_raw64(path: str, f, h) -> ElfInfo:
    ph, shdrs, names = _raw_tables(_file_reader(f), h)
    segs = _loads(ph)
    secs = []
    symtab = dynsym = None
    for sh in shdrs:
        sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link = sh[:7]
        if sh_type == K.SHT_SYMTAB:
            symtab = sh
        elif sh_type == K.SHT_DYNSYM:
            dynsym = sh
        if sh_flags & K.SHF_ALLOC and sh_addr and sh_size:
            nobits = sh_type == K.SHT_NOBITS
            if sh_flags & K.SHF_TLS and nobits:  # .tbss takes no address space
                continue
            kind = _kind(sh_flags, nobits)
            secs.append(Section(_cstr(names, sh_name), sh_addr, sh_addr + sh_size, kind))
    secs.sort(key=lambda s: s.addr)
    info = ElfInfo(path, segs, secs)
    tab = symtab if symtab is not None else dynsym
    if tab is not None and tab[6] < len(shdrs):
        strtab = shdrs[tab[6]]
        _load_symbols(info, f, (tab[4], tab[5]), (strtab[4], strtab[5]))
    return info


def _parse_elftools(path: str, f, elf) -> ElfInfo:
    segs = [
        Segment(p["p_offset"], p["p_vaddr"], p["p_filesz"], p["p_memsz"], p["p_flags"])
        for p in elf.iter_segments()
        if p["p_type"] == "PT_LOAD"
    ]
    secs = []
    for s in elf.iter_sections():
        h = s.header
        if h["sh_flags"] & K.SHF_ALLOC and h["sh_addr"] and h["sh_size"]:
            nobits = h["sh_type"] == "SHT_NOBITS"
            if h["sh_flags"] & K.SHF_TLS and nobits:
                continue
            kind = _kind(h["sh_flags"], nobits)
            secs.append(Section(s.name, h["sh_addr"], h["sh_addr"] + h["sh_size"], kind))
    secs.sort(key=lambda s: s.addr)
    return ElfInfo(path, segs, secs)


def _load_symbols(info: ElfInfo, f, tab: tuple[int, int], strtab: tuple[int, int]) -> None:
    """Read Elf64_Sym entries (offset, size of the table and its string table) directly."""
    import struct

    f.seek(tab[0])
    raw = f.read(tab[1])
    f.seek(strtab[0])
    strs = f.read(strtab[1])
    # names stay offsets into the string table until a page asks for one (~18,000 symbols in
    # a CPython binary; decoding them all would cost more than the rest of the snapshot)
    syms = sorted(
        (value, min(value + size, K.MASK64), name)  # an end past 2**64: a malformed file
        for name, info_b, _o, shndx, value, size in struct.iter_unpack(
            _SYM, raw[: len(raw) // _SYM_SIZE * _SYM_SIZE]
        )
        if value and shndx and (info_b & 0xF) in (K.STT_FUNC, K.STT_OBJECT)
    )
    info._strs = strs
    pack = struct.Struct(f"={len(syms)}Q").pack
    info.sym_addr = memoryview(pack(*[s[0] for s in syms])).cast("Q")
    info.sym_end = memoryview(pack(*[s[1] for s in syms])).cast("Q")
    info.sym_name = memoryview(pack(*[s[2] for s in syms])).cast("Q")


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
        info = _load_cached(path, st)
        if info is None:
            info = _parse(path)
            if info is not None:
                _store_cached(info, st)
        _cache[key] = info
    return _cache[key]


# --------------------------------------------------------------------------- on-disk cache
# Why: the symbol table of a big library (libpython: 14,000 symbols) costs ~20 ms to read and
# sort, paid by every `remap map` on every process that maps it.  The parsed result is kept in
# $REMAP_ELF_CACHE (default $XDG_CACHE_HOME/remap/elf, ~/.cache/remap/elf; "off" disables it),
# one file per file version: named by device, inode, size, mtime and ctime, so a rewritten,
# replaced or touched file is parsed again.  A cache that cannot be read or written is ignored:
# it only ever saves time.  Layout (format 4): the header's length (8 bytes), the header
# (marshal: format, path, loads, sections, the byte lengths of the three symbol columns, of
# the string table and of the page table), zeros to a multiple of 8, then the columns and the
# string table as they are in memory, then the page table (marshal: :func:`page_table`).  It
# is mapped, not read: the columns and names are used in place, so only the pages a lookup
# touches are faulted in (libpython's entry is 700 kB; a page fault costs ~5-7 us on this VM,
# and `remap map`'s table never looks a library's symbol up: issue 15).
# Bounded: each store prunes the directory (_prune_cache): entries of another format written
# over _OTHER_FORMAT_STALE_S ago, earlier versions of the same file (same device and inode),
# temporaries a killed writer left, and then the oldest-written entries beyond
# CACHE_MAX_ENTRIES or CACHE_MAX_BYTES.
_CACHE_FORMAT = 4  # 4: + the page table; 3: marshal header, then the columns and names raw
CACHE_MAX_ENTRIES = 1024
CACHE_MAX_BYTES = 128 << 20
_TMP_STALE_S = 3600  # a .tmp this old belongs to no writer still running
# Another format's entry is another remap version's, maybe in use (a checkout beside an
# installed remap): pruned at once, each version's store evicted the other's entries and both
# parsed every mapped library again at each `remap map` (~40 ms: 105 ms instead of 45 when a
# format-3 and a format-4 remap took turns on one process).  Entries are written once, so this
# bounds that to once an hour per file.
_OTHER_FORMAT_STALE_S = 3600


def cache_dir() -> str | None:
    """Where parsed ELF files are kept, or None when the cache is off."""
    d = os.environ.get("REMAP_ELF_CACHE")
    if d == "off":
        return None
    if d:
        return d
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "remap", "elf")


def _cache_file(st: os.stat_result) -> str | None:
    d = cache_dir()
    if d is None:
        return None
    # the format leads the name: two remap versions sharing a cache keep their own entries
    name = f"v{_CACHE_FORMAT}-{st.st_dev:x}-{st.st_ino:x}-{st.st_size:x}"
    name += f"-{st.st_mtime_ns:x}-{st.st_ctime_ns:x}"
    return os.path.join(d, name)


def _load_cached(path: str, st: os.stat_result) -> ElfInfo | None:
    import marshal
    import mmap

    fn = _cache_file(st)
    if fn is None:
        return None
    try:
        with open(fn, "rb") as f:
            st_c = os.fstat(f.fileno())
            if st_c.st_uid != os.geteuid() or st_c.st_mode & 0o022:
                return None  # only our own, unshared files: the fold trusts these labels
            if st_c.st_size < 8:
                return None
            # entries are replaced, never rewritten in place (_store_cached): it cannot shrink
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        n = int.from_bytes(m[:8], "little")
        fmt, cpath, segs, secs, na, ne, nn, ns, np = marshal.loads(m[8 : 8 + n])
        if fmt != _CACHE_FORMAT or cpath != path:  # another format, or a hard link's other name
            return None
        off = 8 + n + (-n % 8)
        if not (na == ne == nn and na % 8 == 0 and off + 3 * na + ns + np == len(m)):
            return None  # columns not whole words, of unequal lengths, or cut short
        info = ElfInfo(path, [Segment(*s) for s in segs], [Section(*s) for s in secs])
        view = memoryview(m)
        info.sym_addr = view[off : off + na].cast("Q")
        info.sym_end = view[off + na : off + 2 * na].cast("Q")
        info.sym_name = view[off + 2 * na : off + 3 * na].cast("Q")
        info._strs, info._strbase, info._strend = m, off + 3 * na, off + 3 * na + ns
        info._pages_raw = view[off + 3 * na + ns :] if np else None
    except (OSError, EOFError, ValueError, TypeError):
        return None
    return info


def cache_entry(info: ElfInfo) -> bytes:
    """INFO as a cache entry (the layout above)."""
    import marshal

    cols = [c.tobytes() for c in (info.sym_addr, info.sym_end, info.sym_name)]
    strs = info.strtab()
    pages = page_table(info)
    head = marshal.dumps((
        _CACHE_FORMAT, info.path, [tuple(s) for s in info.segments],
        [tuple(s) for s in info.sections], *map(len, cols), len(strs), len(pages),
    ))  # fmt: skip
    parts = [len(head).to_bytes(8, "little"), head, bytes(-len(head) % 8), *cols, strs, pages]
    return b"".join(parts)


_PAGE_TABLE_MAX = 1 << 16  # pages (256 MiB of loads): libpython's ~1,400


def page_table(info: ElfInfo) -> bytes:
    """The (label, section, symbol) of every page of INFO from its base_vaddr to the end of
    its highest PT_LOAD, as one marshalled list (equal tuples as one object: marshal writes a
    repeat as a reference).  Why stored: describing a library's present pages page by page is
    ~3 us a page here (libpython's 1,300 on a CPython process, issue 15); a slice of this is
    nothing.  Empty (not stored) past _PAGE_TABLE_MAX pages: a huge .bss would cost more to
    describe whole than its few present pages do."""
    import marshal

    if info._page_count() > _PAGE_TABLE_MAX:
        return b""
    base = info.base_vaddr
    same: dict[tuple, tuple] = {}
    pages = info.walk_pages(base, base + info._page_count() * K.PAGE_SIZE)
    return marshal.dumps([same.setdefault(d, d) for d in pages])


def _store_cached(info: ElfInfo, st: os.stat_result) -> None:
    fn = _cache_file(st)
    if fn is None:
        return
    data = cache_entry(info)
    tmp = f"{fn}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(fn), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, fn)  # readers see the old file or the whole new one
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return
    _prune_cache(os.path.dirname(fn), os.path.basename(fn))


def _prune_cache(d: str, kept: str) -> None:
    """Remove what no load can use and what exceeds the bounds (the comment above
    _CACHE_FORMAT); KEPT, the entry just written, stays.  Runs on a cache miss only, beside a
    parse that costs far more.  Errors are ignored: another remap may be pruning too."""
    import time

    fmt = f"v{_CACHE_FORMAT}-"
    same = kept.rsplit("-", 3)[0] + "-"  # v3-DEV-INO-: the other versions of that file
    now = time.time()
    live: list[tuple[float, int, str]] = []  # (mtime, size, name) of current entries
    try:
        with os.scandir(d) as it:
            for e in it:
                name = e.name
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if name.endswith(".tmp"):
                    stale = now - st.st_mtime > _TMP_STALE_S
                else:
                    stale = (
                        not name.startswith(fmt) and now - st.st_mtime > _OTHER_FORMAT_STALE_S
                    ) or (name != kept and name.startswith(same))
                if stale:
                    _unlink(e.path)
                elif name != kept and not name.endswith(".tmp"):
                    live.append((st.st_mtime, st.st_size, name))
    except OSError:
        return
    live.sort()  # oldest first
    count, total = len(live) + 1, sum(size for _, size, _ in live)
    for _, size, name in live:
        if count <= CACHE_MAX_ENTRIES and total <= CACHE_MAX_BYTES:
            break
        _unlink(os.path.join(d, name))
        count, total = count - 1, total - size


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def load_bias(info: ElfInfo, lowest_start: int, lowest_offset: int) -> int:
    """Load bias from the file's lowest mapping (start address and file offset)."""
    return lowest_start - lowest_offset - info.base_vaddr
