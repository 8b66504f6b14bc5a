"""Relocating pointers when a block of stack moves: the conservative-GC rule, stated plainly.

When live stack words move from [lo, hi) to [lo+delta, hi+delta), every value anywhere in the
process that points into [lo, hi) must be moved by delta too: saved frame pointers and pointers
to locals inside the moved frames, registers, and pointers kept in writable memory (TLS, .data,
.bss).  We cannot tell a pointer from an integer, so -- like a conservative garbage collector --
we treat every aligned 8-byte word whose value falls in [lo, hi) as a pointer.  On x86_64 the
stack lives near 0x7ff..., where a false positive needs an integer that happens to equal a live
stack address; we accept that risk and say so in the fold's report (``relocated_words``).

Kernel-held pointers (a futex key, a restart_block's user pointer, an alternate signal stack)
cannot be fixed this way; the fold's preconditions refuse those cases instead.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# user_regs_struct fields that may hold pointers; rip and segment bases excluded on purpose:
# rip never points into the stack and fs_base/gs_base point to TLS, which the fold never moves.
POINTER_REGS = (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
)  # fmt: skip


@dataclass(frozen=True)
class Move:
    """Words formerly at [lo, hi) now live at [lo + delta, hi + delta)."""

    lo: int
    hi: int
    delta: int

    def apply(self, value: int) -> int | None:
        """The relocated value, or None when VALUE does not point into the moved block."""
        if self.lo <= value < self.hi:
            return value + self.delta
        return None


def relocate_words(buf: bytes, moves: list[Move]) -> tuple[bytes, list[int]]:
    """Rewrite every aligned 8-byte word of BUF that points into a moved block.

    Returns the new bytes and the byte offsets of the words changed (for the report and tests).
    """
    if not moves:
        return bytes(buf), []
    lo, hi = min(m.lo for m in moves), max(m.hi for m in moves)
    n = len(buf) // 8
    words = list(struct.unpack_from(f"<{n}Q", buf))
    # one cheap comparison per word first (this runs while the target is stopped, over every
    # writable page): only words inside the span of all moves are looked at move by move
    changed = []
    for i in [i for i, w in enumerate(words) if lo <= w < hi]:
        for m in moves:
            nv = m.apply(words[i])
            if nv is not None:
                words[i] = nv
                changed.append(i * 8)
                break
    if not changed:
        return bytes(buf), changed
    out = struct.pack(f"<{n}Q", *words) + buf[n * 8 :]
    return out, changed


def candidates(buf: bytes, lo: int, hi: int) -> list[int]:
    """Byte offsets of the aligned words of BUF that *may* lie in [lo, hi) -- a superset of
    those that do, found at C speed: every such word shares the high bytes lo and hi - 1 have
    in common (a stack block: 0x00007ffd_xxxx....).  The pointer scan runs over every writable
    page while the target is stopped; unpacking each word in Python costs ~10 us a page."""
    if hi <= lo:
        return []
    c = next((c for c in range(8, 0, -1) if lo >> (64 - 8 * c) == (hi - 1) >> (64 - 8 * c)), 0)
    if c == 0:
        return list(range(0, len(buf) - 7, 8))
    pat, at = (lo >> (64 - 8 * c)).to_bytes(c, "little"), 8 - c  # where in a word they sit
    # searched without its top zero bytes (every user address has two, and so does almost
    # every other word: a pattern ending in zeros makes bytes.find crawl), checked after
    key = pat.rstrip(b"\0") or pat
    tail = pat[len(key) :]
    out = []
    i = buf.find(key, at)
    while i >= 0:
        if i % 8 == at and buf[i + len(key) : i + c] == tail:
            out.append(i - at)
        i = buf.find(key, i + 1)
    return out


def relocate_regs(regs: dict[str, int], moves: list[Move]) -> dict[str, int]:
    """A copy of REGS with every pointer register into a moved block relocated."""
    out = dict(regs)
    for name in POINTER_REGS:
        if name in out:
            for m in moves:
                nv = m.apply(out[name])
                if nv is not None:
                    out[name] = nv
                    break
    return out


def walk_frames(
    read_word, rbp: int, lo: int, hi: int, is_hot, max_frames: int = 64
) -> tuple[int | None, list[tuple[int, int]]]:
    """Follow the rbp chain from a stopped thread and find where the hot frames end.

    READ_WORD(addr) returns the 8-byte word at ADDR (from a buffer already read); frames must lie
    in [lo, hi).  IS_HOT(addr) says whether a return address is inside the hot page's code.
    Returns (cfa, frames): CFA is the address just above the outermost frame whose caller is
    *not* hot (the steady-state root's frame ends there; callers above it are frames the root
    never returns to), or None when the chain leaves [lo, hi) or is longer than MAX_FRAMES.
    FRAMES lists (frame base, return address) pairs walked.

    Why this walk beside remap.unwind (CFI): a program built with -fno-omit-frame-pointer
    keeps an exact chain needing no unwind tables; the single-page fold prefers the CFI walk
    and uses this one when that cannot prove the root (singlepage._steady_root cross-checks them).
    A chain that breaks (rbp outside the stack) is reported, never guessed.
    """
    frames: list[tuple[int, int]] = []
    fp = rbp
    for _ in range(max_frames):
        if not (lo <= fp and fp + 16 <= hi) or fp % 8:
            return None, frames
        saved_fp, ret = read_word(fp), read_word(fp + 8)
        frames.append((fp, ret))
        if not is_hot(ret):
            return fp + 16, frames
        if saved_fp <= fp:
            return None, frames
        fp = saved_fp
    return None, frames
