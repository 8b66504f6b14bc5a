"""The stack move: exec's random gap closed under a stopped process, and what every move of
live frames shares (remap.fold.singlepage moves them into a hot block with the same pieces).

A move copies the live frames and exec's tables, relocates every pointer into them (registers,
frame pointers, envp/auxv, libc's saved copies in writable memory), commits the pointer rewrites
last and tells the kernel the new start_stack with PR_SET_MM_MAP.  It is allowed only under a
blocked syscall whose restart re-reads nothing but registers (RESTARTABLE_UNDER_MOVE), in a
single-threaded process, with nothing swapped out; gap_move is the arithmetic remap.floor
predicts the squeeze with, without stopping the target.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass
from typing import Any

from .. import kconst as K
from .. import procfs, residency
from ..errors import UnsafeStep
from . import mmview
from .plan import Action, FoldContext
from .ranges import coalesce, page_ceil, page_floor
from .relocate import Move, candidates, relocate_regs, relocate_words

RED_ZONE = K.RED_ZONE
ALIGN = 64  # moved frames keep their address modulo 64: over-aligned locals stay aligned
# Syscalls whose restart re-reads only registers (which we relocate): safe to move the stack
# under.  futex keys and restart_block pointers are held by the kernel: refused.
RESTARTABLE_UNDER_MOVE = {"read", "write", "pause", "poll", "ppoll", "accept", "accept4",
                          "recvfrom", "select", "pselect6", "epoll_wait", "epoll_pwait",
                          "wait4", "rt_sigtimedwait", "rt_sigsuspend", "sendto"}  # fmt: skip
# ... by number (kconst has them all): the check inside the stop needs no name table (python-
# ptrace's, imported on the first unknown number, cost 22 ms of a static EnergyMech's stop)
_RESTARTABLE_NRS = frozenset(K.SYSCALLS[n] for n in RESTARTABLE_UNDER_MOVE)


def in_syscall(regs: dict[str, int]) -> bool:
    """Stopped inside an interrupted syscall (rax holds a -ERESTART* code)."""
    return regs["orig_rax"] < 2**63 and (2**64 - regs["rax"]) in K.ERESTART_CODES


# Waits that a stop ends with -EINTR instead of a restart code (measured on 6.18, see
# remap.fold.peek's _STOP_CODE; rt_sigtimedwait: kernel/signal.c do_sigtimedwait)
_EINTR_WAIT_NRS = frozenset(K.SYSCALLS[n] for n in ("rt_sigtimedwait", "epoll_wait",
                                                    "epoll_pwait"))  # fmt: skip


def ended_wait(regs: dict[str, int]) -> bool:
    """Stopped just after one of the waits our stop ended with -EINTR (busybox init in musl's
    sigtimedwait, which calls it again on EINTR): the call is over, the kernel holds nothing
    of it, and the program sees the EINTR whether or not anything is done at this stop."""
    return regs["orig_rax"] in _EINTR_WAIT_NRS and regs["rax"] == 2**64 - errno.EINTR


def _syscall_name(nr: int) -> str:
    from ..inject import syscall_name

    return syscall_name(nr)


@dataclass(frozen=True)
class GapMove:
    """Closing exec's gap under a thread at rsp: the lowest live byte LO (rsp - red zone,
    aligned), the shift DELTA up against the strings, and the stack pages before and after."""

    lo: int
    delta: int
    pages_now: int
    pages_then: int

    @property
    def frees_page(self) -> bool:
        return self.delta > 0 and self.pages_then < self.pages_now


def gap_move(rsp: int, tables_end: int, arg_start: int, arg_end: int) -> GapMove:
    """The move close_stack_gap makes (and remap.floor predicts): pure arithmetic."""
    lo = (rsp - RED_ZONE) // ALIGN * ALIGN
    delta = (arg_start - tables_end) // ALIGN * ALIGN
    now = len(range(page_floor(lo), page_ceil(arg_end), K.PAGE_SIZE))
    then = len(range(page_floor(lo + delta), page_ceil(arg_end), K.PAGE_SIZE))
    return GapMove(lo, delta, now, then)


def movable_under(nr: int | None) -> bool:
    """May the stack move under a thread blocked in syscall NR (by number: no name table)?"""
    return nr is not None and nr in _RESTARTABLE_NRS


MOVE_SCAN_MAX_PAGES = 16384  # writable pages the stack move scans for pointers, at most
# ... when the move is the squeeze's optional first step: the scan runs inside the stop at
# ~2 ms per MB (/proc/PID/mem, then relocate.candidates), to free one stack page; past
# 4 MB of writable memory the squeeze skips the move (with this reason) to keep its stop short
SQUEEZE_MOVE_SCAN_MAX_PAGES = 1024


def squeeze_stack_gap(ctx: FoldContext) -> Action | None:
    """close_stack_gap as the squeeze's optional step: the same move, refused (and so skipped)
    when more than SQUEEZE_MOVE_SCAN_MAX_PAGES writable pages would have to be scanned."""
    return close_stack_gap(ctx, max_scan_pages=SQUEEZE_MOVE_SCAN_MAX_PAGES)


def close_stack_gap(ctx: FoldContext, max_scan_pages: int = MOVE_SCAN_MAX_PAGES) -> Action | None:
    """Move the live frames and the argc/argv/envp/auxv tables up against the argument strings.

    exec leaves a random gap (arch_align_stack, up to 8 KiB) between the strings at the top of
    the stack and the tables below them; whether the live stack then straddles a page boundary
    is luck -- the seed author's "12 kB reproducible, 8 kB unreproducible".  Closing the gap
    puts the whole live stack into as few pages as it fits in, every run.  The strings do not
    move, so argv/environ string pointers and /proc/PID/cmdline stay valid; pointers into the
    moved block (frame pointers, envp, auxv entries, libc's saved copies in .data/.bss, the
    registers) are relocated, and start_stack is updated with PR_SET_MM_MAP.
    """
    s = ctx.session
    if len(s.threads) != 1:
        raise UnsafeStep(
            f"stack relocation needs a single-threaded process ({len(s.threads)} threads: "
            "other threads may hold pointers into the main stack)"
        )
    regs = s.regs()
    refuse_kernel_held_pointers(regs)
    stack = ctx.snap.vma_at(regs["rsp"])
    if stack is None or stack.label != "stack":
        raise UnsafeStep("the main thread's rsp is not in [stack]; not moving it")
    st = procfs.read_stat(ctx.pid)
    top_of_tables = end_of_tables(ctx.pid, st)
    if not (regs["rsp"] < top_of_tables <= st.arg_start <= stack.end):
        raise UnsafeStep("unexpected initial stack layout (tables above the argument strings)")
    gap = gap_move(regs["rsp"], top_of_tables, st.arg_start, st.arg_end)
    if not gap.frees_page:
        return None  # closing the gap would not free a page: nothing worth the risk
    lo, delta, pages_now, pages_then = gap.lo, gap.delta, gap.pages_now, gap.pages_then
    move = Move(lo, top_of_tables, delta)
    new_lo, new_hi = lo + delta, top_of_tables + delta
    writable = _writable_pages(ctx, stack, max_scan_pages)
    # after the cheap refusals: smaps_rollup walks every page table (~20 ms for 1 GB, stopped)
    refuse_swapped(ctx.pid)
    dead_buf = (new_lo - RED_ZONE - 1024) & ~15  # PR_SET_MM_MAP's struct: dropped after use
    first = page_floor(min(lo, dead_buf))
    touched = set(range(first, page_ceil(new_hi), K.PAGE_SIZE)) | set(writable)

    def run(c: FoldContext) -> dict[str, Any]:
        old = s.read(lo, top_of_tables - lo)
        new, fixed_in_block = relocate_words(old, [move])
        rewrites = pointer_rewrites(s, writable, [move])
        if act.rewalk is not None and not _all_anon(c, [a for a, _, _, _ in rewrites]):
            act.rewalk = None  # a rewrite copies a file page: the snapshot is re-read whole
        # Nothing above changed the target.  The copy lands in the gap, which nothing uses;
        # the commit point is rewriting pointers in .data/.bss, undone if anything fails.
        s.write(new_lo, new)
        if s.read(new_lo, len(new)) != new:
            raise UnsafeStep("read-back of the moved stack differs from what was written")
        commit_rewrites(s, rewrites)
        new_regs = relocate_regs(regs, [move])
        s.set_resume_regs(None, {k: new_regs[k] for k in new_regs if new_regs[k] != regs[k]})
        auxv = relocated_auxv(ctx.pid, [move])
        note = set_mm_map(c, {"start_stack": st.start_stack + delta}, auxv, dead_buf)
        # the old frames are now dead stack below the new rsp - 128: drop_dead_stack, the
        # plan's next step, drops them (with its alternate-signal-stack check)
        return {
            "moved_bytes": len(old),
            "delta": delta,
            "relocated_words": len(fixed_in_block) + sum(n for _, _, _, n in rewrites),
            "registers_changed": sorted(k for k in new_regs if new_regs[k] != regs[k]),
            "mm_map": note,
        }

    moved_regs = relocate_regs(regs, [move])

    def predict(c: FoldContext) -> None:
        """The dry run's view after the move: the new rsp, the copy and the struct present."""
        s.set_resume_regs(None, {k: v for k, v in moved_regs.items() if regs[k] != v})
        _assume_present(stack, range(first_new, page_ceil(new_hi), K.PAGE_SIZE))

    first_new = page_floor(dead_buf)
    act = Action(
        "relocate-stack",
        f"move live stack [{lo:#x}, {top_of_tables:#x}) up by {delta} bytes against the "
        f"argument strings ({pages_now} pages -> {pages_then})",
        run,
        touches=touched,
        detail={"from": [lo, top_of_tables], "to": [new_lo, new_hi]},
        # the stack's presence changes; elsewhere only pages holding a pointer into the moved
        # block are written -- run() keeps the cheap re-walk only if those are all anonymous
        # (not every page scanned: agetty's clean .data pages hold none, and its full
        # re-read inside the stop cost 0.4 ms of a 3-5 ms squeeze)
        rewalk=[stack.start],
        predict=predict,
    )
    return act


