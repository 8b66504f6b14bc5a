"""A page budget: every page a process needs at steady state, and why (``remap floor PID``).

Why: after a squeeze a program keeps what it writes and what it touches while it works; to go
lower a user must know which pages those are and what is in them.  This kernel has neither
idle page tracking nor soft-dirty, so "touched" comes from a short single-step profile
(:mod:`remap.profile`: every instruction executed, every memory operand decoded) of the
program doing its own steady-state work, and "written" from the page walk (an anonymous or
copy-on-written page holds data only the process has).  Classes, per page (README "What it
answers"):

- ``data``: anonymous pages of an ELF file's data/bss (written .data, .bss, relocations) --
  never dropped, only moved;
- ``heap``: the brk heap and anonymous mappings, page by page -- never dropped;
- ``stack``: the main thread's working stack after remap's stack move (see :class:`StackFloor`
  for the figure used), the argument tables and strings above it; thread stacks whole;
- ``code`` / ``rodata``: clean file pages the profile executed / read, and the page of the
  blocked ``syscall`` (its restart re-executes it on every wake; the squeeze keeps it);
- ``special``: present pages remap never drops (the [vdso], shared memory);
- ``droppable``: present but not needed -- clean file pages the profile did not touch, stack
  below the working stack (with the reason).

The floor is the count of needed pages; it is what ``remap squeeze`` followed by the same
work should leave (issue 17: ±1 page).  Nothing here changes the target: the profile seizes,
steps and restores it (remap.profile), and the floor drops nothing.  What a profile cannot see
and the floor therefore misses: memory the *kernel* reads on the process's behalf (a path or
buffer passed to a syscall, in a page nothing else touches), and work the program does less
often than the profile lasts.

Example::

    >>> fl = floor(pid, seconds=6)
    >>> fl.floor_kb, fl.rss_kb, fl.by_class()["code"]
    (40, 244, 3)
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from . import elfmap, labels, procfs, residency
from . import kconst as K
from .errors import RemapError, UnsupportedTarget, UsageError
from .profile import Profile, profile

DEFAULT_SECONDS = 6.0  # one tick of EnergyMech's 5 s timer, with a second to spare
NEEDED = ("data", "heap", "stack", "code", "rodata", "special")
CLASSES = (*NEEDED, "droppable")
TOP = 8  # largest objects listed per class
BLOCKED_WAIT_S = 5.0  # how long the target may take to block again after the profile


@dataclass
class PageNeed:
    """One page of the budget: its class, whether the floor counts it, and why."""

    addr: int
    cls: str  # one of CLASSES
    needed: bool
    reason: str
    label: str
    section: str | None = None
    symbol: str | None = None
    present: bool = True  # False: a page the stack move will write (not present yet)
    use: list[int] | None = None  # [instructions executed, reads, writes] in the profile
    what: list[str] = field(default_factory=list)  # the executable's functions run / objects
    # read on this page in the profile (what to move or rewrite to save it)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StackFloor:
    """The main thread's stack at steady state, in bytes and pages.

    The floor counts ``pages`` = the pages from the *working* low end (the lowest byte the
    profile saw the stack reach: rsp, or an operand in the red zone, never above the idle
    rsp - 128 the squeeze keeps) up to the top of the [stack] mapping, after the stack move
    ``remap squeeze`` does first (``delta``: exec's random gap closed, remap.fold.stackmove
    close_stack_gap, when the move frees a page and is allowed).  ``idle_pages`` is the same
    without the profile's depth (what the squeeze leaves right after it runs)."""

    rsp: int
    top: int  # end of the [stack] mapping
    tables_end: int  # end of argc/argv/envp/auxv/AT_RANDOM/platform (0: not known)
    idle_lo: int  # rsp - red zone
    work_lo: int  # lowest stack byte the profile saw in use (= idle_lo without a profile)
    delta: int  # bytes the squeeze's stack move shifts the live stack up (0: no move)
    move_note: str
    idle_pages: int
    pages: int
    peak_depth: int  # the profile's: below the steady-state root's frame
    root: str
    deepest: str  # the function running at the lowest rsp


