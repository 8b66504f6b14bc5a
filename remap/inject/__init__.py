"""Remote syscalls: stop a live process, run syscalls inside it, leave it exactly as it was.

The lifecycle reads in the names: preflight -> seize -> inject -> cure (restore + detach)::

    with remap.attach(pid) as s:
        addr = s.mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
        s.write(addr, b"hello")
        s.munmap(addr, 4096)
        s.syscalls([("getpid",), ("gettid",)])     # one trip through the batch stub

Preconditions and guarantees (tests/test_inject.py, tests/test_never_harm_inject.py and
tests/test_torture.py check them on real targets):
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
- before the first call a *safety frame* is written in dead stack below the thread's rsp - RED_ZONE
  (inside the resident page holding rsp - RED_ZONE when it fits, so nothing is faulted in): an
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
Modules: abi (pure ABI helpers: frames, rewinding, the batch table), ptrace (the one typed
ptrace layer and its errno map), preflight (refusals and /proc facts), interrupts (SIGINT/
SIGTERM held during an operation), threads (stopping, saved state vs control), chain (the
safety chain chosen once per session), scratch (the scratch area), pinning (CPU pinning),
memory (raw target memory), batch (the batch stub), session (Session and attach).
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

from .abi import (
    MASK64,
    REFUSED_SYSCALLS,
    build_frame,
    encode,
    fp_area,
    frame_spot,
    free_gap,
    interrupted,
    refuse_unsafe,
    rewound,
    slot_size,
    syscall_name,
    syscall_number,
)
from .batch import BatchError
from .interrupts import _Interrupts
from .preflight import preflight
from .session import TIMEOUT_S, Session, attach, guardian_pid, process_madvise

_slot_size = slot_size  # the name tests/test_never_harm_inject.py knows

__all__ = [
    "MASK64",
    "REFUSED_SYSCALLS",
    "TIMEOUT_S",
    "BatchError",
    "Session",
    "_Interrupts",
    "attach",
    "build_frame",
    "encode",
    "fp_area",
    "frame_spot",
    "free_gap",
    "guardian_pid",
    "interrupted",
    "preflight",
    "process_madvise",
    "refuse_unsafe",
    "rewound",
    "slot_size",
    "syscall_name",
    "syscall_number",
]