def _assume_present(vma, addrs: range) -> None:
    """Record in the snapshot that the anonymous pages ADDRS of VMA are (or will be) present."""
    have = {p.addr for p in vma.pages}
    new = [residency.Page(a, "anon", False, vma.label, None, None, None, None) for a in addrs]
    vma.pages = sorted([*vma.pages, *(p for p in new if p.addr not in have)], key=lambda p: p.addr)


def _all_anon(ctx: FoldContext, pages: list[int]) -> bool:
    """Are all of PAGES anonymous already?  Then rewriting pointers in them changes no page's
    presence or backing (a write to a clean file page would copy it on write: a new anonymous
    page the snapshot must learn about by a full re-read)."""
    want = set(pages)
    return all(p.backing == "anon" for v in ctx.snap.vmas for p in v.pages if p.addr in want)


def refuse_swapped(pid: int) -> None:
    """Swapped-out pages are invisible to the page walk: they could hold stack pointers we would
    not fix, or data an unmap would lose.  Refuse rather than guess."""
    swap = procfs.read_smaps_rollup(pid).get("Swap", 0)
    if swap:
        raise UnsafeStep(f"{swap} kB of this process is swapped out; not moving its stack")


def refuse_kernel_held_pointers(regs: dict[str, int]) -> None:
    if not in_syscall(regs):
        return
    code = 2**64 - regs["rax"]
    if code != K.ERESTART_RESTARTBLOCK and movable_under(regs["orig_rax"]):
        return
    name = _syscall_name(regs["orig_rax"])  # for the refusal: may load the name table
    if code == K.ERESTART_RESTARTBLOCK:
        raise UnsafeStep(
            f"blocked in {name} with a kernel restart block (it may hold a pointer into the "
            "stack); try again when the target waits in read/poll/pause"
        )
    if name not in RESTARTABLE_UNDER_MOVE:
        raise UnsafeStep(f"blocked in {name}: the kernel may hold a pointer into the stack")


