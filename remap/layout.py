"""From a profile to a linker script: pack a program's steady state into the fewest 4 kB pages.

Why generated: the seed author hand-sorted functions "from rarely used to core essential".  A
profile (remap.profile) says exactly which functions the steady state executes and which
objects it touches; the program's link inputs (objects and static archives, musl's libc.a
included), built with -ffunction-sections -fdata-sections, hold each of those in its own input
section.  This module names those input sections in a linker script that puts, into one
page-aligned RWX block of K whole pages (K = 1 for the demo bot) bounded by ``__hot_start``/
``__hot_end`` (the contract of remap.fold.hotpage, same as csrc/targets/minibot-hotpage.ld):

1. the executed functions, plus the functions their code can call or jump to directly (found
   from relocations: a path the profile did not take -- the bot's exit on EOF -- must not jump
   into an unmapped page after the fold);
2. the read-only data they touched (profile) or reference (relocations);
3. ALL writable data of the program (so the fold never has to discard data);
4. a stack reserve ``[__hot_stack_lo, __hot_stack_hi)``: the rest of the block, at least the
   measured peak depth plus a margin (ASSERTed at link time).

Everything else goes into a cold R-X segment after the block.  The output is deterministic
(the same profile and inputs give the same bytes), every hot input section has a comment
saying why it is there, a comment lists what lands in each page, and a block larger than a
``max_pages`` limit is refused with its byte budget and the largest items to change.

Example::

    >>> prof = Profile.load("bot.profile.json")
    >>> lay = plan_layout(prof, [Path("minibot-auto.o"), musl_libc()])
    >>> lay.budget                # bytes: code, rodata, data, stack (minimum), total
    {'code': 1262, 'rodata': 196, 'data': 1550, 'stack_min': 1040, 'total': 4048, 'page': 4096,
     'pages': 1, 'block': 4096, 'outside': 0}
    >>> Path("bot.ld").write_text(lay.script)
"""

from __future__ import annotations

import hashlib
import io
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from . import elftables
from . import kconst as K
from .errors import ExperimentError, UnsafeStep, UsageError
from .kconst import PAGE_SIZE

if TYPE_CHECKING:  # only its attributes are read: importing it would load the ptrace layer
    from .profile import Profile

ARGV_ALLOWANCE = 128  # the fold moves the argv strings into the reserve too
# + 64: frames keep alignment; K.FOLD_MARGIN: what remap.fold.singlepage.single_page keeps free
DEFAULT_MARGIN = K.RED_ZONE + K.FOLD_MARGIN + ARGV_ALLOWANCE + 64
RELRO = ".data.rel.ro"
# .data.* but not .data.rel.ro / .data.rel.ro.* (ld matches input sections with fnmatch): the
# writable data taken whole, while relro goes cold unless the profile touched it
HOT_DATA = (
    ".data .data.[!r]* .data.r .data.r[!e]* .data.re .data.re[!l]* .data.rel "
    ".data.rel[!.]* .data.rel.[!r]* .data.rel.r .data.rel.r[!o]* .data.rel.ro[!.]*"
)
COLD_TEXT = ".text.unlikely .text.*_unlikely .text.unlikely.* .text.startup .text.startup.*"


# ---------------------------------------------------------------------------- link inputs
@dataclass
class InputSection:
    """One section of one input object: what the linker script can name."""

    file: str  # the input as named on the link line (path of a .o or .a)
    member: str | None  # archive member, or None for a plain object
    index: int
    name: str
    size: int
    align: int
    flags: int

    @property
    def pattern(self) -> str:
        """The linker-script input section description naming exactly this section."""
        f = os.path.basename(self.file)
        where = f"*{f}:{self.member}" if self.member else f"*{f}"
        return f"{where}({self.name})"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.file, self.member or "", self.name)


