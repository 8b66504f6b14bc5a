"""The frame walk without frame pointers (remap.unwind), on real programs stopped in a syscall.

Oracles, none of them the unwinder itself: gdb's `bt` on the stopped process, the rbp chain of
the same source built with frame pointers, the compiler's own CFI (the rules the unwinder derives
from machine code where musl has none must equal gcc's .eh_frame wherever both exist), and the
program's health after the walk (deep_block prints the checksum of its frames' locals).
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import wait_blocked

import remap
import remap.fold as F
from remap import energymech, procfs, residency, sources, targets, unwind
from remap.fold.hotpage import find_hot_page
from remap.fold.relocate import walk_frames
from remap.ircd import IrcServer
from remap.launch import launch
from remap.sources import SourceMissing

PROGRAM = ["inner", "middle.constprop.0", "outer.constprop.0", "main", "libc_start_main_stage2"]


class Stopped:
    """A stopped thread's registers, stack bytes [rsp, start_stack + 16) and mappings."""

    def __init__(self, pid: int):
        self.maps = [(m.start, m.end, m.offset, m.path) for m in procfs.read_maps(pid)]
        with remap.attach(pid) as s:
            self.regs = s.regs()
            top = procfs.read_stat(pid).start_stack + 16
            self.lo, self.hi = self.regs["rsp"], top
            self.buf = s.read(self.lo, top - self.lo)

    def word(self, a: int) -> int:
        assert self.lo <= a <= self.hi - 8, f"read outside the stack at {a:#x}"
        return struct.unpack_from("<Q", self.buf, a - self.lo)[0]

    def walk(self):
        return unwind.walk(self.regs, self.word, self.maps, (self.lo, self.hi))