@dataclass
class Floor:
    """The page budget of one process (see the module docstring); to_json is ``--json``."""

    pid: int
    exe: str
    kernel: str
    seconds: float | None
    profiled: bool
    ended: str  # how the profile ended: idle / time / max-steps ("" without a profile)
    rss_kb: int  # page walk, after the profile
    floor_kb: int
    pages: list[PageNeed]
    stack: StackFloor | None
    largest: dict[str, list[dict[str, Any]]]
    notes: list[str] = field(default_factory=list)
    workload: dict[str, Any] = field(default_factory=dict)

    def by_class(self, needed: bool = True) -> dict[str, int]:
        """Pages per class (the needed ones, or the droppable ones with NEEDED False)."""
        out = dict.fromkeys(NEEDED if needed else ("droppable",), 0)
        for p in self.pages:
            if p.needed == needed:
                out[p.cls] = out.get(p.cls, 0) + 1
        return out

    @property
    def floor_pages(self) -> int:
        return sum(1 for p in self.pages if p.needed)

    def needed_addrs(self) -> set[int]:
        return {p.addr for p in self.pages if p.needed}

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["floor_pages"] = self.floor_pages
        d["by_class"] = self.by_class()
        d["droppable_pages"] = self.by_class(needed=False)["droppable"]
        return d


# ---------------------------------------------------------------------------- the budget
def floor(
    pid: int,
    seconds: float | None = DEFAULT_SECONDS,
    workload: Callable[[], Any] | None = None,
    *,
    use_profile: bool = True,
) -> Floor:
    """The page budget of PID: profile it for SECONDS (or while WORKLOAD runs: then SECONDS,
    when given, is the profile's deadline), then classify every present page.

    use_profile False (``--no-profile``): nothing is stepped and every present file page is
    counted as needed (said in ``notes``): for programs the profiler refuses.
    Raises UsageError (bad duration), the profiler's refusals with the --no-profile way out
    named (UnsupportedTarget: SIGTRAP blocked or ignored, threads, foreign arch; AlreadyTraced),
    AccessDenied, NoSuchProcess.  The target is only stepped (remap.profile restores it).
    """
    if seconds is not None and not 0 < seconds <= 600:
        raise UsageError(f"floor: --seconds must be 0..600 (got {seconds})")
    notes: list[str] = []
    prof = None
    if use_profile:
        try:
            prof = profile(pid, seconds=seconds, workload=workload)
        except UnsupportedTarget as e:  # AlreadyTraced too: the same class, with the way out
            raise type(e)(
                f"{e} (remap floor --no-profile counts every present file page instead)"
            ) from None
        if prof.reason_stopped != "idle" and workload is not None:
            notes.append(f"the profile ended by {prof.reason_stopped}, not back at idle")
    else:
        procfs.check_target(pid)
        notes.append(
            "--no-profile: every present file page is counted as needed (nothing was stepped: "
            "the floor is an upper bound of what a squeeze keeps while the program works)"
        )
    sc = _blocked(pid)
    snap = residency.snapshot(pid)
    use = {int(k, 16): v for k, v in prof.page_use.items()} if prof else {}
    pages: list[PageNeed] = []
    stack = None
    for v in snap.vmas:
        if v.pfnmap or v.hugetlb:
            continue
        if v.path == "[stack]":
            stack, sp = _stack(pid, v, sc, prof, snap)
            pages += sp
            continue
        for p in v.pages:
            pages.append(_classify(v, p, use, sc, prof is not None))
    pages.sort(key=lambda p: p.addr)
    fl = Floor(
        pid=pid,
        exe=snap.exe,
        kernel=snap.kernel,
        seconds=seconds,
        profiled=prof is not None,
        ended=prof.reason_stopped if prof else "",
        rss_kb=snap.rss_kb,
        floor_kb=0,
        pages=pages,
        stack=stack,
        largest={},
        notes=notes,
        workload=prof.results.get("profiled") if prof and workload else {},
    )
    fl.floor_kb = fl.floor_pages * K.PAGE_SIZE // 1024
    if prof is not None:
        _name_contents(fl, snap, prof)
    fl.largest = _largest(fl, snap, prof)
    if prof is not None:
        fl.notes.append(
            f"profile: {prof.overhead.steps} instructions in {prof.overhead.wall_s} s, ended: "
            f"{prof.reason_stopped}; memory the kernel reads for a syscall (a path, a write "
            "buffer) is not seen by the profile"
        )
    return fl


