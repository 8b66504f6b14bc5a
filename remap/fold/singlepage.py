"""The single-page and K-page fold: a hot-block program folded into its block -- live frames
moved into the block's stack reserve, argv beside them, every other mapping unmapped except
those holding anonymous pages (kept, their pointers into the stack relocated).  The move's
pieces come from remap.fold.stackmove; the steady-state root is found by the CFI walk
(remap.unwind), cross-checked with the rbp chain.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from .. import kconst as K
from .. import procfs, residency, unwind
from ..errors import UnsafeStep
from .hotpage import HotPage, find_hot_page
from .plan import Action, FoldContext, in_scratch
from .ranges import coalesce, page_ceil, page_floor
from .relocate import Move, candidates, relocate_regs, relocate_words, walk_frames
from .stackmove import (
    ALIGN,
    RED_ZONE,
    commit_rewrites,
    end_of_tables,
    ended_wait,
    in_syscall,
    pointer_rewrites,
    refuse_kernel_held_pointers,
    refuse_swapped,
    relocated_auxv,
    set_mm_map,
)


@dataclass
class _SinglePage:
    """What the single-page fold will do, computed while the target is stopped, before any
    write: the frames [lo, cfa) and the argv strings move by ``moves`` into the reserve."""

    hot: HotPage
    regs: dict[str, int]
    frames: int  # frames walked up to the steady-state root
    lo: int  # lowest live byte (rsp - red zone, aligned)
    cfa: int  # the root frame's CFA: the top of what moves
    delta: int
    strings: bytes
    str_at: int
    moves: list[Move]
    caught: int  # caught signals, blocked for good (a signal frame would not fit)
    unmap: list[tuple[int, int]]
    env_end: int  # the top of the old stack's strings: the pages the fold touches end there
    kept: list[tuple[int, int]]  # mappings outside the block holding anonymous pages: kept
    kept_rewrites: list[tuple[int, bytes, bytes, int]]  # their pages pointing into the stack
    drops: list[tuple[int, int]]  # clean file pages of kept mappings: MADV_DONTNEED
    extra: list[tuple[int, bytes]]  # exec's tables, relocated, and where they go (or none)
    mm: dict[str, int]  # the stack fields PR_SET_MM_MAP gets: start_stack, arg_*, env_*

    @property
    def new_lo(self) -> int:
        return self.lo + self.delta


def single_page(ctx: FoldContext) -> Action | None:
    """Fold a hot-block program into its block of K pages (K = 1: its one hot page): live
    frames into the block's stack reserve, argv strings beside them, every other mapping
    unmapped -- except mappings outside the block that hold anonymous pages (a heap: data that
    may only be moved or kept), which are kept, their pointers into the stack relocated.

    Preconditions (each refused with its reason): a hot block in the executable; one thread;
    blocked in a restartable syscall *inside* the block (or just out of a wait the stop ended
    with EINTR: stackmove.ended_wait); the frame walk (CFI, else the rbp chain) reaches a frame
    whose caller is outside the hot code (the steady-state root, which by the contract never
    returns); moved frames + strings + a margin fit the reserve.  Caught
    signals are blocked for good (a signal frame would not fit), unless the block is open and
    its reserve has room for one (_room_for_handlers); signals at their default action push no
    frame and keep working
    (SIGTERM still terminates).
    """
    hot, regs, stack = _single_page_target(ctx)
    p = _plan_single_page(ctx, hot, regs, stack)
    kept = f", keep {len(p.kept)} with anonymous pages" if p.kept else ""
    where = "hot page" if hot.pages == 1 else f"{hot.pages}-page hot block"
    return Action(
        "single-page",
        f"move {p.cfa - p.lo} B of live frames + {len(p.strings)} B argv into the {where} "
        f"reserve at {hot.start:#x}, unmap {len(p.unmap)} other mappings{kept}",
        lambda c: _fold_into_page(c, p),
        touches=set(range(page_floor(p.lo), page_ceil(p.env_end), K.PAGE_SIZE))
        | set(range(hot.start, hot.end, K.PAGE_SIZE))
        | {a for a, *_ in p.kept_rewrites},
        detail={"hot_page": hot.start, "reserve_bytes": hot.reserve, "hot_pages": hot.pages},
    )


def _single_page_target(ctx: FoldContext) -> tuple[HotPage, dict[str, int], residency.Vma]:
    """(hot page, registers, [stack] VMA) of a target the single-page fold may take; UnsafeStep
    with the reason for any other (no hot page, threads, not idle in its hot code...)."""
    s = ctx.session
    hot = find_hot_page(ctx.pid)
    if hot is None:
        raise UnsafeStep("no hot page in this executable (__hot_start/__hot_end symbols missing)")
    if len(s.threads) != 1:
        raise UnsafeStep(f"single-page fold needs one thread, found {len(s.threads)}")
    regs = s.regs()
    if not (in_syscall(regs) or ended_wait(regs)) or not hot.contains(regs["rip"]):
        raise UnsafeStep(
            f"the target is not waiting in a syscall inside its hot page (rip {regs['rip']:#x}, "
            f"hot page {hot.start:#x}-{hot.end:#x}); try again when it is idle"
        )
    refuse_kernel_held_pointers(regs)
    refuse_swapped(ctx.pid)
    if regs["rip"] - 2 not in hot.syscall_insns:
        raise UnsafeStep("the interrupted syscall instruction is not in the hot page's code")
    stack = ctx.snap.vma_at(regs["rsp"])
    if stack is None or stack.label != "stack":
        raise UnsafeStep("the main thread's rsp is not in [stack]")
    return hot, regs, stack


def _plan_single_page(
    ctx: FoldContext, hot: HotPage, regs: dict[str, int], stack: residency.Vma
) -> _SinglePage:
    """Where the frames and strings go; UnsafeStep when they do not fit the reserve (or when
    anonymous memory lives outside the hot page and the stack)."""
    s = ctx.session
    st = procfs.read_stat(ctx.pid)
    cfa, frames = _steady_root(s, regs, st.start_stack, hot, ctx.pid)
    lo = (regs["rsp"] - RED_ZONE) // 16 * 16
    kept = _kept_anon(ctx, hot, stack)
    kept += _referenced(ctx, hot, kept, stack)
    margin = K.FOLD_MARGIN
    if hot.cold_reachable:  # an open block: its root may return into cold callers
        cfa = st.start_stack  # so every live frame moves, up to exec's tables
    env = _with_environment(ctx.pid, s, st, hot, cfa, lo, margin)
    if env is None and hot.cold_reachable:
        raise UnsafeStep(
            f"the live stack {st.start_stack - lo} B, exec's tables and the strings "
            f"{st.env_end - st.arg_start} B do not fit the open block's {hot.reserve} B stack "
            "reserve (all of them move: a cold caller may be returned to); relink with a "
            "larger --margin"
        )
    if env is not None:  # exec's tables and every string move: getenv, auxv readers work
        strings, str_at, delta, moves, extra, mm = env
    else:  # argv strings only (a one-page block has no room for more); environ is left behind
        strings = s.read(st.arg_start, st.arg_end - st.arg_start)
        str_at = hot.stack_hi - len(strings)
        delta = (str_at - cfa) // ALIGN * ALIGN
        moves = [Move(lo, cfa, delta), Move(st.arg_start, st.arg_end, str_at - st.arg_start)]
        extra, mm = [], {"arg_start": str_at, "arg_end": hot.stack_hi,
                         "env_start": hot.stack_hi, "env_end": hot.stack_hi}  # fmt: skip
    need = cfa - lo + len(strings) + margin
    if lo + delta - margin < hot.stack_lo:
        raise UnsafeStep(
            f"live stack {cfa - lo} B + argv strings {len(strings)} B + margin {margin} B = "
            f"{need} B does not fit the hot page's {hot.reserve} B stack reserve"
        )
    unmap = [
        (v.start, v.end)
        for v in ctx.snap.vmas
        if not hot.holds(v.start, v.end)
        and v.label != "vsyscall"
        and not _scratch_vma(s, v)
        and (v.start, v.end) not in {(k.start, k.end) for k in kept}
    ]
    kept_pages = [p.addr for v in kept for p in v.pages if not p.clean_file and not v.pfnmap]
    drops = coalesce([p.addr for v in kept for p in v.pages if p.clean_file])
    if len(kept_pages) > 16384:  # the same bound as _writable_pages: a scan inside the stop
        raise UnsafeStep(
            f"{len(kept_pages) * 4} kB of kept anonymous memory to scan for stack pointers; "
            "refusing (the fold is meant for small processes)"
        )
    rewrites = pointer_rewrites(s, kept_pages, moves) if kept_pages else []
    caught = _caught_signals(ctx.pid)
    if caught and _room_for_handlers(ctx.pid, hot, cfa + delta):
        caught = 0
    mm["start_stack"] = mm.get("start_stack", cfa + delta)
    return _SinglePage(hot, regs, len(frames), lo, cfa, delta, strings, str_at, moves, caught,
                       unmap, st.env_end, [(v.start, v.end) for v in kept],
                       rewrites, drops, extra, mm)  # fmt: skip


HANDLER_ALLOWANCE = 2048  # stack a signal handler of an open block may use beyond its frame


def _room_for_handlers(pid: int, hot: HotPage, root_cfa: int) -> bool:
    """May caught signals stay deliverable?  Only in an open block (its handlers, which no
    profile saw run, stay reachable in the kept cold code) that declares its profiled peak
    stack depth (``__hot_stack_peak``) and whose reserve keeps, below the deepest the
    steady state goes from the moved root frame (ROOT_CFA), the red zone, the kernel's signal
    frame (AT_MINSIGSTKSZ, xsave area included) and HANDLER_ALLOWANCE -- so that SIGTERM
    still runs EnergyMech's goodbye instead of being blocked for good."""
    if not hot.cold_reachable or not hot.stack_peak:
        return False
    minsig = dict(procfs.read_auxv(pid)).get(K.AT_MINSIGSTKSZ, 0) or 4096
    deepest = root_cfa - hot.stack_peak - RED_ZONE
    return deepest - hot.stack_lo >= minsig + HANDLER_ALLOWANCE


