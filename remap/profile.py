"""Profile a live program's steady state: what it executes, what it touches, how deep its stack.

Why single-step: a layout that packs "the hot path" into one page is only safe if *every*
instruction the steady state runs and every byte it reads or writes is in that page; sampling
misses rare paths (the bot's !mem handler runs once in a thousand lines), single-stepping does
not.  We seize the process (PTRACE_SEIZE, no SIGSTOP), single-step it while a workload drives
it, and for each instruction record:

- its address, mapped to a function symbol of the executable read *from disk* (remap.elftables);
- its memory operands, decoded with capstone and evaluated against the registers of that very
  stop (rip-relative, base + index * scale + disp, fs/gs bases), mapped to data symbols or, when
  no symbol covers them, to section + offset;
- rsp, so the peak live stack depth below the steady-state root's frame is known.

The steady-state root is the function running at the highest rsp seen (for the demo bot,
``hot_main``): it never returns, everything the workload triggers runs below its frame.

Preconditions: a 64-bit x86_64 process, not traced by anyone else, whose SIGTRAP is neither
blocked nor ignored (a single-step trap on a blocked SIGTRAP makes the kernel reset its handler:
refused, tests/test_profile.py).  Stepping stops only when the target waits in a syscall again
(or the time is up), so the last request is fully handled; detaching lets the kernel restart the
blocked call.

Example::

    >>> prof = profile(pid, workload=lambda: srv.ping(100))
    >>> [f.name for f in prof.functions]
    ['after_word', 'handle_line', 'hot_main', 'hot_syscall', ...]
    >>> prof.stack.peak_depth
    200
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import elftables, procfs, unwind
from . import kconst as K
from .errors import (
    NoSuchProcess,
    RemapError,
    UnsafeStep,
    UnsupportedTarget,
    UsageError,
)
from .inject.abi import interrupted
from .inject.preflight import preflight
from .inject.ptrace import Ptrace

MAX_SPANS = 4096  # distinct unnamed accesses kept per section
MAX_STEPS = 50_000_000  # a bound on every profile: ~10 min of stepping at ~10 us a step
SYSCALL_POLL_S = 0.0002  # how often a step over a blocking syscall is polled for completion

# capstone constants (capstone/x86_const.py; copied so importing this module needs no capstone)
_OP_MEM = 3
_AC_READ, _AC_WRITE = 1, 2
_NO_ACCESS = {"lea", "nop", "prefetch", "prefetcht0", "prefetcht1", "prefetcht2", "prefetchw",
              "endbr64", "clflush", "clflushopt"}  # fmt: skip
_STT = {K.STT_FUNC: "func", K.STT_OBJECT: "object", K.STT_TLS: "tls"}


# ---------------------------------------------------------------------------- result types
@dataclass
class FuncHit:
    """A function executed during the profile: how often, and where it lives in the ELF."""

    name: str
    addr: int
    size: int
    section: str  # output section in the profiled executable (.text, .hot.text...)
    steps: int  # instructions executed inside it
    first: int  # index of the first step that entered it (execution order)


@dataclass
class DataHit:
    """A data object (or an unnamed piece of a section) read or written by the steady state."""

    name: str  # symbol, or "SECTION+0xOFF" when no symbol covers the address
    addr: int
    size: int
    section: str
    reads: int
    writes: int
    by: list[str]  # functions whose instructions touched it (sorted)
    spans: list[list[int]] = field(default_factory=list)
    # unnamed bytes only: each distinct [address, size] accessed (sorted, at most MAX_SPANS),
    # so that remap.layout can find the very string literal in the link inputs


@dataclass
class StackUse:
    """Peak live stack: from the steady-state root's CFA down to the lowest byte touched."""

    root: str  # function running at the highest rsp (the steady-state loop)
    root_cfa: int  # its canonical frame address (its unwind rule; else rbp + 16, or max rsp)
    min_rsp: int
    min_touched: int  # lowest stack address any instruction accessed (red zone included)
    peak_depth: int  # root_cfa - min(min_rsp, min_touched)
    deepest: str = ""  # function running at min_rsp (the deepest frame seen)
    start_stack: int = 0  # where exec left the first frame (/proc/PID/stat): 0 when unknown
    depth_from_start: int = 0  # start_stack - min(min_rsp, min_touched): every live frame


@dataclass
class Signals:
    """Signals whose handler could run in the steady state (SigCgt), and the rest of the mask."""

    caught: list[int]
    ignored: list[int]
    blocked: list[int]


@dataclass
class Overhead:
    """What profiling cost: stepping wall time vs the same workload unprofiled."""

    steps: int
    wall_s: float
    us_per_step: float
    tracer_cpu_s: float
    baseline_s: float | None  # the workload unprofiled (None: no workload given)
    slowdown: float | None


