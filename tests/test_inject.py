"""Remote syscalls against real targets: restart semantics, untouched state, threads, signals.

Each test starts a target from csrc/targets, stops it with remap.attach, injects, detaches, and
then looks at the kernel's own files (/proc/PID/{syscall,status,maps,mem}) and at what the
target itself prints to see that it continued exactly as if nothing happened.
"""

from __future__ import annotations

import errno
import hashlib
import os
import select
import socket
import time

import pytest
from helpers import maps_text, status, syscall_words, wait_until

from remap import gadget, inject
from remap import kconst as K
from remap.errors import UsageError

RESTART = {  # mode of block_syscall -> the code the kernel shows while it is interrupted
    "read": K.ERESTARTSYS,
    "accept": K.ERESTARTSYS,
    "futex": K.ERESTARTSYS,
    "pause": K.ERESTARTNOHAND,
    "poll": K.ERESTART_RESTARTBLOCK,  # poll always arms a restart_block on this kernel
    "nanosleep": K.ERESTART_RESTARTBLOCK,
    "clock_nanosleep": K.ERESTART_RESTARTBLOCK,
    "futex_timeout": K.ERESTART_RESTARTBLOCK,
}
SLEEP_MS = 800


def readline(t, timeout: float = 5.0) -> str:
    """One line from the target's stdout, with a timeout (never hang a test)."""
    fd = t.proc.stdout.fileno()  # byte by byte on the fd: no buffer hides a line from select
    deadline = time.monotonic() + timeout
    out = b""
    while not out.endswith(b"\n"):
        r, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert r, f"target {t.path.name} printed no full line within {timeout}s: {out!r}"
        c = os.read(fd, 1)
        assert c, f"target {t.path.name} closed stdout: {out!r}"
        out += c
    return out.decode().strip()


def syscall_file(pid: int, tid: int | None = None) -> str:
    """/proc/PID/task/TID/syscall as one line of words (the main thread's without TID)."""
    return " ".join(syscall_words(pid, tid))


def wait_syscall(pid: int, tid: int | None = None, timeout: float = 2.0) -> str:
    """/proc/.../syscall once the thread is blocked in a syscall again (not "running")."""
    return wait_until(
        f"thread {tid or pid} blocked in a syscall",
        lambda: (line := syscall_file(pid, tid)) != "running" and line,
        timeout,
    )


def same_blocked_call(before: str, after: str, code: int) -> bool:
    """Identical, or (for -ERESTART_RESTARTBLOCK) the kernel's restart_syscall with the same
    arguments, stack and pc -- exactly what any signal interruption leaves behind."""
    if before == after:
        return True
    b, a = before.split(), after.split()
    return (
        code == K.ERESTART_RESTARTBLOCK
        and a[0] == str(K.SYSCALLS["restart_syscall"])
        and (a[1:] == b[1:])
    )


def signal_state(pid: int) -> dict[int, dict[str, str]]:
    keys = ("SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")  # SigQ is per user, not ours
    out = {}
    for tid in sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")):
        st = status(pid, tid)
        out[tid] = {k: st[k] for k in keys}
    return out


def mapping_hashes(pid: int) -> dict[str, str]:
    """sha256 of every readable mapping's bytes (read through /proc/PID/mem)."""
    out = {}
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        for m in gadget.read_maps(pid):
            if "r" not in m.perms or m.path in ("[vvar]", "[vsyscall]", "[vvar_vclock]"):
                continue
            try:
                data = os.pread(fd, m.end - m.start, m.start)
            except OSError:
                continue
            out[f"{m.start:x} {m.path}"] = hashlib.sha256(data).hexdigest()
    finally:
        os.close(fd)
    return out


def start_blocked(spawn, mode: str):
    t = spawn("block_syscall", "default", mode, str(SLEEP_MS))
    first = readline(t)
    port = int(first.split()[1]) if mode == "accept" else 0
    if port:
        readline(t)
    t.wait_blocked()
    time.sleep(0.05)
    return t, port


def finish_blocked(t, mode: str, port: int) -> str:
    if mode in ("read", "poll"):
        t.proc.stdin.write(b"x")
        t.proc.stdin.flush()
    elif mode in ("pause", "futex"):
        os.kill(t.pid, K.SIGUSR1)
    elif mode == "accept":
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    return readline(t)