def _blocked(pid: int) -> procfs.Syscall:
    """/proc/PID/syscall once the target sleeps in a syscall again (bounded wait)."""
    end = time.monotonic() + BLOCKED_WAIT_S
    while True:
        sc = procfs.read_syscall(pid)
        if not sc.running or time.monotonic() > end:
            return sc
        time.sleep(0.01)


def _classify(
    v: residency.Vma, p: residency.Page, use: dict[int, list[int]], sc: procfs.Syscall,
    profiled: bool,
) -> PageNeed:  # fmt: skip
    """The class and reason of one present page outside the main stack."""
    u = use.get(p.addr)
    mk = lambda cls, needed, why: PageNeed(  # noqa: E731
        p.addr, cls, needed, why, p.label, p.section, p.symbol, True, u
    )
    name = v.path or "anonymous mapping"
    if p.backing == "file" and v.is_file:
        if sc.pc is not None and not sc.running and p.addr == (sc.pc - 2) & ~(K.PAGE_SIZE - 1):
            return mk("code", True, "the blocked syscall instruction (re-executed on each wake)")
        if not profiled:
            return mk("code" if "x" in v.perms else "rodata", True,
                      "present file page, counted as needed (--no-profile)")  # fmt: skip
        if u and u[0]:
            return mk("code", True, f"executed: {u[0]} instructions in the profile")
        if u and (u[1] or u[2]):
            return mk("rodata", True, f"read {u[1]} times in the profile")
        return mk("droppable", False, "clean file page, not touched in the profile")
    if p.backing in ("file", "shmem"):  # [vdso] pages, shared memory: never dropped
        what = "shared memory" if p.backing == "shmem" else f"kernel mapping {v.path}"
        return mk("special", True, f"{what}: remap never drops it")
    written = f", written {u[2]} times in the profile" if u and u[2] else ""
    if p.cow or (not v.path and (p.label == "bss" or p.label.startswith("lib:"))):
        owner = "the executable" if p.label == "bss" else p.label.removeprefix("lib:")
        what = f"copy-on-written page of {name}" if p.cow else f".bss of {owner}"
        return mk("data", True, f"written data ({what}){written}")
    if v.label == "thread-stack":
        return mk("stack", True, "a thread's stack (anonymous: kept)")
    what = "brk heap" if v.path == "[heap]" else name
    return mk("heap", True, f"anonymous ({what}): never dropped{written}")


def _stack(
    pid: int, v: residency.Vma, sc: procfs.Syscall, prof: Profile | None,
    snap: residency.Snapshot,
) -> tuple[StackFloor | None, list[PageNeed]]:  # fmt: skip
    """The main stack's pages: the working stack after the move, the rest droppable."""
    present = {p.addr: p for p in v.pages}

    def page(a: int, needed: bool, why: str, here: bool = True) -> PageNeed:
        p = present.get(a)
        return PageNeed(a, "stack" if needed else "droppable", needed, why, "stack",
                        p.section if p else None, p.symbol if p else None, here)  # fmt: skip

    if sc.running or sc.sp is None or not v.contains(sc.sp):
        why = "the main thread is not blocked on [stack]: every present page kept"
        return None, [page(a, True, why) for a in sorted(present)]
    rsp = sc.sp
    idle_lo = rsp - K.RED_ZONE
    work_lo = idle_lo
    peak = 0
    root = deepest = ""
    if prof is not None:
        s = prof.stack
        work_lo = min([idle_lo, *(x for x in (s.min_rsp, s.min_touched) if v.contains(x))])
        peak, root, deepest = s.peak_depth, s.root, s.deepest
    tables_end, delta, note = _move(pid, sc, v, snap, idle_lo)
    pf = lambda a: a & ~(K.PAGE_SIZE - 1)  # noqa: E731
    live_top = (tables_end or rsp) + delta
    written = set(range(pf(work_lo + delta), live_top, K.PAGE_SIZE))
    keep = written | {a for a in present if a >= pf(work_lo + delta)}
    idle_keep = set(range(pf(idle_lo + delta), live_top, K.PAGE_SIZE)) | {
        a for a in present if a >= pf(idle_lo + delta)
    }
    out = []
    for a in sorted(keep | set(present)):
        if a in keep:
            if a < pf(idle_lo + delta):
                why = "working stack: frames the profile reached below the idle rsp"
            elif a < live_top:
                why = "live frames and exec's tables" + (" (after the stack move)" if delta else "")
            else:
                why = "argument and environment strings"
            out.append(page(a, True, why, a in present))
        else:
            why = ("dead stack below the working stack" + (" (the stack move leaves it "
                   "behind)" if delta else ""))  # fmt: skip
            out.append(page(a, False, why))
    sf = StackFloor(rsp, v.end, tables_end, idle_lo, work_lo, delta, note, len(idle_keep),
                    len(keep), peak, root, deepest)  # fmt: skip
    return sf, out