class ObjectFile:
    """A relocatable object (a .o, or one member of a .a): its sections and symbols read with
    :class:`remap.elftables.ElfTables`, its relocations (which ElfTables does not read) parsed
    lazily with pyelftools."""

    def __init__(self, file: str, member: str | None, data: bytes):
        self.file, self.member, self.data = file, member, data

    @cached_property
    def elf(self):
        """The pyelftools view, for relocations only."""
        from elftools.elf.elffile import ELFFile

        return ELFFile(io.BytesIO(self.data))

    @cached_property
    def tables(self) -> elftables.ElfTables | None:
        """Section headers and .symtab (None: not an ELF64 little-endian file)."""
        try:
            return elftables.ElfTables(self.data)
        except ValueError:
            return None

    @cached_property
    def sections(self) -> list[InputSection]:
        return [
            InputSection(self.file, self.member, s.index, s.name, s.size, s.align, s.flags)
            for s in (self.tables.sections if self.tables else [])
        ]

    @property
    def symbols(self) -> list[elftables.Symbol]:
        """Every .symtab entry ([] for a file that is not ELF64).

        Read with struct (elftables), not pyelftools: finding one static function means reading
        the symbol tables of all ~1,300 members of libc.a, ~40x faster this way."""
        return self.tables.symbols if self.tables else []

    def defines(self, name: str, *, local_ok: bool = True) -> InputSection | None:
        for sym in self.symbols:
            if sym.name == name and sym.in_section and sym.type in _DEFINING:
                if sym.bind == K.STB_LOCAL and not local_ok:
                    continue
                return self.sections[sym.shndx]
        return None

    def name_in(self, sec: InputSection) -> str:
        """The first function or object defined in SEC (for comments), else its name."""
        for sym in self.symbols:
            if sym.shndx == sec.index and sym.name and sym.type in (K.STT_FUNC, K.STT_OBJECT):
                return sym.name
        return sec.name

    def relocation_targets(self, sec: InputSection) -> list[tuple[InputSection | None, str]]:
        """(section in this object or None, symbol name) for each relocation of SEC."""
        out = []
        for rs in self.elf.iter_sections():
            if rs["sh_type"] not in ("SHT_RELA", "SHT_REL") or rs["sh_info"] != sec.index:
                continue
            symtab = self.elf.get_section(rs["sh_link"])
            for r in rs.iter_relocations():
                sym = symtab.get_symbol(r["r_info_sym"])
                shndx = sym["st_shndx"]
                local = self.sections[shndx] if isinstance(shndx, int) and shndx else None
                out.append((local, sym.name))
        return out


_DEFINING = (K.STT_FUNC, K.STT_OBJECT, K.STT_NOTYPE)  # symbol types a script can place


def read_archive(path: str) -> list[ObjectFile]:
    """Members of a System V/GNU ``ar`` archive (long names resolved), in archive order."""
    data = Path(path).read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise UsageError(f"{path}: not an ar archive")
    pos, longnames, out = 8, b"", []
    while pos + 60 <= len(data):
        hdr = data[pos : pos + 60]
        name = hdr[:16].decode().strip()
        size = int(hdr[48:58].decode().strip())
        body = data[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size & 1)
        if name == "//":
            longnames = body
            continue
        if name in ("/", "/SYM64/"):
            continue
        if name.startswith("/") and name[1:].isdigit():
            off = int(name[1:])
            name = longnames[off : longnames.index(b"/\n", off)].decode()
        out.append(ObjectFile(path, name.rstrip("/"), body))
    return out


class LinkInputs:
    """Every object of the link, plain objects first (they win symbol lookups, as in ld)."""

    def __init__(self, paths: list[Path]):
        self.objects: list[ObjectFile] = []
        self.archives: list[ObjectFile] = []
        for p in paths:
            if not p.is_file():
                raise UsageError(f"link input {p} does not exist")
            if p.read_bytes()[:8] == b"!<arch>\n":
                self.archives += read_archive(str(p))
            else:
                self.objects.append(ObjectFile(str(p), None, p.read_bytes()))
        self._global: dict[str, list[ObjectFile]] | None = None

    def _globals(self) -> dict[str, list[ObjectFile]]:
        """Global and weak definitions of archive members, by name, in archive order."""
        if self._global is None:
            self._global = {}
            for o in self.archives:
                for sym in o.symbols:
                    if sym.bind != K.STB_LOCAL and sym.in_section:
                        owners = self._global.setdefault(sym.name, [])
                        if not owners or owners[-1] is not o:
                            owners.append(o)
        return self._global

    def find_sized(self, name: str, size: int) -> list[tuple[ObjectFile, InputSection]]:
        """Every definition of NAME whose symbol is SIZE bytes, or [find(NAME)].

        Why: in an archive the first member defining a name is not always the one linked --
        musl's libc.a defines __libc_malloc_impl weakly in lite_malloc.lo and strongly in
        malloc.lo, and several members carry their own 3-byte ``dummy`` behind the same weak
        alias.  The profiled executable says how big the function that ran was: each
        definition of that size is taken (an unlinked one costs nothing in the block)."""
        found = []
        for o in self.objects + self._globals().get(name, []):
            for sym in o.symbols:
                if sym.name == name and sym.in_section and sym.type in _DEFINING:
                    if sym.size == size and (sec := o.sections[sym.shndx]) is not None:
                        found.append((o, sec))
                    break
        return found or [self.find(name)]

    def find(self, name: str, near: ObjectFile | None = None) -> tuple[ObjectFile, InputSection]:
        """The object and input section defining symbol NAME (a local in NEAR first)."""
        if near is not None and (s := near.defines(name)):
            return near, s
        for o in self.objects:
            if s := o.defines(name):
                return o, s
        for o in self._globals().get(name, [])[:1]:  # the first member wins, as in ld
            if s := o.defines(name, local_ok=False):
                return o, s
        for o in self.archives:  # a static function inside some member: rare, slow path
            if s := o.defines(name):
                return o, s
        raise KeyError(name)


# ---------------------------------------------------------------------------- the plan
@dataclass
class Entry:
    """One hot input section and why it is hot."""

    section: InputSection
    why: str


