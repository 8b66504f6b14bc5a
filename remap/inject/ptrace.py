"""One typed ptrace layer: the only caller of the native helper's ptrace entry points, and the
only place where a ptrace errno becomes one of remap's errors.

Why one place: the same refusal used to leave remap with three exit codes (EPERM was 4 in the
session, 70 in the profiler, 5 in ``launch --no-vdso``).  Every ptrace user -- the session,
``profile._Stepper``, ``fold.vdso`` and ``fold.rseq`` -- goes through :class:`Ptrace`, and
:func:`ptrace_error` says what each errno means:

- ESRCH (or the helper's RN_EXITED): the thread is gone -> NoSuchProcess (exit 3);
- EPERM: another tracer holds it -> AlreadyTraced (5), else not allowed -> AccessDenied (4);
- EBUSY: a tracer's request collided with another tracer -> AlreadyTraced (5);
- the helper's RN_LOST (endless unexpected stops) and anything else -> InternalError (70).

Usage::

    pt = Ptrace(pid)
    if not pt.seize(pid, K.PTRACE_O_TRACESYSGOOD):
        ...  # exited meanwhile
    pt.interrupt(pid)
    regs = pt.getregs(pid)

The hot paths (one injected call, one batch) keep a single Python->C crossing: ``inject``,
``inject_parked``, ``run_stub``, ``abort`` and ``reinterrupt`` are the helper's entry points
bound once; they return the helper's raw code, which the caller hands to :meth:`check`.
"""

from __future__ import annotations

import errno as errno_mod
import os
import struct
from typing import Any

from .. import kconst as K
from .. import native
from ..errors import AccessDenied, AlreadyTraced, InternalError, NoSuchProcess, RemapError
from .abi import MASK64, signed

RSEQ_CONF_SIZE = 24  # struct ptrace_rseq_configuration: u64 pointer, u32 size, u32 sig, flags, pad
WAIT_ENDED = (-errno_mod.EINTR, -errno_mod.ETIMEDOUT)  # a wait the C side left unfinished
_ARGS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")


def _tracer(pid: int) -> int:
    """TracerPid of PID (0: none, or unreadable)."""
    from ..procfs import read_status

    try:
        return int(read_status(pid).get("TracerPid", 0))
    except (OSError, RemapError, ValueError):
        return 0


def ptrace_error(pid: int, r: int, what: str, tid: int | None = None) -> RemapError:
    """The remap error for the helper's result R (-errno, or RN_EXITED / RN_LOST) of WHAT on
    thread TID of process PID.  The one errno -> error map of every ptrace user."""
    tid = pid if tid is None else tid
    on = f"thread {tid}" if tid != pid else f"process {pid}"
    if r == -errno_mod.ESRCH or r == native.RN_EXITED:
        return NoSuchProcess(pid, f"process {pid} died during {what} ({on})")
    if r == -errno_mod.EPERM:
        tracer = _tracer(pid)
        if tracer and tracer != os.getpid():
            return AlreadyTraced(f"process {pid} is already traced by {tracer}")
        return AccessDenied(
            f"ptrace refused for process {pid} ({what} on {on}): operation not permitted "
            "(run as root or as its owner with ptrace_scope allowing it)"
        )
    if r == -errno_mod.EBUSY:
        return AlreadyTraced(f"process {pid}: {what} on {on} is busy (another tracer?)")
    if r == native.RN_LOST:
        return InternalError(f"{what} on {on}: unexpected stops, gave up")
    return InternalError(f"{what} on {on}: {os.strerror(-r)}")