@dataclass
class Profile:
    """The steady-state footprint of one process, at function and object granularity."""

    pid: int
    exe: str
    exe_sha256: str
    reason_stopped: str  # "idle" (back in a blocking syscall after the workload) or "time"
    functions: list[FuncHit]
    data: list[DataHit]
    stack: StackUse
    signals: Signals
    overhead: Overhead
    outside: dict[str, int]  # steps executed outside the executable, by mapping ([vdso]...)
    sections: dict[str, list[int]]  # alloc sections: name -> [addr, size, flags, align]
    pages: dict[str, int]  # executable pages (hex address) -> steps executed there
    results: dict[str, Any] = field(default_factory=dict)  # workload results, checked
    trace: list[int] = field(default_factory=list)  # sampled rips in order (for the picture)
    # every page of every mapping (hex address in the target) -> [instructions executed there,
    # reads, writes]: what remap.floor needs (an instruction or operand that straddles a page
    # counts on both; the main stack is summarised in ``stack`` instead)
    page_use: dict[str, list[int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Profile:
        d = dict(d)
        d["functions"] = [FuncHit(**f) for f in d["functions"]]
        d["data"] = [DataHit(**x) for x in d["data"]]
        d["stack"] = StackUse(**d["stack"])
        d["signals"] = Signals(**d["signals"])
        d["overhead"] = Overhead(**d["overhead"])
        return cls(**d)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_json(), sort_keys=True, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Profile:
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise UsageError(f"{path}: not a remap profile ({type(e).__name__}: {e})") from None

    def function_names(self) -> list[str]:
        return sorted(f.name for f in self.functions)


# ---------------------------------------------------------------------------- the executable
@dataclass
class _Sym:
    addr: int
    size: int
    name: str
    kind: str  # func / object / tls
    section: str


class _Exe:
    """Symbols, sections and code bytes of the executable, from the file on disk (read with
    :class:`remap.elftables.ElfTables`, the one ELF reader)."""

    def __init__(self, path: str):
        """Read the executable at PATH; raises UnsupportedTarget for anything but an x86_64
        ELF64 file and OSError when PATH cannot be read."""
        elf = elftables.open_elf(path)
        if elf is None or elf.machine != K.EM_X86_64:
            raise UnsupportedTarget(f"{path}: not an x86_64 executable")
        self.raw = elf.raw
        self.sha256 = hashlib.sha256(elf.raw).hexdigest()
        self.pie = elf.etype == K.ET_DYN
        self.segments = [(s.vaddr, s.memsz, s.offset, s.filesz) for s in elf.loads]
        secs = [s for s in elf.sections if s.flags & K.SHF_ALLOC and s.size]
        self.sections = {s.name: [s.addr, s.size, s.flags, s.align] for s in secs}
        self._sec_sorted = sorted((v[0], v[1], k) for k, v in self.sections.items())
        self.funcs, self.objs = _symbols(elf, self.sections)
        self._fa = [s.addr for s in self.funcs]
        self._oa = [s.addr for s in self.objs]
        self.base = 0  # load bias, set once the mapping is known (PIE)

    def func_at(self, vaddr: int) -> _Sym | None:
        return _lookup(self.funcs, self._fa, vaddr)

    def obj_at(self, vaddr: int) -> _Sym | None:
        return _lookup(self.objs, self._oa, vaddr) or _lookup(self.funcs, self._fa, vaddr)

    def section_at(self, vaddr: int) -> tuple[str, int] | None:
        i = bisect.bisect_right(self._sec_sorted, (vaddr, 1 << 64)) - 1
        if i >= 0:
            a, n, name = self._sec_sorted[i]
            if a <= vaddr < a + n:
                return name, a
        return None

    def code(self, vaddr: int, n: int = 16) -> bytes | None:
        for va, _memsz, off, filesz in self.segments:
            if va <= vaddr < va + filesz:
                k = vaddr - va
                return self.raw[off + k : off + min(filesz, k + n)]
        return None


def _symbols(
    elf: elftables.ElfTables, sections: dict[str, list[int]]
) -> tuple[list[_Sym], list[_Sym]]:
    """(functions, data objects) of ELF's .symtab, sorted and one per address; size-0 code
    labels get the bytes up to the next symbol.  Undefined, absolute and common symbols, and
    TLS ones (their value is an offset, not an address), are left out."""
    funcs: list[_Sym] = []
    objs: list[_Sym] = []
    labels: list[tuple[int, str, str]] = []  # size-0 code symbols (musl's assembly)
    for sym in elf.symbols:
        kind = _STT.get(sym.type)
        if not sym.in_section or kind == "tls":
            continue
        sec = elf.sections[sym.shndx].name if sym.shndx < len(elf.sections) else "?"
        if not sym.size:
            if (
                kind in ("func", None)
                and sym.name
                and sections.get(sec, [0, 0, 0])[2] & K.SHF_EXECINSTR
            ):
                labels.append((sym.value, sym.name, sec))
            continue
        if kind is None:
            continue
        s = _Sym(sym.value, sym.size, sym.name, kind, sec)
        (funcs if kind == "func" else objs).append(s)
    funcs += _sized_labels(labels, funcs, sections)
    funcs += _plt_stubs(elf, sections)
    return _dedup(funcs), _dedup(objs)


def _plt_stubs(elf: elftables.ElfTables, sections: dict[str, list[int]]) -> list[_Sym]:
    """A dynamic executable's PLT stubs as functions named for their target ("printf@plt"):
    a profile then says what the program called in its libraries, not ".plt+0x405040"."""
    out = []
    for addr, size, name in elf.plt_entries():
        sec = next((n for n, v in sections.items() if v[0] <= addr < v[0] + v[1]), ".plt")
        out.append(_Sym(addr, size, name, "func", sec))
    return out


def _sized_labels(
    labels: list[tuple[int, str, str]], funcs: list[_Sym], sections: dict[str, list[int]]
) -> list[_Sym]:
    """Give size-0 code labels (hand-written assembly such as musl's __syscall_cp_asm) the
    bytes up to the next symbol, so the instructions there are attributed to a name."""
    starts = sorted({f.addr for f in funcs} | {a for a, _n, _s in labels})
    sized = sorted((f.addr, f.addr + f.size) for f in funcs)
    out = []
    for addr, name, sec in sorted(labels):
        i = bisect.bisect_right(sized, (addr, 1 << 64)) - 1
        if i >= 0 and sized[i][0] <= addr < sized[i][1]:
            continue  # inside a sized function already
        j = bisect.bisect_right(starts, addr)
        sa, sn = sections[sec][0], sections[sec][1]
        end = min(starts[j] if j < len(starts) else sa + sn, sa + sn)
        if end > addr:
            out.append(_Sym(addr, end - addr, name, "func", sec))
    return out


def _dedup(syms: list[_Sym]) -> list[_Sym]:
    """Sorted by address, one symbol per address (the alphabetically first, for determinism)."""
    best: dict[int, _Sym] = {}
    for s in sorted(syms, key=lambda s: (s.addr, s.name)):
        best.setdefault(s.addr, s)
    return sorted(best.values(), key=lambda s: s.addr)


def _lookup(syms: list[_Sym], addrs: list[int], vaddr: int) -> _Sym | None:
    i = bisect.bisect_right(addrs, vaddr) - 1
    if i >= 0 and syms[i].addr <= vaddr < syms[i].addr + syms[i].size:
        return syms[i]
    return None


# ---------------------------------------------------------------------------- decoding
@dataclass(frozen=True)
class _Insn:
    size: int
    is_syscall: bool
    mem: tuple[tuple[str | None, str | None, int, int, int, str | None, int], ...]
    # each: (base reg, index reg, scale, disp, size, segment reg, access bits)


class _Decoder:
    """capstone, with every decoded address cached (a loop runs the same rips over and over)."""

    def __init__(self) -> None:
        try:
            import capstone
        except ImportError:
            raise UnsupportedTarget(
                "the profiler needs capstone to decode memory operands (pip install capstone)"
            ) from None
        self.cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        self.cs.detail = True
        self.cache: dict[int, _Insn] = {}

    def decode(self, addr: int, code: bytes) -> _Insn:
        insn = next(self.cs.disasm(code, addr, 1), None)
        if insn is None:
            d = _Insn(1, False, ())
        else:
            mem = []
            if insn.mnemonic not in _NO_ACCESS:
                for op in insn.operands:
                    if op.type != _OP_MEM:
                        continue
                    m = op.mem
                    reg = insn.reg_name
                    mem.append(
                        (
                            reg(m.base) if m.base else None,
                            reg(m.index) if m.index else None,
                            m.scale,
                            m.disp,
                            op.size,
                            reg(m.segment) if m.segment else None,
                            op.access or _AC_READ,
                        )
                    )
            d = _Insn(insn.size, insn.mnemonic == "syscall", tuple(mem))
        self.cache[addr] = d
        return d


# ---------------------------------------------------------------------------- stepping
class _Stepper:
    """One seized process, single-stepped from the tracer's (this) thread, through the typed
    ptrace layer (remap.inject.ptrace: its errors, its exit codes)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.pt = Ptrace(pid)
        self.lib, self.ffi = self.pt.lib, self.pt.ffi
        self.regs = self.ffi.new("struct user_regs_struct *")
        self.status = self.ffi.new("int *")
        self.attached = False
        self.mem: procfs.MemFile | None = None  # opened at the first code read (_read_mem)

    def seize(self) -> None:
        """Seize and stop the process; a vfork it makes stops it with PTRACE_EVENT_VFORK and
        its child, traced from birth, stops at its exec (_follow_vfork)."""
        if not self.pt.seize(self.pid, K.PTRACE_O_TRACEVFORK | K.PTRACE_O_TRACEEXEC):
            raise NoSuchProcess(self.pid)
        self.attached = True
        self.pt.interrupt(self.pid, gone_ok=False)
        self.wait()
        self.getregs()

    def wait(self, nohang: bool = False) -> bool:
        """Wait for the next stop; False when NOHANG and none is there yet."""
        r = self.pt.check(self.pt.wait(self.pid, self.status, 1 if nohang else 0), "waitpid")
        if r == 0:
            return False
        st = self.status[0]
        if os.WIFEXITED(st) or os.WIFSIGNALED(st):
            self.attached = False
            raise NoSuchProcess(self.pid, f"process {self.pid} exited while being profiled")
        return True

    def wait_for(self, timeout: float) -> bool:
        """Poll for the next stop for at most TIMEOUT seconds."""
        end = time.monotonic() + timeout
        while not self.wait(nohang=True):
            if time.monotonic() > end:
                return False
            time.sleep(SYSCALL_POLL_S)
        return True

    def getregs(self) -> None:
        self.pt.getregs(self.pid, self.regs)

    def step(self, sig: int = 0) -> None:
        self.pt.singlestep(self.pid, sig)

    def event(self) -> int:
        """The PTRACE_EVENT_* of this stop (0: none)."""
        return self.status[0] >> 16

    def event_msg(self) -> int:
        """PTRACE_GETEVENTMSG: at a vfork event, the child's PID."""
        msg = self.ffi.new("unsigned long *")
        addr = int(self.ffi.cast("uintptr_t", msg))
        self.pt.check(self.lib.rn_ptrace(K.PTRACE_GETEVENTMSG, self.pid, 0, addr),
                      "PTRACE_GETEVENTMSG")  # fmt: skip
        return int(msg[0])

    def stop_signal(self) -> int:
        """The signal to pass on after this stop: 0 for our own trap and for ptrace events."""
        st = self.status[0]
        if not os.WIFSTOPPED(st) or st >> 16:
            return 0
        sig = os.WSTOPSIG(st)
        return 0 if sig == K.SIGTRAP else sig

    def interrupt_and_detach(self, stopped: bool) -> None:
        """Leave the target running as before: a blocked syscall is restarted by the kernel.

        A syscall entered under single-step queues a SIGTRAP when it returns -- also when our
        PTRACE_INTERRUPT cuts it short.  Delivered after the detach, that trap would kill the
        target (SIGTRAP's default action), so while one is pending we let it reach its
        signal-delivery stop and suppress it there (detach with signal 0)."""
        if not self.attached:
            return
        pt = self.pt
        try:
            if not stopped:
                pt.interrupt(self.pid)
                self.wait()
            for _ in range(8):
                if not _trap_pending(self.pid):
                    break
                pt.cont_checked(self.pid)
                if not self.wait_for(1.0):  # no trap came after all: stop it again, then leave
                    pt.interrupt(self.pid)
                    self.wait()
        finally:
            pt.detach(self.pid)
            self.attached = False
            if self.mem is not None:
                self.mem.close()


def _trap_pending(tid: int) -> bool:
    """SIGTRAP queued for the thread (SigPnd) or the process (ShdPnd)."""
    st = procfs.read_status(tid)
    return any(int(st.get(k, 0)) >> (K.SIGTRAP - 1) & 1 for k in ("SigPnd", "ShdPnd"))


def _sigset(mask: int) -> list[int]:
    return [i + 1 for i in range(64) if mask >> i & 1]


def _signals(pid: int) -> Signals:
    st = procfs.read_status(pid)
    cgt, ign, blk = (_sigset(int(st.get(k, 0))) for k in ("SigCgt", "SigIgn", "SigBlk"))
    return Signals(cgt, ign, blk)


def _maps(pid: int) -> list[tuple[int, int, int, str]]:
    return [(m.start, m.end, m.offset, m.path) for m in procfs.read_maps(pid)]


def _last_cpu(pid: int) -> int:
    """The CPU the target last ran on (/proc/PID/stat field 39)."""
    return procfs.read_stat(pid).processor


@dataclass
class _Seen:
    """What the step loop observed, raw (addresses in the target), attributed afterwards."""

    counts: Counter = field(default_factory=Counter)  # rip -> executions
    first_seen: dict[int, int] = field(default_factory=dict)  # rip -> first step index
    touched: dict[tuple[int, int], list[int]] = field(default_factory=dict)
    # (address, size) -> [reads, writes, rip of the first instruction that touched it]
    trace: list[int] = field(default_factory=list)
    min_rsp: int = 1 << 64
    min_rsp_rip: int = 0
    max_rsp: int = 0
    max_rsp_rbp: int = 0
    max_rsp_rip: int = 0
    min_touch: int = 1 << 64  # lowest stack address accessed by an operand
    steps: int = 0
    sizes: dict[int, int] = field(default_factory=dict)  # rip -> instruction length
    reason: str = "idle"
    stopped: bool = False  # the target sits in a ptrace stop (else: running/blocked)


def profile(
    pid: int,
    seconds: float | None = None,
    workload: Callable[[], Any] | None = None,
    *,
    baseline: Callable[[], Any] | None = None,
    idle: float | None = None,
    max_steps: int = MAX_STEPS,
    trace_every: int = 8,
) -> Profile:
    """Single-step PID while WORKLOAD runs (or for SECONDS) and return its steady-state Profile.

    workload: called in a helper thread while the target is stepped; its return value is kept
      in ``results["profiled"]``.  The profile ends once it has returned *and* the target waits
      in a syscall again (or at ``seconds``, when given, as a deadline).
    baseline: the same workload, run once *unprofiled* first: its time gives the overhead and
      its return value must equal the profiled one (else UnsafeStep: profiling changed results).
    idle: keep stepping this many seconds after the workload has returned, so that what the
      program does on its own while idle (EnergyMech's 5 s timer, init's respawn) is in the
      profile too; the profile then ends at the next blocking wait.
    Raises UsageError, the preflight's refusals, NoSuchProcess/AccessDenied (ptrace), UnsafeStep.
    """
    if workload is None and seconds is None:
        raise UsageError("profile needs a workload or a duration (--for SECONDS)")
    if seconds is not None and not 0 < seconds <= 600:
        raise UsageError(f"profile duration must be 0..600 s (got {seconds})")
    if idle is not None and (workload is None or not 0 <= idle <= 600):
        raise UsageError(f"an idle window (0..600 s, got {idle}) follows a workload")
    sigs = _check_target(pid)
    target = _Target.read(pid)
    results: dict[str, Any] = {}
    base_s = _run_baseline(baseline, results)
    run = _stepped_run(pid, target, workload, seconds, results, max_steps, trace_every, idle)
    if baseline is not None:
        if results.get("unprofiled") != results.get("profiled"):
            raise UnsafeStep(
                "the target's results differ under profiling: "
                f"{results.get('unprofiled')!r} vs {results.get('profiled')!r}"
            )
        results["unchanged"] = True
    return _assemble(pid, target, run, sigs, base_s, results)


@dataclass
class _Target:
    """What is read of the target before it is stopped: its executable and mappings."""

    exe_path: str
    exe: _Exe
    maps: list[tuple[int, int, int, str]]
    stack: tuple[int, int, int]  # [stack] VMA bounds, start_stack

    @classmethod
    def read(cls, pid: int) -> _Target:
        exe_path = procfs.read_exe(pid)
        try:
            exe = _Exe(procfs.path(pid, "exe"))
        except OSError as e:
            raise procfs.translate(pid, e, "exe") from None
        maps = _maps(pid)
        if exe.pie:
            exe.base = min(lo - off for lo, _hi, off, path in maps if path == exe_path)
        lo, hi = next(((lo, hi) for lo, hi, _o, p in maps if p == "[stack]"), (0, 0))
        stack = (lo, hi, procfs.read_stat(pid).start_stack)
        return cls(exe_path, exe, maps, stack)


@dataclass
class _Run:
    """One stepped run: what was seen, its wall and CPU time."""

    seen: _Seen
    wall: float
    cpu: float
    maps: list[tuple[int, int, int, str]]  # read after the run: mappings it created count too


def _run_baseline(baseline: Callable[[], Any] | None, results: dict[str, Any]) -> float | None:
    """The baseline mode: run the workload once unprofiled; its duration (None: no baseline)."""
    if baseline is None:
        return None
    t0 = time.monotonic()
    results["unprofiled"] = baseline()
    return time.monotonic() - t0


def _stepped_run(
    pid: int,
    target: _Target,
    workload: Callable[[], Any] | None,
    seconds: float | None,
    results: dict[str, Any],
    max_steps: int,
    trace_every: int,
    idle: float | None = None,
) -> _Run:
    """Seize PID and single-step it -- while WORKLOAD runs in a helper thread (workload mode),
    and IDLE seconds more when given, or until SECONDS pass (duration mode) -- then leave it
    running as before.  The workload's result goes to results["profiled"]; its exception is
    raised once the target is released."""
    done = threading.Event()
    stopped = threading.Event()  # the step loop has ended: no idle window to wait out
    err: list[BaseException] = []

    def run_workload() -> None:
        try:
            results["profiled"] = workload() if workload else None
            if idle:
                stopped.wait(idle)
        except BaseException as e:  # reported after the target is released
            err.append(e)
        finally:
            done.set()

    st = _Stepper(pid)
    seen = _Seen()
    worker = threading.Thread(target=run_workload, daemon=True) if workload else None
    own_cpus = os.sched_getaffinity(0)
    # same-CPU stops are ~20x cheaper (remap/inject/pinning.py)
    with contextlib.suppress(OSError, RemapError):
        os.sched_setaffinity(0, {_last_cpu(pid)})
    cpu0 = time.thread_time()
    t0 = time.monotonic()
    dec = _Decoder()
    try:
        st.seize()
        seen.stopped = True
        if worker:
            worker.start()
        deadline = t0 + seconds if seconds is not None else None
        _step_loop(st, target.exe, dec, seen, target.stack, done if worker else None,
                   deadline, max_steps, trace_every)  # fmt: skip
    finally:
        stopped.set()
        wall = time.monotonic() - t0
        cpu = time.thread_time() - cpu0
        seen.sizes = {rip: ins.size for rip, ins in dec.cache.items()}
        st.interrupt_and_detach(seen.stopped)
        os.sched_setaffinity(0, own_cpus)
        if worker:
            worker.join(timeout=30)
    if err:
        e = err[0]
        raise e if isinstance(e, RemapError) else UnsafeStep(f"workload failed: {e}")
    try:
        maps = _maps(pid)
    except RemapError:  # gone since: what was mapped before the run is all there is to know
        maps = target.maps
    return _Run(seen, wall, cpu, maps)


def _assemble(
    pid: int,
    target: _Target,
    run: _Run,
    sigs: Signals,
    base_s: float | None,
    results: dict[str, Any],
) -> Profile:
    """The Profile of a run: what it saw attributed to the executable's functions and data."""
    seen, exe, wall = run.seen, target.exe, run.wall
    n = seen.steps
    functions, pages, outside = _functions(seen, exe, run.maps)
    overhead = Overhead(
        n,
        round(wall, 4),
        round(wall / n * 1e6, 2) if n else 0.0,
        round(run.cpu, 4),
        round(base_s, 4) if base_s is not None else None,
        round(wall / base_s, 1) if base_s else None,
    )
    return Profile(
        pid=pid,
        exe=target.exe_path,
        exe_sha256=exe.sha256,
        reason_stopped=seen.reason,
        functions=functions,
        data=_data(seen, exe, run.maps),
        stack=_stack_use(seen, exe, target.stack, target.maps),
        signals=sigs,
        overhead=overhead,
        outside=outside,
        sections=exe.sections,
        pages=pages,
        results=_jsonable(results),
        trace=[r - exe.base for r in seen.trace],
        page_use=_page_use(seen),
    )


def _page_use(seen: _Seen) -> dict[str, list[int]]:
    """Executed and accessed bytes -> their pages, in any mapping: {page: [steps, reads,
    writes]}, sorted by address.  An instruction or operand crossing a page boundary counts on
    each page it covers (the kernel faults both in)."""
    use: dict[int, list[int]] = {}
    mask = ~(K.PAGE_SIZE - 1)

    def add(lo: int, n: int, k: int, c: int) -> None:
        for pg in {lo & mask, (lo + max(n, 1) - 1) & mask}:
            use.setdefault(pg, [0, 0, 0])[k] += c

    for rip, c in seen.counts.items():
        add(rip, seen.sizes.get(rip, 1), 0, c)
    for (ea, size), (r, w, _rip) in seen.touched.items():
        if r:
            add(ea, size, 1, r)
        if w:
            add(ea, size, 2, w)
    return {f"{pg:#x}": v for pg, v in sorted(use.items())}


def _check_target(pid: int) -> Signals:
    """Refuse what cannot be single-stepped safely; return the target's signal sets."""
    preflight(pid)
    nthreads = len(procfs.thread_ids(pid))
    if nthreads != 1:
        raise UnsupportedTarget(
            f"process {pid} has {nthreads} threads; the profiler single-steps one-threaded "
            "programs only (the others would run unobserved)"
        )
    sigs = _signals(pid)
    how = [w for w, xs in (("blocks", sigs.blocked), ("ignores", sigs.ignored)) if K.SIGTRAP in xs]
    if how:
        raise UnsupportedTarget(
            f"process {pid} {' and '.join(how)} SIGTRAP: a single-step trap would reset its "
            "SIGTRAP disposition to the default (kill), so it cannot be single-stepped; instead "
            f"watch which pages it touches with `remap watch {pid}` (no stepping), or profile "
            "a copy started with SIGTRAP at its default disposition"
        )
    return sigs


def _step_loop(
    st: _Stepper,
    exe: _Exe,
    dec: _Decoder,
    seen: _Seen,
    stack: tuple[int, ...],
    done: threading.Event | None,
    deadline: float | None,
    max_steps: int,
    trace_every: int,
    until_exec: bool = False,
) -> None:
    """Record the instruction at each stop, then step once; until the workload is done and the
    target blocks again, the deadline passes, or max_steps (UNTIL_EXEC: a vfork child, until
    its exec).  A vfork's child is stepped to its exec before the parent goes on
    (_follow_vfork).  The hot loop of the profiler: plain locals, one dict lookup per decoded
    instruction."""
    regs = st.regs
    fs_base, gs_base = regs.fs_base, regs.gs_base
    counts, first_seen, touched, trace = seen.counts, seen.first_seen, seen.touched, seen.trace
    cache = dec.cache
    sig = 0
    n = seen.steps
    while n < max_steps:
        rip = regs.rip
        rsp = regs.rsp
        counts[rip] += 1
        if rip not in first_seen:
            first_seen[rip] = n
        if n % trace_every == 0:
            trace.append(rip)
        if rsp < seen.min_rsp:
            seen.min_rsp, seen.min_rsp_rip = rsp, rip
        if rsp >= seen.max_rsp:
            seen.max_rsp, seen.max_rsp_rbp, seen.max_rsp_rip = rsp, regs.rbp, rip
        ins = cache.get(rip)
        if ins is None:
            code = exe.code(rip - exe.base)
            ins = dec.decode(rip, code if code is not None else _read_mem(st, rip, 16))
        for base, index, scale, disp, size, seg, acc in ins.mem:
            ea = disp
            if base == "rip":
                ea += rip + ins.size
            elif base:
                ea += getattr(regs, base, 0)
            if index:
                ea += getattr(regs, index, 0) * scale
            if seg == "fs":
                ea += fs_base
            elif seg == "gs":
                ea += gs_base
            ea &= (1 << 64) - 1
            if stack[0] <= ea < stack[1]:
                if ea < seen.min_touch:
                    seen.min_touch = ea
                continue
            rec = touched.get((ea, size))
            if rec is None:
                rec = touched[(ea, size)] = [0, 0, rip]
            if acc & _AC_READ:
                rec[0] += 1
            if acc & _AC_WRITE:
                rec[1] += 1
        n += 1
        seen.steps = n
        st.step(sig)
        seen.stopped = False
        if ins.is_syscall or _restarts(regs):  # may block: poll, so that the end of the
            # workload or the deadline ends the profile (a syscall interrupted by our seize or
            # by a signal is re-executed by this very step)
            if not _wait_syscall(st, done, deadline):
                seen.reason = "idle" if done is not None and done.is_set() else "time"
                return
            ev = st.event()
            if ev == K.PTRACE_EVENT_VFORK:
                _follow_vfork(st, exe, dec, seen, stack, deadline, max_steps, trace_every)
                n = seen.steps
            elif ev == K.PTRACE_EVENT_EXEC and until_exec:
                seen.stopped = True
                return
        else:
            st.wait()
        seen.stopped = True
        sig = st.stop_signal()
        st.getregs()
        if n & 0xFFF == 0 and deadline and time.monotonic() > deadline:
            seen.reason = "time"
            return
    seen.reason = "max-steps"


VFORK_CHILD_STOP_S = 5.0  # a vfork child stops at birth: waiting longer means it never will


def _follow_vfork(
    st: _Stepper,
    exe: _Exe,
    dec: _Decoder,
    seen: _Seen,
    stack: tuple[int, ...],
    deadline: float | None,
    max_steps: int,
    trace_every: int,
) -> None:
    """Step the child of the vfork ST just stopped in, from its first stop to its exec (or its
    exit), into the same SEEN; then let it go.  Why: until its exec a vfork child runs in the
    parent's memory and on the parent's stack, below its frames (busybox init's respawn:
    reset_sighandlers_and_unblock_sigs, init_exec, execve), so its code and stack depth belong
    to the parent's working set, and a layout without them maps them back at every respawn.
    The parent waits in its vfork stop meanwhile.  Raises UnsafeStep when the child never
    stops (it stays traced, and runs on once this tracer exits: no wait without an end)."""
    seen.stopped = True  # the parent, in its vfork stop (what its detach must know)
    child = _Stepper(st.event_msg())
    child.attached = True  # traced from birth (PTRACE_O_TRACEVFORK)
    try:
        born = child.wait_for(VFORK_CHILD_STOP_S)
    except NoSuchProcess:
        return  # killed before its first stop: it ran nothing
    if not born:
        raise UnsafeStep(f"the vfork child {child.pid} did not stop within "
                         f"{VFORK_CHILD_STOP_S:g} s")  # fmt: skip
    stopped = True
    try:
        child.getregs()
        reason = seen.reason
        _step_loop(child, exe, dec, seen, stack, None, deadline, max_steps, trace_every,
                   until_exec=True)  # fmt: skip
        stopped, seen.reason = seen.stopped, reason
    except NoSuchProcess:
        return  # it exited (an exec that failed): what it ran is recorded
    finally:
        child.interrupt_and_detach(stopped)
        seen.stopped = True  # the parent is still in its vfork stop


def _functions(
    seen: _Seen, exe: _Exe, maps: list[tuple[int, int, int, str]]
) -> tuple[list[FuncHit], dict[str, int], dict[str, int]]:
    """Executed addresses -> functions of the executable, steps per code page, and steps in
    other mappings (vdso...)."""
    funcs: dict[str, FuncHit] = {}
    pages: Counter[str] = Counter()
    outside: Counter[str] = Counter()
    for rip, c in seen.counts.items():
        v = rip - exe.base
        if exe.code(v, 1) is None:
            outside[_mapping_name(maps, rip)] += c
            continue
        pages[f"{v & ~(K.PAGE_SIZE - 1):#x}"] += c
        sym = exe.func_at(v)
        sec = sym.section if sym else (exe.section_at(v) or ("?", 0))[0]
        name = sym.name if sym else f"{sec}+{v:#x}"
        f = funcs.get(name)
        if f is None:
            funcs[name] = FuncHit(name, sym.addr if sym else v, sym.size if sym else 1, sec, c,
                                  seen.first_seen[rip])  # fmt: skip
        else:
            f.steps += c
            f.first = min(f.first, seen.first_seen[rip])
    return (
        sorted(funcs.values(), key=lambda f: (f.addr, f.name)),
        dict(sorted(pages.items())),
        dict(sorted(outside.items())),
    )


def _data(seen: _Seen, exe: _Exe, maps: list[tuple[int, int, int, str]]) -> list[DataHit]:
    """Accessed (address, size) pairs -> data symbols, or one 'SECTION (unnamed)' entry per
    section for bytes no symbol covers (string literals), or -- outside the executable (heap,
    anonymous mappings, libraries) -- one entry per page of the mapping holding the address.

    Why per page and per mapping: the kernel keeps memory outside the ELF resident by page, and
    two anonymous mappings share the name ``[anon]``: widened together they once made one
    "object" 140 TB long.  An entry is sized by its symbol, its section, or its own page of its
    own mapping, never across a mapping's edge."""
    data: dict[str, DataHit] = {}
    spans = sorted(maps)
    starts = [m[0] for m in spans]
    for (ea, size), (r, w, rip) in seen.touched.items():
        v = ea - exe.base
        by = exe.func_at(rip - exe.base)
        sym = exe.obj_at(v)
        widen = False
        if sym is not None:
            key, addr, sz, sec = sym.name, sym.addr, sym.size, sym.section
        elif (where := exe.section_at(v)) is not None:
            sec = where[0]
            key, addr, sz, widen = f"{sec} (unnamed)", v, size, True
        else:
            key, addr, sz, sec = _page_of(spans, starts, ea, size)
        d = data.get(key)
        if d is None:
            d = data[key] = DataHit(key, addr, sz, sec, 0, 0, [])
        elif widen:  # unnamed bytes of one section: widen to cover every access
            hi = max(d.addr + d.size, addr + sz)
            d.addr = min(d.addr, addr)
            d.size = hi - d.addr
        d.reads += r
        d.writes += w
        if by and by.name not in d.by:
            d.by.append(by.name)
        if widen and len(d.spans) < MAX_SPANS:
            d.spans.append([addr, sz])
    for d in data.values():
        d.by.sort()
        d.spans = sorted(map(list, {tuple(x) for x in d.spans}))
    return sorted(data.values(), key=lambda d: (d.addr, d.name))


def _page_of(
    spans: list[tuple[int, int, int, str]], starts: list[int], ea: int, size: int
) -> tuple[str, int, int, str]:
    """(key, page address, bytes, mapping name) of an access outside the executable: the page
    of its own mapping that holds EA (clipped to the mapping), named by the mapping and the
    page's offset in it ("[heap]+0x1000"), so that the name does not change with ASLR."""
    i = bisect.bisect_right(starts, ea) - 1
    if i < 0 or not spans[i][0] <= ea < spans[i][1]:
        return f"[unmapped]@{ea:#x}", ea, size, "[unmapped]"
    lo, hi, _off, path = spans[i]
    name = path or "[anon]"
    page = ea & ~(K.PAGE_SIZE - 1)
    key = f"{name}+{page - lo:#x}" if name != "[anon]" else f"[anon]@{lo:#x}+{page - lo:#x}"
    return key, page, min(page + K.PAGE_SIZE, hi) - page, name


def _stack_use(
    seen: _Seen, exe: _Exe, stack: tuple[int, ...], maps: list[tuple[int, int, int, str]]
) -> StackUse:
    """The root is the function running at the highest rsp; its CFA comes from its unwind rule
    at that pc (remap.unwind: .eh_frame, or derived from its code; exact with or without frame
    pointers), else rbp + 16 when rbp holds a frame pointer there, else that rsp."""
    root_fn = exe.func_at(seen.max_rsp_rip - exe.base)
    regs = {"rip": seen.max_rsp_rip, "rsp": seen.max_rsp, "rbp": seen.max_rsp_rbp}
    try:
        cfa = unwind.frame_cfa(regs, maps)[0]
    except unwind.CannotUnwind:
        cfa = None
    if cfa is None or not seen.max_rsp < cfa <= stack[1]:
        if seen.max_rsp < seen.max_rsp_rbp < stack[1]:
            cfa = seen.max_rsp_rbp + 16
        else:
            cfa = seen.max_rsp
    touched = seen.min_touch if seen.min_touch < 1 << 64 else seen.min_rsp
    low = min(seen.min_rsp, touched)
    root = root_fn.name if root_fn else f"{seen.max_rsp_rip:#x}"
    deep = exe.func_at(seen.min_rsp_rip - exe.base)
    deepest = deep.name if deep else (f"{seen.min_rsp_rip:#x}" if seen.min_rsp_rip else "")
    start = stack[2] if len(stack) > 2 else 0
    return StackUse(
        root, cfa, seen.min_rsp, touched, cfa - low, deepest, start, max(0, start - low)
    )


def _restarts(regs: Any) -> bool:
    """Stopped inside an interrupted syscall: resuming makes the kernel re-execute it."""
    return interrupted(regs.orig_rax, regs.rax)


def _wait_syscall(st: _Stepper, done: threading.Event | None, deadline: float | None) -> bool:
    """Wait for a step over a `syscall` to finish; False when the profile should end first:
    the workload is done (and the call has not returned within a grace period, i.e. the target
    is idle again) or the deadline passed."""
    grace = None
    while not st.wait(nohang=True):
        now = time.monotonic()
        if deadline is not None and now > deadline:
            return False
        if done is not None and done.is_set():
            grace = grace or now + 0.005
            if now > grace:
                return False
        time.sleep(SYSCALL_POLL_S)
    return True


def _read_mem(st: _Stepper, addr: int, n: int) -> bytes:
    """Up to N bytes at ADDR (b"" where nothing is mapped), through /proc/PID/mem: a read
    that never unshares a page the target shares with a forked child (procfs.MemFile)."""
    if st.mem is None:
        st.mem = procfs.MemFile(st.pid)
    try:
        return st.mem.read(addr, n)
    except OSError:
        return b""


def _mapping_name(maps: list[tuple[int, int, int, str]], addr: int) -> str:
    for lo, hi, _off, path in maps:
        if lo <= addr < hi:
            return path or "[anon]"
    return "[unmapped]"


def _jsonable(x: Any) -> Any:
    try:
        json.dumps(x)
        return x
    except TypeError:
        return repr(x)


# ---------------------------------------------------------------------------- the IRC workload
PROFILED_REPLY_S = 30.0  # the bot's reply wait while it is single-stepped


def irc_workload(srv: Any, pings: int = 100) -> Callable[[], dict[str, Any]]:
    """A workload that exercises every steady-state path of the demo bot: PINGs, !ping, !mem.

    Returns what must not change under profiling: the number of PONGs checked, the !ping reply
    and the *keys* of the !mem reply (its values are the bot's own RSS, which may differ).
    """

    def run() -> dict[str, Any]:
        # A single-stepped bot runs ~100x slower: its !mem (printf, /proc reads) took over the
        # server's 5 s reply wait under a loaded CI, so the profiled workload waits longer.
        was, srv.timeout = srv.timeout, max(srv.timeout, PROFILED_REPLY_S)
        try:
            srv.ping(pings)
            pong = srv.command("!ping")
            mem = srv.command("!mem")
        finally:
            srv.timeout = was
        return {"pings": pings, "!ping": pong, "!mem": sorted(mem)}

    return run


# ---------------------------------------------------------------------------- the picture
def render_png(prof: Profile, path: str | os.PathLike) -> None:
    """The hot path across pages: executed addresses over time, page boundaries, function names.

    Why this picture: a one-page layout is right when every dot falls in one band; the default
    link shows the loop jumping across several pages of .text.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 5), gridspec_kw={"width_ratios": [3, 1]})
    ys = prof.trace
    ax.scatter(range(len(ys)), ys, s=2, c="tab:red")
    pages = sorted({y & ~(K.PAGE_SIZE - 1) for y in ys})
    for p in pages:
        ax.axhline(p, color="grey", lw=0.5)
        ax.axhline(p + K.PAGE_SIZE, color="grey", lw=0.5)
    for f in prof.functions:
        ax.annotate(f.name, (0, f.addr), fontsize=6, color="tab:blue")
    ax.set_xlabel(f"step (sampled: {len(ys)} of {prof.overhead.steps})")
    ax.set_ylabel("code address")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _p: f"{int(v):#x}"))
    ax.set_title(f"hot path of {Path(prof.exe).name}: {len(pages)} code page(s)")
    labels = list(prof.pages)
    bx.barh(labels, [prof.pages[k] for k in labels], color="tab:red")
    bx.set_xlabel("steps per page")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
