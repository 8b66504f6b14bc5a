"""The fold's steps.  Each planner looks at a stopped snapshot, proves its precondition (or
raises UnsafeStep with the reason), and returns an Action saying exactly what it will do.

Safety rules enforced here (README "What a session guarantees"; tests/test_never_harm_fold.py
checks each on real targets):
- MADV_DONTNEED only on pages proven clean and file-backed (pagemap bit 61 in a file mapping),
  or on whole stack pages below a stopped thread's rsp - 128 (dead by the ABI: the red zone is
  the only thing a thread may keep below rsp) in a mapping proven to be that thread's stack
  (proven_stack); verify.check_drops proves it again, independently, before the drop.
- Anonymous memory is never dropped while live: it is moved (stack relocation), with every
  pointer into it fixed, and verified byte for byte afterwards.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass
from typing import Any

from .. import kconst as K
from .. import procfs, residency, unwind
from ..errors import UnsafeStep
from . import mmview
from .hotpage import HotPage, find_hot_page
from .peek import looks_like_tcb
from .plan import Action, FoldContext, NeedsStop, in_scratch
from .ranges import coalesce, page_ceil, page_floor, total
from .relocate import Move, candidates, relocate_regs, relocate_words, walk_frames

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


def _in_syscall(regs: dict[str, int]) -> bool:
    """Stopped inside an interrupted syscall (rax holds a -ERESTART* code)."""
    return regs["orig_rax"] < 2**63 and (2**64 - regs["rax"]) in K.ERESTART_CODES


# Waits that a stop ends with -EINTR instead of a restart code (measured on 6.18, see
# remap.fold.peek's _STOP_CODE; rt_sigtimedwait: kernel/signal.c do_sigtimedwait)
_EINTR_WAIT_NRS = frozenset(K.SYSCALLS[n] for n in ("rt_sigtimedwait", "epoll_wait",
                                                    "epoll_pwait"))  # fmt: skip


def _ended_wait(regs: dict[str, int]) -> bool:
    """Stopped just after one of the waits our stop ended with -EINTR (busybox init in musl's
    sigtimedwait, which calls it again on EINTR): the call is over, the kernel holds nothing
    of it, and the program sees the EINTR whether or not anything is done at this stop."""
    return regs["orig_rax"] in _EINTR_WAIT_NRS and regs["rax"] == 2**64 - errno.EINTR


def _syscall_name(nr: int) -> str:
    from ..inject import syscall_name

    return syscall_name(nr)


# ----------------------------------------------------------------------------- gadget
def use_own_syscall(ctx: FoldContext) -> Action | None:
    """Inject through the `syscall` instruction the target is blocked in.

    Why: its page is faulted back in anyway when the blocked call restarts, so injecting there
    adds nothing to the final RSS, and it survives every unmap the fold does.
    """
    try:
        regs = ctx.session.regs()
    except NeedsStop:  # a dry run's running main thread: no instrument to choose yet
        return None
    if not _in_syscall(regs) and not _ended_wait(regs):
        return None
    site = regs["rip"] - 2
    if ctx.session.read(site, 2) != b"\x0f\x05":
        return None
    ctx.session.use_gadget(site)
    return None  # a choice of instrument, not a change to the target: not reported as a step


# ----------------------------------------------------------------------------- squeeze
def drop_clean_file(ctx: FoldContext) -> Action | None:
    """MADV_DONTNEED every present page proven clean and file-backed."""
    # The page holding a blocked thread's `syscall` comes straight back when the call
    # restarts on resume: dropping it would only cost a fault, so it is kept.
    keep = {page_floor(r["rip"] - 2) for r in _known_regs(ctx) if _in_syscall(r)}
    ranges: list[tuple[int, int]] = []  # built in one pass: pages are in address order
    lo = hi = n = 0
    for v in ctx.snap.vmas:
        if not v.is_file:
            continue
        for p in v.pages:
            if p.backing != "file" or p.addr in keep:  # backing "file": Page.clean_file
                continue
            n += 1
            if p.addr != hi:
                if hi:
                    ranges.append((lo, hi))
                lo = p.addr
            hi = p.addr + K.PAGE_SIZE
    if not n:
        return None
    ranges.append((lo, hi))
    text = f"madvise(DONTNEED) {n} clean file pages in {len(ranges)} ranges"
    return _dontneed("drop-clean-file", text, ranges, set())


# Planners marked plans_ahead look only at the snapshot and the registers and return pure drops
# (or the fence): the runner may plan one before the pure drop ahead of it has run, on the
# snapshot with that drop's pages forgotten, and run them together (plan._run_ahead).
drop_clean_file.plans_ahead = True  # type: ignore[attr-defined]


FENCE_MAX_PAGES = 8192  # pages of file mappings one squeeze fences (half as many madvise calls)
FENCE_MAP_HEADROOM = 4096  # VMAs left free below vm.max_map_count after the fence
HINT_FLAGS = frozenset({"rr", "sr"})  # VmFlags of a program's own MADV_RANDOM / SEQUENTIAL


def fence_fault_around(ctx: FoldContext) -> Action | None:
    """Split each private file mapping into one-page VMAs, so a later fault maps only the page it
    touches: MADV_RANDOM on every other page (issue 17, "fault-around, named and contained").

    Why: since 3.15 a read fault on a file mapping maps up to fault_around_bytes (64 KiB) of
    cached neighbours (mm/memory.c do_fault_around), and 6.x maps a large folio's pages around
    the fault too (finish_fault); a squeezed program touching one dropped code page got 16
    back, and static EnergyMech sprang from 100 to 224 kB within its 5 s timer.  Both stop at
    the VMA: do_fault_around clips its window to vma_pages(), finish_fault to the VMA.
    MADV_RANDOM on the whole mapping does not help (VM_RAND_READ only turns off readahead);
    a VMA edge does.  Measured on 6.18 (a 1 MiB cached ext4 file mapped privately, every page
    dropped, page 37 read): 16 pages came back in one VMA, 1 page in one-page VMAs.

    Why it is safe: madvise(MADV_RANDOM) changes nothing but the readahead hint of those pages
    (mm/madvise.c: VM_RAND_READ); no page is mapped, dropped or written, so the runner proves
    every anonymous page unchanged by its pagemap frame as for a drop (drops=[]).  The
    program's own hints are left alone: mappings carrying VmFlags rr or sr are skipped, and
    the pages between the fenced ones keep the mapping's flags.  Costs: one VMA (~200 bytes
    of kernel memory) per page and a fault per page touched instead of one per window.
    Bounded: at most FENCE_MAX_PAGES pages, and never within FENCE_MAP_HEADROOM VMAs of
    vm.max_map_count (noted and skipped beyond).

    Planned before it runs, in one batch with the drops after it (plan._run_ahead); the
    snapshot is not re-read afterwards (~200 ms for 1 GB): the split changes which VMAs
    exist, not which pages are present nor their backing, so the model keeps the unsplit
    VMAs; a step that compares VMAs with /proc/PID/maps (FoldContext.rewalked) sees the
    difference and re-reads.  The program's own hints come from smaps read before the stop
    (FoldContext.vmflags_for).
    """
    vmas = [
        v
        for v in ctx.snap.vmas
        if v.is_file
        and v.perms[3] == "p"  # shared mappings (and shmem: nothing of it is dropped) stay whole
        and v.label != "shmem"
        and not v.pfnmap
        and not v.hugetlb
        and v.end - v.start > K.PAGE_SIZE
    ]
    if not vmas:
        return None
    vmas = [v for v, f in zip(vmas, ctx.vmflags_for(vmas), strict=True) if not f & HINT_FLAGS]
    pages = sum((v.end - v.start) // K.PAGE_SIZE for v in vmas)
    room = procfs.read_max_map_count() - len(ctx.snap.vmas) - FENCE_MAP_HEADROOM
    if pages > min(FENCE_MAX_PAGES, room):
        ctx.skipped.append((
            "fence-fault-around",
            f"{pages} pages of file mappings: over {min(FENCE_MAX_PAGES, room)} "
            f"(FENCE_MAX_PAGES {FENCE_MAX_PAGES}, vm.max_map_count room {room}); fault-around "
            "stays as the kernel does it",
        ))  # fmt: skip
        return None
    odd = [a for v in vmas for a in range(v.start + K.PAGE_SIZE, v.end, 2 * K.PAGE_SIZE)]
    if not odd:
        return None

    calls = [("madvise", a, K.PAGE_SIZE, K.MADV_RANDOM) for a in odd]

    def run(c: FoldContext) -> dict[str, Any]:
        c.batch(calls)  # raises BatchError at the first call that fails
        return {}

    text = (
        f"madvise(RANDOM) {len(odd)} pages: {len(vmas)} file mappings split into {pages} "
        "one-page VMAs (a fault maps only its page)"
    )
    detail = {"mappings": len(vmas), "vmas_after": pages, "calls": len(odd)}
    return Action("fence-fault-around", text, run, detail=detail, drops=[], calls=calls)


fence_fault_around.plans_ahead = True  # type: ignore[attr-defined]


def _known_regs(ctx: FoldContext) -> list[dict[str, int]]:
    """Every thread's registers; in a dry run, those of the threads not running (a running
    thread blocks in no syscall now; where it stops is only known at the stop: noted)."""
    out = []
    for tid in ctx.session.threads:
        try:
            out.append(ctx.session.regs(tid))
        except NeedsStop as e:
            ctx.notes.append(f"{e}; a syscall page it may stop in is decided there")
    return out


def _dontneed(name: str, text: str, ranges: list[tuple[int, int]], touches: set[int]) -> Action:
    """An action that MADV_DONTNEEDs RANGES (pages proven droppable by the caller)."""

    calls = [("madvise", s, e - s, K.MADV_DONTNEED) for s, e in ranges]

    def run(c: FoldContext) -> dict[str, Any]:
        c.batch(calls)
        return {}

    detail = {"pages": total(ranges) // K.PAGE_SIZE, "ranges": [[s, e] for s, e in ranges]}
    return Action(name, text, run, touches=touches, detail=detail, drops=list(ranges),
                  calls=calls)  # fmt: skip


def drop_dead_stack(ctx: FoldContext) -> Action | None:
    """MADV_DONTNEED whole pages below rsp - 128 of each thread whose stack is *proven*
    (:func:`proven_stack`); every other thread is skipped with its reason, never guessed at."""
    targets: list[tuple[int, int]] = []
    for tid in ctx.session.threads:
        try:
            regs = ctx.session.regs(tid)
        except NeedsStop as e:  # a dry run's running thread: its registers come with the stop
            ctx.skipped.append(("drop-dead-stack", str(e)))
            continue
        vma, why = proven_stack(ctx, tid, regs)
        if vma is None:
            ctx.skipped.append(("drop-dead-stack", f"thread {tid}: {why}; its pages are kept"))
            continue
        limit = page_floor(regs["rsp"] - RED_ZONE)
        dead = [p.addr for p in vma.pages if p.addr + K.PAGE_SIZE <= limit and p.backing == "anon"]
        targets += coalesce(dead)
    if not targets:
        return None
    _refuse_altstack_overlap(ctx, targets)
    touched = {a for s, e in targets for a in range(s, e, K.PAGE_SIZE)}
    text = f"madvise(DONTNEED) {len(touched)} dead stack pages below rsp-128"
    return _dontneed("drop-dead-stack", text, targets, touched)


drop_dead_stack.plans_ahead = True  # type: ignore[attr-defined]


def proven_stack(ctx: FoldContext, tid: int, regs: dict[str, int]) -> tuple[Any, str]:
    """(the VMA that is thread TID's stack, "") when that is proven, else (None, why not).

    Proof is one of:
    - the main thread with its rsp inside ``[stack]`` (the kernel made it at exec);
    - for any other thread, a libc thread stack: rsp in a private anonymous rw mapping that
      also holds the thread's TCB above rsp (fs_base, whose first word points to itself),
      with a PROT_NONE guard mapping directly below.  glibc (nptl/allocatestack.c) and musl
      (src/thread/pthread_create.c) both mmap the stack, mprotect a guard at its bottom and put
      struct pthread (fs_base) at its top; measured here: fs_base 0x940 (glibc 2.36) and
      0xc8 (musl 1.2) below the mapping's end, the guard 4 kB and 8 kB.
    Not for the main thread: its TCB comes from ld.so or .bss, and an mmap'd coroutine region
    the kernel merged with that TLS block (measured: coroutine_heap mmap) would pass.
    Anything else -- rsp in [heap], in a Go arena, on a coroutine stack carved from any
    mapping, on a sigaltstack, in .bss -- has live data below rsp as far as anyone can prove.
    """
    rsp = regs["rsp"]
    vma = ctx.snap.vma_at(rsp)
    if vma is None:
        return None, f"rsp {rsp:#x} is in no mapping"
    where = f"rsp {rsp:#x} is in {_vma_name(vma)}, not a proven stack"
    if tid == ctx.pid:  # its TCB is libc's, anywhere: a mapping merged with it proves nothing
        return (vma, "") if vma.path == "[stack]" else (None, f"{where} (not [stack])")
    named = vma.path and not vma.path.startswith("[anon:")  # prctl-named anon is still anon
    if named or vma.is_file or vma.perms[:2] != "rw" or vma.perms[3] != "p":
        return None, f"{where} (not a private anonymous rw mapping)"
    fs = regs.get("fs_base", 0)
    if not rsp < fs <= vma.end - 16:
        return None, f"{where} (its TCB, fs_base, is not above rsp in it)"
    if not looks_like_tcb(fs, *struct.unpack("<QQ", ctx.session.read(fs, 16))):
        return None, f"{where} (fs_base {fs:#x} does not point to itself: not a TCB)"
    i = ctx.snap.vmas.index(vma)
    below = ctx.snap.vmas[i - 1] if i else None
    if below is None or below.end != vma.start or below.perms[:3] != "---":
        return None, f"{where} (no PROT_NONE guard mapping directly below it)"
    return vma, ""


def _vma_name(vma) -> str:
    return vma.path or f"an anonymous mapping {vma.start:#x}-{vma.end:#x}"


def _refuse_altstack_overlap(ctx: FoldContext, ranges: list[tuple[int, int]]) -> None:
    """An alternate signal stack inside 'dead' stack is live: ask each thread (sigaltstack).

    The kernel writes its answer into the first dead page itself, so no scratch page is
    mapped for it -- borrowed, its 24 bytes put back whatever the answer: when the answer is
    "live", those bytes were not dead after all (before issue 12 they were the heap data of
    coroutine_heap altstack, overwritten by the very check that refused)."""
    s = ctx.session
    if ctx.dry_run:
        ctx.notes.append("alternate signal stacks are asked of each thread at the stop")
        return
    with s.borrow(ranges[0][0], bytes(24)) as out:
        for tid in s.threads:
            ctx.calls += 1
            s.syscall("sigaltstack", 0, out, tid=tid)
            sp, flags, _pad, size = struct.unpack("<QiiQ", s.read(out, 24))
            if flags & 2:  # SS_DISABLE
                continue
            for lo, hi in ranges:
                if sp < hi and sp + size > lo:
                    raise UnsafeStep(
                        f"thread {tid} has an alternate signal stack at {sp:#x} inside its dead "
                        "stack; not dropping it"
                    )


def optional(planner, name: str):
    """PLANNER as a step the plan can do without: its refusal (UnsafeStep, raised while planning,
    before anything is changed) is reported as step NAME, skipped, with the reason, and the plan
    goes on.  A failure while *acting* still ends the plan (and the session cures it)."""

    def plan(ctx: FoldContext) -> Action | None:
        try:
            return planner(ctx)
        except NeedsStop:
            raise  # a dry run's "decided at the stop", not a refusal
        except UnsafeStep as e:
            ctx.skipped.append((name, str(e)))
            return None

    plan.__name__ = planner.__name__
    plan.step_name = name  # type: ignore[attr-defined]
    plan.plans_ahead = getattr(planner, "plans_ahead", False)  # type: ignore[attr-defined]
    return plan


# ----------------------------------------------------------------------------- stack fold
MOVE_SCAN_MAX_PAGES = 16384  # writable pages the stack move scans for pointers, at most
# ... when the move is the squeeze's optional first step: the scan runs inside the stop at
# ~2 ms per MB (process_vm_readv, then relocate.candidates), to free one stack page; past
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
    _refuse_kernel_held_pointers(regs)
    stack = ctx.snap.vma_at(regs["rsp"])
    if stack is None or stack.label != "stack":
        raise UnsafeStep("the main thread's rsp is not in [stack]; not moving it")
    st = procfs.read_stat(ctx.pid)
    top_of_tables = end_of_tables(ctx.pid, st)
    if not (regs["rsp"] < top_of_tables <= st.arg_start <= stack.end):
        raise UnsafeStep("unexpected initial stack layout (tables above the argument strings)")
    lo = (regs["rsp"] - RED_ZONE) // ALIGN * ALIGN
    delta = (st.arg_start - top_of_tables) // ALIGN * ALIGN
    pages_now = len(range(page_floor(lo), page_ceil(st.arg_end), K.PAGE_SIZE))
    pages_then = len(range(page_floor(lo + delta), page_ceil(st.arg_end), K.PAGE_SIZE))
    if delta <= 0 or pages_then >= pages_now:
        return None  # closing the gap would not free a page: nothing worth the risk
    move = Move(lo, top_of_tables, delta)
    new_lo, new_hi = lo + delta, top_of_tables + delta
    writable = _writable_pages(ctx, stack, max_scan_pages)
    # after the cheap refusals: smaps_rollup walks every page table (~20 ms for 1 GB, stopped)
    _refuse_swapped(ctx.pid)
    dead_buf = (new_lo - RED_ZONE - 1024) & ~15  # PR_SET_MM_MAP's struct: dropped after use
    first = page_floor(min(lo, dead_buf))
    touched = set(range(first, page_ceil(new_hi), K.PAGE_SIZE)) | set(writable)

    def run(c: FoldContext) -> dict[str, Any]:
        old = s.read(lo, top_of_tables - lo)
        new, fixed_in_block = relocate_words(old, [move])
        rewrites = _pointer_rewrites(s, writable, [move])
        # Nothing above changed the target.  The copy lands in the gap, which nothing uses;
        # the commit point is rewriting pointers in .data/.bss, undone if anything fails.
        s.write(new_lo, new)
        if s.read(new_lo, len(new)) != new:
            raise UnsafeStep("read-back of the moved stack differs from what was written")
        _commit_rewrites(s, rewrites)
        new_regs = relocate_regs(regs, [move])
        s.set_resume_regs(None, {k: new_regs[k] for k in new_regs if new_regs[k] != regs[k]})
        auxv = _relocated_auxv(ctx.pid, [move])
        note = _set_mm_map(c, {"start_stack": st.start_stack + delta}, auxv, dead_buf)
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
    return Action(
        "relocate-stack",
        f"move live stack [{lo:#x}, {top_of_tables:#x}) up by {delta} bytes against the "
        f"argument strings ({pages_now} pages -> {pages_then})",
        run,
        touches=touched,
        detail={"from": [lo, top_of_tables], "to": [new_lo, new_hi]},
        rewalk=[stack.start] if _all_anon(ctx, writable) else None,
        predict=predict,
    )


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


def _refuse_swapped(pid: int) -> None:
    """Swapped-out pages are invisible to the page walk: they could hold stack pointers we would
    not fix, or data an unmap would lose.  Refuse rather than guess."""
    swap = procfs.read_smaps_rollup(pid).get("Swap", 0)
    if swap:
        raise UnsafeStep(f"{swap} kB of this process is swapped out; not moving its stack")


def _refuse_kernel_held_pointers(regs: dict[str, int]) -> None:
    if not _in_syscall(regs):
        return
    code = 2**64 - regs["rax"]
    if code != K.ERESTART_RESTARTBLOCK and regs["orig_rax"] in _RESTARTABLE_NRS:
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


def _pointer_rewrites(
    s, pages: list[int], moves: list[Move]
) -> list[tuple[int, bytes, bytes, int]]:
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


def _commit_rewrites(s, rewrites: list[tuple[int, bytes, bytes, int]]) -> None:
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


def _relocated_auxv(pid: int, moves: list[Move]) -> bytes:
    out = []
    for t, v in procfs.read_auxv(pid):
        for m in moves:
            nv = m.apply(v)
            if nv is not None and t in (K.AT_RANDOM, K.AT_PLATFORM, K.AT_EXECFN):
                v = nv
                break
        out.append(struct.pack("<QQ", t, v))
    return b"".join(out) + struct.pack("<QQ", K.AT_NULL, 0)


def _set_mm_map(ctx: FoldContext, changes: dict[str, int], auxv: bytes | None, buf: int) -> str:
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


# ----------------------------------------------------------------------------- single page
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
    with EINTR, _ended_wait); the frame walk (CFI, else the rbp chain) reaches a frame whose
    caller is outside the hot code (the steady-state root, which by
    the contract never returns); moved frames + strings + a margin fit the reserve.  Caught
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
    if not (_in_syscall(regs) or _ended_wait(regs)) or not hot.contains(regs["rip"]):
        raise UnsafeStep(
            f"the target is not waiting in a syscall inside its hot page (rip {regs['rip']:#x}, "
            f"hot page {hot.start:#x}-{hot.end:#x}); try again when it is idle"
        )
    _refuse_kernel_held_pointers(regs)
    _refuse_swapped(ctx.pid)
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
    rewrites = _pointer_rewrites(s, kept_pages, moves) if kept_pages else []
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
    _commit_rewrites(s, rewrites + p.kept_rewrites)  # the commit point: undone on failure
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
    auxv = _relocated_auxv(c.pid, p.moves) if p.extra else None
    note = _set_mm_map(c, layout, auxv, (p.lo - 1024) & ~15)
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
