"""The x86_64 ABI of an injection, as pure functions of plain values: no process, no ptrace.

What lives here: the syscall table lookups and the batch stub's table encoding, the calls that
are refused outright, the rewinding of a thread interrupted in a syscall (the package
docstring's restart semantics), and the layout of a safety frame (an rt_sigframe the thread can
rt_sigreturn through by itself) with where it may be placed below a thread's stack pointer.
Every function takes and returns ints, bytes and dicts, so tests/test_inject_abi.py checks them
with plain values.
"""

from __future__ import annotations

import contextlib
import functools
import struct
from collections.abc import Sequence
from itertools import chain
from typing import Any

from .. import kconst as K
from ..errors import UnsafeStep, UsageError
from ..kconst import MASK64

STUB_ENTRY = 64  # bytes per batch table entry: nr, 6 args, result
TABLE_PAGES = 16  # one trip runs up to TABLE_PAGES * 4096 / 64 = 1024 calls
RESTART_CODES = frozenset((1 << 64) - c for c in K.ERESTART_CODES)


def signed(word: int) -> int:
    """A 64-bit register value as the signed long a syscall returned (-errno on failure)."""
    word &= MASK64
    return word - (1 << 64) if word >> 63 else word


def interrupted(orig_rax: int, rax: int) -> bool:
    """Is a thread with these registers stopped inside an interrupted syscall (rax =
    -ERESTART*, orig_rax the call's number), which the kernel would restart?  Both values as
    the kernel's unsigned 64-bit words (user_regs_struct)."""
    return orig_rax < 1 << 63 and rax in RESTART_CODES


# Calls that cannot be injected without harm, refused before the target is touched.  Their
# numbers are fixed by the x86_64 ABI (arch/x86/entry/syscalls/syscall_64.tbl).
_NEW_TASK = "would start a new process or thread running from the injection point"
REFUSED_SYSCALLS: dict[int, str] = {
    56: _NEW_TASK,  # clone
    57: _NEW_TASK,  # fork
    58: _NEW_TASK,  # vfork
    435: _NEW_TASK,  # clone3
    59: "would replace the target's program",  # execve
    322: "would replace the target's program",  # execveat
    60: "would end the thread (send it a signal instead if that is the aim)",  # exit
    231: "would end the process (send it a signal instead if that is the aim)",  # exit_group
    15: "would load registers from whatever lies on the stack",  # rt_sigreturn
    34: "waits for a signal, and every signal is blocked while injecting: never returns",  # pause
    130: "waits for a signal with a mask it sets itself; not injectable safely",  # rt_sigsuspend
}


def refuse_unsafe(nr: int) -> None:
    """Raise UnsafeStep (target untouched) for a syscall in REFUSED_SYSCALLS."""
    why = REFUSED_SYSCALLS.get(nr)
    if why is not None:
        raise UnsafeStep(f"refusing to inject {syscall_name(nr)}: it {why}")


def syscall_number(name_or_nr: str | int) -> int:
    """A syscall number from a name (kconst first, then python-ptrace's x86_64 table)."""
    if isinstance(name_or_nr, int):
        return name_or_nr
    if name_or_nr in K.SYSCALLS:
        return K.SYSCALLS[name_or_nr]
    with contextlib.suppress(ImportError):
        from ptrace.syscall import SYSCALL_NAMES  # python-ptrace: the full table

        for nr, nm in SYSCALL_NAMES.items():
            if nm == name_or_nr:
                return nr
    raise UsageError(f"unknown syscall name: {name_or_nr!r}")


_ZERO6 = (0, 0, 0, 0, 0, 0)

# call of n words (nr + n-1 args) -> one 64-byte table entry; the rest stays zero
_ENTRY = [struct.Struct(f"<{n}q{8 * (8 - n)}x") for n in range(8)]


