"""Remote syscalls: stop a live process, run syscalls inside it, leave it exactly as it was.

The lifecycle reads in the names: preflight -> seize -> inject -> cure (restore + detach)::

    with remap.attach(pid) as s:
        addr = s.mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
        s.write(addr, b"hello")
        s.munmap(addr, 4096)
        s.syscalls([("getpid",), ("gettid",)])     # one trip through the batch stub

Preconditions and guarantees (DESIGN 5):
- every thread is stopped with PTRACE_SEIZE + PTRACE_INTERRUPT (no SIGSTOP) before the first
  injected call; /proc/PID/task is rescanned until no new thread appears;
- an injecting thread has every catchable signal blocked (PTRACE_SETSIGMASK), except SIGTRAP
  which the batch stub's int3 needs (a blocked SIGTRAP would get its handler reset, see
  force_sig_info_to_task); signals that stopped a thread on the way are re-queued at the end;
- only `syscall` instructions that already exist are executed (remap.gadget); no byte of the
  target's mappings is patched; scratch memory is a private mapping, unmapped at the end;
- leaving the block in any way (exception, Ctrl-C, SIGTERM to the driver) restores registers,
  signal masks, FP state, CPU affinity and borrowed bytes, and detaches.

Restart semantics: a thread interrupted inside a blocked syscall shows rax = -ERESTART* with rip
after the `syscall` instruction.  Once we have injected, it sits in a syscall-exit stop and the
kernel will not rewind again, so the cure puts the original registers back and does
PTRACE_INTERRUPT + PTRACE_CONT: the thread stops again in get_signal() (a fresh
PTRACE_EVENT_STOP), and detaching from that stop lets arch_do_signal_or_restart() restart the
call -- or turn ERESTARTNOHAND into EINTR if a handler runs -- exactly as if never interrupted.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import functools
import os
import signal
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from . import gadget as gadget_mod
from . import kconst as K
from . import native
from .errors import (
    AccessDenied,
    AlreadyTraced,
    InternalError,
    NoSuchProcess,
    RemapError,
    UnsupportedTarget,
    UsageError,
    ZombieProcess,
)

MASK64 = (1 << 64) - 1
# Every signal blocked except SIGTRAP (bit sig-1); the kernel ignores SIGKILL/SIGSTOP bits.
INJECT_SIGMASK = MASK64 & ~(1 << (K.SIGTRAP - 1))
STUB_ENTRY = 64  # bytes per batch table entry: nr, 6 args, result
TABLE_PAGES = 16  # one trip runs up to TABLE_PAGES * 4096 / 64 = 1024 calls
CAP_SYS_ADMIN = 21  # include/uapi/linux/capability.h


# ------------------------------------------------------------------------------ small helpers
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


def _encode(calls: Sequence[Sequence[Any]]) -> bytes:
    """Pack (name_or_nr, *args) calls into the stub's table: 64 bytes each (nr, 6 args, result).

    Signed packing first (the common case, and negative args like -1 just work); values above
    2**63 take the slow path.  This loop is the batch's Python cost, so it stays this plain.
    """
    lens = set(map(len, calls))
    if len(lens) == 1 and 1 <= (n := lens.pop()) <= 7:  # fast path: one shape, C-level loops
        flat = list(chain.from_iterable(calls))
        flat[0::n] = [x if x.__class__ is int else _cached_number(x) for x in flat[0::n]]
        try:
            return struct.pack("<" + f"{n}q{8 * (8 - n)}x" * len(calls), *flat)
        except struct.error:
            pass
    try:
        return b"".join(
            [
                _ENTRY[len(c)].pack(c[0] if c[0].__class__ is int else _cached_number(c[0]), *c[1:])
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
        words = [w - (1 << 64) if w > (1 << 63) - 1 else w for w in words]
        out.append(_ENTRY[len(c)].pack(*words))
    return b"".join(out)


@functools.cache
def _cached_number(name: str) -> int:
    return syscall_number(name)


def syscall_name(nr: int) -> str:
    if nr in K.SYSCALL_NAMES:
        return K.SYSCALL_NAMES[nr]
    with contextlib.suppress(ImportError):
        from ptrace.syscall import SYSCALL_NAMES

        return SYSCALL_NAMES.get(nr, f"syscall_{nr}")
    return f"syscall_{nr}"


def _read_status(path: str) -> dict[str, str]:
    with open(path) as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the comm, so index 0 is field 3 (state)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def _tids(pid: int) -> set[int]:
    try:
        return {int(t) for t in os.listdir(f"/proc/{pid}/task")}
    except FileNotFoundError:
        return set()


def _gone(pid: int, e: OSError) -> RemapError:
    if e.errno in (errno_mod.EACCES, errno_mod.EPERM):
        return AccessDenied(f"permission denied: cannot inspect process {pid} ({e.strerror})")
    with contextlib.suppress(OSError):
        if _stat_fields(pid)[0] == "Z":
            return ZombieProcess(pid)
    return NoSuchProcess(pid)


def _have_cap(cap: int) -> bool:
    eff = int(_read_status("/proc/self/status").get("CapEff", "0"), 16)
    return bool(eff >> cap & 1)


# ------------------------------------------------------------------------------ preflight
def preflight(pid: int, *, suspend_seccomp: bool = False) -> None:
    """Refuse, with one clear line and without touching it, a process remap cannot inject into.

    Reads only /proc: existence, zombie, kernel thread, job-control stop, tracer, the ELF header
    of /proc/PID/exe (64-bit x86_64 only) and the seccomp mode of every thread.
    """
    if pid <= 0:
        raise NoSuchProcess(pid)
    try:
        st = _read_status(f"/proc/{pid}/status")
        fields = _stat_fields(pid)
    except OSError as e:
        raise _gone(pid, e) from None
    if "Tgid" in st and int(st["Tgid"]) != pid:
        raise UsageError(f"{pid} is a thread of process {st['Tgid']}; give the process id")
    state = fields[0]
    if state == "Z" or state == "X":
        raise ZombieProcess(pid)
    if int(fields[6]) & K.PF_KTHREAD:
        raise UnsupportedTarget(f"process {pid} is a kernel thread: it has no user memory")
    tracer = int(st.get("TracerPid", "0"))
    if tracer:
        raise AlreadyTraced(f"process {pid} is already traced by process {tracer}")
    if state == "T":
        raise UnsupportedTarget(f"process {pid} is stopped by job control; SIGCONT it first")
    try:
        with open(f"/proc/{pid}/exe", "rb") as f:
            ehdr = f.read(20)
    except OSError as e:
        raise _gone(pid, e) from None
    if len(ehdr) < 20 or ehdr[:4] != b"\x7fELF":
        raise UnsupportedTarget(f"process {pid}: its executable is not an ELF file")
    (machine,) = struct.unpack_from("<H", ehdr, 18)
    if ehdr[4] != K.ELFCLASS64 or machine != K.EM_X86_64:
        kind = "32-bit" if ehdr[4] == K.ELFCLASS32 else "64-bit"
        raise UnsupportedTarget(
            f"process {pid} is a {kind} e_machine={machine} program; remap injects into "
            "x86_64 (64-bit) processes only"
        )
    for tid in _tids(pid) or {pid}:
        with contextlib.suppress(OSError):
            mode = int(_read_status(f"/proc/{pid}/task/{tid}/status").get("Seccomp", "0"))
            if mode == K.SECCOMP_MODE_DISABLED:
                continue
            if not suspend_seccomp:
                raise UnsupportedTarget(
                    f"process {pid} runs under seccomp (mode {mode}): an injected syscall could "
                    "kill it; pass suspend_seccomp=True (root) to suspend the filter while "
                    "injecting"
                )
            if not _have_cap(CAP_SYS_ADMIN):
                raise AccessDenied(
                    f"process {pid} runs under seccomp; suspending it needs CAP_SYS_ADMIN"
                )


# ------------------------------------------------------------------------------ the session
@dataclass
class _Thread:
    """What we saved of one stopped thread, and what it will resume with."""

    tid: int
    resume: Any  # struct user_regs_struct * (cffi): the registers it resumes with
    sigmask: int  # the mask it had when stopped
    resume_mask: int  # the mask it resumes with (set_resume_sigmask changes it)
    call: Any = None  # struct rn_call *, prepared on first injection
    fpregs: Any = None  # saved on first injection
    stopped: bool = False  # its interrupt stop has been reported to us
    ran: bool = False  # resumed by us at least once: the cure must re-interrupt it
    regs_dirty: bool = False
    signals: list[int] = field(default_factory=list)  # stopped for on the way; re-queued
    affinity: bytes | None = None
    cpu: int = -1  # the CPU it is pinned to while we inject (-1: not pinned)


class BatchError(OSError):
    """One call of a batch failed; `results` holds the results of the calls before it."""

    def __init__(self, err: int, msg: str, index: int, results: list[int]):
        super().__init__(err, msg)
        self.index = index
        self.results = results


class Session:
    """A stopped process and the means to run syscalls in it.  Create with :func:`attach`.

    The thread that injects is the main thread unless a call passes ``tid=``.  Never keep a
    session across a fork of the driver, and never drive it from two Python threads.
    """

    def __init__(self, pid: int, *, pin: bool = True, suspend_seccomp: bool = False):
        self.pid = pid
        self._lib, self._ffi = native.load()
        self._inject = self._lib.rn_inject
        self._pin = pin
        self._suspend_seccomp = suspend_seccomp
        self._threads: dict[int, _Thread] = {}
        self._gadget: int | None = None
        self._gadget_hint: gadget_mod.Gadget | None = None
        self._scratch: int = 0
        self._scratch_len = 0
        self._borrowed: list[tuple[int, bytes]] = []
        self._own_affinity: bytes | None = None
        self._cpu = -1  # the CPU the tracer is pinned to
        self._t_stopped = 0
        self._stub_ok: bool | None = None
        self._closed = False

    # ---- public views
    def __repr__(self) -> str:
        state = "detached" if self._closed else f"stopped {self.stopped_ns / 1e6:.1f} ms"
        return f"<remap.Session pid={self.pid} threads={len(self._threads)} {state}>"

    @property
    def threads(self) -> list[int]:
        """Thread ids, all stopped (main thread first)."""
        return sorted(self._threads, key=lambda t: (t != self.pid, t))

    @property
    def stopped_ns(self) -> int:
        """How long the whole process has been stopped so far (ns)."""
        return time.monotonic_ns() - self._t_stopped if self._t_stopped else 0

    @property
    def gadget(self) -> int:
        """Address of the `syscall` instruction used for injection (found lazily)."""
        if self._gadget is None:
            g = self._gadget_hint if self._hint_still_mapped() else gadget_mod.find(self.pid)
            if g is None:
                raise UnsupportedTarget(
                    f"process {self.pid}: no `syscall` instruction in any executable mapping"
                )
            self.use_gadget(g.addr)
        return self._gadget  # type: ignore[return-value]

    def _hint_still_mapped(self) -> bool:
        """The gadget found before the seize (to keep the stop short) is still mapped there."""
        g = self._gadget_hint
        if g is None:
            return False
        with contextlib.suppress(OSError):
            for m in gadget_mod.read_maps(self.pid):
                if m.start <= g.addr < m.end:
                    return m.path == g.path and "x" in m.perms
        return False

    def use_gadget(self, addr: int) -> None:
        """Inject through the `syscall` instruction at addr from now on (e.g. in a page the fold
        keeps).  The caller vouches that the two bytes at addr are 0f 05 and stay mapped."""
        self._gadget = addr
        for t in self._threads.values():
            if t.call is not None:
                t.call.regs.rip = addr

    # ---- seize
    def _seize(self) -> None:
        lib = self._lib
        opts = K.PTRACE_O_TRACESYSGOOD
        if self._suspend_seccomp:
            opts |= K.PTRACE_O_SUSPEND_SECCOMP
        status = self._ffi.new("int *")
        for _round in range(1000):
            new = _tids(self.pid) - set(self._threads)
            if not new:
                break
            seized = []
            for tid in sorted(new):
                r = lib.rn_ptrace(K.PTRACE_SEIZE, tid, 0, opts)
                if r == -errno_mod.ESRCH:
                    continue  # exited meanwhile
                if r < 0:
                    self._refuse_seize(tid, -r)
                seized.append(tid)
                # mark now so a failure below still detaches it in the cure
                self._threads[tid] = _Thread(tid, None, 0, 0)
                r = lib.rn_ptrace(K.PTRACE_INTERRUPT, tid, 0, 0)
                if r < 0 and r != -errno_mod.ESRCH:
                    raise InternalError(f"PTRACE_INTERRUPT {tid}: {os.strerror(-r)}")
            for tid in seized:
                self._wait_first_stop(tid, status)
        else:
            raise UnsupportedTarget(f"process {self.pid} keeps creating threads; cannot stop it")
        if self.pid not in self._threads:
            raise NoSuchProcess(self.pid)
        self._t_stopped = time.monotonic_ns()
        for t in self._threads.values():
            self._save(t)

    def _refuse_seize(self, tid: int, err: int) -> None:
        if err == errno_mod.EPERM:
            with contextlib.suppress(OSError):
                tracer = int(_read_status(f"/proc/{self.pid}/status").get("TracerPid", "0"))
                if tracer:
                    raise AlreadyTraced(f"process {self.pid} is already traced by {tracer}")
            raise AccessDenied(
                f"ptrace refused for process {self.pid} (thread {tid}): operation not permitted "
                "(run as root or as its owner with ptrace_scope allowing it)"
            )
        raise InternalError(f"PTRACE_SEIZE {tid}: {os.strerror(err)}")

    def _wait_first_stop(self, tid: int, status: Any) -> None:
        """Wait for tid's PTRACE_EVENT_STOP; a signal that stops it first is kept for later."""
        lib = self._lib
        for _ in range(64):
            r = lib.rn_wait(tid, status, 0)
            st = status[0]
            if r < 0 or os.WIFEXITED(st) or os.WIFSIGNALED(st):
                self._threads.pop(tid, None)  # the thread is gone: nothing to restore
                return
            if (st >> 16) == K.PTRACE_EVENT_STOP:
                self._threads[tid].stopped = True
                return
            if (st >> 16) == 0:  # signal-delivery stop: suppress now, re-queue at the cure
                self._threads[tid].signals.append(os.WSTOPSIG(st))
            lib.rn_ptrace(K.PTRACE_CONT, tid, 0, 0)
        raise InternalError(f"thread {tid} never reached its interrupt stop")

    def _save(self, t: _Thread) -> None:
        lib, ffi = self._lib, self._ffi
        t.resume = ffi.new("struct user_regs_struct *")
        self._check(lib.rn_getregs(t.tid, t.resume), "PTRACE_GETREGS", t.tid)
        mask = ffi.new("uint64_t *")
        self._check(lib.rn_getsigmask(t.tid, mask), "PTRACE_GETSIGMASK", t.tid)
        t.sigmask = t.resume_mask = mask[0]

    def _check(self, r: int, what: str, tid: int) -> int:
        if r == -errno_mod.ESRCH or r == self._lib.RN_EXITED:
            raise NoSuchProcess(self.pid, f"process {self.pid} died during {what} (thread {tid})")
        if r < 0:
            raise InternalError(f"{what} on thread {tid}: {os.strerror(-r)}")
        if r == self._lib.RN_LOST:
            raise InternalError(f"{what} on thread {tid}: unexpected stops, gave up")
        return r

    # ---- CPU pinning (DESIGN 5.7)
    def _pin_to(self, t: _Thread) -> None:
        """Run the tracer on the CPU t last ran on, and keep t there while we inject into it.

        Only threads we inject into are pinned, each to the CPU it is already on: forcing a
        thread onto another CPU would make the kernel rewrite its rseq area (cpu_id) when it
        resumes -- a change to the target's memory that hashing notices.
        """
        lib, ffi = self._lib, self._ffi
        try:
            with open(f"/proc/{self.pid}/task/{t.tid}/stat") as f:
                cpu = int(f.read().rsplit(")", 1)[1].split()[36])
        except (OSError, IndexError, ValueError):
            return
        size = 128
        one = bytearray(size)
        one[cpu // 8] |= 1 << (cpu % 8)
        if self._own_affinity is None:
            own = ffi.new("unsigned char[]", size)
            if lib.rn_getaffinity(0, size, own) < 0:
                return
            self._own_affinity = bytes(ffi.buffer(own))
        if lib.rn_setaffinity(0, size, bytes(one)) < 0:
            return
        self._cpu = cpu
        if t.affinity is None:
            cur = ffi.new("unsigned char[]", size)
            if lib.rn_getaffinity(t.tid, size, cur) == 0:
                if lib.rn_setaffinity(t.tid, size, bytes(one)) == 0:
                    t.affinity = bytes(ffi.buffer(cur))
        t.cpu = cpu

    # ---- injection
    def _thread(self, tid: int | None) -> _Thread:
        tid = self.pid if tid is None else tid
        try:
            t = self._threads[tid]
        except KeyError:
            raise UsageError(
                f"thread {tid} is not a stopped thread of process {self.pid}"
            ) from None
        if self._closed:
            raise UsageError("session is closed (the process was detached)")
        if t.call is None:
            self._prepare(t)
        return t

    def _prepare(self, t: _Thread) -> None:
        """First injection on t: save FP state, block signals, build the call template."""
        lib, ffi = self._lib, self._ffi
        if self._pin:
            self._pin_to(t)
        t.fpregs = ffi.new("struct user_fpregs_struct *")
        # A syscall preserves FP/SSE state, but a signal handler run by a stray signal would
        # not; saving the legacy area (PTRACE_GETFPREGS) is cheap insurance, restored at the cure.
        if lib.rn_getfpregs(t.tid, t.fpregs) < 0:
            t.fpregs = None
        self._check(lib.rn_setsigmask(t.tid, INJECT_SIGMASK), "PTRACE_SETSIGMASK", t.tid)
        call = ffi.new("struct rn_call *")
        call.regs = t.resume[0]
        call.regs.orig_rax = MASK64  # -1: "not in a syscall", so nothing gets restarted
        call.regs.rip = self.gadget
        t.call = call

    def syscall(self, name_or_nr: str | int, *args: int, tid: int | None = None) -> int:
        """Run one syscall in the target (thread tid, default the main thread) and return rax.

        Raises OSError(errno) when the kernel returns -4095..-1.  Example::

            >>> s.syscall("getpid") == pid
        """
        # This is the hot path of every remote call: plain statements, one C crossing.
        nr = name_or_nr if name_or_nr.__class__ is int else _cached_number(name_or_nr)
        t = self._threads.get(self.pid if tid is None else tid)
        if t is None or t.call is None or self._closed:
            t = self._thread(tid)
        if t.cpu != self._cpu and self._pin:  # another thread, on another CPU: follow it
            self._pin_to(t)
        c = t.call
        regs = c.regs
        regs.rax = nr
        if len(args) > 6:
            raise UsageError("a syscall takes at most 6 arguments")
        a = args + _ZERO6[len(args) :]  # unused args are 0 (prctl and others check)
        try:
            regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9 = a
        except OverflowError:  # negative ints: the kernel sees the two's complement
            regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9 = [x & MASK64 for x in a]
        r = self._inject(t.tid, c)
        t.ran = True
        if r or c.nsig:
            self._after_stray(t, c, r, nr)
        res = c.result
        if -4095 <= res < 0:
            raise OSError(-res, f"{syscall_name(nr)}: {os.strerror(-res)}")
        return res

    def _after_stray(self, t: _Thread, c: Any, r: int, nr: int) -> None:
        """The slow path of syscall(): signals met on the way, or the thread died."""
        if c.nsig:
            t.signals.extend(c.sigs[0 : c.nsig])
        if r:
            self._check(r, f"injected {syscall_name(nr)}", t.tid)

    # typed helpers: thin, so the fold reads like the syscalls it makes
    def mmap(self, addr: int, length: int, prot: int, flags: int, fd: int = -1, off: int = 0):
        """mmap(2) in the target; returns the address."""
        return self.syscall("mmap", addr, length, prot, flags, fd, off)

    def munmap(self, addr: int, length: int) -> int:
        return self.syscall("munmap", addr, length)

    def mremap(self, old: int, old_size: int, new_size: int, flags: int = 0, new: int = 0):
        """mremap(2) in the target; returns the new address."""
        return self.syscall("mremap", old, old_size, new_size, flags, new)

    def madvise(self, addr: int, length: int, advice: int) -> int:
        return self.syscall("madvise", addr, length, advice)

    def mprotect(self, addr: int, length: int, prot: int) -> int:
        return self.syscall("mprotect", addr, length, prot)

    def prctl(self, option: int, a2: int = 0, a3: int = 0, a4: int = 0, a5: int = 0) -> int:
        """prctl(2) in the target, e.g. PR_SET_MM with PR_SET_MM_MAP and a struct in scratch."""
        return self.syscall("prctl", option, a2, a3, a4, a5)

    def rt_sigprocmask(self, how: int, set_addr: int, old_addr: int = 0, size: int = 8) -> int:
        """rt_sigprocmask(2) in the injecting thread.  Note: its effect on the mask is undone by
        the cure (the resume mask wins); use :meth:`set_resume_sigmask` for a lasting change."""
        return self.syscall("rt_sigprocmask", how, set_addr, old_addr, size)

    # ---- the batch stub (DESIGN 5.8)
    def _stub_allowed(self) -> bool:
        if self._stub_ok is None:
            ign = int(_read_status(f"/proc/{self.pid}/status").get("SigIgn", "0"), 16)
            # int3 on an ignored SIGTRAP would reset its handler to SIG_DFL (force_sig_info)
            self._stub_ok = not (ign >> (K.SIGTRAP - 1) & 1)
        return self._stub_ok

    def _ensure_scratch(self) -> int:
        if self._scratch:
            return self._scratch
        code = native.stub_code()
        size = K.PAGE_SIZE * (1 + TABLE_PAGES)
        rw = K.PROT_READ | K.PROT_WRITE
        addr = self.mmap(0, size, rw, K.MAP_PRIVATE | K.MAP_ANONYMOUS)
        self._scratch, self._scratch_len = addr, size
        self.write(addr, code)
        self.mprotect(addr, K.PAGE_SIZE, K.PROT_READ | K.PROT_EXEC)  # W^X: never RWX
        return addr

    def scratch(self) -> int:
        """Address of the scratch area (1 code page + table pages), mapped on first use; the
        table pages are free for the caller's data between batches (e.g. a prctl struct)."""
        return self._ensure_scratch() + K.PAGE_SIZE

    def release_scratch(self) -> None:
        """Unmap the scratch area now (before measuring residency)."""
        if self._scratch:
            addr, size = self._scratch, self._scratch_len
            self._scratch = 0
            self.munmap(addr, size)

    def syscalls(self, calls: Sequence[Sequence[Any]], *, tid: int | None = None) -> list[int]:
        """Run many syscalls in one trip each TABLE_PAGES*64 calls; return their results.

        Stops at the first failing call and raises :class:`BatchError` (an OSError) carrying
        the results before it.  Falls back to one call at a time when the target ignores
        SIGTRAP (the stub's int3 would change its signal state).
        """
        table_bytes = _encode(calls)  # 64 bytes per call: nr, 6 args, result slot
        n = len(table_bytes) // STUB_ENTRY
        if not self._stub_allowed():
            out = []
            words = memoryview(table_bytes).cast("q")
            for i in range(n):
                try:
                    out.append(self.syscall(*words[8 * i : 8 * i + 7].tolist(), tid=tid))
                except OSError as ex:
                    raise BatchError(ex.errno or 0, str(ex), i, out) from None
            return out
        t = self._thread(tid)
        if t.cpu != self._cpu and self._pin:
            self._pin_to(t)
        base = self._ensure_scratch()
        table = base + K.PAGE_SIZE
        per_trip = TABLE_PAGES * K.PAGE_SIZE // STUB_ENTRY
        out: list[int] = []
        c = self._ffi.new("struct rn_call *")
        for lo in range(0, n, per_trip):
            k = min(per_trip, n - lo)
            self.write(table, table_bytes[STUB_ENTRY * lo : STUB_ENTRY * (lo + k)])
            c.regs = t.call.regs
            c.regs.rip = base
            c.regs.r12 = table
            c.regs.r13 = k
            r = self._lib.rn_run_stub(t.tid, c)
            t.ran = True
            if c.nsig:
                t.signals.extend(c.sigs[0 : c.nsig])
            if r:
                self._check(r, "batch stub", t.tid)
            ok = k - c.regs.r13  # the stub decrements r13 only after a success
            res = memoryview(self.read(table, k * STUB_ENTRY)).cast("q")[7::8].tolist()
            out.extend(res[:ok])
            if ok < k:  # stopped early: entry `ok` failed
                err = -res[ok]
                (nr,) = struct.unpack_from("<q", table_bytes, STUB_ENTRY * (lo + ok))
                msg = f"{syscall_name(nr)}: {os.strerror(err)}"
                raise BatchError(err, msg, lo + ok, out)
        return out

    # ---- memory
    def read(self, addr: int, n: int) -> bytes:
        """n bytes of target memory (process_vm_readv; /proc/PID/mem where that cannot)."""
        buf = self._ffi.new("char[]", n)
        got = self._lib.rn_vm_read(self.pid, buf, addr, n)
        if got == n:
            return bytes(self._ffi.buffer(buf, n))
        return self._mem_io(addr, n=n)

    def write(self, addr: int, data: bytes) -> None:
        """Write data into target memory (process_vm_writev; /proc/PID/mem for read-only pages,
        which turns a private file page into an anonymous copy -- callers know why they do it)."""
        got = self._lib.rn_vm_write(self.pid, data, addr, len(data))
        if got != len(data):
            self._mem_io(addr, data=data)

    def _mem_io(self, addr: int, *, n: int = 0, data: bytes | None = None) -> bytes:
        try:
            fd = os.open(f"/proc/{self.pid}/mem", os.O_RDWR if data is not None else os.O_RDONLY)
        except OSError as e:
            raise _gone(self.pid, e) from None
        try:
            if data is not None:
                if os.pwrite(fd, data, addr) != len(data):
                    raise OSError(errno_mod.EFAULT, f"short write at {addr:#x}")
                return b""
            out = os.pread(fd, n, addr)
            if len(out) != n:
                raise OSError(errno_mod.EFAULT, f"cannot read {n} bytes at {addr:#x}")
            return out
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def borrow(self, addr: int, data: bytes) -> Iterator[int]:
        """Temporarily put data at addr; the original bytes come back on exit (or at the cure)."""
        orig = self.read(addr, len(data))
        entry = (addr, orig)
        self._borrowed.append(entry)
        self.write(addr, data)
        try:
            yield addr
        finally:
            self.write(addr, orig)
            self._borrowed.remove(entry)

    # ---- what threads resume with
    def regs(self, tid: int | None = None) -> dict[str, int]:
        """A copy of the registers thread tid (default main) will resume with."""
        t = self._threads[self.pid if tid is None else tid]
        return {name: getattr(t.resume, name) for name in native.REGS}

    def set_resume_regs(self, tid: int | None, regs: dict[str, int]) -> None:
        """Change registers thread tid resumes with (any subset of names), e.g. a moved rsp."""
        t = self._threads[self.pid if tid is None else tid]
        for name, val in regs.items():
            if name not in native.REGS:
                raise UsageError(f"unknown register {name!r}")
            setattr(t.resume, name, val & MASK64)
        t.regs_dirty = True

    def sigmask(self, tid: int | None = None) -> int:
        """The signal mask thread tid will resume with."""
        return self._threads[self.pid if tid is None else tid].resume_mask

    def set_resume_sigmask(self, tid: int | None, mask: int) -> None:
        """Make thread tid resume with this blocked-signal mask (kept after detach)."""
        self._threads[self.pid if tid is None else tid].resume_mask = mask & MASK64

    # ---- the cure: one way out
    def close(self) -> None:
        """Restore everything and detach.  Idempotent; keeps going past errors, raises the first."""
        if self._closed:
            return
        errors: list[BaseException] = []

        def attempt(fn, *a):
            try:
                fn(*a)
            except NoSuchProcess as e:
                errors.append(e)
            except Exception as e:  # keep curing the rest
                errors.append(e)

        for addr, orig in reversed(self._borrowed):
            attempt(self.write, addr, orig)
        self._borrowed.clear()
        if self._scratch:
            attempt(self.release_scratch)
        for t in list(self._threads.values()):
            attempt(self._release_thread, t)
        self._closed = True
        if self._own_affinity is not None:
            self._lib.rn_setaffinity(0, len(self._own_affinity), self._own_affinity)
        if errors:
            raise errors[0]

    def _release_thread(self, t: _Thread, *, detach: bool = True) -> None:
        """Put t back as it will resume (regs, mask, FP state, affinity, signals met), then
        detach -- or PTRACE_CONT it and stay attached (see :meth:`run`)."""
        lib = self._lib
        try:
            if not t.stopped:  # seized and interrupted, but we failed before its stop
                self._wait_first_stop(t.tid, self._ffi.new("int *"))
            if t.resume is None:
                return
            if t.ran:
                # Not only for DETACH (whose wake-up alone would make the kernel rewind an
                # ERESTART* call): PTRACE_CONT from a syscall-exit stop would hand -512 to
                # userspace.  From a fresh interrupt stop both restart exactly.
                c = self._ffi.new("struct rn_call *")
                r = lib.rn_reinterrupt(t.tid, t.resume, c)
                t.signals.extend(c.sigs[0 : c.nsig])
                self._check(r, "re-interrupt", t.tid)
            elif t.regs_dirty:
                self._check(lib.rn_setregs(t.tid, t.resume), "PTRACE_SETREGS", t.tid)
            if t.fpregs is not None:
                lib.rn_setfpregs(t.tid, t.fpregs)
            if t.call is not None or t.resume_mask != t.sigmask:
                self._check(lib.rn_setsigmask(t.tid, t.resume_mask), "PTRACE_SETSIGMASK", t.tid)
            if t.affinity is not None:
                lib.rn_setaffinity(t.tid, len(t.affinity), t.affinity)
            for sig in t.signals:  # queued while stopped: delivered as it resumes
                lib.rn_tgkill(self.pid, t.tid, sig)
        finally:
            if detach:
                lib.rn_ptrace(K.PTRACE_DETACH, t.tid, 0, 0)
                self._threads.pop(t.tid, None)
            else:
                lib.rn_ptrace(K.PTRACE_CONT, t.tid, 0, 0)
                t.stopped = False
                t.call = t.fpregs = t.affinity = None
                t.cpu = -1
                t.ran = t.regs_dirty = False
                t.signals = []

    def run(self, seconds: float) -> None:
        """Let the process run for `seconds` while staying attached, then stop it again.

        Every thread resumes exactly as it would on detach (restored registers and masks, an
        interrupted syscall restarts); signals that stop a thread meanwhile are passed on at
        once.  Afterwards all threads (and any new ones) are stopped again and their state is
        saved afresh: what the cure restores is the state at this new stop.  The scratch page
        and borrowed bytes stay in place.  For the fold's "does it still work" checks.
        """
        if self._closed:
            raise UsageError("session is closed (the process was detached)")
        lib = self._lib
        for t in list(self._threads.values()):
            self._release_thread(t, detach=False)
        self._t_stopped = 0
        status = self._ffi.new("int *")
        deadline = time.monotonic() + seconds
        while self._threads and time.monotonic() < deadline:
            for tid in list(self._threads):
                self._forward_stops(tid, status, os.WNOHANG)
            time.sleep(0.0005)
        for tid in list(self._threads):
            lib.rn_ptrace(K.PTRACE_INTERRUPT, tid, 0, 0)
        for tid in list(self._threads):
            self._forward_stops(tid, status, 0)
        if self.pid not in self._threads:
            raise NoSuchProcess(self.pid, f"process {self.pid} exited while it ran")
        self._seize()  # new threads, then fresh saved state for all

    def _forward_stops(self, tid: int, status: Any, flags: int) -> None:
        """Handle tid's stops while it runs traced: pass signals on, keep job-control stops,
        and (flags=0) return once it reaches its interrupt stop."""
        lib = self._lib
        for _ in range(256):
            r = lib.rn_wait(tid, status, flags)
            st = status[0]
            if r == 0:
                return
            if r < 0 or os.WIFEXITED(st) or os.WIFSIGNALED(st):
                self._threads.pop(tid, None)
                return
            event, sig = st >> 16, os.WSTOPSIG(st)
            if event == K.PTRACE_EVENT_STOP:
                if sig == K.SIGTRAP:  # our PTRACE_INTERRUPT landed
                    self._threads[tid].stopped = True
                    return
                lib.rn_ptrace(K.PTRACE_LISTEN, tid, 0, 0)  # group stop: stay stopped, traced
            elif event == 0 and sig != (K.SIGTRAP | 0x80):
                lib.rn_ptrace(K.PTRACE_CONT, tid, 0, sig)  # deliver the signal it stopped for
            else:
                lib.rn_ptrace(K.PTRACE_CONT, tid, 0, 0)
        raise InternalError(f"thread {tid}: endless stops while running attached")


def process_madvise(pid: int, addr: int, length: int, advice: int) -> int:
    """madvise from outside, no stop needed (5.10+: only COLD, PAGEOUT, WILLNEED, COLLAPSE).

    Returns the number of bytes advised; raises OSError(errno) on failure."""
    lib, _ = native.load()
    fd = lib.rn_pidfd_open(pid)
    if fd < 0:
        raise _gone(pid, OSError(-fd, os.strerror(-fd)))
    try:
        r = lib.rn_process_madvise(fd, addr, length, advice)
    finally:
        os.close(fd)
    if r < 0:
        raise OSError(-r, f"process_madvise: {os.strerror(-r)}")
    return r


@contextlib.contextmanager
def attach(pid: int, *, pin: bool = True, suspend_seccomp: bool = False) -> Iterator[Session]:
    """Stop every thread of pid and yield a :class:`Session`; restore and detach on exit.

    pin: run the tracer on the target's CPU while injecting (~20x cheaper wake-ups).
    suspend_seccomp: inject into a process under a seccomp filter by suspending the filter for
    the injected calls (PTRACE_O_SUSPEND_SECCOMP, needs CAP_SYS_ADMIN); otherwise it is refused.
    """
    preflight(pid, suspend_seccomp=suspend_seccomp)
    s = Session(pid, pin=pin, suspend_seccomp=suspend_seccomp)
    old_term = _trap_sigterm()
    try:
        with contextlib.suppress(OSError):
            s._gadget_hint = gadget_mod.find(pid)  # file reads before the stop, not during
        s._seize()
        yield s
    except BaseException:
        with contextlib.suppress(Exception):
            s.close()
        raise
    else:
        s.close()
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt("SIGTERM")


def _trap_sigterm() -> Any:
    """Turn SIGTERM into KeyboardInterrupt while a session is open, so the cure runs."""
    if threading.current_thread() is not threading.main_thread():
        return None
    old = signal.getsignal(signal.SIGTERM)
    if old is not signal.SIG_DFL:
        return None
    signal.signal(signal.SIGTERM, _on_sigterm)
    return old