@pytest.mark.parametrize("inject_calls", [True, False], ids=["injected", "attach-only"])
@pytest.mark.parametrize("mode", list(RESTART))
def test_blocked_syscall_continues_exactly(spawn, mode, inject_calls):
    t, port = start_blocked(spawn, mode)
    before = syscall_file(t.pid)
    sig_before = signal_state(t.pid)
    t0 = time.monotonic()
    with inject.attach(t.pid) as s:
        assert s.regs()["rax"] - (1 << 64) == -RESTART[mode]
        if inject_calls:  # the single call last: it leaves the thread in a syscall-exit stop
            assert s.syscalls([("getpid",), ("gettid",)]) == [t.pid, t.pid]
            assert s.syscall("getpid") == t.pid
    after = wait_syscall(t.pid)
    assert same_blocked_call(before, after, RESTART[mode]), (before, after)
    assert signal_state(t.pid) == sig_before
    line = finish_blocked(t, mode, port)
    fields = dict(kv.split("=") for kv in line.split()[1:])
    if mode in ("nanosleep", "clock_nanosleep", "futex_timeout"):
        # an interrupted sleep still lasts as long as asked (restart_block kept its deadline)
        assert SLEEP_MS <= int(fields["ms"]) < SLEEP_MS + 400, line
        assert time.monotonic() - t0 < SLEEP_MS / 1000 + 0.4
        want_ret = "-1" if mode == "futex_timeout" else "0"
        assert fields["ret"] == want_ret and fields["errno"] in ("0", str(errno.ETIMEDOUT))
    elif mode == "pause":
        assert fields["ret"] == "-1" and fields["errno"] == str(errno.EINTR)  # NOHAND -> EINTR
        assert fields["usr1"] == "1"
    elif mode == "read":
        assert fields["ret"] == "1" and fields["byte"] == str(ord("x"))
    else:
        assert int(fields["ret"]) >= 0, line


def test_futex_pi_erestartnointr_in_a_thread(spawn):
    t = spawn("inject_threads", "default", "futex_pi")
    tid = int(readline(t).split()[1])
    futex = str(K.SYSCALLS["futex"])
    wait_until("waiter blocked in futex", lambda: syscall_words(t.pid, tid)[0] == futex, 3)
    time.sleep(0.02)
    before = syscall_file(t.pid, tid)
    with inject.attach(t.pid) as s:
        assert tid in s.threads
        assert s.regs(tid)["rax"] - (1 << 64) == -K.ERESTARTNOINTR
        assert s.syscalls([("gettid",)], tid=tid) == [tid]
        assert s.syscall("gettid", tid=tid) == tid
    assert wait_syscall(t.pid, tid) == before
    t.proc.stdin.write(b"go\n")
    t.proc.stdin.flush()
    assert readline(t).startswith("locked ret=0 ")


def test_state_identical_and_no_byte_patched(spawn):
    t, _ = start_blocked(spawn, "read")
    maps0, sig0, sys0, mem0 = (
        maps_text(t.pid),
        signal_state(t.pid),
        syscall_file(t.pid),
        mapping_hashes(t.pid),
    )
    with inject.attach(t.pid) as s:
        rw = K.PROT_READ | K.PROT_WRITE
        addr = s.mmap(0, 2 * K.PAGE_SIZE, rw, K.MAP_PRIVATE | K.MAP_ANONYMOUS)
        s.write(addr, b"remap" * 1000)
        assert s.read(addr + 5, 10) == b"remapremap"
        new = s.mremap(addr, 2 * K.PAGE_SIZE, 3 * K.PAGE_SIZE, K.MREMAP_MAYMOVE)
        s.mprotect(new, K.PAGE_SIZE, K.PROT_READ)
        s.madvise(new, 3 * K.PAGE_SIZE, K.MADV_DONTNEED)
        assert s.read(new, 5) == b"\0" * 5
        s.write(new, b"ro")  # read-only page: falls back to /proc/PID/mem
        assert s.read(new, 2) == b"ro"
        s.munmap(new, 3 * K.PAGE_SIZE)
        assert s.syscalls([("getpid",)] * 300) == [t.pid] * 300
        # borrow some bytes of the target's own stack below its rsp, restored on exit
        rsp = s.regs()["rsp"]
        with s.borrow(rsp - 256, b"\xcc" * 64):
            assert s.read(rsp - 256, 64) == b"\xcc" * 64
        assert s.stopped_ns > 0 and s.threads == [t.pid]
    # (the stack bytes below rsp were read before and after: the borrow put them back)
    assert maps_text(t.pid) == maps0
    assert signal_state(t.pid) == sig0
    assert wait_syscall(t.pid) == sys0
    assert mapping_hashes(t.pid) == mem0
    assert finish_blocked(t, "read", 0).startswith("read ret=1 ")


def test_syscall_errors_and_names(spawn):
    t, _ = start_blocked(spawn, "read")
    with inject.attach(t.pid) as s:
        with pytest.raises(OSError) as e:
            s.syscall("close", -1 & 0xFFFFFFFF)
        assert e.value.errno == errno.EBADF
        with pytest.raises(UsageError):
            s.syscall("no_such_syscall")
        assert s.syscall(K.SYSCALLS["getppid"]) == os.getpid()
        assert s.syscall("getuid") == os.getuid()  # name from python-ptrace's table
        with pytest.raises(inject.BatchError) as be:
            s.syscalls([("getpid",), ("close", 12345), ("getpid",)])
        assert be.value.index == 1 and be.value.results == [t.pid]
        assert be.value.errno == errno.EBADF
    assert finish_blocked(t, "read", 0).startswith("read ret=1 ")


