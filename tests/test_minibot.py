"""The demo bot: its hot-page ELF contract (read from the file) and its behaviour against ircd.

The contract is what remap.fold relies on to fold the bot into one page, so it is checked here
from the ELF file itself (pyelftools) and from the disassembly of .hot.text (objdump).
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from elftools.elf.constants import P_FLAGS, SH_FLAGS
from elftools.elf.elffile import ELFFile

from remap import targets
from remap.kconst import PAGE_SIZE

HOT_SECTIONS = (".hot.text", ".hot.rodata", ".hot.data", ".hot.bss")
HOT_SYMBOLS = ("__hot_start", "__hot_end", "__hot_stack_lo", "__hot_stack_hi", "hot_main")


@pytest.fixture(scope="module")
def hot_elf():
    path = targets.build("minibot", "hotpage")
    with open(path, "rb") as f:
        elf = ELFFile(f)
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        sections = [s for s in elf.iter_sections() if s["sh_flags"] & SH_FLAGS.SHF_ALLOC]
        symtab = elf.get_section_by_name(".symtab")
        syms = {s.name: s["st_value"] for s in symtab.iter_symbols() if s.name}
        segs = [
            (s["p_type"], s["p_vaddr"], s["p_memsz"], s["p_offset"], s["p_flags"]) for s in loads
        ]
        secs = {s.name: (s["sh_addr"], s["sh_size"], s["sh_flags"]) for s in sections}
        stack_flags = [s["p_flags"] for s in elf.iter_segments() if s["p_type"] == "PT_GNU_STACK"]
    return path, segs, secs, syms, stack_flags


RWX = P_FLAGS.PF_R | P_FLAGS.PF_W | P_FLAGS.PF_X


def test_hotpage_has_one_rwx_page_load(hot_elf):
    _, segs, _, syms, stack_flags = hot_elf
    rwx = [s for s in segs if s[4] == RWX]
    assert len(rwx) == 1, f"want exactly one RWX PT_LOAD, got {segs}"
    _, vaddr, memsz, offset, _ = rwx[0]
    assert vaddr % PAGE_SIZE == 0 and offset % PAGE_SIZE == 0
    assert memsz == PAGE_SIZE
    assert syms["__hot_start"] == vaddr
    assert syms["__hot_end"] == vaddr + PAGE_SIZE
    # no other writable segment: the hot page is the only writable file mapping
    others = [s for s in segs if s is not rwx[0]]
    assert others and all(not (s[4] & P_FLAGS.PF_W) for s in others)
    # the ELF header (file offset 0) and the cold code are in another segment
    assert offset != 0 and any(s[3] == 0 for s in others)
    assert stack_flags and not stack_flags[0] & P_FLAGS.PF_X


def test_hotpage_holds_hot_and_every_writable_section(hot_elf):
    _, segs, secs, syms, _ = hot_elf
    lo, hi = syms["__hot_start"], syms["__hot_end"]
    for name in HOT_SECTIONS:
        assert name in secs, f"{name} missing"
    writable = [n for n, (_, _, fl) in secs.items() if fl & SH_FLAGS.SHF_WRITE]
    assert ".bss" in writable and ".data" in writable
    for name in set(HOT_SECTIONS) | set(writable):
        addr, size, _ = secs[name]
        if size:
            assert lo <= addr and addr + size <= hi, f"{name} at {addr:#x}+{size:#x} outside"
    for name, (addr, size, _) in secs.items():
        if name not in HOT_SECTIONS and name not in writable and name != ".hot.stack":
            assert addr + size <= lo or addr >= hi, f"cold section {name} inside the hot page"


def test_hotpage_symbols_and_stack_reserve(hot_elf):
    _, _, secs, syms, _ = hot_elf
    for name in (*HOT_SYMBOLS, "hot_syscall"):
        assert name in syms, f"symbol {name} missing"
    slo, shi = syms["__hot_stack_lo"], syms["__hot_stack_hi"]
    assert shi == syms["__hot_end"]
    assert slo % 16 == 0 and shi % 16 == 0 and shi - slo >= 1024
    # the stack reserve starts after every other byte of the block
    for name, (addr, size, _) in secs.items():
        if name != ".hot.stack" and syms["__hot_start"] <= addr < shi:
            assert addr + size <= slo, f"{name} overlaps the stack reserve"
    text_addr, text_size, _ = secs[".hot.text"]
    for fn in ("hot_main", "hot_syscall"):
        assert text_addr <= syms[fn] < text_addr + text_size


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not installed")
def test_hot_text_never_leaves_the_hot_page(hot_elf):
    """Every call/jump target and RIP-relative operand of .hot.text lies inside the block."""
    path, _, _, syms, _ = hot_elf
    lo, hi = syms["__hot_start"], syms["__hot_end"]
    out = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", "-j", ".hot.text", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    insns = [ln for ln in out.splitlines() if re.match(r"^\s+[0-9a-f]+:\t", ln)]
    assert len(insns) > 50
    bad = []
    syscalls = branches = 0
    for ln in insns:
        body = ln.split("\t", 1)[1]
        if body.startswith("syscall"):
            syscalls += 1
        m = re.match(r"(call|jmp|j[a-z]+)\s+([0-9a-f]+)\b", body)
        if m:
            branches += 1
            if not lo <= int(m.group(2), 16) < hi:
                bad.append(ln)
        m = re.search(r"#\s+([0-9a-f]+)\s+<", body)
        if m and not lo <= int(m.group(1), 16) < hi:
            bad.append(ln)
        if re.search(r"\*%|%fs:|%gs:", body):  # indirect branches or TLS: libc-style code
            bad.append(ln)
    assert not bad, "hot code reaches outside the hot page:\n" + "\n".join(bad)
    assert branches > 20  # the parser did see the branches
    assert syscalls == 1  # the single gadget in hot_syscall


def test_default_build_is_an_ordinary_static_binary():
    path = targets.build("minibot")
    with open(path, "rb") as f:
        elf = ELFFile(f)
        assert elf["e_type"] == "ET_EXEC"
        assert not any(s["p_type"] == "PT_INTERP" for s in elf.iter_segments())
        flags = [s["p_flags"] for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        assert RWX not in flags  # no hot-page layout without the linker script
        assert elf.get_section_by_name(".hot.text") is not None


# ---------------------------------------------------------------------------- behaviour (ircd)
@pytest.fixture(params=["default", "hotpage"])
def bot(request, spawn):
    """A registered bot of each build, driven by a real IrcServer; closed after the test."""
    from remap.ircd import IrcServer

    srv = IrcServer(timeout=5.0)
    t = spawn("minibot", request.param, *srv.bot_args())
    reg = srv.accept_bot()
    assert (reg.nick, reg.channel) == ("minibot", "#remap")
    yield srv, t
    srv.close()


def test_bot_answers_10000_pings(bot):
    srv, t = bot
    assert srv.ping(10_000) == 10_000
    assert srv.pings == 10_000
    t.wait_blocked()


def test_bot_commands_and_mem_format(bot):
    from remap import procfs

    srv, t = bot
    assert srv.command("!ping") == "pong"
    mem = srv.command("!mem")
    t.wait_blocked()
    status = procfs.read_status(t.pid)
    assert set(mem) == {"VmSize", "VmPeak", "VmRSS", "VmExe", "VmData", "VmLib", "VmStk"}
    for k in ("VmSize", "VmPeak", "VmExe", "VmData", "VmLib", "VmStk"):
        assert mem[k] == status[k], k  # the layout does not change while it idles
    assert 0 < mem["VmRSS"] <= mem["VmSize"] <= mem["VmPeak"]
    srv.send(":x!x@h PRIVMSG #other :!ping")  # not our channel: no answer
    assert srv.command("!ping") == "pong"  # ...so the next reply is this one


def test_bot_exits_0_on_eof(bot):
    srv, t = bot
    srv.close()
    assert t.proc.wait(timeout=5) == 0


def test_hotpage_bot_has_only_hot_page_and_stack_writable(spawn):
    from remap import procfs
    from remap.ircd import IrcServer

    with IrcServer() as srv:
        t = spawn("minibot", "hotpage", *srv.bot_args())
        srv.accept_bot()
        srv.ping(10)
        t.wait_blocked()
        writable = [e for e in procfs.read_maps(t.pid) if "w" in e.perms]
        assert [(e.start, e.end - e.start, e.perms[:3]) for e in writable[:1]] == [
            (0x600000, PAGE_SIZE, "rwx")
        ]
        assert [e.path for e in writable[1:]] == ["[stack]"]  # no heap, no other RW mapping


def test_ircd_reports_a_dead_bot_without_hanging(spawn):
    from remap.ircd import IrcError, IrcServer

    with IrcServer(timeout=1.0) as srv:
        t = spawn("minibot", "default", *srv.bot_args())
        srv.accept_bot()
        t.kill()
        with pytest.raises(IrcError):
            srv.ping(5)