@pytest.fixture
def deep():
    """deep_block(VARIANT, MODE) blocked in its syscall; after the test its stdin is closed
    and it must print the checksum of its frames' locals and exit 0 (the walk harmed nothing)."""
    started = []

    def start(variant: str, mode: str) -> tuple[subprocess.Popen, Stopped]:
        exe = targets.build("deep_block", variant)
        p = subprocess.Popen([str(exe), mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        started.append(p)
        assert p.stdout.readline() == b"ready\n"
        wait_blocked(p.pid, proc=p)
        return p, Stopped(p.pid)

    yield start
    for p in started:
        p.stdin.close()
        out = p.stdout.read()
        assert p.wait(timeout=10) == 0 and out == b"sum 192\n", out


def _names(frames) -> list[str | None]:
    return [f.function for f in frames]


# ---------------------------------------------------------------------------- the walk
def test_cfi_walk_matches_gdb_backtrace(deep):
    """-O2 -fomit-frame-pointer, blocked in an inline syscall of its own (CFI everywhere up to
    main): every frame gdb's bt lists, the walk finds at the same pc, in the same order."""
    p, st = deep("default", "own")
    bt = subprocess.run(
        ["gdb", "-batch", "-nx", "-p", str(p.pid), "-ex", "bt"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    gdb = [
        (int(pc, 16), name)
        for pc, name in re.findall(r"^#\d+\s+(?:(0x[0-9a-f]+) in )?(\S+) \(", bt.stdout, re.M)
        if pc
    ]
    frames, why = st.walk()
    assert why is None, why  # reached the outermost frame
    assert gdb and gdb[-1][1] == "main", bt.stdout
    assert [f.pc for f in frames[1 : len(gdb)]] == [pc for pc, _ in gdb[1:]], bt.stdout
    assert frames[0].pc == st.regs["rip"] and frames[0].function.startswith("own_read")
    assert _names(frames[1:]) == PROGRAM
    assert {f.source for f in frames[:-1]} == {"cfi"}  # musl's stage2 alone has no FDE


def test_walk_through_musl_matches_the_frame_pointer_chain(deep):
    """The -fno-omit-frame-pointer build of the same source, blocked in musl's read (no CFI in
    libc.a: rules derived from its code): every frame of the rbp chain is a frame of the walk,
    with the same return address and CFA = rbp + 16."""
    _p, st = deep("fp", "read")
    frames, why = st.walk()
    assert why is None, why
    assert _names(frames) == ["sccp", "read", *PROGRAM]
    assert [f.source for f in frames[:2]] == ["code", "code"]
    _cfa, chain = walk_frames(st.word, st.regs["rbp"], st.lo, st.hi, lambda a: True)
    assert len(chain) >= 4  # inner, middle, outer, main keep frame pointers
    walked = {(f.cfa, f.ra) for f in frames}
    assert all((fp + 16, ret) in walked for fp, ret in chain), (chain, walked)


@pytest.mark.parametrize("mode", ["read", "select"])
def test_rules_from_code_equal_the_compilers_cfi_on_a_live_stack(deep, mode):
    """The same source without any .eh_frame: the walk derives every rule from machine code
    and finds the same frames at the same depths as with gcc's CFI."""
    _p, with_cfi = deep("default", mode)
    _q, without = deep("nocfi", mode)
    a, why_a = with_cfi.walk()
    b, why_b = without.walk()
    assert why_a is None and why_b is None, (why_a, why_b)
    assert _names(a) == _names(b) == ["sccp", mode, *PROGRAM]
    assert {f.source for f in b} == {"code"}
    strict, why = unwind.walk(without.regs, without.word, without.maps, derive=False)
    assert strict == [] and why.startswith("no .eh_frame FDE covers"), why
    assert [f.cfa - with_cfi.lo for f in a] == [f.cfa - without.lo for f in b]
    assert [f.pc for f in a] == [f.pc for f in b]  # same code: only .eh_frame differs


def _mech_static() -> str:
    try:
        sources.source_path(sources.recipe("energymech"))
    except SourceMissing as e:
        pytest.skip(f"EnergyMech source not found: {e.path}")
    return str(sources.build(sources.recipe("energymech", "static")))


@pytest.mark.parametrize(
    "build, every",
    [(("deep_block", "default"), 1), (("minibot", "hotpage-nofp"), 1), (None, 8)],
    ids=["deep_block", "minibot-nofp", "energymech"],
)
def test_code_rules_equal_every_cfi_row(build, every):
    """At every pc where gcc's .eh_frame starts a new row (EnergyMech: in every 8th FDE, for
    time), the rule derived from the machine code gives the same CFA whenever both name the
    same base register (the analysis may refuse, or base it on rsp where gcc chose rbp; never
    differ)."""
    mod = unwind.module(str(targets.build(*build)) if build else _mech_static())
    agree, differ = 0, []
    for lo, _hi, fde in mod.fdes()[::every]:
        if mod.function_at(lo) is None:
            continue
        for row in fde.get_decoded().table:
            if row["cfa"].expr is not None:
                continue
            try:
                code = mod._code_rule(row["pc"], row["pc"])
            except unwind.CannotUnwind:
                continue
            cfi = unwind.cfi_rule(fde, row["pc"], mod.path)
            if code.cfa_reg != cfi.cfa_reg:
                continue
            if code.cfa_offset == cfi.cfa_offset:
                agree += 1
            else:
                differ.append((hex(row["pc"]), cfi.cfa_reg, cfi.cfa_offset, code.cfa_offset))
    assert differ == [] and agree >= 30, (agree, differ)


def test_realigned_frame_walks_by_cfi_and_by_its_frame_pointer_without(deep):
    """A frame that realigns rsp (`and $-64,%rsp`): gcc's CFI bases its CFA on rbp; without
    CFI the code analysis follows `mov %rsp,%rbp` and bases it on rbp too: the same frames at
    the same depths."""
    _p, a = deep("default", "aligned")
    _q, b = deep("nocfi", "aligned")
    fa, why_a = a.walk()
    fb, why_b = b.walk()
    assert why_a is None and why_b is None, (why_a, why_b)
    assert _names(fa) == _names(fb) and _names(fa)[:3] == ["sccp", "read", "aligned"]
    # below the realigned frame depths count from rsp, above it from the root (the padding
    # `and` inserts depends on where ASLR put the stack)
    assert [f.cfa - a.lo for f in fa[:2]] == [f.cfa - b.lo for f in fb[:2]]
    assert [fa[-1].cfa - f.cfa for f in fa[2:]] == [fb[-1].cfa - f.cfa for f in fb[2:]]
    assert [f.source for f in fb] == ["code"] * len(fb)


def test_jump_table_without_cfi_is_refused(deep):
    """Blocked in one case of a switch compiled to a jump table: with CFI the walk goes on;
    without, no path from the entry can be followed through `jmp *%rax`, and it says so."""
    _p, st = deep("default", "switch")
    frames, why = st.walk()
    assert why is None and "dispatch" in _names(frames), why
    _q, st = deep("nocfi", "switch")
    frames, why = st.walk()
    assert _names(frames) == ["sccp", "read"]
    assert why.startswith("dispatch (") and "indirect jump" in why and "jump table" in why, why


@pytest.mark.parametrize("variant", ["default", "nocfi"])
def test_signal_frame_is_not_crossed(deep, variant):
    """Blocked in read inside a SIGUSR1 handler: the walk stops at musl's rt_sigreturn
    trampoline with that reason, after the handler's frame."""
    _p, st = deep(variant, "signal")
    frames, why = st.walk()
    assert _names(frames) == ["sccp", "read", "on_usr1"]
    assert "rt_sigreturn trampoline" in why, why


def test_no_file_no_cfi_refused():
    """A pc in the vdso or in anonymous memory: no ELF on disk to read rules from."""
    maps = [(m.start, m.end, m.offset, m.path) for m in procfs.read_maps(os.getpid())]
    vdso = next(m for m in maps if m[3] == "[vdso]")
    with pytest.raises(unwind.CannotUnwind, match=r"\[vdso\]: no ELF file on disk"):
        unwind.frame_cfa({"rip": vdso[0] + 0x100, "rsp": 0x1000}, maps)
    with pytest.raises(unwind.CannotUnwind, match="is in no mapping"):
        unwind.frame_cfa({"rip": 8, "rsp": 0x1000}, maps)


def test_the_fde_search_table_finds_what_the_whole_parse_finds():
    """libc and python3 (glibc, with .eh_frame_hdr): a lookup parses only the FDE the search
    table names -- python3's 9,000 are not parsed for one walk -- and on libc it returns, at
    every FDE's first and last byte and just past it, what a bisect over the whole parse does."""
    from remap import elftables

    paths = {m.path for m in procfs.read_maps(os.getpid())}
    exe = next((p for p in paths if "/libpython3" in p), os.path.realpath(sys.executable))
    py = unwind.Module(exe, elftables.open_elf(exe))  # the interpreter: libpython, or python3
    assert len(py._index[0]) > 5000, exe  # python3.11: ~9,000 FDEs
    at = py._index[0][len(py._index[0]) // 2]  # some function's first byte
    assert py.fde_at(at) is not None and py._fdes is None and len(py._by_offset) == 1
    libc = next(p for p in paths if re.search(r"/libc\.so\.6$", p))
    mod = unwind.Module(libc, elftables.open_elf(libc))
    fdes = mod.fdes()  # the whole parse, beside the index
    assert mod._index is not None and len(fdes) > 1000
    starts = [lo for lo, _hi, _f in fdes]
    for k, (lo, hi, fde) in enumerate(fdes):
        for at in (lo, hi - 1):
            assert mod.fde_at(at).offset == fde.offset, hex(at)
        if k + 1 == len(fdes) or starts[k + 1] > hi:  # a gap after it: covered by no FDE
            assert mod.fde_at(hi) is None, hex(hi)
    assert mod.fde_at(starts[0] - 1) is None


def test_cfa_expression_refused_with_its_name():
    """glibc's .plt FDE states its CFA as a DWARF expression: refused by name, not guessed."""
    libc = next(
        m.path for m in procfs.read_maps(os.getpid()) if re.search(r"/libc\.so\.6$", m.path)
    )
    mod = unwind.module(libc)
    expr = next(
        (lo, fde)
        for lo, _hi, fde in mod.fdes()
        if any(r["cfa"].expr is not None for r in fde.get_decoded().table)
    )
    row = next(r for r in expr[1].get_decoded().table if r["cfa"].expr is not None)
    with pytest.raises(unwind.CannotUnwind, match="DW_CFA_def_cfa_expression"):
        mod.rule_at(row["pc"], caller=False)


# ---------------------------------------------------------------------------- real programs
def test_energymech_blocked_in_select_walks_to_its_main_loop():
    """EnergyMech (static musl, -fomit-frame-pointer) idle in select: musl's select and
    __syscall_cp by their code, then doit (the main loop) and main by their CFI, to the root."""
    run = energymech.start(Path(_mech_static()))
    pid = run.launched.pid
    try:
        run.server.accept_bot()
        assert run.server.ping(20) == 20
        wait_blocked(pid)
        assert procfs.read_syscall(pid).nr == 23  # select
        st = Stopped(pid)
        frames, why = st.walk()
        assert why is None, why
        assert _names(frames) == ["sccp", "select", "doit", "main", "libc_start_main_stage2"]
        assert [f.source for f in frames] == ["code", "code", "cfi", "cfi", "code"]
        # the profiler's root is the main loop, its CFA the one the walk found (the old rule,
        # "rbp + 16 else max rsp", answered select's CFA: 112 B short of doit's frame)
        from remap.profile import profile

        prof = profile(pid, workload=lambda: run.server.ping(5))
        assert prof.stack.root == "doit" and prof.stack.root_cfa == frames[2].cfa
        assert run.server.ping(50) == 50
    finally:
        result = energymech.stop(run)
    assert result["exit_status"] == 0


def test_single_page_fold_without_frame_pointers():
    """The demo bot built with -fomit-frame-pointer (its .eh_frame kept): the rbp chain proves
    nothing, the CFI walk finds the steady root, and the fold reaches one page."""
    srv = IrcServer()
    exe = targets.build("minibot", "hotpage-nofp")
    lb = launch([str(exe), *srv.bot_args()], aslr=True)
    try:
        srv.accept_bot()
        assert srv.ping(20) == 20
        lb.wait_blocked()
        hot = find_hot_page(lb.pid)
        st = Stopped(lb.pid)
        frames, why = st.walk()
        assert why is None and _names(frames)[:2] == ["hot_syscall", "hot_main"], why
        assert frames[0].source == "cfi" and not hot.contains(frames[1].ra)
        r = F.fold(lb.pid)
        assert r.kind == "single-page" and r.after["rss_kb"] == 4
        for _ in range(5):
            assert srv.ping(100) == 100
        assert srv.command("!ping") == "pong"
        mem = srv.command("!mem")
        assert (mem["VmRSS"], mem["VmSize"]) == (4, 4)
        assert residency.snapshot(lb.pid).rss_kb == 4
    finally:
        lb.stop()
        srv.close()


def test_profile_root_cfa_without_frame_pointers():
    """The profiler's steady-state root on the no-frame-pointer bot: its CFA from the unwind
    rule at the pc seen at the highest rsp while single-stepping equals the CFA the walk of
    the idle bot finds for the same function (rbp is no frame pointer here: rbp + 16 is not)."""
    from remap.profile import irc_workload, profile

    srv = IrcServer()
    lb = launch([str(targets.build("minibot", "hotpage-nofp")), *srv.bot_args()], aslr=True)
    try:
        srv.accept_bot()
        lb.wait_blocked()
        prof = profile(lb.pid, workload=irc_workload(srv, 10))
        lb.wait_blocked()
        frames, why = Stopped(lb.pid).walk()
        assert prof.stack.root == "hot_main"
        root = next(f for f in frames if f.function == "hot_main")
        assert prof.stack.root_cfa == root.cfa, (hex(prof.stack.root_cfa), hex(root.cfa), why)
        assert srv.command("!ping") == "pong"
    finally:
        lb.stop()
        srv.close()


def test_fold_root_refused_with_both_reasons_when_nothing_proves_it(deep):
    """The fold's root finder on a frame it cannot prove (no CFI, a jump table, no frame
    pointers): refused, naming why the CFI walk stopped and why the rbp chain is no proof.
    (deep_block has no hot page: its whole text stands in for one, so every frame is "hot".)"""
    from remap.errors import UnsafeStep
    from remap.fold.hotpage import HotPage
    from remap.fold.singlepage import _steady_root

    p, _st = deep("nocfi", "switch")
    text = next(m for m in procfs.read_maps(p.pid) if "x" in m.perms and m.path.endswith("nocfi"))
    hot = HotPage(text.start, text.end, 0, 0, (), ())
    with remap.attach(p.pid) as s:
        with pytest.raises(UnsafeStep) as e:
            _steady_root(s, s.regs(), procfs.read_stat(p.pid).start_stack, hot, p.pid)
    msg = str(e.value)
    assert "the CFI walk stopped" in msg and "indirect jump" in msg, msg
    assert "rbp chain" in msg or "frame-pointer chain" in msg, msg
