"""Torture: drive sessions against a real worker and kill, interrupt or disturb the driver and
the target at random instants; afterwards the worker must be exactly as healthy as before.

Why a forked driver: the thing under test is what a *killed* remap leaves behind, so the
driver must be a separate process that can die at any instruction.  Forking this (already
imported) process costs ~1 ms where starting Python costs ~100 ms, which is what makes
hundreds of kills per minute possible.  The child runs :func:`session_loop` until it dies.

Health (see :func:`health`): every thread running (not stopped, not traced: TracerPid 0),
the signal mask and CPU affinity of every thread as before, no anonymous executable mapping
(the scratch code page), the 1 MiB anonymous buffer hashing the same, and correct answers
(which depend on that buffer and on the FP rounding mode the worker set).

Example::

    w = start_worker(targets.build("torture_worker"), ["alarm"])
    figures = storm(w, kills=50, sig=signal.SIGKILL)     # {'sessions': ..., 'failures': [...]}
    w.stop()
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import random
import select
import signal
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import inject, native, procfs
from . import kconst as K
from .errors import RemapError, UnsafeStep

CHECK_TIMEOUT_S = 2.0
# (n + 1) / 3 is inexact for these: rounded downward (the worker's mode) it differs from the
# default round-to-nearest in the last digit, so a wiped FP state shows in the answer
QUERIES = (7, 10, 13, 1000000)


# ------------------------------------------------------------------------------ the worker
@dataclass
class Worker:
    """A running torture_worker and what it looked like before anything happened to it."""

    proc: subprocess.Popen
    pid: int
    buf: int
    buflen: int
    modes: list[str]
    baseline: dict[str, Any] = field(default_factory=dict)
    asked: int = 0

    def ask(self, n: int, timeout: float = CHECK_TIMEOUT_S) -> str:
        """Send N, return the answer line ("" if none came within timeout)."""
        assert self.proc.stdin and self.proc.stdout
        self.asked += 1
        try:
            self.proc.stdin.write(f"{n}\n".encode())
            self.proc.stdin.flush()
        except OSError:
            return ""
        fd = self.proc.stdout.fileno()
        if not select.select([fd], [], [], timeout)[0]:
            return ""
        return self.proc.stdout.readline().decode().strip()

    def stop(self) -> int | None:
        """Close stdin (the worker exits 0 on EOF), reap it; kill it if it does not go."""
        with contextlib.suppress(OSError):
            if self.proc.stdin:
                self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None
        finally:
            if self.proc.stdout:
                self.proc.stdout.close()


def start_worker(path: Path | str, modes: list[str] | tuple[str, ...] = ()) -> Worker:
    """Start the worker, wait for its "ready" line, take the baseline."""
    proc = subprocess.Popen(
        [str(path), *modes], stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True
    )
    assert proc.stdout
    if not select.select([proc.stdout.fileno()], [], [], 5.0)[0]:
        proc.kill()
        proc.wait()
        raise RemapError(f"torture worker {path} did not start")
    _, pid, buf, n = proc.stdout.readline().decode().split()
    w = Worker(proc, int(pid), int(buf, 16), int(n), list(modes))
    _wait_sleeping(w.pid, CHECK_TIMEOUT_S)
    w.baseline = {
        "hash": buffer_hash(w),
        "masks": _mask(w.pid),
        "cpus": _thread_field(w.pid, "Cpus_allowed_list", main_only=True),
        "answers": {n: _stable(w.ask(n)) for n in QUERIES},
        "ticks": _ticks(w.ask(7)),
    }
    return w


def _stable(answer: str) -> str:
    """The part of an answer that must never change (N, SUM, Q; not the tick count)."""
    return " ".join(answer.split()[:3])


def _ticks(answer: str) -> int:
    parts = answer.split()
    return int(parts[3]) if len(parts) == 4 else -1


def buffer_hash(w: Worker) -> str:
    return hashlib.sha256(procfs.read_mem(w.pid, w.buf, w.buflen)).hexdigest()


# What a vanished thread or process raises when its /proc files are read (remap.procfs).
_GONE = (OSError, RemapError)


def _thread_field(pid: int, name: str, main_only: bool = False) -> dict[int, int | str]:
    tids = [pid] if main_only else procfs.thread_ids(pid)
    out = {}
    for tid in tids:
        with contextlib.suppress(*_GONE):
            out[tid] = procfs.read_status(pid, tid).get(name, "")
    return out


def _mask(pid: int) -> int:
    """The main thread's blocked signals, without SIGALRM (blocked while its handler runs)."""
    blk = int(procfs.read_status(pid).get("SigBlk", 0))
    return blk & ~(1 << (K.SIGALRM - 1))