def _move(
    pid: int, sc: procfs.Syscall, v: residency.Vma, snap: residency.Snapshot, idle_lo: int
) -> tuple[int, int, str]:
    """(end of exec's tables, the squeeze's stack shift, why) -- the figures of
    remap.fold.stackmove.close_stack_gap (its gap_move and movable_under), computed without
    stopping the target."""
    from .fold.stackmove import end_of_tables, gap_move, movable_under
    from .inject import syscall_name

    try:
        st = procfs.read_stat(pid)
        tables = end_of_tables(pid, st)
    except (OSError, ValueError, IndexError) as e:
        return 0, 0, f"exec's tables not readable ({e}): no move assumed"
    if int(snap.status.get("Threads", 1)) != 1:
        return tables, 0, "several threads: the squeeze does not move the stack"
    if not movable_under(sc.nr if sc.nr is not None and sc.nr >= 0 else None):
        name = syscall_name(sc.nr) if sc.nr is not None and sc.nr >= 0 else "no syscall"
        return tables, 0, f"blocked in {name}: the squeeze does not move the stack under it"
    gap = gap_move(idle_lo + K.RED_ZONE, tables, st.arg_start, st.arg_end)
    delta = gap.delta
    if not gap.frees_page:
        return tables, 0, f"exec's gap ({max(delta, 0)} bytes) frees no page: no move"
    return tables, delta, f"the squeeze closes exec's gap: the live stack moves up {delta} bytes"


def _name_contents(fl: Floor, snap: residency.Snapshot, prof: Profile) -> None:
    """Fill PageNeed.what for the executable's code and rodata pages: the functions the
    profile ran and the objects it read that overlap each page (addresses in the profile are
    the ELF file's, shifted here by the executable's load bias)."""
    exe = [v for v in snap.vmas if v.path == snap.exe]
    info = elfmap.load(snap.exe) if exe else None
    if info is None or not info.segments:
        return
    low = min(exe, key=lambda v: v.start)
    bias = elfmap.load_bias(info, low.start, low.offset)
    spans = [(f.addr, f.addr + max(f.size, 1), f"{f.name} ({f.steps} steps)")
             for f in prof.functions]  # fmt: skip
    spans += [(d.addr, d.addr + max(d.size, 1), f"{d.name} ({d.reads} reads)")
              for d in prof.data if not d.writes]  # fmt: skip
    spans.sort()
    for p in fl.pages:
        if p.cls not in ("code", "rodata") or not any(v.contains(p.addr) for v in exe):
            continue
        lo = p.addr - bias
        p.what = [n for a, e, n in spans if a < lo + K.PAGE_SIZE and e > lo][:12]