class Ptrace:
    """ptrace requests on the threads of process PID: typed arguments, checked results.

    Raises (from :meth:`check`, i.e. :func:`ptrace_error`) NoSuchProcess, AccessDenied,
    AlreadyTraced or InternalError; never returns a negative errno except from the raw hot-path
    entry points and :meth:`wait`, whose -EINTR/-ETIMEDOUT the caller's deadline logic reads.
    """

    def __init__(self, pid: int):
        self.pid = pid
        self.lib, self.ffi = native.load()
        lib = self.lib
        # raw entry points of the hot paths (results go through check())
        self.inject = lib.rn_inject
        self.inject_parked = lib.rn_inject_parked
        self.run_stub = lib.rn_run_stub
        self.abort = lib.rn_abort
        self.reinterrupt = lib.rn_reinterrupt

    # ---- results
    def check(self, r: int, what: str, tid: int | None = None) -> int:
        """R if it reports success, else raise the error ptrace_error() names for it."""
        if r < 0 or r in (native.RN_EXITED, native.RN_LOST):
            raise ptrace_error(self.pid, r, what, tid)
        return r

    def _request(self, req: int, tid: int, addr: int, data: int, what: str) -> int:
        return self.check(self.lib.rn_ptrace(req, tid, addr, data), what, tid)

    # ---- attach / detach
    def seize(self, tid: int, options: int = 0) -> bool:
        """PTRACE_SEIZE tid; False if it exited meanwhile (ESRCH), an error for a refusal."""
        r = self.lib.rn_ptrace(K.PTRACE_SEIZE, tid, 0, options)
        if r == -errno_mod.ESRCH:
            return False
        self.check(r, "PTRACE_SEIZE", tid)
        return True

    def interrupt(self, tid: int, *, gone_ok: bool = True) -> bool:
        """PTRACE_INTERRUPT tid; False if it is gone (an error instead unless GONE_OK)."""
        r = self.lib.rn_ptrace(K.PTRACE_INTERRUPT, tid, 0, 0)
        if r == -errno_mod.ESRCH and gone_ok:
            return False
        self.check(r, "PTRACE_INTERRUPT", tid)
        return True

    def detach(self, tid: int, sig: int = 0) -> int:
        """PTRACE_DETACH, raw result: the cure detaches whatever state the thread is in."""
        return self.lib.rn_ptrace(K.PTRACE_DETACH, tid, 0, sig)

    def cont(self, tid: int, sig: int = 0) -> int:
        """PTRACE_CONT, raw result (a thread that died meanwhile is the next wait's news)."""
        return self.lib.rn_ptrace(K.PTRACE_CONT, tid, 0, sig)

    def cont_checked(self, tid: int, sig: int = 0) -> None:
        self._request(K.PTRACE_CONT, tid, 0, sig, "PTRACE_CONT")

    def listen(self, tid: int) -> int:
        return self.lib.rn_ptrace(K.PTRACE_LISTEN, tid, 0, 0)

    def singlestep(self, tid: int, sig: int = 0) -> None:
        self._request(K.PTRACE_SINGLESTEP, tid, 0, sig, "PTRACE_SINGLESTEP")

    def setoptions(self, tid: int, options: int) -> None:
        self._request(K.PTRACE_SETOPTIONS, tid, 0, options, "PTRACE_SETOPTIONS")

    def wait(self, tid: int, status: Any, flags: int = 0) -> int:
        """waitpid(tid, __WALL | flags) through the helper (bounded by rn_set_wait's deadline):
        the raw result -- tid, 0 (WNOHANG, nothing yet), -EINTR, -ETIMEDOUT or -errno."""
        return self.lib.rn_wait(tid, status, flags)

    # ---- registers, masks, FP state
    def getregs(self, tid: int, into: Any = None) -> Any:
        """The thread's user_regs_struct (cffi), read into INTO if given."""
        regs = into if into is not None else self.ffi.new("struct user_regs_struct *")
        self.check(self.lib.rn_getregs(tid, regs), "PTRACE_GETREGS", tid)
        return regs

    def setregs(self, tid: int, regs: Any) -> None:
        self.check(self.lib.rn_setregs(tid, regs), "PTRACE_SETREGS", tid)

    def getsigmask(self, tid: int) -> int:
        mask = self.ffi.new("uint64_t *")
        self.check(self.lib.rn_getsigmask(tid, mask), "PTRACE_GETSIGMASK", tid)
        return int(mask[0])

    def setsigmask(self, tid: int, mask: int) -> None:
        self.check(self.lib.rn_setsigmask(tid, mask & MASK64), "PTRACE_SETSIGMASK", tid)

    def getfpregs(self, tid: int) -> Any:
        """The legacy FP area (user_fpregs_struct), or None when the kernel gives none."""
        fp = self.ffi.new("struct user_fpregs_struct *")
        return fp if self.lib.rn_getfpregs(tid, fp) >= 0 else None

    def setfpregs(self, tid: int, fp: Any) -> int:
        return self.lib.rn_setfpregs(tid, fp)

    def xstate(self, tid: int, size: int = 8192) -> bytes:
        """The thread's XSAVE area (PTRACE_GETREGSET NT_X86_XSTATE); b"" when unreadable."""
        buf = self.ffi.new("char[]", size)
        n = self.lib.rn_getxstate(tid, buf, size)
        return bytes(self.ffi.buffer(buf, n)) if n > 0 else b""

    def rseq_configuration(self, tid: int) -> tuple[int, int] | None:
        """(address, size) of tid's registered rseq area (PTRACE_GET_RSEQ_CONFIGURATION,
        5.13+), None when it has none or the kernel cannot say."""
        buf = self.ffi.new(f"unsigned char[{RSEQ_CONF_SIZE}]")
        addr = int(self.ffi.cast("uintptr_t", buf))
        r = self.lib.rn_ptrace(K.PTRACE_GET_RSEQ_CONFIGURATION, tid, RSEQ_CONF_SIZE, addr)
        if r < 0:
            return None
        ptr, size = struct.unpack_from("<QI", bytes(self.ffi.buffer(buf)))
        return (ptr, size) if ptr and size else None

    # ---- one injected call, without a session (launch --no-vdso)
    def call_at(self, tid: int, base: Any, rip: int, nr: int, *args: int) -> int:
        """Run syscall NR(ARGS) in stopped thread tid from registers BASE with rip on a
        `syscall` instruction; return its signed result (-errno on failure).  The thread is
        left in the injected state: the caller puts its registers back."""
        call = self.ffi.new("struct rn_call *")
        call.regs = base[0]
        call.regs.rip = rip
        call.regs.orig_rax = MASK64
        call.regs.rax = nr
        for reg, a in zip(_ARGS, (*args, 0, 0, 0, 0, 0, 0)[:6], strict=True):
            setattr(call.regs, reg, a & MASK64)  # unused arguments must be 0 (prctl checks)
        self.check(self.inject(tid, call), f"injected {K.SYSCALL_NAMES.get(nr, nr)}", tid)
        return signed(call.result)
