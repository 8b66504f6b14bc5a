"""Remote syscalls: stop a live process, run syscalls inside it, leave it exactly as it was.

The lifecycle reads in the names: preflight -> seize -> inject -> cure (restore + detach)::

    with remap.attach(pid) as s:
        addr = s.mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
        s.write(addr, b"hello")
        s.munmap(addr, 4096)
        s.syscalls([("getpid",), ("gettid",)])     # one trip through the batch stub

Preconditions and guarantees (DESIGN 5):
- every thread is stopped with PTRACE_SEIZE + PTRACE_INTERRUPT (no SIGSTOP) before the first
  injected call; /proc/PID/task is rescanned until no new thread appears; a pidfd opened before
  preflight proves the process seized is the one checked (PIDs get reused);
- an injecting thread has every catchable signal blocked (PTRACE_SETSIGMASK) except the batch
  marker (below) and the synchronous faults; signals that stopped a thread on the way are
  re-queued at the end;
- only `syscall` instructions that already exist are executed (remap.gadget); no byte of the
  target's mappings is patched; scratch memory is a private mapping, unmapped at the end;
- leaving the block in any way (exception, Ctrl-C, SIGTERM to the driver) restores registers,
  signal masks, FP state and borrowed bytes, and detaches.  SIGINT/SIGTERM are held while a
  session operation runs and raised at its end, so Python state always matches the target's.

Restart semantics: a thread interrupted inside a blocked syscall shows rax = -ERESTART* with rip
after the `syscall` instruction.  Once we have injected, it sits in a syscall-exit stop and the
kernel will not rewind again, so the cure does PTRACE_INTERRUPT, puts the original registers
back and PTRACE_CONTs: the thread stops again in get_signal() (a fresh PTRACE_EVENT_STOP), and
detaching from that stop lets arch_do_signal_or_restart() restart the call -- or turn
ERESTARTNOHAND into EINTR if a handler runs -- exactly as if never interrupted.

The safety chain: the target survives the driver's death (SIGKILL at any instant).
When the tracer dies the kernel detaches its tracees, and each resumes from whatever registers
it last had.  So no injecting thread ever has registers that would not lead home by itself:
- before the first call a *safety frame* is written in dead stack below the thread's rsp - 128
  (inside the resident page holding rsp - 128 when it fits, so nothing is faulted in): an
  rt_sigframe with the thread's registers *pre-rewound* (rax = orig_rax, rip -= 2 for any
  -ERESTART*, so the interrupted call is re-executed), its signal mask and its full XSAVE
  state; alternate stack untouched (an invalid uc_stack, whose error rt_sigreturn ignores);
- every single call runs at a `syscall; ret` gadget of the target's own code with rsp on the
  frame: [frame] = first return, [frame+8] = a `mov $15, %rax; syscall` restorer (libc's
  __restore_rt).  Dead driver: the call completes, `ret`, (cleanup,) rt_sigreturn -> the thread
  is exactly where it was, mask and FP state included.  Between calls it is parked on the `ret`;
- the scratch area is mapped at a free gap with MAP_FIXED_NOREPLACE through a *boot frame*
  whose rt_sigreturn lands on munmap(that gap) and then on the ordinary frame; once mapped,
  every frame's first return is the stub's cleanup (munmap scratch via the gadget), and the
  final munmap is made with rsp one slot up, so no instant leaves scratch behind;
- the batch stub ends with tgkill(self, marker), a signal the target ignores (SIGURG, SIGWINCH
  or SIGCHLD without a handler): the tracer stops on its delivery; a dead tracer's is dropped
  and the stub `ret`s into the chain.  No marker available: batches run call by call;
- the fold's drops of dead stack and writes into it move frames out of the way first (to the
  resident spot below the new rsp, else a scratch slot the stub's evict_cleanup copies back to
  the stack before unmapping scratch); Session.read shows the bytes the frames cover as they
  will be after the cure, so the fold's hashes do not see them; set_resume_regs/-sigmask
  rewrite the frame at once, so a kill before the fold's commit resumes the old stack and a
  kill after it the new one (both copies stay mapped until the dead part is dropped).
Calls that block, and drivers that give up (tests/test_never_harm_inject.py):
- every wait for a stop is bounded by the session's timeout (attach(timeout=...), 10 s):
  while a session is open a 20 ms POSIX-timer tick interrupts the C helper's waitpid, which
  then checks its deadline.  A call past it, or a
  SIGINT/SIGTERM to the driver (its handler makes the C wait return -EINTR), is aborted:
  PTRACE_INTERRUPT, wait for the stop, park the thread as between calls, raise Timeout /
  KeyboardInterrupt; the cure then puts it back.  Other signals to the driver resume the wait;
- a driver SIGKILLed while the target sits in a call that never returns by itself would
  leave the thread there with every signal blocked.  Each driver process therefore starts a
  guardian (rn_guard_start): it shares the driver's memory, where each injecting thread's
  slot says when a call is in flight, and once the driver is gone it makes such a call
  return -EINTR (chain) or puts the saved registers back (no chain);
- calls that would harm whatever happens (fork, vfork, clone, execve, exit, pause,
  rt_sigsuspend, rt_sigreturn: REFUSED_SYSCALLS) are refused before the target is touched.
Remaining windows (measured with `remap run torture`, tests/test_torture.py):
- none for targets with the chain in their code (glibc, or musl programs that call
  sigaction): 500/500 SIGKILL, SIGINT and SIGTERM at random instants, plus alarm/threads/
  stop/seccomp/fold storms, with no scratch left behind;
- targets without a `syscall; ret` or a restorer in their code (static programs that never
  install a handler, e.g. minibot): the chain is built in the scratch area, which needs two
  unprotected calls (the scratch mmap, and its final munmap) -- parked at once on the thread's
  own registers (rn_inject_parked), so only their in-flight time counts: windows_ns
  ["in_flight"], ~110 us per session here (median of 30, max 180 us).  A kill there leaves the
  thread in the injected state; a kill anywhere else leaves the scratch area behind (it cannot
  unmap the code it returns through), the target itself intact.  Same for the single-page
  fold of minibot (protected until it releases scratch);
- a CET shadow stack (rt_sigreturn would fault) or no readable FP state: no chain at all; every
  injection is then parked as above, its in-flight time being the window;
- a kill leaves behind: signals suppressed at the first stop (not yet re-queued), and the
  frame's stack page resident when the frame did not fit the resident page.  A relative sleep
  interrupted by us (-ERESTART_RESTARTBLOCK) restarts from its full duration after a kill
  (rt_sigreturn resets the restart block); the normal cure restarts it exactly.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import functools
import os
import select
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
    Timeout,
    UnsafeStep,
    UnsupportedTarget,
    UsageError,
    ZombieProcess,
)

MASK64 = (1 << 64) - 1
# Every signal blocked (the kernel ignores SIGKILL/SIGSTOP bits) except the session's batch
# marker (see Session._marker) and the synchronous fault signals: blocking those would not stop
# them, only make the kernel reset their handler when it forces them (force_sig_info_to_task).
_FAULTS = (K.SIGILL, K.SIGBUS, K.SIGFPE, K.SIGSEGV)
INJECT_SIGMASK = MASK64 & ~sum(1 << (s - 1) for s in _FAULTS)
STUB_ENTRY = 64  # bytes per batch table entry: nr, 6 args, result
TABLE_PAGES = 16  # one trip runs up to TABLE_PAGES * 4096 / 64 = 1024 calls
FRAME_PAGES = 4  # scratch pages for evicted safety frames, at least (one slot per thread)
MAX_FRAME_SLOTS = 512  # beyond that many threads an evicted frame falls back to unprotected
CAP_SYS_ADMIN = 21  # include/uapi/linux/capability.h
MARKERS = (K.SIGURG, K.SIGWINCH, K.SIGCHLD)  # default action: ignore
# calls that can unmap or zero memory: checked against frames and the chain's code
_GUARDED = frozenset({K.NR_MMAP, K.NR_MUNMAP, K.NR_MREMAP, K.NR_MADVISE})
_RESTART_CODES = frozenset((1 << 64) - c for c in K.ERESTART_CODES)
TIMEOUT_S = 10.0  # default deadline of every wait for a stop and of every injected call
_WAIT_ENDED = (-errno_mod.EINTR, -errno_mod.ETIMEDOUT)  # a wait the C side left unfinished

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
        if any(not -(1 << 63) <= w <= MASK64 for w in words):
            raise UsageError(f"a syscall argument does not fit in 64 bits: {c!r}")
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


def _stat_fields(pid: int, tid: int | None = None) -> list[str]:
    """Fields of /proc/PID/stat (/proc/PID/task/TID/stat) after the comm, so index 0 is
    field 3 (state)."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path) as f:
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