# ---------------------------------------------------------------------------- largest objects
def _largest(fl: Floor, snap: residency.Snapshot, prof: Profile | None) -> dict[str, list]:
    """Per class, what a user would change to go lower: ELF data symbols in the written pages,
    heap mappings by pages, the functions executed by size, the objects read, the stack."""
    out: dict[str, list] = {}
    data_pages = [p.addr for p in fl.pages if p.cls == "data"]
    out["data"] = _data_symbols(snap, data_pages)[:TOP]
    heap: dict[str, list[int]] = {}
    for p in fl.pages:
        if p.cls == "heap":
            v = snap.vma_at(p.addr)
            key = f"{v.path or 'anon'} {v.start:#x}-{v.end:#x}" if v else f"{p.addr:#x}"
            h = heap.setdefault(key, [0, 0])
            h[0] += 1
            h[1] += 1 if p.use and p.use[2] else 0
    out["heap"] = [
        {"mapping": k, "pages": n, "written_in_profile": w}
        for k, (n, w) in sorted(heap.items(), key=lambda kv: -kv[1][0])
    ][:TOP]
    if prof is not None:
        fs = sorted(prof.functions, key=lambda f: (-f.size, f.name))[:TOP]
        out["code"] = [{"name": f.name, "size": f.size, "steps": f.steps, "section": f.section}
                       for f in fs]  # fmt: skip
        out["code"] += [{"name": m, "size": None, "steps": n, "section": "outside the executable"}
                        for m, n in sorted(prof.outside.items())]  # fmt: skip
        read = sorted((d for d in prof.data if not d.writes), key=lambda d: (-d.size, d.name))
        out["rodata"] = [{"name": d.name, "size": d.size, "reads": d.reads, "section": d.section,
                          "by": d.by[:4]} for d in read[:TOP]]  # fmt: skip
    if fl.stack is not None:
        s = fl.stack
        out["stack"] = _idle_frames(snap, s)[:TOP] + [
            {"what": "idle frames (rsp .. argc)", "bytes": max(s.tables_end - s.rsp, 0)},
            {"what": f"working depth below the idle rsp (deepest: {s.deepest or '?'})",
             "bytes": s.idle_lo + K.RED_ZONE - s.work_lo},
            {"what": f"peak depth below the root {s.root or '?'}", "bytes": s.peak_depth},
        ]  # fmt: skip
    return out


def _idle_frames(snap: residency.Snapshot, s: StackFloor) -> list[dict[str, Any]]:
    """The idle stack's frames, largest first ({frame, function, bytes}), walked by their CFI
    (remap.unwind) from the blocked thread's rip and rsp, over the stack read once (anonymous
    pages already present: reading them faults nothing in).  A walk that cannot go on ends
    the list with its reason, as one entry."""
    import struct

    from .unwind import CannotUnwind, frames

    sc = procfs.read_syscall(snap.pid)
    if sc.running or sc.sp != s.rsp or sc.pc is None:
        return []
    try:
        raw = procfs.read_mem(snap.pid, s.rsp, s.top - s.rsp)
    except OSError as e:
        return [{"frame": None, "function": f"stack not readable: {e}", "bytes": 0}]

    def word(a: int) -> int:
        if not s.rsp <= a <= s.top - 8:
            raise CannotUnwind(f"stack word {a:#x} outside the live stack")
        return struct.unpack_from("<Q", raw, a - s.rsp)[0]

    maps = [(v.start, v.end, v.offset, v.path, v.inode) for v in snap.vmas]
    out: list[dict[str, Any]] = []
    low = s.rsp
    try:
        for i, f in enumerate(frames({"rip": sc.pc, "rsp": s.rsp}, word, maps, (s.rsp, s.top))):
            out.append({"frame": i, "function": f.function or f"{f.pc:#x}", "bytes": f.cfa - low})
            low = f.cfa
    except (RemapError, OSError, ValueError, KeyError, IndexError, struct.error) as e:
        out.append({"frame": len(out), "function": f"(walk ends: {e})", "bytes": 0})
    return sorted(out, key=lambda d: -d["bytes"])


def _data_symbols(snap: residency.Snapshot, addrs: list[int]) -> list[dict[str, Any]]:
    """ELF symbols (from the file on disk, remap.elfmap) lying in the written pages ADDRS,
    largest first: {name, file, size, bytes_in_pages, pages}."""
    entries = procfs.read_maps(snap.pid)
    views = labels.elf_views(entries, snap.exe, snap.pid)
    spans = sorted((e.start, e.end, vw) for e, vw in zip(entries, views, strict=True) if vw)
    starts = [s for s, _e, _v in spans]
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for a in addrs:
        i = bisect.bisect_right(starts, a) - 1
        if i < 0 or not spans[i][0] <= a < spans[i][1]:
            continue
        vw = spans[i][2]
        info, lo = vw.info, a - vw.bias
        j = max(0, bisect.bisect_right(info.sym_addr, lo) - 8)
        while j < len(info.sym_addr) and info.sym_addr[j] < lo + K.PAGE_SIZE:
            s, e = info.sym_addr[j], info.sym_end[j]
            if e > lo and e > s:
                name = info._name(j)
                d = found.setdefault((vw.path, name), {"name": name, "file": vw.path,
                                     "size": e - s, "bytes_in_pages": 0, "pages": []})  # fmt: skip
                d["bytes_in_pages"] += min(e, lo + K.PAGE_SIZE) - max(s, lo)
                d["pages"].append(f"{a:#x}")
            j += 1
    return sorted(found.values(), key=lambda d: (-d["size"], d["name"]))