def end_of_tables(pid: int, st: procfs.Stat) -> int:
    """End of what exec wrote below the gap: the tables, AT_RANDOM's 16 bytes, the platform
    string (fs/binfmt_elf.c create_elf_tables copies them just below the aligned strings)."""
    auxv = dict(procfs.read_auxv(pid))
    ends = [st.start_stack + 8]
    if K.AT_RANDOM in auxv:
        ends.append(auxv[K.AT_RANDOM] + 16)
    if K.AT_PLATFORM in auxv:
        platform = procfs.read_mem(pid, auxv[K.AT_PLATFORM], 64)
        ends.append(auxv[K.AT_PLATFORM] + platform.index(b"\0") + 1)
    # the tables themselves (they lie below the strings): argc, argv[], NULL, envp[], NULL,
    # auxv pairs, AT_NULL
    raw = procfs.read_mem(pid, st.start_stack, (st.arg_start - st.start_stack) // 8 * 8)
    words = struct.unpack(f"<{len(raw) // 8}Q", raw)
    i = 1 + words[0] + 1  # argc, argv..., NULL
    while words[i]:
        i += 1
    i += 1  # envp NULL
    while words[i]:
        i += 2
    ends.append(st.start_stack + (i + 2) * 8)
    return (max(ends) + 15) // 16 * 16


def _writable_pages(ctx: FoldContext, exclude, max_pages: int = MOVE_SCAN_MAX_PAGES) -> list[int]:
    """Present pages of every writable private mapping except EXCLUDE: where libc keeps its
    saved copies of argv/environ/auxv pointers (.data, .bss, TLS, heap).  UnsafeStep when
    there are more than MAX_PAGES (the scan is inside the stop)."""
    vmas = [
        v
        for v in ctx.snap.vmas
        if v is not exclude and "w" in v.perms and not v.pfnmap and v.label not in ("vvar", "vdso")
    ]
    n = sum(len(v.pages) for v in vmas)  # refused before any per-page work: it is in the stop
    if n > max_pages:
        raise UnsafeStep(
            f"{n * 4} kB of writable memory to scan for stack pointers (over {max_pages * 4} "
            "kB); refusing (stack relocation is meant for small processes)"
        )
    return [p.addr for v in vmas for p in v.pages]


def pointer_rewrites(s, pages: list[int], moves: list[Move]) -> list[tuple[int, bytes, bytes, int]]:
    """(page, old bytes, new bytes, words changed) for every page of PAGES holding a pointer
    into a moved block.  Computed before anything is written, so a failure changes nothing."""
    out = []
    span = min(m.lo for m in moves), max(m.hi for m in moves)
    for lo, hi in coalesce(pages):  # one read per run of pages, not per page (in the stop)
        run = s.read(lo, hi - lo)
        maybe = sorted({lo + (i & ~(K.PAGE_SIZE - 1)) for i in candidates(run, *span)})
        for a in maybe:  # the pages no word of which can point into a moved block: skipped
            old = run[a - lo : a - lo + K.PAGE_SIZE]
            new, changed = relocate_words(old, moves)
            if changed:
                out.append((a, old, new, len(changed)))
    return out


def commit_rewrites(s, rewrites: list[tuple[int, bytes, bytes, int]]) -> None:
    """Write the relocated blocks, verify each; on any failure put every block back as it was."""
    done = []
    try:
        for a, old, new, _n in rewrites:
            s.write(a, new)
            done.append((a, old))
            if s.read(a, len(new)) != new:
                raise UnsafeStep(f"read-back of page {a:#x} differs after pointer relocation")
    except BaseException:
        for a, old in reversed(done):
            s.write(a, old)
        raise


def relocated_auxv(pid: int, moves: list[Move]) -> bytes:
    out = []
    for t, v in procfs.read_auxv(pid):
        for m in moves:
            nv = m.apply(v)
            if nv is not None and t in (K.AT_RANDOM, K.AT_PLATFORM, K.AT_EXECFN):
                v = nv
                break
        out.append(struct.pack("<QQ", t, v))
    return b"".join(out) + struct.pack("<QQ", K.AT_NULL, 0)


def set_mm_map(ctx: FoldContext, changes: dict[str, int], auxv: bytes | None, buf: int) -> str:
    """Tell the kernel where things now are (PR_SET_MM_MAP); a refusal is a note, not a
    failure: the process is correct either way, only /proc's view would be stale.

    BUF is target memory that is dead (stack the fold is about to drop or unmap): the struct
    and the auxv copy are written there, so no scratch page has to be mapped for them."""
    s = ctx.session
    brk = ctx.call("brk", 0)
    mm = mmview.read_mm_map(ctx.pid, brk).with_(**changes)
    aux_addr = buf + 128
    s.write(buf, mm.pack(aux_addr if auxv else 0, len(auxv) if auxv else 0))
    if auxv:
        s.write(aux_addr, auxv)
    try:
        ctx.call("prctl", K.PR_SET_MM, K.PR_SET_MM_MAP, buf, mmview.MM_MAP_SIZE, 0)
    except OSError as e:
        msg = f"PR_SET_MM_MAP refused ({e.strerror}): /proc/PID/stat shows the old layout"
        ctx.notes.append(msg)
        return msg
    return "updated"