def _with_environment(
    pid: int, s, st: procfs.Stat, hot: HotPage, cfa: int, lo: int, margin: int
) -> tuple | None:
    """The full move, when it fits the reserve: exec's tables (argc, argv[], envp[], auxv,
    AT_RANDOM's bytes) and all the strings (argv and environment) beside the frames, so that
    ``environ`` and the auxv libc saved stay valid (EnergyMech's time zone code calls getenv
    on every tick).  (strings, where, frames' delta, moves, [(addr, tables)], mm fields) or
    None when it does not fit."""
    tab_end = end_of_tables(pid, st)
    if not cfa <= st.start_stack < tab_end <= st.arg_start <= st.env_end:
        return None
    strings = s.read(st.arg_start, st.env_end - st.arg_start)
    str_at = hot.stack_hi - len(strings)
    tab_at = (str_at - (tab_end - st.start_stack)) // ALIGN * ALIGN
    delta = (tab_at - cfa) // ALIGN * ALIGN
    if lo + delta - margin < hot.stack_lo:
        return None
    moves = [
        Move(lo, cfa, delta),
        Move(st.start_stack, tab_end, tab_at - st.start_stack),
        Move(st.arg_start, st.env_end, str_at - st.arg_start),
    ]
    tables, _fixed = relocate_words(s.read(st.start_stack, tab_end - st.start_stack), moves)
    shift = str_at - st.arg_start
    mm = {
        "start_stack": tab_at,
        "arg_start": str_at,
        "arg_end": st.arg_end + shift,
        "env_start": st.env_start + shift,
        "env_end": st.env_end + shift,
    }
    return strings, str_at, delta, moves, [(tab_at, tables)], mm