def encode(calls: Sequence[Sequence[Any]]) -> bytes:
    """Pack (name_or_nr, *args) calls into the stub's table: 64 bytes each (nr, 6 args, result).

    Signed packing first (the common case, and negative args like -1 just work); values above
    2**63 take the slow path.  This loop is the batch's Python cost, so it stays this plain.
    """
    lens = set(map(len, calls))
    if len(lens) == 1 and 1 <= (n := lens.pop()) <= 7:  # fast path: one shape, C-level loops
        flat = list(chain.from_iterable(calls))
        flat[0::n] = [x if x.__class__ is int else cached_number(x) for x in flat[0::n]]
        try:
            return struct.pack("<" + f"{n}q{8 * (8 - n)}x" * len(calls), *flat)
        except struct.error:
            pass
    try:
        return b"".join(
            [
                _ENTRY[len(c)].pack(c[0] if c[0].__class__ is int else cached_number(c[0]), *c[1:])
                for c in calls
            ]
        )
    except (struct.error, IndexError):
        pass
    out = []
    for c in calls:
        if not 1 <= len(c) <= 7:
            raise UsageError(f"a batch entry is (name, up to 6 args), not {c!r}")
        words = [syscall_number(c[0]), *c[1:]]
        if any(not -(1 << 63) <= w <= MASK64 for w in words):
            raise UsageError(f"a syscall argument does not fit in 64 bits: {c!r}")
        words = [w - (1 << 64) if w > (1 << 63) - 1 else w for w in words]
        out.append(_ENTRY[len(c)].pack(*words))
    return b"".join(out)


@functools.cache
def cached_number(name: str) -> int:
    return syscall_number(name)


def syscall_name(nr: int) -> str:
    if nr in K.SYSCALL_NAMES:
        return K.SYSCALL_NAMES[nr]
    with contextlib.suppress(ImportError):
        from ptrace.syscall import SYSCALL_NAMES

        return SYSCALL_NAMES.get(nr, f"syscall_{nr}")
    return f"syscall_{nr}"


# ------------------------------------------------------------------------------ safety frames
# Layout at A (64-byte aligned, in memory that is dead for the thread: below its rsp - RED_ZONE, or
# a scratch slot): [A] = first return address (cleanup or a bare `ret`), [A+8] = the restorer
# (= rt_sigframe.pretcode), ucontext at A+16 (304 bytes), XSAVE area at A+320 (64-aligned),
# FP_XSTATE_MAGIC2 right after it.  rt_sigreturn reads the frame at rsp-8 = A+8.
FRAME_HEAD = 16
UC_SIZE = 304
FP_OFF = 320
BOOT_SIZE = 320  # the boot frame below it: [restorer], ucontext (see scratch.py)


def rewound(regs: dict[str, int]) -> dict[str, int]:
    """The registers a thread interrupted in a syscall must resume with so that, with no
    kernel help, it re-executes that syscall: rip back onto the `syscall` instruction, rax =
    the call's number.  (-ERESTART_RESTARTBLOCK too: rt_sigreturn resets the restart block,
    so the original call is repeated, not restart_syscall: a relative sleep starts afresh.)"""
    r = dict(regs)
    if interrupted(r["orig_rax"], r["rax"]):
        r["rip"] = (r["rip"] - 2) & MASK64
        r["rax"] = r["orig_rax"]
    return r


def fp_area(xstate: bytes) -> bytes:
    """An XSAVE area ready for a signal frame: sw_reserved describing it, MAGIC2 after it.
    A legacy 512-byte FXSAVE image gets no magic (the kernel then restores it as FX-only)."""
    buf = bytearray(xstate)
    if len(buf) <= 512:
        return bytes(buf)
    magic1, _ext, _feat, size = struct.unpack_from("<IIQI", buf, K.FPX_SW_BYTES_OFFSET)
    if magic1 != K.FP_XSTATE_MAGIC1 or size != len(buf):
        (xbv,) = struct.unpack_from("<Q", buf, 512)
        struct.pack_into(
            "<IIQI", buf, K.FPX_SW_BYTES_OFFSET, K.FP_XSTATE_MAGIC1, len(buf) + 4, xbv | 3, len(buf)
        )
    return bytes(buf) + struct.pack("<I", K.FP_XSTATE_MAGIC2)


def build_boot_frame(at: int, regs: dict[str, int], mask: int, restorer: int) -> bytes:
    """A frame without FP state whose rt_sigreturn lands on `regs` (the next call of a chain);
    its `ret` slot is the restorer itself.  The final frame restores the FP state."""
    return build_frame(at - 8, regs, mask, b"", 0, restorer)[8 : 8 + 8 + UC_SIZE]


