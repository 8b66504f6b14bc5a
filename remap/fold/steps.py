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

import struct
from typing import Any

from .. import kconst as K
from .. import procfs
from ..errors import UnsafeStep
from .peek import looks_like_tcb
from .plan import Action, FoldContext, NeedsStop
from .ranges import coalesce, page_floor, total
from .stackmove import RED_ZONE, ended_wait, in_syscall


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
    if not in_syscall(regs) and not ended_wait(regs):
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
    keep = {page_floor(r["rip"] - 2) for r in _known_regs(ctx) if in_syscall(r)}
    ranges: list[tuple[int, int]] = []  # built in one pass: pages are in address order
    lo = hi = n = 0
    for v in ctx.snap.vmas:
        if not v.pages or not v.is_file:
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
    page = K.PAGE_SIZE
    vmas = [
        v
        for v in ctx.snap.vmas
        if v.end - v.start > page  # first: a fenced process has thousands of one-page VMAs
        and v.is_file
        and v.perms[3] == "p"  # shared mappings (and shmem: nothing of it is dropped) stay whole
        and v.label != "shmem"
        and not v.pfnmap
        and not v.hugetlb
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