def test_resume_regs_and_sigmask_take_effect(spawn):
    t, _ = start_blocked(spawn, "read")
    with inject.attach(t.pid) as s:
        regs = s.regs()
        s.syscall("getpid")
        assert s.regs() == regs  # the resume copy is not what injection ran with
        # make the blocked read return -EINTR instead of restarting
        s.set_resume_regs(None, {"rax": -errno.EINTR})
        s.set_resume_sigmask(None, s.sigmask() | 1 << (K.SIGUSR2 - 1))
    assert readline(t).startswith(f"read ret=-1 errno={errno.EINTR} ")
    with open(f"/proc/{t.pid}/status") as f:
        blk = next(int(x.split()[1], 16) for x in f if x.startswith("SigBlk"))
    assert blk & 1 << (K.SIGUSR2 - 1)


def test_use_gadget_switches_to_another_syscall_instruction(spawn):
    t, _ = start_blocked(spawn, "read")
    vdso = [g for g in gadget.candidates(t.pid) if g.path == "[vdso]"]
    assert vdso, "this kernel's vdso has a syscall instruction"
    with inject.attach(t.pid) as s:
        first = s.gadget
        s.use_gadget(vdso[0].addr)
        assert s.syscall("getpid") == t.pid
        assert s.gadget != first
    assert finish_blocked(t, "read", 0).startswith("read ret=1 ")


def test_exception_in_block_restores_and_detaches(spawn):
    t, _ = start_blocked(spawn, "read")
    sys0, maps0 = syscall_file(t.pid), maps_text(t.pid)
    with pytest.raises(KeyboardInterrupt), inject.attach(t.pid) as s:
        s.syscalls([("getpid",)])  # maps the scratch page
        assert maps_text(t.pid) != maps0
        raise KeyboardInterrupt
    assert maps_text(t.pid) == maps0
    assert wait_syscall(t.pid) == sys0
    assert status(t.pid)["TracerPid"] == "0"
    assert finish_blocked(t, "read", 0).startswith("read ret=1 ")


def counts(t) -> list[int]:
    t.proc.stdin.write(b"?\n")
    t.proc.stdin.flush()
    line = readline(t)
    assert line.startswith("counts ")
    return [int(x) for x in line.split()[1:]]


def test_threads_created_during_seize_are_all_stopped(spawn):
    t = spawn("inject_threads", "default", "spawn", "4")
    assert readline(t) == "ready 4"
    c0 = counts(t)
    for _ in range(5):
        with inject.attach(t.pid) as s:
            tids = {int(x) for x in os.listdir(f"/proc/{t.pid}/task")}
            assert tids == set(s.threads)
            for tid in tids:
                with open(f"/proc/{t.pid}/task/{tid}/stat") as f:
                    assert f.read().rsplit(")", 1)[1].split()[0] == "t", tid
            assert s.syscall("getpid") == t.pid
            worker = s.threads[1]
            assert s.syscall("gettid", tid=worker) == worker
    time.sleep(0.1)
    c1 = counts(t)
    assert all(b > a for a, b in zip(c0, c1, strict=True)), (c0, c1)


def test_signal_handler_every_millisecond_keeps_working(spawn):
    t = spawn("inject_alarm")
    assert readline(t) == "ready"

    def ticks() -> tuple[int, int]:
        t.proc.stdin.write(b"?\n")
        t.proc.stdin.flush()
        f = readline(t).split()
        return int(f[1]), int(f[3])

    time.sleep(0.05)
    k0, l0 = ticks()
    with open(f"/proc/{t.pid}/status") as f:
        cgt = next(x for x in f if x.startswith("SigCgt"))
    for _ in range(20):
        with inject.attach(t.pid) as s:
            for _ in range(20):
                assert s.syscall("getpid") == t.pid
            assert s.syscalls([("getpid",)] * 50) == [t.pid] * 50
    time.sleep(0.1)
    k1, l1 = ticks()
    assert k1 - k0 > 50 and l1 > l0, (k0, k1, l0, l1)
    with open(f"/proc/{t.pid}/status") as f:
        assert next(x for x in f if x.startswith("SigCgt")) == cgt
    assert t.proc.poll() is None


