"""Unit tests of the injection's pure ABI helpers (remap.inject.abi), with plain values.

These functions take ints, bytes and dicts and return the same: frames are checked field by
field against the kernel's struct layouts (arch/x86/include/uapi/asm/sigcontext.h, ucontext.h),
rewinding against the kernel's restart rule (rax = orig_rax, rip -= 2 for each of the four
-ERESTART* codes, arch/x86/kernel/signal.c), the batch table against the stub's 64-byte entries.
The live behaviour of the same bytes (a thread rt_sigreturning through a frame) is
tests/test_torture.py.
"""

from __future__ import annotations

import struct
from collections import namedtuple

import pytest

from remap import kconst as K
from remap.errors import UnsafeStep, UsageError
from remap.inject import abi

M = abi.MASK64
REGS = ("r8 r9 r10 r11 r12 r13 r14 r15 rdi rsi rbp rbx rdx rax rcx rsp rip eflags cs ss "
        "orig_rax").split()  # fmt: skip
SC_ORDER = "r8 r9 r10 r11 r12 r13 r14 r15 rdi rsi rbp rbx rdx rax rcx rsp rip eflags".split()


def regs(**kw: int) -> dict[str, int]:
    r = {n: 0x1000 + i for i, n in enumerate(REGS)}
    r.update(cs=0x33, ss=0x2B, orig_rax=M)
    r.update(kw)
    return r


# ---------------------------------------------------------------------- interrupted syscalls
@pytest.mark.parametrize("code", K.ERESTART_CODES)
def test_each_restart_code_is_rewound_onto_the_syscall(code):
    r = regs(orig_rax=K.SYSCALLS["read"], rax=(1 << 64) - code, rip=0x401002)
    assert abi.interrupted(r["orig_rax"], r["rax"])
    w = abi.rewound(r)
    assert (w["rip"], w["rax"]) == (0x401000, K.SYSCALLS["read"])  # back on `syscall`, nr in rax
    assert {k: v for k, v in w.items() if k not in ("rip", "rax")} == {
        k: v for k, v in r.items() if k not in ("rip", "rax")
    }
    assert r["rip"] == 0x401002  # the input is not changed


@pytest.mark.parametrize(
    "orig_rax, rax",
    [
        (M, (1 << 64) - K.ERESTARTSYS),  # not in a syscall (orig_rax = -1): rax is just data
        (0, (1 << 64) - 4),  # -EINTR: the call has returned, nothing to restart
        (0, 0),  # returned 0
        (0, (1 << 64) - 515),  # not one of the four codes
    ],
)
def test_only_restart_codes_inside_a_syscall_are_rewound(orig_rax, rax):
    r = regs(orig_rax=orig_rax, rax=rax, rip=0x401002)
    assert not abi.interrupted(orig_rax, rax)
    assert abi.rewound(r) == r


def test_rewinding_wraps_at_zero():
    r = regs(orig_rax=7, rax=(1 << 64) - K.ERESTARTSYS, rip=1)
    assert abi.rewound(r)["rip"] == M  # 64-bit arithmetic, as the CPU does it


def test_signed():
    assert abi.signed(M) == -1
    assert abi.signed((1 << 64) - 9) == -9
    assert abi.signed(0x7FFF_FFFF_F000) == 0x7FFF_FFFF_F000
    assert abi.signed(-5) == -5  # already signed: unchanged


# ---------------------------------------------------------------------- the batch table
def _entries(table: bytes) -> list[tuple[int, ...]]:
    assert len(table) % abi.STUB_ENTRY == 0
    return [struct.unpack_from("<8q", table, i) for i in range(0, len(table), abi.STUB_ENTRY)]


def test_encode_one_shape():
    t = abi.encode([("getpid",), ("gettid",)])
    assert _entries(t) == [(39, 0, 0, 0, 0, 0, 0, 0), (186, 0, 0, 0, 0, 0, 0, 0)]