# ------------------------------------------------------------------------------ safety frames
# Layout at A (64-byte aligned, in memory that is dead for the thread: below its rsp - 128, or
# a scratch slot): [A] = first return address (cleanup or a bare `ret`), [A+8] = the restorer
# (= rt_sigframe.pretcode), ucontext at A+16 (304 bytes), XSAVE area at A+320 (64-aligned),
# FP_XSTATE_MAGIC2 right after it.  rt_sigreturn reads the frame at rsp-8 = A+8.
FRAME_HEAD = 16
UC_SIZE = 304
FP_OFF = 320
BOOT_SIZE = 320  # the boot frame below it: [restorer], ucontext (see Session._map_scratch)


def rewound(regs: dict[str, int]) -> dict[str, int]:
    """The registers a thread interrupted in a syscall must resume with so that, with no
    kernel help, it re-executes that syscall: rip back onto the `syscall` instruction, rax =
    the call's number.  (-ERESTART_RESTARTBLOCK too: rt_sigreturn resets the restart block,
    so the original call is repeated, not restart_syscall: a relative sleep starts afresh.)"""
    r = dict(regs)
    if r["orig_rax"] < 1 << 63 and r["rax"] in _RESTART_CODES:
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


def _pidfd_exited(fd: int) -> bool:
    """A pidfd polls readable once its process has exited -- zombie, reaped, or its PID
    already given to another process (pidfd_open(2))."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(0))


def _frame_spot(rsp: int, size: int, *, resident_only: bool = False) -> int:
    """Where a thread's frames go below rsp - 128: inside the page that holds rsp - 128 when
    they fit there (that page is resident, and no squeeze drops it), else just below it (which
    may fault in a stack page) -- or 0 with resident_only."""
    top = rsp - 128
    at = (top - size) & ~63
    if at - BOOT_SIZE >= top & ~(K.PAGE_SIZE - 1):
        return at
    return 0 if resident_only else (top - size - 64) & ~63


def _slot_size(frame_len: int) -> int:
    """Bytes of scratch a frame of FRAME_LEN takes when evicted: its 64-byte slot head plus the
    frame, in half-page slots when that fits (no AVX-512 state), else whole pages."""
    need = frame_len + 64
    return 2048 if need <= 2048 else -(-need // K.PAGE_SIZE) * K.PAGE_SIZE


def _free_gap(pid: int, size: int, maps: list | None = None) -> int | None:
    """An address where `size` bytes fit in a free gap of PID's address space, one guard page
    above and below, at least 256 MiB under the stack (room to grow), highest first -- where
    a plain mmap would have put it.  None when there is no such gap.  MAPS: PID's maps, read
    since the last injected call (saves reading them again while the process is stopped)."""
    if maps is None:
        try:
            maps = gadget_mod.read_maps(pid)
        except OSError:
            return None
    stack = next((m.start for m in maps if m.path == "[stack]"), 1 << 47)
    limit = stack - (256 << 20)
    best = None
    for prev, nxt in zip(maps, maps[1:], strict=False):
        top = min(nxt.start, limit) - K.PAGE_SIZE
        if top - size - K.PAGE_SIZE >= max(prev.end, 1 << 20):
            best = top - size
    return best


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


# ------------------------------------------------------------------------------ interrupts
class _Interrupts:
    """SIGINT/SIGTERM to the driver while a session is open: raised as KeyboardInterrupt, but
    never in the middle of a session operation (e.g. between the kernel mapping scratch and
    Python recording it): inside one they are held and raised when it returns."""

    busy = 0
    pending = 0


def _atomic(fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*a: Any, **kw: Any) -> Any:
        _Interrupts.busy += 1
        try:
            return fn(*a, **kw)
        finally:
            _Interrupts.busy -= 1
            if _Interrupts.pending and not _Interrupts.busy:
                sig, _Interrupts.pending = _Interrupts.pending, 0
                raise KeyboardInterrupt(signal.Signals(sig).name)

    return wrapper


def _interrupt_pending() -> bool:
    """Has SIGINT/SIGTERM reached the driver during this session operation?  Called right
    after a C wait returned -EINTR: entering this function lets the interpreter run the Python
    handler first (_on_interrupt), which records the signal while an operation is busy."""
    return bool(_Interrupts.pending)


def _thread_state(pid: int, tid: int) -> str:
    with contextlib.suppress(OSError, IndexError):
        return _stat_fields(pid, tid)[0]
    return "?"


def _on_interrupt(signum: int, frame: Any) -> None:
    if _Interrupts.busy:
        _Interrupts.pending = signum
        return
    raise KeyboardInterrupt(signal.Signals(signum).name)


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
    cpu: int = -1  # the CPU the tracer follows it to (-1: none)
    pinned: bool = False  # its affinity is the tracer's CPU until the cure
    fp: bytes = b""  # XSAVE area for its safety frame
    frame_at: int = 0  # its safety frame (0: none, the thread injects unprotected)
    frame_len: int = 0
    frame_home: str = ""  # "stack" (below its rsp - 128) or "scratch"
    frame_orig: bytes = b""  # the dead stack bytes under the frames, put back at the cure
    orig_at: int = 0  # where frame_orig came from: the boot frame, then the frame


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

    def __init__(
        self,
        pid: int,
        *,
        pin: bool = True,
        suspend_seccomp: bool = False,
        timeout: float = TIMEOUT_S,
    ):
        if not timeout > 0:
            raise UsageError(f"a session's timeout must be positive, not {timeout!r}")
        self.pid = pid
        self.timeout = timeout  # seconds: every wait for a stop, every injected call
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
        self.released_ns = 0  # when close() let the last thread go
        self._maps_unchanged: list | None = None  # maps read while stopped, before any call
        self._stub_ok: bool | None = None
        self._closed = False
        self._chain: gadget_mod.Chain | None = None  # None: unprotected injection
        self._marker = 0  # batch end signal (0: no ignorable signal, batches run call by call)
        self._mask = INJECT_SIGMASK
        self._pidfd = -1
        self.notes: list[str] = []  # why protection was dropped, if it was
        self.windows_ns: dict[str, int] = {}  # measured unprotected / leak windows
        self._t_unprotected = 0
        self._boot_failed = False
        self._rw_pending = False
        self._may_scratch_chain = False  # no chain in the target's code: build one in scratch
        self._scratch_chain = False  # the chain in use lives in scratch
        self._slots = 0  # guardian slots handed out (one per injecting thread)
        self.guardian = 0  # pid of the driver's guardian process (0: none)

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
            maps = self._maps_unchanged or gadget_mod.read_maps(self.pid)
            self._maps_unchanged = maps  # for _map_scratch, if no call runs in between
            for m in maps:
                if m.start <= g.addr < m.end:
                    return m.path == g.path and "x" in m.perms
        return False

    def known_maps(self, maps: Sequence[Any]) -> None:
        """MAPS (objects with start, end, perms, path) were read while every thread was stopped
        and no call has been injected since: the first call's set-up uses them instead of
        reading /proc/PID/maps again (the fold passes its snapshot's VMAs)."""
        if self._t_stopped:
            self._maps_unchanged = list(maps)

    def use_gadget(self, addr: int) -> None:
        """Inject through the `syscall` instruction at addr from now on (e.g. in a page the fold
        keeps).  The caller vouches that the two bytes at addr are 0f 05 and stay mapped."""
        self._gadget = addr
        for t in self._threads.values():
            if t.call is not None:
                t.call.regs.rip = addr

    # ---- preparation before the stop
    def _open_pidfd(self) -> None:
        if self.pid <= 0:
            raise NoSuchProcess(self.pid)
        fd = self._lib.rn_pidfd_open(self.pid)
        if fd < 0:
            raise _gone(self.pid, OSError(-fd, os.strerror(-fd)))
        self._pidfd = fd

    def _close_pidfd(self) -> None:
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1

    def _same_process(self) -> None:
        """Refuse if the process preflight looked at has exited (its PID may name another)."""
        if self._pidfd >= 0 and _pidfd_exited(self._pidfd):
            with contextlib.suppress(OSError):
                if _stat_fields(self.pid)[0] == "Z":
                    raise ZombieProcess(self.pid)
            raise NoSuchProcess(self.pid, f"process {self.pid} exited before it could be seized")

    def _plan_chain(self) -> None:
        """Find the gadget, the safety chain's code and a marker signal (all from files and
        /proc, before the process is stopped)."""
        pid = self.pid
        with contextlib.suppress(OSError):
            maps = gadget_mod.read_maps(pid)
            self._gadget_hint = gadget_mod.find(pid)
            st = _read_status(f"/proc/{pid}/status")
            if "shstk" in st.get("x86_Thread_features", ""):
                self.notes.append("unprotected: the target uses a shadow stack")
            else:
                self._chain = gadget_mod.find_chain(pid, maps)
                self._may_scratch_chain = self._chain is None
            cgt = int(st.get("SigCgt", "0"), 16)
            for sig in MARKERS:
                if not cgt >> (sig - 1) & 1:
                    self._marker = sig
                    self._mask = INJECT_SIGMASK & ~(1 << (sig - 1))
                    break
        if self._chain is None:
            self._t_unprotected = time.monotonic_ns()

    def _start_guard(self) -> None:
        """Before the stop: bound every wait by the session's deadline, let SIGINT/SIGTERM
        abort one, and make sure this driver has its guardian (csrc/native/remap_native.c):
        the process that ends a blocking injected call if the driver is killed during it."""
        lib = self._lib
        r = lib.rn_set_wait(int(self.timeout * 1e9), 1)
        if r < 0:
            self.notes.append(f"no deadline on waits: {os.strerror(-r)}")
        g = lib.rn_guard_start()
        if g < 0:
            self.notes.append(f"no guardian for blocking calls: {os.strerror(-g)}")
        self.guardian = max(g, 0)  # its pid (it lives as long as this driver process)

    # ---- seize
    @_atomic
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
            if self.pid in new:
                self._same_process()
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
        self._same_process()  # died between the check and the seize: what we hold is not it
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
            while r == -errno_mod.EINTR:  # a signal to the driver: Ctrl-C aborts, others wait on
                if _interrupt_pending():
                    raise KeyboardInterrupt(f"interrupted while waiting for thread {tid} to stop")
                r = lib.rn_wait(tid, status, 0)
            if r == -errno_mod.ETIMEDOUT:
                raise Timeout(
                    f"thread {tid} of process {self.pid} did not stop within {self.timeout:g} s "
                    f"(state {_thread_state(self.pid, tid)}: e.g. a vfork parent or an "
                    "uninterruptible wait); not injecting"
                )
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
        """Run the tracer on the CPU t last ran on, and keep t there while the session lasts:
        a ptrace round trip within one CPU is several times cheaper than one between two, and
        an unpinned thread woken from its stop lands on either (bench/inject.py measures both).

        t's own affinity comes back at the cure -- or from the guardian, if the driver dies
        first (rn_pin_thread keeps it in the thread's guardian slot).  t is pinned to the CPU
        it last ran on, so the kernel has no reason to move it, and its rseq area (whose
        cpu_id the kernel rewrites on a migration) is a hole in the fold's hashes anyway."""
        cpu = _last_cpu(self.pid, t.tid)
        if cpu is None:
            return
        if cpu != self._cpu:  # not there already (attach pins the tracer before the seize)
            self._pin_cpu(cpu)
        t.cpu = self._cpu
        if t.cpu == cpu and t.call is not None:
            t.pinned = self._lib.rn_pin_thread(t.call.slot, t.tid, cpu) == 0

    def _follow(self, t: _Thread) -> None:
        """Move the tracer to the CPU thread t is kept on (another thread injected before)."""
        if t.pinned and t.cpu >= 0:
            self._pin_cpu(t.cpu)
        else:
            self._pin_to(t)

    def pin_early(self) -> None:
        """Before the seize: move the tracer to the CPU the main thread last ran on.

        Why before: the move itself (a migration of the tracer) takes ~300 us here; done while
        the target still runs, it is not part of the stop.  A thread that wakes into its ptrace
        stop on another CPU is followed later (_pin_to)."""
        if self._pin:
            cpu = _last_cpu(self.pid, self.pid)
            if cpu is not None:
                self._pin_cpu(cpu)

    def _pin_cpu(self, cpu: int) -> None:
        lib, ffi = self._lib, self._ffi
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
        t.fpregs = ffi.new("struct user_fpregs_struct *")
        # A syscall preserves FP/SSE state, but a signal handler run by a stray signal would
        # not; saving the legacy area (PTRACE_GETFPREGS) is cheap insurance, restored at the cure.
        if lib.rn_getfpregs(t.tid, t.fpregs) < 0:
            t.fpregs = None
        call = ffi.new("struct rn_call *")
        call.regs = t.resume[0]
        call.regs.orig_rax = MASK64  # -1: "not in a syscall", so nothing gets restarted
        call.regs.rip = self.gadget
        self._slots += 1
        call.slot = self._slots  # the guardian's view of this thread's calls (0: none)
        t.call = call
        if self._pin:
            self._pin_to(t)
        if self._chain is None and self._may_scratch_chain:
            self._may_scratch_chain = False
            self._scratch_chain_for(t)  # arms t
        elif self._chain is not None:
            self._arm(t)
        # Only now, with the registers already leading to a restore, block signals: a driver
        # killed after this point leaves a thread whose rt_sigreturn brings the mask back.
        # Without a chain the thread keeps its own mask: signals met during a call are
        # suppressed and re-queued at the cure.
        if t.frame_at:
            self._check(lib.rn_setsigmask(t.tid, self._mask), "PTRACE_SETSIGMASK", t.tid)

    # ---- the safety chain (see the module docstring)
    def _scratch_chain_for(self, t: _Thread) -> None:
        """The target's code offers no chain: map scratch now (unprotected: two injected calls,
        windows_ns["bootstrap"]) and use the `syscall; ret` and restorer of the stub.  A kill
        later leaves the scratch area behind (it cannot unmap the code it runs)."""
        t0 = time.monotonic_ns()
        native.stub_code()  # read before the window opens
        try:
            base = self._ensure_scratch(t.tid, rw_later=True)
        except OSError as e:
            self.notes.append(f"unprotected: cannot map scratch for the chain ({e.strerror})")
            return
        self._chain = gadget_mod.Chain(
            base + native.STUB_SYSCALL_RET, base + native.STUB_RESTORER, ("[scratch]",) * 2
        )
        self._scratch_chain = True
        self._arm(t)
        now = time.monotonic_ns()
        self.windows_ns["bootstrap"] = now - t0
        if self._t_unprotected:
            self.windows_ns["unprotected"] = (
                self.windows_ns.get("unprotected", 0) + now - self._t_unprotected
            )
            self._t_unprotected = 0

    def _arm(self, t: _Thread) -> None:
        """Give t a safety frame below its rsp - 128 and park it on the chain: from now on,
        whenever the driver dies, t finishes the call it is in and rt_sigreturns home."""
        lib, ffi = self._lib, self._ffi
        buf = ffi.new("char[]", 8192)
        n = lib.rn_getxstate(t.tid, buf, 8192)
        if n > 512:
            t.fp = fp_area(bytes(ffi.buffer(buf, n)))
        elif t.fpregs is not None:
            t.fp = bytes(ffi.buffer(t.fpregs))
        else:
            self._unprotect(f"thread {t.tid}: no FP state readable")
            return
        size = frame_size(t.fp)
        t.frame_len = size
        at = _frame_spot(t.resume.rsp, size, resident_only=True)
        if not at and self._scratch_chain:  # scratch is there anyway: fault in no stack page
            t.call.regs.rip = self._chain.syscall_ret  # type: ignore[union-attr]
            self._to_scratch_slot(t)
            return
        at = at or _frame_spot(t.resume.rsp, size)
        try:
            t.orig_at = at - BOOT_SIZE
            t.frame_orig = self._raw_read(t.orig_at, size + BOOT_SIZE)
        except OSError:
            self._unprotect(f"thread {t.tid}: no room for a frame below its stack pointer")
            return
        t.frame_at, t.frame_len, t.frame_home = at, size, "stack"
        self._write_frame(t)
        t.call.regs.rip = self._chain.syscall_ret  # type: ignore[union-attr]
        t.call.regs.rsp = at
        self._park(t)

    def _park(self, t: _Thread) -> None:
        """Set t's registers to 'between calls': on the `ret` after the gadget's `syscall`
        with rsp on its frame, so a driver killed now sends it down the chain."""
        p = self._ffi.new("struct user_regs_struct *")
        p[0] = t.call.regs
        p.rip = self._chain.syscall_ret + 2  # type: ignore[union-attr]
        self._check(self._lib.rn_setregs(t.tid, p), "PTRACE_SETREGS", t.tid)

    def _first_return(self, t: _Thread) -> int:
        """Where the chain goes after the injected call: unmap scratch first, if scratch holds
        nothing the frame needs; else straight to the restorer (a bare `ret`)."""
        assert self._chain is not None
        if self._scratch and t.frame_home == "stack" and not self._scratch_chain:
            return self._scratch + native.STUB_CLEANUP
        return self._chain.syscall_ret + 2

    def _write_frame(self, t: _Thread) -> None:
        regs = rewound({n: getattr(t.resume, n) for n in native.REGS})
        if t.frame_home == "scratch" and not self._scratch_chain:
            # a slot: [evict_cleanup][destination][length][pad], then the frame built for that
            # destination on the stack, where the stub copies it if the driver dies
            dest = _frame_spot(t.resume.rsp, t.frame_len)
            img = build_frame(
                dest, regs, t.resume_mask, t.fp, self._chain.syscall_ret + 2, self._chain.restorer
            )  # type: ignore[union-attr]
            head = struct.pack("<QQQ", self._scratch + native.STUB_EVICT, dest, len(img))
            self._raw_write(t.frame_at, head.ljust(64, b"\0") + img)
            return
        f = build_frame(
            t.frame_at, regs, t.resume_mask, t.fp, self._first_return(t), self._chain.restorer
        )  # type: ignore[union-attr]
        self._raw_write(t.frame_at, f)

    def _unprotect(self, why: str) -> None:
        """Fall back to injecting without the chain (a killed driver then leaves a thread in
        the injected state).  Threads already armed are moved back onto the plain gadget."""
        if self._chain is None:
            return
        self.notes.append(f"unprotected: {why}")
        self._t_unprotected = time.monotonic_ns()
        self._chain = None
        self._scratch_chain = False
        for t in self._threads.values():
            if t.frame_at:
                # park it on its own rewound registers and mask: right again between calls
                regs = rewound({n: getattr(t.resume, n) for n in native.REGS})
                regs["orig_rax"] = MASK64
                p = self._ffi.new("struct user_regs_struct *", regs)
                self._check(self._lib.rn_setregs(t.tid, p), "PTRACE_SETREGS", t.tid)
                self._lib.rn_setsigmask(t.tid, t.resume_mask)
                t.call.regs.rip = self.gadget
                t.call.regs.rsp = t.resume.rsp
                if t.frame_home == "stack":
                    with contextlib.suppress(OSError):
                        self._raw_write(t.orig_at, t.frame_orig)
                t.frame_at = 0

    def _guard(self, calls: Sequence[Sequence[int]]) -> None:
        """Before calls that unmap or zero memory: move safety frames out of their way (into
        scratch) and give up the chain if its own code is about to go."""
        if self._chain is None:
            return
        code = (self._chain.syscall_ret, self._chain.restorer)
        for c in calls:
            nr, a = c[0], (*c[1:], 0, 0, 0)
            if nr == K.NR_MMAP and not a[3] & (K.MAP_FIXED | K.MAP_FIXED_NOREPLACE):
                continue
            if nr == K.NR_MADVISE and a[2] in (K.MADV_COLD, K.MADV_PAGEOUT, K.MADV_WILLNEED):
                continue
            lo, hi = a[0] & ~4095, a[0] + (a[1] & MASK64)
            # madvise only zeroes anonymous memory (frames); file-backed code just refaults
            if nr != K.NR_MADVISE and any(lo <= x < hi + 16 for x in code):
                self._unprotect(f"{syscall_name(nr)} over the chain's code at {lo:#x}")
                return
            for t in self._threads.values():
                if self._chain is None:  # an eviction had to give the chain up
                    return
                if (
                    t.frame_home == "stack"
                    and lo < t.orig_at + len(t.frame_orig)
                    and t.orig_at < hi
                ):
                    self._evict_frame(t, lo, hi)
                elif (
                    t.frame_home == "scratch" and lo < t.frame_at + t.frame_len and t.frame_at < hi
                ):
                    self._home_to_stack(t)  # its slot is being unmapped

    def _evict_frame(self, t: _Thread, lo: int, hi: int) -> None:
        """Move t's frames out of [lo, hi) (dead stack the caller is about to drop or use):
        below t's current resume rsp if that spot is outside [lo, hi) and already resident,
        else into a scratch slot, from which the stub copies it back onto the stack (faulting
        that page in) if the driver dies, before unmapping scratch."""
        at = _frame_spot(t.resume.rsp, t.frame_len, resident_only=True)
        if at and not (at - BOOT_SIZE < hi and lo < at + t.frame_len):
            old, orig = t.orig_at, t.frame_orig
            t.orig_at, t.frame_at = at - BOOT_SIZE, at
            t.frame_orig = self._raw_read(t.orig_at, t.frame_len + BOOT_SIZE)
            self._write_frame(t)
            t.call.regs.rsp = at
            self._park(t)
            with contextlib.suppress(OSError):
                self._raw_write(old, orig)
            return
        self._to_scratch_slot(t)

    def _to_scratch_slot(self, t: _Thread) -> None:
        """Home t's frame in a free scratch slot and park it there."""
        base = self._ensure_scratch()
        slot = _slot_size(t.frame_len)
        used = {u.frame_at for u in self._threads.values() if u.frame_home == "scratch"}
        area = base + K.PAGE_SIZE * (1 + TABLE_PAGES)
        end = base + self._scratch_len
        at = next((a for a in range(area, end - slot + 1, slot) if a not in used), 0)
        if not at or self._chain is None:
            self._unprotect(f"no free scratch slot for thread {t.tid}'s safety frame")
            return
        old, orig, home = t.orig_at, t.frame_orig, t.frame_home
        t.frame_at, t.frame_home = at, "scratch"
        self._write_frame(t)
        t.call.regs.rsp = at
        self._park(t)  # it was parked on the old frame, if any
        if home == "stack":
            with contextlib.suppress(OSError):
                self._raw_write(old, orig)

    def _home_to_stack(self, t: _Thread) -> None:
        """Bring an evicted frame back below t's resume rsp (before scratch goes): in the
        resident part of its stack page if it fits, else just below (faulting a page in)."""
        at = _frame_spot(t.resume.rsp, t.frame_len, resident_only=True) or _frame_spot(
            t.resume.rsp, t.frame_len
        )
        try:
            orig = self._raw_read(at - BOOT_SIZE, t.frame_len + BOOT_SIZE)
        except OSError:
            self._unprotect(f"thread {t.tid}: no stack left for its frame")
            return
        t.orig_at, t.frame_orig, t.frame_at, t.frame_home = at - BOOT_SIZE, orig, at, "stack"
        self._write_frame(t)
        t.call.regs.rsp = at
        self._park(t)

    @_atomic
    def syscall(self, name_or_nr: str | int, *args: int, tid: int | None = None) -> int:
        """Run one syscall in the target (thread tid, default the main thread) and return rax.

        Raises OSError(errno) when the kernel returns -4095..-1.  Example::

            >>> s.syscall("getpid") == pid
        """
        # This is the hot path of every remote call: plain statements, one C crossing.
        nr = name_or_nr if name_or_nr.__class__ is int else _cached_number(name_or_nr)
        if nr in REFUSED_SYSCALLS:
            refuse_unsafe(nr)
        t = self._threads.get(self.pid if tid is None else tid)
        if t is None or t.call is None or self._closed:
            t = self._thread(tid)
        if t.cpu != self._cpu and self._pin:  # another thread, on another CPU: follow it
            self._follow(t)
        self._maps_unchanged = None
        if nr in _GUARDED and self._chain is not None:
            self._guard([(nr, *args)])
        c = t.call
        regs = c.regs
        regs.rax = nr
        if len(args) > 6:
            raise UsageError("a syscall takes at most 6 arguments")
        a = args + _ZERO6[len(args) :]  # unused args are 0 (prctl and others check)
        try:
            regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9 = a
        except OverflowError:  # negative ints: the kernel sees the two's complement
            _encode([(nr, *args)])  # refuses (UsageError) what does not fit in 64 bits
            regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9 = [x & MASK64 for x in a]
        if self._chain is not None:
            r = self._inject(t.tid, c)
            if r in _WAIT_ENDED:
                r = self._unfinished(t, c, r, nr, lambda: self._inject(t.tid, c), regs.rip + 2)
        else:  # no chain: back on its own registers at once (a kill then restarts its call)
            t0 = time.monotonic_ns()
            r = self._lib.rn_inject_parked(t.tid, c, t.resume)
            if r in _WAIT_ENDED:
                r = self._unfinished(
                    t,
                    c,
                    r,
                    nr,
                    lambda: self._lib.rn_inject_parked(t.tid, c, t.resume),
                    regs.rip + 2,
                )
            w = self.windows_ns
            w["in_flight"] = w.get("in_flight", 0) + time.monotonic_ns() - t0
        t.ran = True
        if r or c.nsig:
            self._after_stray(t, c, r, nr)
        res = c.result
        if -4095 <= res < 0:
            raise OSError(-res, f"{syscall_name(nr)}: {os.strerror(-res)}")
        return res

    def _unfinished(self, t: _Thread, c: Any, r: int, nr: int, again: Any, done_at: int = 0) -> int:
        """A call whose wait the C side left unfinished (-EINTR: a signal reached the driver;
        -ETIMEDOUT: the deadline passed).  A signal that is not an interrupt of the driver
        (its Python handler ran and did not ask to stop) resumes the wait; Ctrl-C, SIGTERM and
        the deadline abort the call: the thread is interrupted out of it and parked as between
        calls (the cure then puts it back).

        A call that had already completed when the abort stopped the thread (rip at DONE_AT,
        just past its `syscall`, rax not an -ERESTART* code) is not lost: its result is kept
        (c.result, return 0) and the interrupt is raised when the session operation ends
        (_atomic).  One that had not is abandoned: Timeout, or KeyboardInterrupt -- never an
        OSError, which a caller could take for the syscall's own failure and carry on."""
        while r == -errno_mod.EINTR and not _interrupt_pending():
            r = again()
        if r not in _WAIT_ENDED:
            return r
        at = self._ffi.new("struct user_regs_struct *")
        a = self._lib.rn_abort(t.tid, c, at)
        self._lib.rn_guard_clear(c.slot)
        t.ran = True
        t.signals.extend(c.sigs[0 : c.nsig])
        if a:
            self._check(a, f"aborting injected {syscall_name(nr)}", t.tid)
        if self._chain is not None and t.frame_at:
            self._park(t)
        else:
            self._check(self._lib.rn_setregs(t.tid, t.resume), "PTRACE_SETREGS", t.tid)
        if done_at and at.rip == done_at and at.rax not in _RESTART_CODES:
            c.result = at.rax - (1 << 64) if at.rax >> 63 else at.rax
            if r == -errno_mod.EINTR:
                return 0  # completed: the held interrupt is raised at the operation's end
        if r == -errno_mod.ETIMEDOUT:
            raise Timeout(
                f"injected {syscall_name(nr)} did not return within {self.timeout:g} s; "
                f"interrupted it (process {self.pid} is put back as it was)"
            )
        raise KeyboardInterrupt(f"interrupted during injected {syscall_name(nr)}")

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
        """The stub ends by sending itself a marker signal; that needs one the target ignores
        (default action ignore, no handler), so that if the driver dies the kernel drops it."""
        if self._stub_ok is None:
            st = _read_status(f"/proc/{self.pid}/status")
            cgt = int(st.get("SigCgt", "0"), 16)
            self._stub_ok = self._marker != 0 and not (cgt >> (self._marker - 1) & 1)
        return self._stub_ok

    def _ensure_scratch(self, tid: int | None = None, *, rw_later: bool = False) -> int:
        """Map the scratch area: 1 code page (the stub, then read-only + executable: never
        RWX), TABLE_PAGES for batch tables and caller data, FRAME_PAGES for evicted frames.

        The one unprotected moment: if the driver dies after the kernel has mapped it and
        before the frames' first return points at the stub's cleanup, the area stays mapped
        (unused, harmless; windows_ns["scratch_leak"] holds its measured width)."""
        if self._scratch:
            return self._scratch
        code = native.stub_code()[: native.STUB_HEADER].ljust(native.STUB_HEADER, b"\xcc")
        size = K.PAGE_SIZE * (1 + TABLE_PAGES + self._frame_pages())
        gadget = self._chain.syscall_ret if self._chain else 0
        # Mapped read+exec as a whole and the code written through /proc/PID/mem (which may
        # write a read-only private page): the fewest steps between the mmap and the moment
        # every frame's first return unmaps it again.  Tables and frames become RW after.
        rx = K.PROT_READ | K.PROT_EXEC
        addr = self._map_scratch(size, rx, tid)
        t0 = time.monotonic_ns()
        self._scratch, self._scratch_len = addr, size
        self._mem_io(addr, data=code + struct.pack("<QQQ", addr, size, gadget))
        for t in self._threads.values():
            if t.frame_at and t.frame_home == "stack":
                self._raw_write(t.frame_at, struct.pack("<Q", addr + native.STUB_CLEANUP))
        main = self._threads.get(self.pid if tid is None else tid)
        if main is not None and main.frame_at and main.frame_home == "stack":
            self._park(main)  # off the boot frame: the ordinary chain now unmaps scratch
        self.windows_ns["scratch_leak"] = time.monotonic_ns() - t0 if self._boot_failed else 0
        self._rw_pending = True
        if not rw_later:
            self._scratch_rw(tid)
        return addr

    def _frame_pages(self) -> int:
        """Scratch pages for evicted safety frames: a slot for every stopped thread (the fold
        may drop the dead stack of all of them), FRAME_PAGES at least.  A thread count past
        MAX_FRAME_SLOTS gets no more room: its extra evictions inject unprotected (a note)."""
        lens = [t.frame_len for t in self._threads.values() if t.frame_len]
        slot = _slot_size(max(lens, default=2 * K.PAGE_SIZE - 64))
        slots = min(len(self._threads), MAX_FRAME_SLOTS)
        return max(FRAME_PAGES, -(-slots * slot // K.PAGE_SIZE))

    def _scratch_rw(self, tid: int | None = None) -> None:
        """Make the table and frame pages writable (once; after the chain is in place when the
        chain lives in scratch: one injected call less in the unprotected bootstrap)."""
        if self._rw_pending and self._scratch:
            self._rw_pending = False
            rw, a, n = K.PROT_READ | K.PROT_WRITE, self._scratch, self._scratch_len
            self.syscall("mprotect", a + K.PAGE_SIZE, n - K.PAGE_SIZE, rw, tid=tid)

    def _map_scratch(self, size: int, prot: int, tid: int | None = None) -> int:
        """mmap the scratch area so that a driver killed at any instant leaves none behind.

        It is mapped at an address chosen in a free gap (MAP_FIXED_NOREPLACE; every thread is
        stopped, so the gap stays free) through the boot frame: were the driver to die once
        the kernel has mapped it, the thread's `ret` goes to the restorer, whose rt_sigreturn
        lands on munmap(that address) through the `syscall; ret` gadget and from there on the
        thread's ordinary frame.  Without a chain or a gap: plain mmap, with a leak window."""
        flags = K.MAP_PRIVATE | K.MAP_ANONYMOUS
        t = self._threads.get(self.pid if tid is None else tid)
        if t is None or t.call is None:
            t = self._thread(tid)
        maps, self._maps_unchanged = self._maps_unchanged, None
        hole = _free_gap(self.pid, size, maps) if self._chain and t.frame_at else None
        if hole is None or t.frame_home != "stack":
            self._boot_failed = True
            return self.syscall("mmap", 0, size, prot, flags, -1, 0, tid=t.tid)
        regs = {n: getattr(t.call.regs, n) for n in native.REGS}
        # its munmap returns past the frame's first slot (which may already say "cleanup",
        # i.e. run code in the area just unmapped) straight into the restorer
        rsp = t.frame_at + 8
        regs.update(rip=self._chain.syscall_ret, rsp=rsp, rax=K.NR_MUNMAP, rdi=hole)
        regs.update(rsi=size, orig_rax=MASK64)  # type: ignore[union-attr]
        boot = t.orig_at
        self._raw_write(boot, build_boot_frame(boot, regs, self._mask, self._chain.restorer))  # type: ignore[union-attr]
        t.call.regs.rsp = boot
        fixed = flags | K.MAP_FIXED_NOREPLACE
        try:
            return self.syscall("mmap", hole, size, prot, fixed, -1, 0, tid=t.tid)
        except OSError:
            self._boot_failed = True
            t.call.regs.rsp = t.frame_at
            self._park(t)
            return self.syscall("mmap", 0, size, prot, flags, -1, 0, tid=t.tid)
        finally:
            t.call.regs.rsp = t.frame_at

    def scratch(self) -> int:
        """Address of the scratch area (1 code page + table pages), mapped on first use; the
        table pages are free for the caller's data between batches (e.g. a prctl struct)."""
        base = self._ensure_scratch()
        self._scratch_rw()
        return base + K.PAGE_SIZE

    @_atomic
    def release_scratch(self) -> None:
        """Unmap the scratch area now (before measuring residency).

        Every instant stays safe: evicted frames go back onto the stack first; the other
        threads' first return stops pointing at the stub's cleanup; the injecting thread keeps
        it (a driver killed before the munmap runs still unmaps scratch) and makes the munmap
        with rsp one slot up, so that its `ret` skips the cleanup and goes to the restorer."""
        if not self._scratch:
            return
        addr, size = self._scratch, self._scratch_len
        if self._scratch_chain:
            self._unprotect("releasing the scratch area that holds the chain")
        main = self._thread(None)
        armed = self._chain is not None and main.frame_at != 0
        if armed:
            for t in self._threads.values():
                if t.frame_at and t.frame_home == "scratch":
                    self._home_to_stack(t)
            for t in self._threads.values():
                if t is not main and t.frame_at:
                    self._raw_write(t.frame_at, struct.pack("<Q", self._chain.syscall_ret + 2))
            main.call.regs.rsp = main.frame_at + 8
        try:
            self.munmap(addr, size)
        finally:
            if armed:
                main.call.regs.rsp = main.frame_at
        self._scratch = 0
        if armed and self._chain is not None and main.frame_at:
            self._raw_write(main.frame_at, struct.pack("<Q", self._chain.syscall_ret + 2))
            self._park(main)

    @_atomic
    def syscalls(self, calls: Sequence[Sequence[Any]], *, tid: int | None = None) -> list[int]:
        """Run many syscalls in one trip each TABLE_PAGES*64 calls; return their results.

        Stops at the first failing call and raises :class:`BatchError` (an OSError) carrying
        the results before it.  Falls back to one call at a time when the target ignores
        SIGTRAP (the stub's int3 would change its signal state).
        """
        table_bytes = _encode(calls)  # 64 bytes per call: nr, 6 args, result slot
        n = len(table_bytes) // STUB_ENTRY
        words = memoryview(table_bytes).cast("q")
        numbers = set(words[0::8].tolist())
        for nr in numbers & REFUSED_SYSCALLS.keys():
            refuse_unsafe(nr)
        if self._chain is not None and not _GUARDED.isdisjoint(numbers):
            self._guard([words[8 * i : 8 * i + 7].tolist() for i in range(n)])
        if not self._stub_allowed():
            out = []
            for i in range(n):
                try:
                    out.append(self.syscall(*words[8 * i : 8 * i + 7].tolist(), tid=tid))
                except OSError as ex:
                    raise BatchError(ex.errno or 0, str(ex), i, out) from None
            return out
        t = self._thread(tid)
        if t.cpu != self._cpu and self._pin:
            self._follow(t)
        self._maps_unchanged = None  # _ensure_scratch below must not trust an older read
        base = self._ensure_scratch(t.tid)
        self._scratch_rw(t.tid)
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
            c.regs.rbx = self._marker  # the stub finds its own ids (PID namespaces)
            c.slot = t.call.slot
            park = t.resume if self._chain is None else self._ffi.NULL
            r = self._lib.rn_run_stub(t.tid, c, self._marker, park)
            if r in _WAIT_ENDED:
                r = self._unfinished(
                    t,
                    c,
                    r,
                    -1,
                    functools.partial(self._lib.rn_run_stub, t.tid, c, self._marker, park),
                )
            t.ran = True
            if self._chain is None and not r:  # no chain: park it on its own registers
                self._lib.rn_ptrace(K.PTRACE_INTERRUPT, t.tid, 0, 0)
                self._lib.rn_setregs(t.tid, t.resume)
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
        """n bytes of target memory (process_vm_readv; /proc/PID/mem where that cannot).

        Safety frames are invisible: where one lies on a stack, the dead bytes it covers (and
        will give back at the cure) are returned, so hashes see the process as it will be."""
        out = self._raw_read(addr, n)
        for t in self._stack_frames(addr, n):
            lo, hi = max(addr, t.orig_at), min(addr + n, t.orig_at + len(t.frame_orig))
            out = (
                out[: lo - addr] + t.frame_orig[lo - t.orig_at : hi - t.orig_at] + out[hi - addr :]
            )
        return out

    def _stack_frames(self, addr: int, n: int) -> list[_Thread]:
        return [
            t
            for t in self._threads.values()
            if t.frame_at and t.frame_home == "stack"
            and t.orig_at < addr + n and addr < t.orig_at + len(t.frame_orig)
        ]  # fmt: skip

    def _raw_read(self, addr: int, n: int) -> bytes:
        buf = self._ffi.new("char[]", n)
        got = self._lib.rn_vm_read(self.pid, buf, addr, n)
        if got == n:
            return bytes(self._ffi.buffer(buf, n))
        return self._mem_io(addr, n=n)

    def write(self, addr: int, data: bytes) -> None:
        """Write data into target memory (process_vm_writev; /proc/PID/mem for read-only pages,
        which turns a private file page into an anonymous copy -- callers know why they do it).
        A safety frame in the way moves to scratch first (the caller uses that dead stack)."""
        if self._chain is not None:
            for t in self._stack_frames(addr, len(data)):
                self._evict_frame(t, addr, addr + len(data))
        self._raw_write(addr, data)

    def _raw_write(self, addr: int, data: bytes) -> None:
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

    @_atomic
    def set_resume_regs(self, tid: int | None, regs: dict[str, int]) -> None:
        """Change registers thread tid resumes with (any subset of names), e.g. a moved rsp."""
        t = self._threads[self.pid if tid is None else tid]
        for name, val in regs.items():
            if name not in native.REGS:
                raise UsageError(f"unknown register {name!r}")
            setattr(t.resume, name, val & MASK64)
        t.regs_dirty = True
        if t.frame_at:  # a driver killed from now on resumes it with these
            self._write_frame(t)

    def sigmask(self, tid: int | None = None) -> int:
        """The signal mask thread tid will resume with."""
        return self._threads[self.pid if tid is None else tid].resume_mask

    @_atomic
    def set_resume_sigmask(self, tid: int | None, mask: int) -> None:
        """Make thread tid resume with this blocked-signal mask (kept after detach)."""
        t = self._threads[self.pid if tid is None else tid]
        t.resume_mask = mask & MASK64
        if t.frame_at:
            self._write_frame(t)

    # ---- the cure: one way out
    @_atomic
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

        # the cure is not abandoned for a Ctrl-C (it is what makes Ctrl-C safe), only bounded
        self._lib.rn_set_wait(int(self.timeout * 1e9), 0)
        for addr, orig in reversed(self._borrowed):
            attempt(self.write, addr, orig)
        self._borrowed.clear()
        if self._scratch:
            attempt(self.release_scratch)
        for t in list(self._threads.values()):
            attempt(self._release_thread, t)
        self.released_ns = time.monotonic_ns()  # the process runs again from here
        if self._t_unprotected:
            self.windows_ns["unprotected"] = time.monotonic_ns() - self._t_unprotected
        self._closed = True
        self._lib.rn_set_wait(0, 0)  # no deadline for callers outside a session
        if self._own_affinity is not None:
            self._lib.rn_setaffinity(0, len(self._own_affinity), self._own_affinity)
        if errors:
            raise errors[0]

    def _reinterrupt(self, t: _Thread) -> tuple[int, Any]:
        """rn_reinterrupt, waiting through the driver's own signals (the cure is never
        abandoned half-way for a Ctrl-C) but not past the deadline."""
        c = self._ffi.new("struct rn_call *")
        r = self._lib.rn_reinterrupt(t.tid, t.resume, c)
        while r == -errno_mod.EINTR:
            r = self._lib.rn_reinterrupt(t.tid, t.resume, c)
        if r == -errno_mod.ETIMEDOUT:
            raise Timeout(f"thread {t.tid} did not stop again within {self.timeout:g} s")
        return r, c

    def _release_thread(self, t: _Thread, *, detach: bool = True) -> None:
        """Put t back as it will resume (regs, mask, FP state, affinity, signals met), then
        detach -- or PTRACE_CONT it and stay attached (see :meth:`run`)."""
        lib = self._lib
        try:
            if not t.stopped:  # seized and interrupted, but we failed before its stop
                self._wait_first_stop(t.tid, self._ffi.new("int *"))
            if t.resume is None:
                return
            if t.frame_at:
                # Mask and FP state first: the frame holds the same, so a driver killed
                # from here on still leaves the thread right (see rn_reinterrupt for regs).
                if t.fpregs is not None:
                    lib.rn_setfpregs(t.tid, t.fpregs)
                self._check(lib.rn_setsigmask(t.tid, t.resume_mask), "PTRACE_SETSIGMASK", t.tid)
                r, c = self._reinterrupt(t)
                t.signals.extend(c.sigs[0 : c.nsig])
                self._check(r, "re-interrupt", t.tid)
                if t.frame_home == "stack":
                    with contextlib.suppress(OSError):
                        self._raw_write(t.orig_at, t.frame_orig)
                t.frame_at = 0
            elif t.ran:
                # Not only for DETACH (whose wake-up alone would make the kernel rewind an
                # ERESTART* call): PTRACE_CONT from a syscall-exit stop would hand -512 to
                # userspace.  From a fresh interrupt stop both restart exactly.
                r, c = self._reinterrupt(t)
                t.signals.extend(c.sigs[0 : c.nsig])
                self._check(r, "re-interrupt", t.tid)
            elif t.regs_dirty:
                self._check(lib.rn_setregs(t.tid, t.resume), "PTRACE_SETREGS", t.tid)
            if t.fpregs is not None:
                lib.rn_setfpregs(t.tid, t.fpregs)
            if t.call is not None or t.resume_mask != t.sigmask:
                self._check(lib.rn_setsigmask(t.tid, t.resume_mask), "PTRACE_SETSIGMASK", t.tid)
            if t.pinned:
                lib.rn_unpin_thread(t.call.slot)
                t.pinned = False
            for sig in t.signals:  # queued while stopped: delivered as it resumes
                lib.rn_tgkill(self.pid, t.tid, sig)
        finally:
            if t.pinned and t.call is not None:  # the try above failed before unpinning
                lib.rn_unpin_thread(t.call.slot)
                t.pinned = False
            if detach:
                lib.rn_ptrace(K.PTRACE_DETACH, t.tid, 0, 0)
                self._threads.pop(t.tid, None)
            else:
                lib.rn_ptrace(K.PTRACE_CONT, t.tid, 0, 0)
                t.stopped = False
                t.call = t.fpregs = None
                t.frame_at = 0
                t.cpu = -1
                t.ran = t.regs_dirty = False
                t.signals = []

    @_atomic
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
            if r == -errno_mod.EINTR:
                if _interrupt_pending():
                    raise KeyboardInterrupt(f"interrupted while thread {tid} ran attached")
                continue
            if r == -errno_mod.ETIMEDOUT:
                raise Timeout(f"thread {tid} did not stop within {self.timeout:g} s")
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


def _last_cpu(pid: int, tid: int) -> int | None:
    """The CPU thread TID last ran on (/proc/PID/task/TID/stat field 39), None if unreadable."""
    try:
        return int(_stat_fields(pid, tid)[36])
    except (OSError, IndexError, ValueError):
        return None


def guardian_pid() -> int:
    """The pid of this driver's guardian (started on first use; 0 if it cannot be)."""
    lib, _ = native.load()
    return max(lib.rn_guard_start(), 0)


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
    if r < 0:  # EPERM (no CAP_SYS_NICE), EACCES, ESRCH: remap's errors, from the one place
        from .procfs import translate

        raise translate(pid, OSError(-r, f"process_madvise: {os.strerror(-r)}"), "process_madvise")
    return r


@contextlib.contextmanager
def attach(
    pid: int, *, pin: bool = True, suspend_seccomp: bool = False, timeout: float = TIMEOUT_S
) -> Iterator[Session]:
    """Stop every thread of pid and yield a :class:`Session`; restore and detach on exit.

    pin: run the tracer on the target's CPU while injecting (~20x cheaper wake-ups).
    timeout: seconds any thread may take to stop, and any injected call to return; past it
    the wait is abandoned (remap.errors.Timeout) and the target put back.  SIGINT/SIGTERM to
    the driver abort a wait the same way (KeyboardInterrupt).
    suspend_seccomp: inject into a process under a seccomp filter by suspending the filter for
    the injected calls (PTRACE_O_SUSPEND_SECCOMP, needs CAP_SYS_ADMIN); otherwise it is refused.
    """
    s = Session(pid, pin=pin, suspend_seccomp=suspend_seccomp, timeout=timeout)
    s._open_pidfd()  # the process we check is the one we seize (PIDs get reused)
    old = _trap_interrupts()
    try:
        preflight(pid, suspend_seccomp=suspend_seccomp)
        s._plan_chain()  # file reads before the stop, not during
        s._start_guard()
        s.pin_early()
        s._seize()
        yield s
    except BaseException:
        with contextlib.suppress(Exception):
            s.close()
        raise
    else:
        s.close()
    finally:
        s._close_pidfd()
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if _Interrupts.pending and not _Interrupts.busy:
            # held during the session's last operation and not raised yet: deliver it again,
            # now under the driver's own disposition, so an interrupt is never lost
            sig, _Interrupts.pending = _Interrupts.pending, 0
            os.kill(os.getpid(), sig)


def _trap_interrupts() -> dict[int, Any]:
    """While a session is open, SIGINT and SIGTERM (if nobody else handles them) become a
    KeyboardInterrupt at the next safe point, so the cure runs; returns what to put back."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    old = {}
    for sig, default in (
        (signal.SIGINT, signal.default_int_handler),
        (signal.SIGTERM, signal.SIG_DFL),
    ):
        h = signal.getsignal(sig)
        if h is default or (sig == signal.SIGINT and h is signal.SIG_DFL):
            old[sig] = h
            signal.signal(sig, _on_interrupt)
    return old