def _fold_into_page(c: FoldContext, p: _SinglePage) -> dict[str, Any]:
    """The single-page fold's action: copy, relocate, commit, then unmap everything else."""
    s, regs, hot = c.session, p.regs, p.hot
    s.use_gadget(regs["rip"] - 2)
    frames_old = s.read(p.lo, p.cfa - p.lo)
    frames_new, fixed = relocate_words(frames_old, p.moves)
    rewrites = []
    for a, e in hot.writable:
        old = s.read(a, e - a)
        new, ch = relocate_words(old, p.moves)
        if ch:
            rewrites.append((a, old, new, len(ch)))
    # The reserve is unused until the registers point into it: writing there is harmless.
    blocks = [(p.new_lo, frames_new), (p.str_at, p.strings), *p.extra]
    for a, data in blocks:
        s.write(a, data)
    if any(s.read(a, len(data)) != data for a, data in blocks):
        raise UnsafeStep("read-back of the hot page's stack reserve differs")
    commit_rewrites(s, rewrites + p.kept_rewrites)  # the commit point: undone on failure
    new_regs = relocate_regs(regs, p.moves)
    s.set_resume_regs(None, {k: new_regs[k] for k in new_regs if new_regs[k] != regs[k]})
    if p.caught:
        s.set_resume_sigmask(None, s.sigmask() | p.caught)
    layout = {
        "start_code": hot.start,
        "end_code": hot.end,
        "start_data": hot.start,
        "end_data": hot.end,
        **({} if p.kept else {"start_brk": hot.end, "brk": hot.end}),  # a kept heap: its brk
        **p.mm,
    }
    # the buffer: the old stack below the moved frames, unmapped next
    auxv = relocated_auxv(c.pid, p.moves) if p.extra else None
    note = set_mm_map(c, layout, auxv, (p.lo - 1024) & ~15)
    for a, e in p.unmap:
        c.call("munmap", a, e - a)
    for a, e in p.drops:  # proven clean file pages (pagemap, while stopped): nothing lost
        c.call("madvise", a, e - a, K.MADV_DONTNEED)
    first = page_floor(p.str_at)
    _make_anonymous(c, first, (page_ceil(hot.stack_hi) - first) // K.PAGE_SIZE)
    s.release_scratch()
    return {
        "frames": p.frames,
        "moved_bytes": p.cfa - p.lo,
        "relocated_words": len(fixed) + sum(n for *_, n in rewrites + p.kept_rewrites),
        "unmapped": len(p.unmap),
        "kept": [[a, e] for a, e in p.kept],
        "dropped_pages": sum((e - a) // K.PAGE_SIZE for a, e in p.drops),
        "blocked_signals": _sig_names(p.caught),
        "reserve_free_bytes": p.new_lo - hot.stack_lo,
        "environment_moved": bool(p.extra),
        "mm_map": note,
    }


def _make_anonymous(ctx: FoldContext, page: int, pages: int = 1) -> None:
    """Replace the (file-backed, copy-on-written) PAGES hot pages at PAGE -- the ones holding
    the moved argv strings -- by anonymous pages holding the same bytes: mmap fresh pages,
    copy, mremap them over the old ones in one atomic step.

    Why: the kernel reads /proc/PID/cmdline only from anonymous mappings (FOLL_ANON in
    get_mm_cmdline), and the argv strings now live there.  Nothing is lost: the bytes move,
    and are compared after the move."""
    s = ctx.session
    n = pages * K.PAGE_SIZE
    content = s.read(page, n)
    rwx = K.PROT_READ | K.PROT_WRITE | K.PROT_EXEC
    new = ctx.call("mmap", 0, n, rwx, K.MAP_PRIVATE | K.MAP_ANONYMOUS, -1 & (2**64 - 1), 0)
    s.write(new, content)
    if s.read(new, n) != content:
        ctx.call("munmap", new, n)
        raise UnsafeStep("copy of the hot page into an anonymous page differs; not moving it")
    ctx.call("mremap", new, n, n, K.MREMAP_MAYMOVE | K.MREMAP_FIXED, page)
    if s.read(page, n) != content:
        raise UnsafeStep("hot page differs after moving it into an anonymous mapping")


def _steady_root(
    s, regs: dict[str, int], start_stack: int, hot: HotPage, pid: int
) -> tuple[int, list]:
    """Walk frames between rsp and the initial stack pointer (every frame of the program lies
    below it; reading no further faults in none of exec's random gap) to the steady-state
    root: the first frame whose caller is outside the hot code.  Its CFA is the top of what
    the fold moves.

    Two walks: the CFI walk (remap.unwind: .eh_frame, or rules derived from the machine code
    where there is none) works with or without frame pointers and is preferred; the rbp chain
    is the fallback (hot code it cannot analyse, or a hot page already made anonymous).  When
    both reach a root they must agree.  The walks only say where the frames end: every pointer
    into the moved block is still found and relocated by the caller (relocate.relocate_words).
    Raises UnsafeStep with both reasons when neither proves the root."""
    buf_lo, buf_hi = regs["rsp"], start_stack + 16
    buf = s.read(buf_lo, buf_hi - buf_lo)

    def word(a: int) -> int:
        if not buf_lo <= a <= buf_hi - 8:
            raise unwind.CannotUnwind(f"stack word {a:#x} is outside [rsp, start_stack]")
        return struct.unpack_from("<Q", buf, a - buf_lo)[0]

    maps = [(m.start, m.end, m.offset, m.path, m.inode) for m in procfs.read_maps(pid)]
    cfi_cfa, cfi_frames, why = _cfi_root(regs, word, (buf_lo, buf_hi), hot, maps)
    cfa, frames = walk_frames(word, regs["rbp"], buf_lo, buf_hi, hot.contains)
    if cfi_cfa is not None:
        if cfa is not None and cfa != cfi_cfa and _fp_frames(frames, cfi_frames):
            raise UnsafeStep(
                f"the rbp chain ends the hot frames at {cfa:#x}, the CFI walk at {cfi_cfa:#x}; "
                "not guessing which is right"
            )
        return cfi_cfa, cfi_frames
    bad = next((ret for _fp, ret in frames if not unwind.follows_call(ret, maps)), None)
    if cfa is not None and bad is not None:  # rbp was no frame pointer: its "chain" is noise
        raise UnsafeStep(
            f"cannot find where the hot frames end: the CFI walk stopped ({why}), and the "
            f"rbp chain holds {bad:#x}, which follows no call instruction"
        )
    if cfa is None:
        raise UnsafeStep(
            f"cannot find where the hot frames end: the CFI walk stopped ({why}), and the "
            f"frame-pointer chain breaks after {len(frames)} frames (build the target with "
            "-fno-omit-frame-pointer or keep its unwind tables)"
        )
    return cfa, frames


def _cfi_root(regs, word, stack, hot: HotPage, maps: list) -> tuple[int | None, list, str]:
    """(CFA of the first frame whose caller is not hot, frames walked, "") by the CFI walk,
    or (None, frames, the reason it stopped)."""
    walked: list = []
    try:
        for f in unwind.frames(regs, word, maps, stack):
            walked.append(f)
            if f.ra is None:
                return None, walked, f"the outermost frame {f.function} is still hot code"
            if not hot.contains(f.ra):
                return f.cfa, walked, ""
    except unwind.CannotUnwind as e:
        return None, walked, str(e)
    return None, walked, "the walk ended inside the hot code"


def _fp_frames(fp_frames: list[tuple[int, int]], cfi_frames: list) -> bool:
    """Does the rbp chain describe real frames (every return address it read is one the CFI
    walk found)?  Without frame pointers rbp is an ordinary register and its "chain" noise."""
    ras = {f.ra for f in cfi_frames}
    return all(ret in ras for _fp, ret in fp_frames)


def _referenced(ctx: FoldContext, hot: HotPage, kept: list, stack) -> list:
    """Mappings outside the block that the program still needs and that hold no data: its own
    cold code when the block is open (``__hot_cold_reachable``), and every other mapping the
    block's writable data or a kept mapping holds a pointer into -- the vdso (musl caches
    ``clock_gettime``'s vdso entry in .data: unmapped, the next time() would jump into
    nothing; vvar comes with it, the vdso reads it), a file musl mapped (its time zone).
    They are kept mapped, their clean file pages dropped.  A program started with the vdso
    hidden and a closed block (the demo bot) keeps none."""
    s = ctx.session
    exe = procfs.read_exe(ctx.pid)
    have = {(v.start, v.end) for v in kept}
    out = []
    rest = []
    for v in ctx.snap.vmas:
        if (hot.holds(v.start, v.end) or v is stack or (v.start, v.end) in have
                or v.label in ("vsyscall", "vvar") or _scratch_vma(s, v)):  # fmt: skip
            continue
        if v.path == exe:
            if hot.cold_reachable:
                out.append(v)
            continue  # the executable's cold part: kept only when the block is open
        rest.append(v)
    if not rest:
        return out
    spans = list(hot.writable) + [(p.addr, p.addr + K.PAGE_SIZE) for v in kept for p in v.pages]
    bufs = [(a, s.read(a, e - a)) for a, e in spans]
    for v in rest:
        if any(
            v.start <= struct.unpack_from("<Q", buf, i)[0] < v.end
            for _a, buf in bufs
            for i in candidates(buf, v.start, v.end)
        ):
            out.append(v)
            if v.label == "vdso":
                out += [w for w in ctx.snap.vmas if w.label == "vvar"]
    return out


def _kept_anon(ctx: FoldContext, hot: HotPage, stack) -> list:
    """Mappings outside the block and the stack that hold anonymous pages (a heap, malloc's
    mmap'd areas, a library's written .data): their data may be kept or moved, never
    discarded, so the fold keeps them where they are.  A shared one is refused (another
    process may write it behind the fold's back: its pointers could not be proven)."""
    kept = []
    for v in ctx.snap.vmas:
        if hot.holds(v.start, v.end) or v is stack or _scratch_vma(ctx.session, v):
            continue
        anon = [p for p in v.pages if p.backing in ("anon", "shmem")]
        if not anon:
            continue
        if any(p.backing == "shmem" for p in anon) or "s" in v.perms:
            raise UnsafeStep(
                f"{len(anon)} shared page(s) in {v.label} {v.start:#x}-{v.end:#x}: the fold "
                "keeps only private data outside its block"
            )
        kept.append(v)
    return kept


def _scratch_vma(s, v) -> bool:
    """Does V overlap the session's scratch area (code page and table pages: several VMAs)?"""
    return in_scratch(s, v.start, v.end)


def _caught_signals(pid: int) -> int:
    """SigCgt: signals with a handler, i.e. the ones whose delivery pushes a frame."""
    return int(procfs.read_status(pid).get("SigCgt", 0))


def _sig_names(mask: int) -> list[int]:
    return [i + 1 for i in range(64) if mask >> i & 1]