def test_encode_mixed_shapes_negative_and_unsigned_args():
    t = abi.encode([("mmap", 0, 4096, 3, 0x22, -1, 0), (11, 1 << 63, 8), ("close", M)])
    e = _entries(t)
    assert e[0] == (9, 0, 4096, 3, 0x22, -1, 0, 0)
    assert e[1][:3] == (11, -(1 << 63), 8)  # 2**63 as the kernel sees the same 64 bits
    assert e[2][:2] == (3, -1)  # 2**64 - 1 and -1 are the same word
    assert all(x[7] == 0 for x in e)  # the result slots start at 0


@pytest.mark.parametrize("bad", [[("close", 1 << 64)], [("close", -(1 << 63) - 1)]])
def test_encode_refuses_what_does_not_fit_64_bits(bad):
    with pytest.raises(UsageError, match="64 bits"):
        abi.encode(bad)


@pytest.mark.parametrize("bad", [[()], [("mmap", 1, 2, 3, 4, 5, 6, 7)]])
def test_encode_refuses_bad_entries(bad):
    with pytest.raises(UsageError, match="batch entry"):
        abi.encode(bad)


def test_syscall_names_and_numbers():
    assert abi.syscall_number("madvise") == K.NR_MADVISE
    assert abi.syscall_number(39) == 39
    assert abi.syscall_name(K.NR_MUNMAP) == "munmap"
    assert abi.syscall_number(abi.syscall_name(302)) == 302  # prlimit64, from python-ptrace
    with pytest.raises(UsageError, match="unknown syscall"):
        abi.syscall_number("no_such_call")


def test_refused_calls_are_refused_and_others_not():
    for nr in abi.REFUSED_SYSCALLS:
        with pytest.raises(UnsafeStep, match=abi.syscall_name(nr)):
            abi.refuse_unsafe(nr)
    abi.refuse_unsafe(K.SYSCALLS["getpid"])  # no error


# ---------------------------------------------------------------------- safety frames
def test_frame_layout_matches_the_kernels_rt_sigframe():
    at, mask, first, restorer = 0x7FFD_0000_1000, 0x1234, 0x401111, 0x402222
    fp = abi.fp_area(bytes(832))
    r = regs(rip=0x401000, eflags=0x246, rsp=0x7FFD_0000_2000)
    f = abi.build_frame(at, r, mask, fp, first, restorer)
    assert len(f) == abi.FP_OFF + len(fp) and abi.frame_size(fp) >= len(f)
    assert abi.frame_size(fp) % 64 == 0
    assert struct.unpack_from("<QQ", f, 0) == (first, restorer)  # `ret` -> first -> restorer
    flags, link, ss_sp, ss_flags = struct.unpack_from("<QQQi", f, 16)
    assert flags == K.UC_SIGCONTEXT_SS | K.UC_STRICT_RESTORE_SS | K.UC_FP_XSTATE
    assert (link, ss_sp, ss_flags) == (0, 0, 4)  # an invalid uc_stack: altstack untouched
    sc = 16 + 40  # struct sigcontext after uc_flags, uc_link, stack_t (24 bytes)
    assert list(struct.unpack_from("<18Q", f, sc)) == [r[n] for n in SC_ORDER]
    cs, gs, fs, ss = struct.unpack_from("<4H", f, sc + 18 * 8)
    assert (cs, gs, fs, ss) == (0x33, 0, 0, 0x2B)
    (fpstate,) = struct.unpack_from("<Q", f, sc + 18 * 8 + 8 + 4 * 8)
    assert fpstate == at + abi.FP_OFF  # points at the XSAVE area in the same frame
    (sigmask,) = struct.unpack_from("<Q", f, 16 + abi.UC_SIZE - 8)
    assert sigmask == mask
    assert f[abi.FP_OFF :] == fp