@dataclass
class Layout:
    code: list[Entry]
    rodata: list[Entry]
    data_bytes: int  # every writable byte of the program (from the profiled executable)
    data_sections: dict[str, tuple[int, int]]  # output section -> (size, alignment)
    stack_min: int
    budget: dict[str, int]
    script: str = ""
    notes: list[str] = field(default_factory=list)
    pages: list[dict] = field(default_factory=list)  # what lands in each page of the block
    closed: bool = True  # every function hot code can call directly is in the block

    def to_json(self) -> dict:
        return {
            "code": [
                {"input": e.section.pattern, "size": e.section.size, "why": e.why}
                for e in self.code
            ],  # fmt: skip
            "rodata": [
                {"input": e.section.pattern, "size": e.section.size, "why": e.why}
                for e in self.rodata
            ],  # fmt: skip
            "data_sections": self.data_sections,
            "stack_min": self.stack_min,
            "budget": self.budget,
            "pages": self.pages,
            "script_sha256": hashlib.sha256(self.script.encode()).hexdigest(),
            "notes": self.notes,
        }


def _is_code(s: InputSection) -> bool:
    return bool(s.flags & K.SHF_EXECINSTR) and bool(s.flags & K.SHF_ALLOC)


def _is_relro(name: str) -> bool:
    """.data.rel.ro (const data holding addresses): written only by a dynamic loader's
    relocations, i.e. never in the static, position-dependent link this script makes (musl
    -static -no-pie): read-only data, taken only where the steady state touches it."""
    return name == RELRO or name.startswith(RELRO + ".")


def _is_rodata(s: InputSection) -> bool:
    if not s.flags & K.SHF_ALLOC or s.flags & K.SHF_EXECINSTR or not s.size:
        return False
    return not s.flags & K.SHF_WRITE or _is_relro(s.name)


def _placed(entries: list[Entry], at: int) -> int:
    for e in entries:
        a = max(e.section.align, 1)
        at = (at + a - 1) // a * a + e.section.size
    return at


MIN_CONTENT = 4  # bytes an unnamed read must hold to be looked up by content
MAX_HOT_PAGES = 256  # 1 MiB: beyond that a "hot block" is the whole program


def plan_layout(
    prof: Profile,
    inputs: list[Path],
    *,
    margin: int = DEFAULT_MARGIN,
    closure: bool = True,
    max_pages: int | None = None,
) -> Layout:
    """Choose the hot input sections for PROF from INPUTS and write the script (Layout.script).

    The hot block is the fewest whole pages that hold the hot code, its rodata, all writable
    data and the stack reserve (K = 1 is the single-page case); ``Layout.pages`` (and the
    script's comments) say what lands in each page.
    margin: bytes of stack reserve beyond the measured peak depth (default: red zone + the
      fold's own margin + room for the argv strings it moves in + alignment).
    closure: also take functions that hot code calls/jumps to directly but the profile never
      saw run (cold-path exits); without it such a path would fault after the fold.
    max_pages: refuse a block of more pages than this (None: no limit below MAX_HOT_PAGES).
    Raises UsageError when a profiled function is not in INPUTS, UnsafeStep with the byte
    budget and the largest items when the block does not fit in MAX_PAGES pages.
    """
    limit = MAX_HOT_PAGES if max_pages is None else max_pages
    if not 1 <= limit <= MAX_HOT_PAGES:
        raise UsageError(f"max_pages must be 1..{MAX_HOT_PAGES} (got {max_pages})")
    li = LinkInputs(inputs)
    hot = _HotSet()
    _take_executed(hot, prof, li)
    _take_touched_rodata(hot, prof, li)
    _take_closure(hot, li, closure)
    data_sections = {
        n: (v[1], v[3] if len(v) > 3 else 8)  # (size, alignment)
        for n, v in sorted(prof.sections.items(), key=lambda kv: (kv[1][0], kv[0]))
        if v[2] & K.SHF_WRITE and not n.startswith(".hot.stack") and not _is_relro(n)
    }
    data_bytes = sum(v[0] for v in data_sections.values())
    stack_min = (_stack_need(prof, closure) + margin + 15) // 16 * 16
    code_l, ro_l = list(hot.code.values()), list(hot.rodata.values())
    budget = _budget(code_l, ro_l, data_sections, stack_min)
    budget["outside"] = _outside_bytes(prof)
    if budget["pages"] > limit:
        raise UnsafeStep(_refusal(prof, budget, limit, margin, code_l, ro_l, data_sections))
    lay = Layout(code_l, ro_l, data_bytes, data_sections, stack_min, budget, closed=closure)
    lay.pages = _page_map(code_l, ro_l, data_sections, budget)
    lay.script = render_script(prof, lay)
    return lay


OPEN_TABLES_ALLOWANCE = 2048  # exec's tables and environment, moved with an open block's stack