def _state(pid: int, tid: int) -> str:
    return procfs.read_stat(pid, tid).state


def _wait_sleeping(pid: int, timeout: float) -> None:
    """Wait until the main thread sleeps and nobody traces the process (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(*_GONE, IndexError):
            st = procfs.read_status(pid)
            if st.get("TracerPid") == 0 and _state(pid, pid) == "S":
                return
        time.sleep(0.001)


def health(w: Worker, *, full: bool = True, leak_ok: bool = False) -> list[str]:
    """What is wrong with the worker now (empty list: nothing).  full=False skips the hash;
    leak_ok accepts scratch areas left behind (targets whose chain lives in scratch)."""
    bad: list[str] = []
    if w.proc.poll() is not None:
        return [f"worker exited with status {w.proc.returncode}"]
    _wait_sleeping(w.pid, CHECK_TIMEOUT_S)
    try:
        for tid in procfs.thread_ids(w.pid):
            with contextlib.suppress(*_GONE):  # short-lived threads come and go
                st = procfs.read_status(w.pid, tid)
                if st.get("TracerPid", 0) != 0:
                    bad.append(f"thread {tid} still traced by {st['TracerPid']}")
                state = _state(w.pid, tid)
                if state in ("T", "t", "Z"):
                    bad.append(f"thread {tid} left in state {state}")
        if _mask(w.pid) != w.baseline["masks"]:
            bad.append(f"signal mask changed: {_mask(w.pid):#x}")
        if _thread_field(w.pid, "Cpus_allowed_list", main_only=True) != w.baseline["cpus"]:
            bad.append("CPU affinity left pinned")
        for m in procfs.read_maps(w.pid):
            if not m.path and "x" in m.perms and not leak_ok:
                bad.append(f"scratch mapping left: {m.start:x}-{m.end:x} {m.perms}")
        if full and buffer_hash(w) != w.baseline["hash"]:
            bad.append("anonymous buffer changed")
    except _GONE as e:
        bad.append(f"cannot inspect worker: {e}")
    n = QUERIES[w.asked % len(QUERIES)]
    ans, want = _stable(w.ask(n)), w.baseline["answers"][n]
    if ans != want:
        bad.append(f"wrong answer to {n}: {ans!r}, want {want!r}")
    return bad


# ------------------------------------------------------------------------------ the driver
def session_loop(
    pid: int,
    counters: Any,
    *,
    suspend_seccomp: bool = False,
    fold: bool = False,
    blocking: bool = False,
) -> None:
    """Sessions forever, each doing what remap does: single calls, scratch memory written and
    read back, a batch through the stub.  counters[0] += 1 per session, [1] += bytes checked.
    fold: squeeze and stack-fold sessions instead (remap.fold: dead stack dropped, the live
    stack relocated, pointers rewritten, then verified).
    blocking: each session ends in an injected call that blocks for a minute -- nanosleep,
    ppoll with no fds (a pause that can be injected), or a batch ending in nanosleep -- so the
    kill lands while the target sits in it (the guardian's case)."""
    pattern = bytes(range(256)) * 16
    rw, flags = K.PROT_READ | K.PROT_WRITE, K.MAP_PRIVATE | K.MAP_ANONYMOUS
    counters[2] = inject.guardian_pid()  # the storm waits for it after each kill
    while blocking:
        with inject.attach(pid, suspend_seccomp=suspend_seccomp, timeout=120) as s:
            s.syscall("getpid")
            addr = s.mmap(0, 4096, rw, flags)
            s.write(addr, struct.pack("<qq", 60, 0))  # a timespec of 60 s
            counters[0] += 1  # from here on the driver waits: this session counts
            kind = counters[0] % 3
            if kind == 0:
                s.syscall("nanosleep", addr, 0)
            elif kind == 1:
                s.syscall("ppoll", 0, 0, 0, 0, 8)
            else:
                s.syscalls([("getpid",), ("getpid",), ("getpid",), ("nanosleep", addr, 0)])
    while fold:
        from . import fold as fold_mod

        try:
            r = fold_mod.squeeze(pid) if counters[0] % 2 else fold_mod.fold(pid)
            counters[1] += r.verified_bytes
        except UnsafeStep:
            pass  # a refusal is a session too: it stopped, changed nothing, detached
        counters[0] += 1
    while True:
        with inject.attach(pid, suspend_seccomp=suspend_seccomp) as s:
            s.syscall("getpid")
            addr = s.mmap(0, 4096, rw, flags)
            s.write(addr, pattern)
            if s.read(addr, len(pattern)) != pattern:
                raise RemapError("read-back differs")
            s.syscalls([("getpid",)] * 8 + [("madvise", addr, 4096, K.MADV_DONTNEED)])
            s.munmap(addr, 4096)
        counters[0] += 1
        counters[1] += len(pattern)


def _fork_driver(
    pid: int, suspend_seccomp: bool, counters: Any, fold: bool = False, blocking: bool = False
) -> int:
    # SIGINT/SIGTERM stay blocked across the fork until the child's handlers are in place:
    # one sent early waits instead of landing in the interpreter's after-fork hooks.
    stop = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    child = os.fork()
    if child:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        return child
    code = 0  # the driver: never returns
    inject._Interrupts.busy = inject._Interrupts.pending = 0  # a fresh driver holds nothing
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        session_loop(pid, counters, suspend_seccomp=suspend_seccomp, fold=fold, blocking=blocking)
    except KeyboardInterrupt:
        code = 0
    except BaseException:
        code = 1
    os._exit(code)


# How long a driver may take to end after SIGINT/SIGTERM (its cure runs first) before it
# counts as hung.  It exits in milliseconds on a quiet machine; twice, on a 2-CPU VM also
# running a CI suite and experiments, one round in 500 took over 5 s (the driver runnable, in
# user space): the bound is for a hang, not a speed test; slowest_driver_exit_s records it.
DRIVER_EXIT_S = 20.0


def _reap(child: int, timeout: float, diag: dict | None = None) -> int:
    """Wait for the driver; SIGKILL it after timeout (then the status says so, and DIAG gets
    where the driver was stuck: its kernel wait channel, syscall and signal masks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(child, os.WNOHANG)
        if done:
            return status
        time.sleep(0.001)
    if diag is not None:
        with contextlib.suppress(*_GONE):
            st = procfs.read_status(child)
            sc = procfs.read_syscall(child)
            diag.update(
                wchan=procfs.read_wchan(child),
                syscall="running" if sc.running else str(sc.nr),
                State=st["State"],
                **{k: f"{st[k]:016x}" for k in ("SigPnd", "ShdPnd", "SigBlk", "SigCgt")},
            )
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    return -1


def guardian_of(driver: int) -> int:
    """The guardian a remap driver process started: its only child (see inject.guardian_pid).
    Tests that kill a driver wait for it (wait_gone) before judging the target's health."""
    kids = procfs.read_children(driver)
    if len(kids) != 1:
        raise RemapError(f"driver {driver} has children {kids}, want one guardian")
    return kids[0]


def wait_gone(pid: int, timeout: float) -> None:
    """Wait (bounded) until PID has exited: gone from /proc, or a zombie nobody reaped yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _state(pid, pid) in ("Z", "X"):
                return
        except (*_GONE, IndexError):
            return
        time.sleep(0.001)


class _Counters:
    """64-bit counters in a shared anonymous page (survive the driver's death): sessions,
    bytes checked, and the pid of the driver's guardian."""

    def __init__(self) -> None:
        self.m = mmap.mmap(-1, 24)

    def __getitem__(self, i: int) -> int:
        return struct.unpack_from("<Q", self.m, 8 * i)[0]

    def __setitem__(self, i: int, v: int) -> None:
        struct.pack_into("<Q", self.m, 8 * i, v)


def storm(
    w: Worker,
    kills: int,
    sig: int = signal.SIGKILL,
    *,
    max_delay_s: float = 0.03,
    seed: int | None = None,
    stop_target: bool = False,
    full_every: int = 10,
    fold: bool = False,
    leak_ok: bool = False,
    blocking: bool = False,
) -> dict[str, Any]:
    """Start a driver, send it SIG after a random delay, check the worker; KILLS times.

    fold: the driver runs fold sessions (see session_loop); blocking: sessions that end in a
    blocking injected call (the kill then mostly lands inside it).
    stop_target: also SIGSTOP the worker at a random moment of each round and SIGCONT it
    after the driver is gone (a job-control stop from outside during a session).
    Returns the figures: sessions (completed ones; each kill interrupts one more), kills,
    survived, signals_delivered (worker's SIGALRM ticks during the storm), bytes_verified,
    drivers_hung (not gone DRIVER_EXIT_S after SIGINT/SIGTERM), slowest_driver_exit_s, failures
    (one line each, at most 20).
    """
    # what a driver does once per process (the helper library, the batch stub's code, which a
    # fresh checkout assembles) is done here, inherited by every fork: a driver killed within
    # max_delay_s spent it all on that, and in a fresh worktree no session ever ran (500/500
    # "survived" a storm that injected nothing)
    native.load()
    native.stub_code()
    rng = random.Random(seed)
    counters = _Counters()
    suspend = "seccomp" in w.modes
    failures: list[str] = []
    survived = hung = 0
    slowest = 0.0  # seconds from the signal to the driver's exit, the worst round
    ticks0 = _ticks(w.ask(7))
    verified = 0
    for i in range(kills):
        child = _fork_driver(w.pid, suspend, counters, fold, blocking)
        time.sleep(rng.uniform(0, max_delay_s))
        if stop_target:
            os.kill(w.pid, signal.SIGSTOP)
            time.sleep(rng.uniform(0, 0.002))
        os.kill(child, sig)
        t_sig = time.monotonic()
        reaped = _reap(child, DRIVER_EXIT_S, diag := {})
        slowest = max(slowest, time.monotonic() - t_sig)
        if counters[2]:  # the guardian ends a blocked call, gives CPUs back, then exits
            wait_gone(counters[2], 5.0)
            counters[2] = 0
        if reaped == -1:
            hung += 1  # the driver did not end on SIGINT/SIGTERM: its cure hung
            failures.append(
                f"round {i}: driver still running {DRIVER_EXIT_S:g} s after "
                f"{signal.Signals(sig).name} ({diag})"
            )
        if stop_target:
            os.kill(w.pid, signal.SIGCONT)
        bad = health(w, full=(i % full_every == 0 or i == kills - 1), leak_ok=leak_ok)
        if bad:
            failures.append(f"round {i}: " + "; ".join(bad))
            if len(failures) >= 20:
                break
        else:
            survived += 1
        verified += w.buflen if i % full_every == 0 else 0
    ticks1 = _ticks(w.ask(7))
    return {
        "signal": signal.Signals(sig).name,
        "sessions": counters[0],
        "kills": kills,
        "survived": survived,
        "signals_delivered": max(0, ticks1 - ticks0),
        "bytes_verified": verified + counters[1],
        "drivers_hung": hung,
        "slowest_driver_exit_s": round(slowest, 3),
        "failures": failures,
    }


def target_dies(w: Worker, *, delay_s: float = 0.01) -> dict[str, Any]:
    """Kill the worker itself while a driver runs sessions on it: the driver must end (with
    a one-line 'no such process'), not hang, and leave no zombie of its own."""
    counters = _Counters()
    child = _fork_driver(w.pid, "seccomp" in w.modes, counters)
    time.sleep(delay_s)
    w.proc.kill()
    w.proc.wait(timeout=5)
    status = _reap(child, 5.0)
    return {"driver_exit": os.waitstatus_to_exitcode(status), "sessions": counters[0]}