def test_frame_without_fp_state_and_boot_frame():
    r = regs()
    f = abi.build_frame(0x10000, r, 0, b"", 0, 0x402222)
    sc = 16 + 40
    (fpstate,) = struct.unpack_from("<Q", f, sc + 18 * 8 + 8 + 4 * 8)
    assert fpstate == 0 and len(f) == abi.FP_OFF
    (flags,) = struct.unpack_from("<Q", f, 16)
    assert not flags & K.UC_FP_XSTATE
    boot = abi.build_boot_frame(0x20000, r, 0x55, 0x402222)
    assert len(boot) == 8 + abi.UC_SIZE <= abi.BOOT_SIZE
    assert struct.unpack_from("<Q", boot, 0) == (0x402222,)  # its `ret` is the restorer
    plain = abi.build_frame(0x20000 - 8, r, 0x55, b"", 0, 0x402222)
    assert boot[8:] == plain[16 : 16 + abi.UC_SIZE]  # the same ucontext, one slot higher


def test_fp_area():
    legacy = bytes(range(256)) * 2
    assert abi.fp_area(legacy) == legacy  # FXSAVE only: no magic, restored as FX-only
    raw = bytearray(832)
    struct.pack_into("<Q", raw, 512, 0x7)  # XSTATE_BV
    out = abi.fp_area(bytes(raw))
    assert len(out) == 836 and struct.unpack_from("<I", out, 832) == (K.FP_XSTATE_MAGIC2,)
    magic1, ext, feat, size = struct.unpack_from("<IIQI", out, K.FPX_SW_BYTES_OFFSET)
    assert (magic1, ext, feat, size) == (K.FP_XSTATE_MAGIC1, 836, 0x7, 832)
    assert abi.fp_area(out[:832]) == out  # already described: only the trailing magic added


def test_frame_spot_keeps_off_the_red_zone_and_prefers_the_resident_page():
    page = 0x7FFD_0000_3000
    rsp = page + 0xF00  # rsp - 128 high in its page: a 1 kB frame fits below it there
    at = abi.frame_spot(rsp, 1024)
    assert at % 64 == 0 and at + 1024 <= rsp - K.RED_ZONE and at - abi.BOOT_SIZE >= page
    assert abi.frame_spot(rsp, 1024, resident_only=True) == at
    low = page + 0x300  # too close to the page's start for frame + boot frame
    assert abi.frame_spot(low, 1024, resident_only=True) == 0
    below = abi.frame_spot(low, 1024)
    assert below % 64 == 0 and below + 1024 <= low - K.RED_ZONE and below < page


def test_slot_size():
    assert abi.slot_size(2048 - 64) == 2048
    assert abi.slot_size(2048 - 63) == 4096
    assert abi.slot_size(11_000) == 12_288


Map = namedtuple("Map", "start end path")
MiB = 1 << 20


def test_free_gap_is_the_highest_gap_with_guard_pages_under_the_stack():
    stack = 0x7FFD_0000_0000
    maps = [
        Map(0x400000, 0x401000, "/bin/x"),
        Map(0x7F00_0000_0000, 0x7F00_0010_0000, "/lib/libc.so"),
        Map(stack, stack + 0x21000, "[stack]"),
    ]
    size = 21 * 4096
    gap = abi.free_gap(maps, size)
    assert gap == stack - 256 * MiB - 4096 - size  # highest, 256 MiB + a guard page below stack
    low = [Map(0x1000, 0x2000, "a"), Map(0x80000, 0x90000, "b")]
    assert abi.free_gap(low, size) is None  # below 1 MiB: never used
    # a gap exactly as large as size + two guard pages fits; one page less does not
    hi = 0x10_0000_0000
    tight = [Map(hi, hi + 4096, "a"), Map(hi + 4096 + size + 2 * 4096, hi + 64 * MiB, "b")]
    assert abi.free_gap(tight, size) == hi + 2 * 4096
    tighter = [tight[0], Map(tight[1].start - 4096, tight[1].end, "b")]
    assert abi.free_gap(tighter, size) is None