@pytest.mark.parametrize("mode", ["read", "pause", "nanosleep", "futex_timeout"])
def test_staying_attached_restarts_exactly(spawn, mode):
    """run() resumes the target while still traced (PTRACE_CONT, no detach wake-up to help):
    the interrupted call must restart (or become EINTR) exactly as after a detach."""
    t, port = start_blocked(spawn, mode)
    before = syscall_file(t.pid)
    t0 = time.monotonic()
    with inject.attach(t.pid) as s:
        assert s.syscall("getpid") == t.pid  # leaves the thread in a syscall-exit stop
        s.run(0.1)
        assert same_blocked_call(before, syscall_file(t.pid), RESTART[mode])
        assert s.regs()["rax"] - (1 << 64) == -RESTART[mode]
        assert s.syscall("getpid") == t.pid
    line = finish_blocked(t, mode, port)
    fields = dict(kv.split("=") for kv in line.split()[1:])
    if mode in ("nanosleep", "futex_timeout"):
        assert SLEEP_MS <= int(fields["ms"]) < SLEEP_MS + 400, line
        assert time.monotonic() - t0 < SLEEP_MS / 1000 + 0.4
    elif mode == "pause":
        assert (fields["ret"], fields["errno"]) == ("-1", str(errno.EINTR))
    else:
        assert fields["ret"] == "1", line


def test_run_forwards_signals_while_attached(spawn):
    t = spawn("inject_alarm")
    assert readline(t) == "ready"
    with inject.attach(t.pid) as s:
        s.syscalls([("getpid",)])
        with open(f"/proc/{t.pid}/status") as f:
            st0 = f.read()
        s.run(0.2)
        assert s.syscall("getpid") == t.pid
        with open(f"/proc/{t.pid}/status") as f:
            st1 = f.read()
        assert "TracerPid:\t0" not in st1
    t.proc.stdin.write(b"?\n")
    t.proc.stdin.flush()
    ticks = int(readline(t).split()[1])
    assert ticks > 100, (ticks, st0)  # ~1 per ms, including the 0.2 s it ran attached


def test_ignored_sigtrap_stays_ignored_through_a_batch(spawn):
    """The stub ends with a marker signal, not int3 (which would reset an ignored SIGTRAP to
    SIG_DFL): a batch runs through the stub and leaves every disposition as it was."""
    t = spawn("block_syscall", "default", "read", "0", "igntrap")
    readline(t)
    t.wait_blocked()
    sig0, maps0 = signal_state(t.pid), maps_text(t.pid)
    assert int(sig0[t.pid]["SigIgn"], 16) & 1 << (K.SIGTRAP - 1)
    with inject.attach(t.pid) as s:
        assert s.syscalls([("getpid",), ("gettid",)]) == [t.pid, t.pid]
        assert maps_text(t.pid) != maps0  # the stub ran from its scratch page
    assert maps_text(t.pid) == maps0
    assert signal_state(t.pid) == sig0
    assert finish_blocked(t, "read", 0).startswith("read ret=1 ")


def test_process_madvise_from_outside(spawn):
    t, _ = start_blocked(spawn, "read")
    m = next(m for m in gadget.read_maps(t.pid) if m.path == str(t.path))
    n = inject.process_madvise(t.pid, m.start, m.end - m.start, K.MADV_COLD)
    assert n == m.end - m.start
    assert finish_blocked(t, "read", 0).startswith("read ret=1 ")


def test_chain_moves_onto_the_blocked_page_found_at_the_stop(spawn):
    """plan() reads the blocked pages from /proc before the stop; a thread running at that
    instant leaves none and the chain's `syscall; ret` may lie on a page the squeeze drops
    (EnergyMech: musl's res_msend cleanup, refaulted by the session's own last calls, 2 runs
    in 8).  Right after the stop the registers are exact and the chain moves onto the page the
    thread is blocked in; calls through it work and the blocked read still completes."""
    from remap.inject import setup

    t, _ = start_blocked(spawn, "read")
    maps = gadget.read_maps(t.pid)
    with inject.attach(t.pid) as s:
        blocked = (s.regs()["rip"] - 2) & ~(K.PAGE_SIZE - 1)
        code = s.chain.code
        assert code.syscall_ret & ~(K.PAGE_SIZE - 1) == blocked  # plan() saw it blocked
        exe = [m for m in maps if m.path == str(t.path) and "x" in m.perms]
        pages = {a for m in exe for a in range(m.start, m.end, K.PAGE_SIZE)} - {blocked}
        other = gadget.syscall_ret_in(t.pid, maps, pages)
        assert other is not None
        # what plan() picks when the thread was running as it read /proc: the first in the text
        s.chain.code = gadget.Chain(other[0], code.restorer, (other[1], code.paths[1]))
        setup.prefer_blocked_chain(s)
        assert s.chain.code.syscall_ret & ~(K.PAGE_SIZE - 1) == blocked
        assert any("chain moved" in n for n in s.notes)
        assert s.syscall("getpid") == t.pid
    assert finish_blocked(t, "read", 0).startswith("read ret=1 ")