# ---------------------------------------------------------------------------- views
COLOURS = {
    "data": (31, 119, 180),
    "heap": (44, 160, 44),
    "stack": (255, 127, 14),
    "code": (214, 39, 40),
    "rodata": (255, 152, 150),
    "special": (148, 103, 189),
    "droppable": (200, 200, 200),
}


def table(fl: Floor) -> str:
    """The budget for people: one row per class (pmap/smem style), then the largest objects."""
    need, drop = fl.by_class(), fl.by_class(needed=False)["droppable"]
    why: dict[str, dict[str, int]] = {}
    for p in fl.pages:
        r = why.setdefault(p.cls, {})
        # the profile's counts ("executed: 12 instructions...") grouped by what they count
        key = p.reason.split(": ")[0] if p.cls in ("code", "rodata") else p.reason
        r[key] = r.get(key, 0) + 1
    lines = [f"remap floor pid {fl.pid}: {fl.exe}",
             f"{'class':<10} {'pages':>6} {'kB':>7}  why"]  # fmt: skip
    for c in (*NEEDED, "droppable"):
        n = drop if c == "droppable" else need[c]
        if not n:
            continue
        reasons = "; ".join(f"{k} ({v})" for k, v in sorted(why.get(c, {}).items(),
                                                             key=lambda kv: -kv[1]))  # fmt: skip
        lines.append(f"{c:<10} {n:>6} {n * 4:>7}  {reasons}")
    lines.append(f"{'floor':<10} {fl.floor_pages:>6} {fl.floor_kb:>7}  needed at steady state")
    lines.append(
        f"{'RSS now':<10} {fl.rss_kb // 4:>6} {fl.rss_kb:>7}  page walk, after the profile"
    )
    if fl.stack is not None:
        s = fl.stack
        lines.append(f"stack figure: {s.pages} pages from the working low end {s.work_lo:#x}"
                     f"{f' + {s.delta} (move)' if s.delta else ''} to {s.top:#x} "
                     f"(idle only: {s.idle_pages}); {s.move_note}")  # fmt: skip
    for c, items in fl.largest.items():
        if not items:
            continue
        lines.append(f"largest in {c}:")
        for it in items:
            lines.append("  " + ", ".join(f"{k} {v}" for k, v in it.items() if k != "pages"))
    lines += [f"note: {n}" for n in fl.notes]
    return "\n".join(lines) + "\n"


def render_png(fl: Floor, path: str, width: int = 64) -> None:
    """Every page of the budget in address order, one cell each, coloured by class (a black
    dot: not present yet, the stack move will write it); a new row at each gap in the address
    space.  Raises OSError when PATH cannot be written."""
    from PIL import Image, ImageDraw, ImageFont

    from .render import save_png

    cell, top, left = 10, 36, 8
    rows: list[list[PageNeed]] = [[]]
    for p in fl.pages:
        row = rows[-1]
        if row and (p.addr != row[-1].addr + K.PAGE_SIZE or len(row) == width):
            rows.append([])
        rows[-1].append(p)
    legend = [c for c in CLASSES if any(p.cls == c for p in fl.pages)]
    w = left + width * cell + 200
    h = max(top + len(rows) * (cell + 2), top + 16 * len(legend)) + 8
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    font = ImageFont.load_default()
    d.text((left, 4), f"pid {fl.pid} {fl.exe}", fill="black", font=font)
    d.text((left, 18), f"floor {fl.floor_kb} kB of RSS {fl.rss_kb} kB", fill="black", font=font)
    for r, row in enumerate(rows):
        y = top + r * (cell + 2)
        for i, p in enumerate(row):
            x = left + i * cell
            d.rectangle((x, y, x + cell - 2, y + cell - 2), fill=COLOURS[p.cls], outline="black")
            if not p.present:
                d.rectangle((x + 3, y + 3, x + cell - 5, y + cell - 5), fill="black")
    lx = left + width * cell + 16
    for k, c in enumerate(legend):
        y = top + 16 * k
        d.rectangle((lx, y, lx + 9, y + 9), fill=COLOURS[c], outline="black")
        d.text((lx + 14, y - 1), c, fill="black", font=font)
    save_png(im, path)