def _stack_need(prof: Profile, closure: bool) -> int:
    """Stack bytes the reserve must hold.  A closed block keeps the frames below the
    steady-state root only (it never returns: the rest is dropped).  An open block may return
    into cold callers (agetty's read returns into get_logname once a name is typed), so the
    fold moves every live frame, exec's tables and the environment: the depth from
    start_stack plus OPEN_TABLES_ALLOWANCE."""
    if closure or not prof.stack.depth_from_start:
        return prof.stack.peak_depth
    return max(prof.stack.peak_depth, prof.stack.depth_from_start + OPEN_TABLES_ALLOWANCE)


def estimate_budget(prof: Profile, *, margin: int = DEFAULT_MARGIN) -> dict[str, int]:
    """The hot block's budget from the profile alone, when the program's link inputs are not
    at hand (a Debian build that keeps no objects): the functions that ran at their sizes in
    the profiled executable, the read-only objects and unnamed bytes they read, all writable
    data, the stack reserve -- the executed-only (``closure=False``) block, alignment aside.
    Same keys as Layout.budget, plus ``estimate`` = 1."""
    code = sum(f.size for f in prof.functions if not f.name.endswith("@plt"))
    ro = 0
    for d in prof.data:
        flags = prof.sections.get(d.section, [0, 0, K.SHF_WRITE])[2]
        if flags & K.SHF_WRITE and not _is_relro(d.section):
            continue
        ro += sum(n for _a, n in d.spans) if d.name.endswith(" (unnamed)") else d.size
    data = sum(
        v[1]
        for n, v in prof.sections.items()
        if v[2] & K.SHF_WRITE and not n.startswith(".hot.stack") and not _is_relro(n)
    )
    stack_min = (_stack_need(prof, False) + margin + 15) // 16 * 16
    total = (code + ro + data + 15) // 16 * 16 + stack_min
    pages = max(1, -(-total // PAGE_SIZE))
    return {"code": code, "rodata": ro, "data": data, "stack_min": stack_min, "total": total,
            "page": PAGE_SIZE, "pages": pages, "block": pages * PAGE_SIZE,
            "outside": _outside_bytes(prof), "estimate": 1}  # fmt: skip


def _outside_bytes(prof: Profile) -> int:
    """Bytes of the pages the steady state touched outside the executable and its stack (heap,
    anonymous mappings; reported by page by remap.profile): data no linker script can move
    into the block, which stays resident beside it.  vvar is not counted (never in RSS)."""
    return sum(
        d.size for d in prof.data if d.section not in prof.sections and d.section != "[vvar]"
    )


def _refusal(
    prof: Profile, b: dict[str, int], limit: int, margin: int, code: list[Entry],
    rodata: list[Entry], data_sections: dict[str, tuple[int, int]],
) -> str:  # fmt: skip
    """The one-line refusal: the budget by class, how many bytes are over, and the largest
    items to change (a function to make smaller or colder, a buffer to shrink)."""
    cap = limit * PAGE_SIZE
    where = "one page" if limit == 1 else f"{limit} pages ({cap} B)"
    items = [(e.section.size, f"code {_label(e)} {e.section.size} B") for e in code]
    items += [(e.section.size, f"rodata {_label(e)} {e.section.size} B") for e in rodata]
    items += [(n, f"writable {name} {n} B") for name, (n, _a) in data_sections.items()]
    items.append((b["stack_min"], f"stack reserve {b['stack_min']} B"))
    largest = ", ".join(t for _n, t in sorted(items, key=lambda x: (-x[0], x[1]))[:5])
    return (
        f"the hot block does not fit in {where}: code {b['code']} B + rodata {b['rodata']} B "
        f"+ writable data {b['data']} B + stack {b['stack_min']} B (peak depth "
        f"{prof.stack.peak_depth} + margin {margin}) = {b['total']} B > {cap} B "
        f"({b['total'] - cap} B over, {b['pages']} pages needed); largest: {largest}"
    )


@dataclass
class _HotSet:
    """The hot input sections chosen so far, by key, and the object each comes from."""

    code: dict[tuple, Entry] = field(default_factory=dict)
    rodata: dict[tuple, Entry] = field(default_factory=dict)
    owner: dict[tuple, ObjectFile] = field(default_factory=dict)

    def add(self, into: dict[tuple, Entry], o: ObjectFile, s: InputSection, why: str) -> None:
        into[s.key] = Entry(s, why)
        self.owner[s.key] = o


def _take_executed(hot: _HotSet, prof: Profile, li: LinkInputs) -> None:
    """Every function the profile saw run, in the order it first ran (UsageError naming those
    the link inputs do not define)."""
    missing = []
    _refuse_dynamic(prof)
    for f in sorted(prof.functions, key=lambda f: (f.first, f.name)):
        try:
            defs = li.find_sized(f.name, f.size)
        except KeyError:
            missing.append(f.name)
            continue
        for o, s in defs:
            if s.key not in hot.code:
                why = f"{f.name}: executed {f.steps} instructions while profiled"
                hot.add(hot.code, o, s, why)
    if missing:
        raise UsageError(
            f"profiled functions not defined in the link inputs: {', '.join(sorted(missing))} "
            "(pass every object and archive of the program with --inputs)"
        )


def _refuse_dynamic(prof: Profile) -> None:
    """A dynamically linked program runs its libc in a shared library no script of its own
    link can pack: refused with what it called there (its PLT stubs, named for their
    targets by remap.profile) and the way out (link it statically, musl's libc.a as input)."""
    plt = sorted({f.name for f in prof.functions if f.name.endswith("@plt")})
    libs = {k: v for k, v in prof.outside.items() if k.startswith("/")}
    if plt or libs:
        steps = ", ".join(f"{os.path.basename(k)} {v} steps" for k, v in sorted(libs.items()))
        more = f" (+{len(plt) - 12} more)" if len(plt) > 12 else ""
        raise UsageError(
            f"{os.path.basename(prof.exe)} is dynamically linked: its steady state ran "
            f"{steps or 'code outside the executable'} through {len(plt)} PLT entries "
            f"({', '.join(plt[:12])}{more}); a linker script cannot pack a shared library's "
            "code: profile a static build (musl's libc.a among --inputs) instead"
        )


def _take_touched_rodata(hot: _HotSet, prof: Profile, li: LinkInputs) -> None:
    """The named read-only objects the profile saw read (writable data is taken whole)."""
    for d in prof.data:
        if d.section not in prof.sections:
            continue  # the stack, the heap: not in the link
        if prof.sections[d.section][2] & K.SHF_WRITE and not _is_relro(d.section):
            continue  # writable data is taken whole
        if d.name.endswith(" (unnamed)"):
            _take_unnamed(hot, prof, li, d)
            continue
        try:
            o, s = li.find(d.name, None)
        except KeyError:
            continue
        if _is_rodata(s) and s.key not in hot.rodata:
            by = ", ".join(d.by) or "?"
            hot.add(hot.rodata, o, s, f"{d.name}: read {d.reads} times by {by}")


def _take_unnamed(hot: _HotSet, prof: Profile, li: LinkInputs, d) -> None:
    """Unnamed read-only bytes the profile saw read (string literals, jump tables): each is
    looked up by content, as a NUL-terminated string read from the profiled executable on
    disk, in the rodata sections of the objects whose code is hot.

    Why by content: ld merges string literals, so the literal ``strncmp`` read may be the
    copy of an object other than the one whose code references it; and code a profile saw
    run reaches data through pointers in .data too, which the relocation closure of the hot
    code does not follow.  A miss costs nothing (the closure may have it already); a wrong
    hit only a few bytes in the block.  Of the sections holding it, the smallest is taken."""
    try:
        elf = elftables.open_elf(prof.exe)
    except OSError:
        return  # the profiled executable is gone: the relocation closure is all there is
    if elf is None or not d.spans:
        return
    owners = {id(o): o for o in hot.owner.values()}.values()
    pool = [(o, sec) for o in owners for sec in o.sections if _is_rodata(sec)]
    blobs = {}
    for addr, size in d.spans:
        raw = elf.bytes_at(addr, 256)
        end = raw.find(b"\0", size - 1) if size else -1
        want = raw[: end + 1] if 0 <= end else raw[:size]
        if len(want.rstrip(b"\0")) < MIN_CONTENT:
            continue  # "" or one byte: in every string table, proves nothing
        hits = []
        for o, sec in pool:
            if sec.key not in blobs:
                hdr = o.tables.sections[sec.index] if o.tables else None
                blobs[sec.key] = o.data[hdr.offset : hdr.offset + hdr.size] if hdr else b""
            if want in blobs[sec.key]:
                hits.append((o, sec))
        if hits and not any(sec.key in hot.rodata for _o, sec in hits):
            o, sec = min(hits, key=lambda h: (h[1].size, h[1].key))  # the tightest fit
            by = ", ".join(d.by) or "?"
            hot.add(hot.rodata, o, sec, f"{want[:24]!r}: read by {by} (found by content)")


def _take_closure(hot: _HotSet, li: LinkInputs, closure: bool) -> None:
    """The relocation closure: rodata the hot code references and (CLOSURE) code it can reach
    directly, transitively."""
    work = list(hot.code)
    while work:
        k = work.pop(0)
        o = hot.owner[k]
        src = hot.code.get(k) or hot.rodata.get(k)
        for local, sym in o.relocation_targets(src.section):
            try:
                to, ts = (o, local) if local is not None else li.find(sym, o)
            except KeyError:
                continue
            what = sym or to.name_in(ts)
            if _is_rodata(ts) and ts.key not in hot.rodata:
                hot.add(hot.rodata, to, ts, f"{what}: referenced by {_label(src)}")
                work.append(ts.key)
            elif closure and _is_code(ts) and ts.key not in hot.code and ts.size:
                why = f"{what}: reachable from {_label(src)} (not executed while profiled)"
                hot.add(hot.code, to, ts, why)
                work.append(ts.key)


def _budget(
    code: list[Entry], rodata: list[Entry], data_sections: dict[str, tuple[int, int]],
    stack_min: int,
) -> dict[str, int]:  # fmt: skip
    """Bytes of each part of the hot block, placed as ld places them (each at its alignment),
    and the whole pages they need (``pages``; ``block`` = pages * 4096)."""
    code_end = _placed(code, 0)
    ro_end = _placed(rodata, code_end)
    data_end = ro_end
    for size, align in data_sections.values():  # in address order, each at its alignment
        a = max(align, 8)
        data_end = (data_end + a - 1) // a * a + size
    total = (data_end + 15) // 16 * 16 + stack_min
    pages = max(1, -(-total // PAGE_SIZE))
    return {
        "code": code_end,
        "rodata": ro_end - code_end,
        "data": data_end - ro_end,
        "stack_min": stack_min,
        "total": total,
        "page": PAGE_SIZE,
        "pages": pages,
        "block": pages * PAGE_SIZE,
    }


def _page_map(
    code: list[Entry], rodata: list[Entry], data_sections: dict[str, tuple[int, int]],
    b: dict[str, int],
) -> list[dict]:  # fmt: skip
    """What lands in each page of the block, placed as _budget places it: per page the code,
    rodata and writable sections that start or run in it, and its bytes of stack reserve."""
    pages: list[dict] = [
        {"page": i, "code": [], "rodata": [], "data": [], "stack": 0} for i in range(b["pages"])
    ]

    def put(kind: str, name: str, at: int, size: int) -> None:
        for i in range(at // PAGE_SIZE, (at + max(size, 1) - 1) // PAGE_SIZE + 1):
            if i < len(pages) and name not in pages[i][kind]:
                pages[i][kind].append(name)

    at = 0
    for kind, entries in (("code", code), ("rodata", rodata)):
        for e in entries:
            a = max(e.section.align, 1)
            at = (at + a - 1) // a * a
            put(kind, _label(e), at, e.section.size)
            at += e.section.size
    for name, (size, align) in data_sections.items():
        a = max(align, 8)
        at = (at + a - 1) // a * a
        put("data", name, at, size)
        at += size
    lo = (at + 15) // 16 * 16
    for p in pages:
        p_lo, p_hi = p["page"] * PAGE_SIZE, (p["page"] + 1) * PAGE_SIZE
        p["stack"] = max(0, p_hi - max(p_lo, lo))
    return pages


def _label(e: Entry) -> str:
    return e.why.split(":", 1)[0]


# ---------------------------------------------------------------------------- the script
_TAIL = """
  .comment 0 : { *(.comment) }
  .symtab 0 : { *(.symtab) }
  .strtab 0 : { *(.strtab) }
  .shstrtab 0 : { *(.shstrtab) }
  .debug_aranges 0 : { *(.debug_aranges) }
  .debug_info 0 : { *(.debug_info .gnu.linkonce.wi.*) }
  .debug_abbrev 0 : { *(.debug_abbrev) }
  .debug_line 0 : { *(.debug_line .debug_line.* .debug_line_end) }
  .debug_frame 0 : { *(.debug_frame) }
  .debug_str 0 : { *(.debug_str) }
  .debug_line_str 0 : { *(.debug_line_str) }
  .debug_loclists 0 : { *(.debug_loclists) }
  .debug_rnglists 0 : { *(.debug_rnglists) }
  .debug_loc 0 : { *(.debug_loc) }
  .debug_ranges 0 : { *(.debug_ranges) }
  /DISCARD/ : { *(.note.GNU-stack) *(.gnu_debuglink) *(.gnu.lto_*) *(.rela.*) *(.interp)
                *(.dynamic) *(.dynsym) *(.dynstr) *(.hash) *(.gnu.hash) }
}
"""


def _entries(entries: list[Entry]) -> str:
    lines = []
    for e in entries:
        why = e.why.replace("*/", "* /")
        lines.append(f"    /* {why} */\n    {e.section.pattern}")
    return "\n".join(lines) if lines else "    /* (none) */"


def _peak_symbol(prof: Profile, lay: Layout) -> int:
    """The deepest the steady state goes below the top of what the fold moves: the root's
    frame (closed block), or start_stack (open block: every live frame moves)."""
    if lay.closed or not prof.stack.depth_from_start:
        return prof.stack.peak_depth
    return prof.stack.depth_from_start


def _peak_what(prof: Profile, lay: Layout) -> str:
    if lay.closed or not prof.stack.depth_from_start:
        return "the depth below the root's frame"
    return "the depth below start_stack"


def _open_marker(lay: Layout) -> str:
    """Without the call closure, a path the profile did not see can leave the block: the
    symbol tells remap.fold to keep the cold code mapped (its pages dropped, faulted back from
    the file if ever reached) instead of unmapping it."""
    if lay.closed:
        return ""
    return "/* Cold code may be reached (--no-closure): the fold keeps it mapped. */\n" + (
        "__hot_cold_reachable = 1;\n"
    )


def _page_comment(pages: list[dict]) -> str:
    """Comment lines: what lands in each page of the block (names cut at ~90 columns)."""
    lines = [" * What lands in each page (as placed by the budget; ld may shift a few bytes):"]
    for p in pages:
        parts = [f"{k} {', '.join(p[k])}" for k in ("code", "rodata", "data") if p[k]]
        if p["stack"]:
            parts.append(f"stack {p['stack']} B")
        text = "; ".join(parts) or "(empty)"
        if len(text) > 80:
            text = text[:77] + "..."
        lines.append(f" *   page {p['page']}: {text.replace('*/', '* /')}")
    return "\n".join(lines)


def render_script(prof: Profile, lay: Layout) -> str:
    """The linker script text.  Hot sections are named BEFORE the cold wildcards: ld gives an
    input section to the first statement that matches it, so the hot block is written first
    in the script (above it only the headers and .init/.fini) and cold code follows it."""
    b = lay.budget
    head = f"""/* Generated by `remap layout` -- do not edit; regenerate from the profile.
 *
 * Profiled executable: {os.path.basename(prof.exe)} (sha256 {prof.exe_sha256[:16]}...)
 * Steady state: {prof.overhead.steps} instructions single-stepped, root {prof.stack.root}, peak
 * stack depth {prof.stack.peak_depth} B below its frame.
 *
 * One page-aligned RWX block of {b["pages"]} page(s), {b["block"]} bytes [__hot_start, __hot_end),
 * holds the hot code, the rodata it touches or references, ALL writable data and a stack
 * reserve [__hot_stack_lo, __hot_stack_hi) -- the contract of remap.fold (minibot-hotpage.ld).
 * Byte budget: code {b["code"]} + rodata {b["rodata"]} + data {b["data"]}
 * + stack >= {b["stack_min"]} = {b["total"]} of {b["block"]}.
 * Outside the block (heap, anonymous mappings, by page): {b.get("outside", 0)} B.
{_page_comment(lay.pages)}
 * Cold code and rodata live in a separate R-X segment.
 */
OUTPUT_FORMAT("elf64-x86-64")
OUTPUT_ARCH(i386:x86-64)
ENTRY(_start)

HOT_SIZE = {b["block"]:#x};
HOT_STACK_MIN = {lay.stack_min};
__hot_stack_peak = {_peak_symbol(prof, lay)};  /* profiled: {_peak_what(prof, lay)} */
{_open_marker(lay)}
PHDRS
{{
  head PT_LOAD FILEHDR PHDRS FLAGS(5);   /* R-X: ELF headers, .init/.fini */
  hot PT_LOAD FLAGS(7);                  /* RWX: the hot block */
  cold PT_LOAD FLAGS(5);                 /* R-X: everything the steady state does not use */
  tls PT_TLS;
  stack PT_GNU_STACK FLAGS(6);
}}

SECTIONS
{{
  . = 0x400000 + SIZEOF_HEADERS;
  .init : {{ KEEP (*(SORT_NONE(.init))) }} :head
  .fini : {{ KEEP (*(SORT_NONE(.fini))) }}

  . = ALIGN(0x1000);
  __hot_start = .;
  /* Hot code, in the order the profile first ran it. */
  .hot.text : {{
{_entries(lay.code)}
  }} :hot
  /* Read-only data the hot code touched (profile) or references (relocations). */
  .hot.rodata : {{
{_entries(lay.rodata)}
  }}
  /* ALL writable data of the program: the fold unmaps everything else. */
  .tdata : ALIGN(8) {{ *(.tdata .tdata.*) }} :hot :tls
  .tbss : {{ *(.tbss .tbss.*) *(.tcommon) }} :hot :tls
  .init_array : ALIGN(8) {{
    PROVIDE_HIDDEN (__init_array_start = .);
    KEEP (*(SORT_BY_INIT_PRIORITY(.init_array.*) SORT_BY_INIT_PRIORITY(.ctors.*)))
    KEEP (*(.init_array .ctors))
    PROVIDE_HIDDEN (__init_array_end = .);
  }} :hot
  .fini_array : ALIGN(8) {{
    PROVIDE_HIDDEN (__fini_array_start = .);
    KEEP (*(SORT_BY_INIT_PRIORITY(.fini_array.*) SORT_BY_INIT_PRIORITY(.dtors.*)))
    KEEP (*(.fini_array .dtors))
    PROVIDE_HIDDEN (__fini_array_end = .);
  }}
  .got : {{ *(.got) *(.igot) }}
  .got.plt : {{ *(.got.plt) *(.igot.plt) }}
  .data : ALIGN(8) {{ *({HOT_DATA}) *(.tm_clone_table) }}
  .bss (NOLOAD) : ALIGN(16) {{ *(.dynbss) *(.bss .bss.*) *(COMMON) }}
  /* The stack reserve: the rest of the block, at least the measured depth + margin. */
  . = ALIGN(16);
  __hot_stack_lo = .;
  __hot_stack_size = MAX(__hot_start + HOT_SIZE - __hot_stack_lo, HOT_STACK_MIN);
  .hot.stack (NOLOAD) : {{ . += __hot_stack_size; }} :hot
  __hot_stack_hi = .;
  __hot_end = .;
  ASSERT(__hot_end - __hot_start <= HOT_SIZE, "hot block larger than its pages")
  ASSERT(__hot_stack_hi - __hot_stack_lo >= HOT_STACK_MIN, "hot stack reserve too small")

  /* Cold: startup, registration, error paths, the rest of libc. */
  .text : {{ *({COLD_TEXT}) *(.text .text.*) }} :cold
  .iplt : {{ *(.iplt) }}
  .rodata : {{ *(.rodata .rodata.*) }}
  .data.rel.ro : {{ *(.data.rel.ro .data.rel.ro.*) }}  /* read-only here: a static link */
  .eh_frame : {{ KEEP (*(.eh_frame)) *(.eh_frame.*) }}
  .note : {{ *(.note .note.*) }}
  _end = .; end = .;
"""
    return head + _TAIL


# ---------------------------------------------------------------------------- building
def musl_libc() -> Path:
    """musl's static libc.a, as musl-gcc links it (its specs file names the directory;
    ``musl-gcc -print-file-name`` would answer with glibc's)."""
    specs = Path("/usr/lib/x86_64-linux-musl/musl-gcc.specs")
    dirs = []
    if specs.is_file():
        dirs += [w[2:] for w in specs.read_text().split() if w.startswith("-L") and len(w) > 2]
    dirs += ["/usr/lib/x86_64-linux-musl", "/usr/lib/musl/lib", "/usr/local/musl/lib"]
    for d in dirs:
        if os.path.isfile(os.path.join(d, "libc.a")):
            return Path(d) / "libc.a"
    raise ExperimentError("musl's libc.a not found (apt-get install musl-tools)")


def compile_target(name: str, out_dir: Path) -> Path:
    """Compile csrc/targets/NAME.c to NAME.o with its default recipe's flags (+ -c): the link
    input the layout names.  Cached by the recipe and the sources' contents."""
    from . import targets

    template = targets.recipes(name)["default"]
    src = targets.TARGET_SRC / f"{name}.c"
    out_dir.mkdir(parents=True, exist_ok=True)
    obj = out_dir / f"{name}.o"
    argv = shlex.split(template.format(src=src, out=obj, dir=targets.TARGET_SRC)) + ["-c"]
    h = hashlib.sha256(" ".join(argv).encode())
    for p in sorted(targets.TARGET_SRC.glob("*.c")) + sorted(targets.TARGET_SRC.glob("*.h")):
        h.update(p.name.encode() + p.read_bytes())
    stamp = obj.with_suffix(".o.sha256")
    if obj.is_file() and stamp.is_file() and stamp.read_text() == h.hexdigest():
        return obj
    _run(argv, f"cannot compile {src}", cwd=targets.TARGET_SRC)
    stamp.write_text(h.hexdigest())
    return obj


def link(objects: list[Path], out: Path, script: Path | None = None, libs: list[str] = ()) -> Path:
    """Link OBJECTS statically with musl (with SCRIPT as the linker script when given).

    OBJECTS are one ``--start-group``/``--end-group``: ld rescans their archives until no
    reference is left, so archives that call each other link in any order (busybox's Kbuild
    lib.a files: libbb's appletlib.o refers to init_main in init/lib.a, listed before it, as
    scripts/trylink links them).  For plain objects the group changes nothing."""
    argv = ["musl-gcc", "-static", "-no-pie"]
    if script is not None:
        argv += [f"-Wl,-T,{script}", "-Wl,--no-warn-rwx-segments", "-Wl,--orphan-handling=error"]
    group = ["-Wl,--start-group", *map(str, objects), "-Wl,--end-group"]
    argv += ["-o", str(out), *group, *libs]
    _run(argv, f"cannot link {out.name}")
    return out


def _run(argv: list[str], what: str, cwd: Path | None = None) -> None:
    if shutil.which(argv[0]) is None:
        raise ExperimentError(f"{what}: {argv[0]} not found (apt-get install musl-tools)")
    res = subprocess.run(argv, capture_output=True, text=True, cwd=cwd)
    if res.returncode:
        last = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ExperimentError(f"{what}: {last}")


def elf_symbols(path: Path, names: tuple[str, ...]) -> dict[str, int]:
    """Values of NAMES in PATH's symbol table (a quick check of a generated binary); raises
    OSError when PATH cannot be read."""
    elf = elftables.open_elf(str(path))
    return elf.symbol_values(names) if elf else {}


def writable_objects(path: Path, top: int = 8) -> list[list]:
    """The TOP largest objects in writable sections of PATH: [name, bytes, section]; raises
    OSError when PATH cannot be read."""
    elf = elftables.open_elf(str(path))
    out = []
    for sym in elf.symbols if elf else []:
        if sym.type == K.STT_OBJECT and sym.in_section and sym.size:
            sec = elf.sections[sym.shndx]  # type: ignore[union-attr]
            if sec.flags & K.SHF_WRITE:
                out.append([sym.name, sym.size, sec.name])
    return sorted(out, key=lambda x: (-x[1], x[0]))[:top]