def frame_size(fp: bytes) -> int:
    """Bytes of a safety frame carrying the XSAVE area FP, rounded to 64 (its alignment)."""
    return (FP_OFF + len(fp) + 63) // 64 * 64


def build_frame(at: int, regs: dict[str, int], mask: int, fp: bytes, first: int, restorer: int):
    """The bytes of a safety frame at address `at` (see the layout above): running `ret`
    with rsp = at ends, through `first` and the restorer, in rt_sigreturn, which restores
    `regs` (already rewound), the signal mask and the FP state -- without any tracer."""
    r = regs
    sc = struct.pack(
        "<18Q4H5Q8Q",
        *(r[n] for n in "r8 r9 r10 r11 r12 r13 r14 r15 rdi rsi rbp rbx rdx rax rcx rsp".split()),
        r["rip"],
        r["eflags"],
        r["cs"], 0, 0, r["ss"],  # cs, gs, fs, ss (64-bit sigreturn ignores fs/gs)
        0, 0, 0, 0,  # err, trapno, oldmask, cr2
        at + FP_OFF if fp else 0,
        *([0] * 8),
    )  # fmt: skip
    flags = K.UC_SIGCONTEXT_SS | K.UC_STRICT_RESTORE_SS | (K.UC_FP_XSTATE if len(fp) > 512 else 0)
    # uc_stack: ss_flags 4 is invalid, so restore_altstack() fails quietly and leaves the
    # thread's alternate signal stack exactly as it is (the kernel squashes that error).
    uc = struct.pack("<QQQiiQ", flags, 0, 0, 4, 0, 0) + sc + struct.pack("<Q", mask & MASK64)
    assert len(uc) == UC_SIZE
    head = struct.pack("<QQ", first, restorer) + uc
    return head + bytes(FP_OFF - len(head)) + fp


def frame_spot(rsp: int, size: int, *, resident_only: bool = False) -> int:
    """Where a thread's frames go below rsp - RED_ZONE: inside the page holding that address when
    they fit there (that page is resident, and no squeeze drops it), else just below it (which
    may fault in a stack page) -- or 0 with resident_only.

    The page faulted in below stays after the session (issue 17, "no page of remap's own"),
    and nothing better is safe: the session's last call (munmap of scratch) must leave a
    whole frame in memory that outlives it, or a driver killed during it resumes the thread
    on the injected registers; the FP image cannot be shortened (a NULL fpstate resets the
    FPU, an FX-only image sets PKRU to 0; a compacted XSAVE image from a sigframe is an ABI
    edge older kernels reject); and nothing outside the process can drop an anonymous page
    (process_madvise takes no MADV_DONTNEED, MADV_PAGEOUT needs swap).  Measured on busybox
    init, 20 launches: the room below rsp - RED_ZONE in its page was 56-3,848 bytes, and this
    CPU's frame (AVX-512 and PKRU: 3,136 + BOOT_SIZE) fit in 1.  The same page is where the
    kernel puts any signal frame for that thread (init's SIGCHLD at a respawn)."""
    top = rsp - K.RED_ZONE
    at = (top - size) & ~63
    if at - BOOT_SIZE >= top & ~(K.PAGE_SIZE - 1):
        return at
    return 0 if resident_only else (top - size - 64) & ~63


def slot_size(frame_len: int) -> int:
    """Bytes of scratch a frame of FRAME_LEN takes when evicted: its 64-byte slot head plus the
    frame, in half-page slots when that fits (no AVX-512 state), else whole pages."""
    need = frame_len + 64
    return 2048 if need <= 2048 else -(-need // K.PAGE_SIZE) * K.PAGE_SIZE


def free_gap(maps: Sequence[Any], size: int) -> int | None:
    """An address where `size` bytes fit in a free gap between MAPS (a process's mappings in
    address order: objects with start, end, path), one guard page above and below, at least
    256 MiB under the stack (room to grow), highest first -- where a plain mmap would have
    put it.  None when there is no such gap."""
    stack = next((m.start for m in maps if m.path == "[stack]"), 1 << 47)
    limit = stack - (256 << 20)
    best = None
    for prev, nxt in zip(maps, maps[1:], strict=False):
        top = min(nxt.start, limit) - K.PAGE_SIZE
        if top - size - K.PAGE_SIZE >= max(prev.end, 1 << 20):
            best = top - size
    return best
