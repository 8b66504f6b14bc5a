"""Walk a stopped thread's frames without frame pointers: .eh_frame CFI from the ELF on disk.

Why: the single-page fold must know where the hot frames end (the CFA of the steady-state
root), and code built with -fomit-frame-pointer (EnergyMech, all of musl's libc.a) keeps no rbp
chain.  Each frame is unwound by the DWARF call-frame rules of its pc (pyelftools decodes
.eh_frame; elftables reads the file): CFA = reg + offset, the return address and saved registers
at CFA + n.  musl's libc.a carries no .eh_frame at all, so for a pc without an FDE the rules are
*derived from the function's machine code* (:func:`code_rule`): every path from the symbol's
entry to the pc is followed and its stack-pointer changes summed (or, once rbp is a frame
pointer, the CFA taken from rbp); the result is used only when every path agrees and every
instruction writing rsp is one the analysis models, which is what a compiler's CFI would
state (tests/test_unwind.py checks it against gcc's own CFI: equal wherever both exist).
``derive=False`` refuses such a pc instead.

Never a guess: anything else stops the walk with :class:`CannotUnwind` and its exact reason --
a pc in the vdso or in memory no file backs, a signal frame (rt_sigreturn trampoline or a CIE
marked "S"), a CFA rule that is a DWARF expression, a return-address rule that is not "saved at
CFA + n", a CFA computed from a register no rule recovered, a frame whose CFA leaves the stack
or does not grow, a return address that follows no call, a jump table in a frame without CFI.

Pure: memory comes through READ_WORD(addr) (a buffer the caller read while the target was
stopped), mappings as (start, end, offset, path[, inode]) tuples; no ptrace, no /proc of its
own.  Registers: x86-64 only (DWARF numbering of the psABI).

Example::

    >>> maps = [(v.start, v.end, v.offset, v.path) for v in procfs.read_maps(pid)]
    >>> for f in unwind.frames(regs, read_word, maps):
    ...     print(f"{f.pc:#x} {f.function} cfa {f.cfa:#x}")
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import elftables
from .errors import UnsafeStep

# System V x86-64 psABI, figure 3.36: DWARF register numbers
DWARF_REGS = ("rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp",
              "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip")  # fmt: skip
RA = 16  # the return-address column on x86-64
CALLEE_SAVED = ("rbx", "rbp", "r12", "r13", "r14", "r15")  # kept across calls (psABI 3.2.1)
# mov $15,%eax / mov $15,%rax; syscall: the rt_sigreturn trampolines (musl __restore_rt, glibc)
SIGRETURN_CODE = (b"\xb8\x0f\x00\x00\x00\x0f\x05", b"\x48\xc7\xc0\x0f\x00\x00\x00\x0f\x05")

# start, end, file offset, path (as /proc/PID/maps says), and optionally the inode: when given,
# a file replaced on disk since it was mapped is refused rather than read
Mapping = tuple  # (int, int, int, str) or (int, int, int, str, int)


class CannotUnwind(UnsafeStep):
    """The walk cannot prove the next frame; the message says which pc and why."""


@dataclass(frozen=True)
class Rule:
    """How to find one frame's CFA and its caller's registers at one pc.

    CFA = value of CFA_REG + CFA_OFFSET; SAVED maps a register to the offset from the CFA where
    its caller's value lies ("offset(n)"); SAME lists registers the frame never changed;
    UNKNOWN maps a register to why no rule recovers it (used only if a later frame needs it).
    """

    cfa_reg: str
    cfa_offset: int
    saved: dict[str, int]
    same: frozenset[str]
    unknown: dict[str, str]
    source: str  # "cfi" (an FDE) or "code" (derived from the machine code)


@dataclass(frozen=True)
class Frame:
    """One unwound frame: PC (frame 0: the thread's rip), CFA (the caller's rsp after the
    return; the frame's own bytes lie below it), FUNCTION (symbol name or None), RA (the
    return address, None for the outermost frame), SAVED (register -> stack address holding
    the caller's value), SOURCE ("cfi" or "code")."""

    pc: int
    cfa: int
    function: str | None
    path: str
    ra: int | None
    saved: dict[str, int] = field(default_factory=dict)
    source: str = "cfi"


# ------------------------------------------------------------------------------- modules
class Module:
    """The unwind tables of one ELF file: its FDE ranges (decoded on demand) and functions.

    The FDEs are found through .eh_frame_hdr's search table and parsed one at a time, as a
    walk asks for them (a dozen, of python3.11's 9,000: ~3 s parsed all at once); a file
    without that table has every FDE parsed here, at once."""

    def __init__(self, path: str, tables: elftables.ElfTables, inode: int = 0):
        self.path, self.tables, self.inode = path, tables, inode
        self.entry = tables.entry
        self._index = tables.eh_frame_index()  # (initial locations, .eh_frame offsets)
        self._by_offset: dict[int, Any] = {}  # the FDEs parsed so far, by .eh_frame offset
        self._fdes: list[tuple[int, int, Any]] | None = None
        if self._index is None:
            self.fdes()  # no table: the whole parse now, its errors now
        funcs = sorted(
            (s.value, s.size, s.name)
            for s in tables.symbols
            if s.in_section and s.value and (s.type == 2 or s.value == self.entry)
        )  # STT_FUNC, and the entry point's label (_start is an untyped asm symbol in musl)
        self._fn_lo = [f[0] for f in funcs]
        self._funcs = funcs
        self._rules: dict[int, Rule] = {}

    def fdes(self) -> list[tuple[int, int, Any]]:
        """Every FDE as (start, end, FDE), sorted: the whole .eh_frame parsed (once).  Raises
        CannotUnwind on a malformed .eh_frame."""
        if self._fdes is None:
            try:
                fdes = self.tables.eh_frame_fdes()
            except ValueError as e:
                raise CannotUnwind(f"{self.path}: {e}") from None
            spans = [(f.header["initial_location"], f.header["address_range"], f) for f in fdes]
            self._fdes = sorted(((lo, lo + n, f) for lo, n, f in spans), key=_span_start)
            self._fde_lo = [x[0] for x in self._fdes]
        return self._fdes

    def fde_at(self, vaddr: int):
        """The FDE covering ELF address VADDR, or None.  Raises CannotUnwind on a malformed
        .eh_frame."""
        if self._index is None:
            fdes = self.fdes()
            i = bisect.bisect_right(self._fde_lo, vaddr) - 1
            return fdes[i][2] if i >= 0 and fdes[i][0] <= vaddr < fdes[i][1] else None
        locs, offsets = self._index
        i = bisect.bisect_right(locs, vaddr) - 1
        if i < 0:
            return None
        fde = self._by_offset.get(offsets[i])
        if fde is None:
            try:
                fde = self.tables.eh_frame_fde(offsets[i])
            except ValueError as e:
                raise CannotUnwind(f"{self.path}: {e}") from None
            if fde is None:
                raise CannotUnwind(
                    f"{self.path}: .eh_frame_hdr points at {offsets[i]:#x}, not an FDE"
                )
            self._by_offset[offsets[i]] = fde
        lo = fde.header["initial_location"]
        return fde if lo <= vaddr < lo + fde.header["address_range"] else None

    def function_at(self, vaddr: int) -> tuple[int, int, str] | None:
        """(start, end, name) of the function symbol holding VADDR; a symbol of size 0 (an asm
        label) reaches to the next function."""
        i = bisect.bisect_right(self._fn_lo, vaddr) - 1
        while i >= 0:
            lo, size, name = self._funcs[i]
            if size == 0:
                nxt = bisect.bisect_right(self._fn_lo, lo)
                hi = self._funcs[nxt][0] if nxt < len(self._funcs) else lo + 4096
            else:
                hi = lo + size
            if lo <= vaddr < hi:
                return lo, hi, name
            if size and i and self._funcs[i - 1][0] == lo:
                i -= 1  # aliases at one address: try the others
                continue
            return None
        return None

    def follows_call(self, vaddr: int) -> bool:
        """Is VADDR the address just after a call instruction (as every return address is)?"""
        cs = _disassembler()
        for k in (5, 2, 3, 6, 7, 4, 8, 9):  # e8 rel32 first, then the ff /2 forms
            code = self.tables.bytes_at(vaddr - k, k)
            ins = next(cs.disasm(code, vaddr - k, 1), None)
            if ins is not None and ins.size == k and ins.mnemonic == "call":
                return True
        return False

    def rule_at(self, vaddr: int, caller: bool, derive: bool = True) -> Rule:
        """The unwind rule at VADDR (a return address when CALLER: looked up at vaddr - 1, the
        call instruction, so a call to a noreturn function at the very end still matches).
        Without an FDE there, derived from the code (:func:`code_rule`) when DERIVE, else
        refused."""
        key, look = vaddr * 2 + caller, vaddr - caller
        if not derive and self.fde_at(look) is None:
            raise CannotUnwind(f"no .eh_frame FDE covers {vaddr:#x} in {self.path}")
        if key not in self._rules:
            fde = self.fde_at(look)
            self._rules[key] = (
                cfi_rule(fde, vaddr, self.path) if fde is not None else self._code_rule(look, vaddr)
            )
        return self._rules[key]

    def _code_rule(self, look: int, vaddr: int) -> Rule:
        fn = self.function_at(look)
        if fn is None:
            raise CannotUnwind(
                f"no CFI (no .eh_frame FDE) and no function symbol at {vaddr:#x} in {self.path}"
            )
        lo, hi, name = fn
        if ".cold" in name:  # gcc's split-off cold block: entered by a jump mid-frame
            raise CannotUnwind(
                f"no CFI at {vaddr:#x} in {name} ({self.path}), a cold part split off its "
                "function: its stack depth on entry is its parent's, unknown here"
            )
        code = self.tables.bytes_at(lo, max(hi, vaddr + 1) - lo)
        return code_rule(code, lo, hi, vaddr, f"{name} ({self.path})")


def _span_start(span: tuple) -> int:
    return span[0]


_modules: dict[tuple[int, int, int], Module] = {}


def module(path: str) -> Module:
    """The (cached by device, inode, mtime) unwind tables of the ELF file at PATH; raises
    CannotUnwind when it cannot be read or is not an x86-64 ELF file."""
    try:
        st = os.stat(path)
        key = (st.st_dev, st.st_ino, st.st_mtime_ns)
        if key not in _modules:
            tables = elftables.open_elf(path)
            if tables is None:
                raise CannotUnwind(f"{path} is not an ELF64 file: no unwind tables")
            _modules[key] = Module(path, tables, st.st_ino)
        return _modules[key]
    except OSError as e:
        raise CannotUnwind(f"cannot read {path} for its unwind tables: {e.strerror}") from None


def prepare(path: str) -> None:
    """Load PATH's unwind tables and the disassembler now (~50 ms for a small static program),
    so a walk made later while the target is stopped does not pay for them.  Never raises: a
    file that cannot be read is refused by the walk itself, with its reason."""
    try:
        module(path)
        _disassembler()
    except CannotUnwind:
        pass


def _locate(pc: int, maps: list[Mapping]) -> tuple[Module, int]:
    """(module, ELF vaddr) of PC; CannotUnwind when no file on disk holds its code."""
    m = next((m for m in maps if m[0] <= pc < m[1]), None)
    if m is None:
        raise CannotUnwind(f"pc {pc:#x} is in no mapping")
    start, _end, off, path = m[:4]
    if not path.startswith("/") or path.endswith(" (deleted)"):
        what = path or "anonymous memory"
        raise CannotUnwind(f"pc {pc:#x} is in {what}: no ELF file on disk to read its CFI from")
    mod = module(path)
    if len(m) > 4 and m[4] and m[4] != mod.inode:
        raise CannotUnwind(f"{path} on disk is no longer the file mapped at {start:#x}")
    fileoff = pc - start + off
    for seg in mod.tables.loads:
        if seg.offset <= fileoff < seg.offset + seg.filesz:
            return mod, seg.vaddr + fileoff - seg.offset
    raise CannotUnwind(f"pc {pc:#x} (offset {fileoff:#x} of {path}) is in no PT_LOAD")


# ------------------------------------------------------------------------------- CFI rules
def cfi_rule(fde, vaddr: int, path: str) -> Rule:
    """The decoded .eh_frame row for VADDR as a Rule; CannotUnwind for what is not
    implemented (a CFA expression, a signal frame)."""
    where = f"{vaddr:#x} in {path}"
    if b"S" in (fde.cie.header.get("augmentation") or b""):
        raise CannotUnwind(f"signal frame at {where} (CIE augmentation S): not crossed")
    table = fde.get_decoded().table
    row = None
    for r in table:
        if r["pc"] <= vaddr:
            row = r
        else:
            break
    if row is None:
        raise CannotUnwind(f"no CFI row covers {where}")
    cfa = row["cfa"]
    if cfa.expr is not None or cfa.reg is None:
        raise CannotUnwind(f"the CFA at {where} is a DWARF expression (DW_CFA_def_cfa_expression)")
    if not 0 <= cfa.reg < 16:
        raise CannotUnwind(f"the CFA at {where} is based on DWARF register {cfa.reg}")
    saved, same, unknown = {}, set(), {}
    for reg in range(17):
        name = DWARF_REGS[reg]
        rr = row.get(reg)
        if rr is None:
            if name in CALLEE_SAVED:
                same.add(name)
            continue
        kind = rr.type
        if kind == "OFFSET":
            saved[name] = rr.arg
        elif kind == "SAME_VALUE":
            same.add(name)
        elif kind == "UNDEFINED":
            unknown[name] = f"DW_CFA_undefined {name} at {where}"
        else:  # REGISTER, VAL_OFFSET, EXPRESSION, VAL_EXPRESSION, ARCHITECTURAL
            unknown[name] = f"{name}'s rule at {where} is {kind}, which the walk does not implement"
    return Rule(DWARF_REGS[cfa.reg], cfa.offset, saved, frozenset(same), unknown, "cfi")


# ------------------------------------------------------------------------------- code rules
_cs = None


def _disassembler():
    global _cs
    if _cs is None:
        import capstone

        _cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        _cs.detail = True
    return _cs


def code_rule(code: bytes, lo: int, hi: int, pc: int, name: str) -> Rule:
    """The unwind rule at PC of a function without CFI, derived from its machine code CODE
    (the bytes of [lo, hi) from the ELF file, entered at LO).

    Every path from the entry is followed (conditional branches both ways, calls return, jumps
    inside the function followed, ret and jumps out of it end a path) and the bytes pushed
    counted: at the entry CFA = rsp + 8.  `mov %rsp,%rbp` makes rbp a frame pointer (CFA =
    rbp + depth then); while it is one, rsp may change in any way (`and` to realign, `sub` of a
    register for alloca) and `leave`, `mov %rbp,%rsp` or `lea -n(%rbp),%rsp` bring the depth
    back.  A push of a callee-saved register still holding its caller's value says where that
    value lies; where paths meet, only what holds on all of them is kept (a fixpoint).

    Raises CannotUnwind when PC is not reached, when paths meet with different stack depths,
    when rsp changes in a way not modelled and rbp is no frame pointer, or on an indirect jump
    inside the frame (a jump table: its targets are unknown).  Assumes the function is entered
    at its symbol (true of compiled functions; a split-off .cold part is refused before).
    """
    import capstone.x86 as X

    cs = _disassembler()
    rsp, rbp = X.X86_REG_RSP, X.X86_REG_RBP
    insns = {i.address: i for i in cs.disasm(code[: hi - lo], lo)}
    # state: (depth: bytes between rsp and the CFA, None once only rbp knows it; slots: (reg,
    # offset from the CFA) holding a caller's value; changed: callee-saved regs written since
    # the entry; fp: the depth at which `mov %rsp,%rbp` set rbp (CFA = rbp + fp), or None)
    states: dict[int, tuple] = {lo: (8, frozenset(), frozenset(), None)}
    work = [lo]
    where = f"{name} at {pc:#x}"

    def reach(target: int, st: tuple) -> bool:
        """Merge ST into TARGET's state; True when that changed it (its path must go on)."""
        old = states.get(target)
        if old is None:
            states[target] = st
            return True
        depth, fp = old[0], old[3] if old[3] == st[3] else None  # fp on one path only: none
        if old[0] != st[0] and fp is not None:
            depth = None  # rsp differs, rbp agrees: the CFA is rbp + fp on every path
        elif old[0] != st[0] or (depth is None and fp is None):
            raise CannotUnwind(
                f"{where}: paths reach {target:#x} with different stack states (depth "
                f"{old[0]} / {st[0]}, rbp at depth {old[3]} / {st[3]})"
            )
        merged = (depth, old[1] & st[1], old[2] | st[2], fp)
        if merged == old:
            return False
        states[target] = merged
        return True

    while work:
        a = work.pop()
        while True:
            ins = insns.get(a)
            if ins is None:
                break  # past the function or undecodable: this path leaves the analysis
            depth, slots, changed, fp = states[a]
            nxt, m, ops = a + ins.size, ins.mnemonic, ins.operands
            wnames = {ins.reg_name(r) for r in ins.regs_access()[1]}
            end = m in ("ret", "retf", "hlt", "ud2", "int3")
            reg0 = ops[0].reg if ops and ops[0].type == X.X86_OP_REG else None
            src_reg = ops[1].reg if len(ops) > 1 and ops[1].type == X.X86_OP_REG else None
            mem = ops[1].mem if len(ops) > 1 and ops[1].type == X.X86_OP_MEM else None
            known = depth is not None
            if m == "push":
                depth = depth + 8 if known else None
                r = ins.reg_name(reg0) if reg0 else None
                if known and r in CALLEE_SAVED and r not in changed:
                    slots = slots | {(r, -depth)}
            elif m == "pop":
                depth = depth - 8 if known else None
            elif m == "call" or end:
                pass  # a callee returns with rsp where it was; ret ends the path
            elif m in ("sub", "add") and reg0 == rsp and ops[1].type == X.X86_OP_IMM and known:
                depth += ops[1].imm if m == "sub" else -ops[1].imm
            elif (
                m == "lea"
                and reg0 == rsp
                and mem is not None
                and mem.index == 0
                and ((mem.base == rsp and known) or (mem.base == rbp and fp is not None))
            ):
                depth = (depth if mem.base == rsp else fp) - mem.disp
            elif m == "leave" and fp is not None:
                depth = fp - 8
            elif m == "mov" and reg0 == rsp and src_reg == rbp and fp is not None:
                depth = fp
            elif "rsp" in wnames:
                if fp is None:
                    raise CannotUnwind(
                        f"{where}: `{ins.mnemonic} {ins.op_str}` at {a:#x} changes rsp in a way "
                        "the code analysis does not model, and rbp is no frame pointer"
                    )
                depth = None  # realigned or alloca'd: the CFA is rbp + fp from here
            if m == "mov" and reg0 == rbp and src_reg == rsp:
                fp = depth
            elif "rbp" in wnames and m != "leave":
                fp = None
            if depth is None and fp is None:
                raise CannotUnwind(
                    f"{where}: `{ins.mnemonic} {ins.op_str}` at {a:#x} ends the frame pointer "
                    "while the stack depth is known only from it"
                )
            changed = changed | (wnames & set(CALLEE_SAVED))
            if m in ("pop", "leave"):
                r = "rbp" if m == "leave" else ins.reg_name(reg0) if reg0 else None
                if r is not None and depth is not None and (r, -(depth + 8)) in slots:
                    changed = changed - {r}  # popped back: the caller's value again
                slots = frozenset(s for s in slots if s[0] != r)
                if m == "leave":
                    fp = None
            st = (depth, slots, changed, fp)
            if m == "call" and nxt not in insns:
                reach(nxt, st)  # a noreturn call at the very end: its return site
            if m.startswith("j"):
                if ops[0].type != X.X86_OP_IMM:
                    if depth != 8:
                        raise CannotUnwind(
                            f"{where}: indirect jump at {a:#x} inside the frame (a jump table?)"
                        )
                    break  # a tail call: the frame is gone
                if lo <= ops[0].imm < hi and reach(ops[0].imm, st):
                    work.append(ops[0].imm)
                if m == "jmp":
                    break
            if end or not reach(nxt, st):
                break
            a = nxt
    if pc not in states:
        raise CannotUnwind(f"{where}: no path from the entry {lo:#x} reaches the pc")
    depth, slots, changed, fp = states[pc]
    saved = {r: off for r, off in slots}
    same = frozenset(r for r in CALLEE_SAVED if r not in changed and r not in saved)
    unknown = {
        r: f"{r} was changed by {name} and not saved on its stack"
        for r in CALLEE_SAVED
        if r in changed and r not in saved
    }
    saved["rip"] = -8
    if depth is None:
        return Rule("rbp", fp, saved, same, unknown, "code")
    return Rule("rsp", depth, saved, same, unknown, "code")


# ------------------------------------------------------------------------------- the walk
def frame_cfa(regs: dict[str, int], maps: list[Mapping]) -> tuple[int, str | None]:
    """(CFA, function) of the innermost frame of REGS (rip, rsp and whatever register its
    rule names): no memory needed.  Raises CannotUnwind."""
    mod, vaddr = _locate(regs["rip"], maps)
    rule = mod.rule_at(vaddr, caller=False)
    if rule.cfa_reg not in regs:
        raise CannotUnwind(f"the CFA at {regs['rip']:#x} needs {rule.cfa_reg}, not known")
    fn = mod.function_at(vaddr)
    return regs[rule.cfa_reg] + rule.cfa_offset, fn[2] if fn else None


def frames(
    regs: dict[str, int],
    read_word: Callable[[int], int],
    maps: list[Mapping],
    stack: tuple[int, int] | None = None,
    max_frames: int = 128,
    derive: bool = True,
) -> Iterator[Frame]:
    """Yield the frames of a stopped thread, innermost first, until the outermost (the one
    whose caller is the ELF entry point, or whose return address is DW_CFA_undefined).

    REGS: the thread's registers (at least rip, rsp; rbp and the callee-saved ones when a rule
    needs them).  READ_WORD(addr): the 8-byte stack word at ADDR.  STACK: [lo, hi) every CFA
    must stay within.  DERIVE: False refuses a pc without an FDE instead of deriving its rule
    from the code.  Raises CannotUnwind at the first frame it cannot prove (after yielding the
    ones it could)."""
    known = {k: regs[k] for k in (*DWARF_REGS[:16], "rip") if k in regs}
    caller = False
    last_cfa = None
    for _ in range(max_frames):
        pc = known["rip"]
        mod, vaddr = _locate(pc, maps)
        rule = mod.rule_at(vaddr, caller, derive)
        fn = mod.function_at(vaddr - caller)
        if rule.cfa_reg not in known:
            raise CannotUnwind(
                f"the CFA at {pc:#x} is based on {rule.cfa_reg}, which no rule recovered"
            )
        cfa = known[rule.cfa_reg] + rule.cfa_offset
        if stack is not None and not stack[0] < cfa <= stack[1]:
            raise CannotUnwind(f"the CFA {cfa:#x} of the frame at {pc:#x} leaves the stack")
        if last_cfa is not None and cfa <= last_cfa:
            raise CannotUnwind(f"the CFA {cfa:#x} at {pc:#x} does not grow up the stack")
        saved = {r: cfa + off for r, off in rule.saved.items()}
        name = fn[2] if fn else None
        if "rip" not in saved:
            reason = rule.unknown.get("rip", f"no return-address rule at {pc:#x}")
            if "undefined" in reason:
                yield Frame(pc, cfa, name, mod.path, None, saved, rule.source)
                return  # the outermost frame, marked so by its CFI
            raise CannotUnwind(reason)
        ra = read_word(saved["rip"])
        yield Frame(pc, cfa, name, mod.path, ra, saved, rule.source)
        caller_mod, caller_vaddr = _locate(ra, maps)
        if caller_mod.tables.bytes_at(caller_vaddr, 9).startswith(SIGRETURN_CODE):
            raise CannotUnwind(f"signal frame: {ra:#x} is an rt_sigreturn trampoline, not crossed")
        if not caller_mod.follows_call(caller_vaddr):
            raise CannotUnwind(
                f"the return address {ra:#x} read at {saved['rip']:#x} (frame of {pc:#x}) "
                "does not follow a call instruction"
            )
        if caller_mod.entry is not None and _same_function(
            caller_mod, caller_vaddr - 1, caller_mod.entry
        ):
            return  # called from the ELF entry point (_start): this frame is the outermost
        nxt = {}
        for r in CALLEE_SAVED:
            if r in saved:
                nxt[r] = read_word(saved[r])
            elif r in rule.same and r in known:
                nxt[r] = known[r]
        nxt["rsp"], nxt["rip"] = cfa, ra
        known, caller, last_cfa = nxt, True, cfa
    raise CannotUnwind(f"more than {max_frames} frames")


def follows_call(addr: int, maps: list[Mapping]) -> bool:
    """Does ADDR follow a call instruction in the file mapped there (as a return address
    must)?  False when no ELF file on disk holds ADDR."""
    try:
        mod, vaddr = _locate(addr, maps)
    except CannotUnwind:
        return False
    return mod.follows_call(vaddr)


def _same_function(mod: Module, a: int, b: int) -> bool:
    fa, fb = mod.function_at(a), mod.function_at(b)
    return fa is not None and fa == fb


def walk(
    regs: dict[str, int],
    read_word: Callable[[int], int],
    maps: list[Mapping],
    stack: tuple[int, int] | None = None,
    derive: bool = True,
) -> tuple[list[Frame], str | None]:
    """Every frame :func:`frames` proves, and None when it reached the outermost frame, else
    the reason it stopped."""
    out: list[Frame] = []
    try:
        for f in frames(regs, read_word, maps, stack, derive=derive):
            out.append(f)
    except CannotUnwind as e:
        return out, str(e)
    return out, None
