"""What a session decides before the process is stopped (file and /proc reads only, so the
stop stays short): which safety chain (chain.py) and gadget to use, the batch marker signal,
and the waits' deadline and guardian.  Chosen once here, like rr's AutoRemoteSyscalls picks
its path in its constructor.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING

from .. import gadget as gadget_mod
from .. import kconst as K
from .. import native, procfs
from ..errors import RemapError
from .abi import MASK64
from .chain import Chain, ScratchChain, Unbuilt

if TYPE_CHECKING:
    from .session import Session

# Every signal blocked (the kernel ignores SIGKILL/SIGSTOP bits) except the session's batch
# marker (see MARKERS) and the synchronous fault signals: blocking those would not stop them,
# only make the kernel reset their handler when it forces them (force_sig_info_to_task).
_FAULTS = (K.SIGILL, K.SIGBUS, K.SIGFPE, K.SIGSEGV)
INJECT_SIGMASK = MASK64 & ~sum(1 << (s - 1) for s in _FAULTS)
MARKERS = (K.SIGURG, K.SIGWINCH, K.SIGCHLD)  # default action: ignore


def plan(s: Session) -> None:
    """Choose s's safety chain, find the gadget and a marker signal the target ignores.
    A target that cannot be read keeps NoChain (every call parked at once)."""
    pid = s.pid
    with contextlib.suppress(OSError, RemapError):
        maps = s._plan_maps = gadget_mod.read_maps(pid)
        s._gadget_hint = gadget_mod.find(pid)
        st = procfs.read_status(pid)
        if "shstk" in str(st.get("x86_Thread_features", "")):
            s.notes.append("unprotected: the target uses a shadow stack")
        else:
            code = gadget_mod.find_chain(pid, maps, prefer=_blocked_pages(pid))
            s.chain = Chain(s, code) if code is not None else Unbuilt(s)
        # the batch stub's code (and an Unbuilt chain's), read from disk now, not at the
        # first batch inside the stop (~0.5-1 ms, issue 15)
        native.stub_code()
        cgt = int(st.get("SigCgt", 0))
        for sig in MARKERS:
            if not cgt >> (sig - 1) & 1:
                s._marker = sig
                s._mask = INJECT_SIGMASK & ~(1 << (sig - 1))
                break
    if not s.chain.protected:
        s._t_unprotected = time.monotonic_ns()


def prefer_blocked_chain(s: Session) -> None:
    """Right after the stop, before any frame points at the chain: move the chain's `syscall;
    ret` onto a page a thread is now blocked in, when the one plan() chose lies elsewhere.

    Why: plan() reads the blocked pages from /proc before the stop; a thread that was running
    at that instant (EnergyMech woken by its 1 s send-queue timer, 2 squeezes in 8) left none,
    the first `syscall; ret` of the text was taken (musl's res_msend `cleanup`), and the
    squeeze dropped that page and faulted it straight back with its own last calls: a page of
    remap's own in the steady state (issue 17).  The stopped registers are exact: a thread in
    a syscall resumes through its `syscall` instruction, so its page stays resident anyway."""
    ch = s.chain
    maps = s._plan_maps
    if not isinstance(ch, Chain) or isinstance(ch, ScratchChain) or not maps:
        return
    pages = set()
    for t in s._threads.values():
        r = t.saved.regs if t.saved is not None else None
        if r is not None and r.orig_rax < 1 << 63:  # stopped inside a syscall
            pages.add((r.rip - 2) & ~(K.PAGE_SIZE - 1))
    if not pages or (ch.code.syscall_ret & ~(K.PAGE_SIZE - 1)) in pages:
        return
    with contextlib.suppress(OSError, RemapError):
        found = gadget_mod.syscall_ret_in(s.pid, maps, pages)
        if found is not None:
            code = ch.code
            ch.code = gadget_mod.Chain(found[0], code.restorer, (found[1], code.paths[1]))
            s.notes.append(f"chain moved to the blocked page's `syscall; ret` at {found[0]:#x}")


def _blocked_pages(pid: int) -> set[int]:
    """The pages of the `syscall` instructions PID's threads are blocked in (read before the
    stop from /proc/PID/task/TID/syscall): pages that come back when the calls resume."""
    out = set()
    for tid in procfs.thread_ids(pid):
        with contextlib.suppress(RemapError):
            sc = procfs.read_syscall(pid, tid)
            if not sc.running and sc.nr is not None and sc.nr >= 0 and sc.pc:
                out.add((sc.pc - 2) & ~(K.PAGE_SIZE - 1))
    return out


def start_guard(s: Session) -> None:
    """Bound every wait by s's deadline, let SIGINT/SIGTERM abort one, and make sure this
    driver has its guardian (csrc/native/remap_native.c): the process that ends a blocking
    injected call if the driver is killed during it."""
    lib = s._lib
    r = lib.rn_set_wait(int(s.timeout * 1e9), 1)
    if r < 0:
        s.notes.append(f"no deadline on waits: {os.strerror(-r)}")
    g = lib.rn_guard_start()
    if g < 0:
        s.notes.append(f"no guardian for blocking calls: {os.strerror(-g)}")
    s.guardian = max(g, 0)  # its pid (it lives as long as this driver process)
