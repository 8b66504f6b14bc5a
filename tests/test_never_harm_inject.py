"""Never harm a target, the injection side (issue 12): PID namespaces, many threads, calls that
block, calls that cannot be injected, and a driver killed or interrupted in the middle of one.

Each test starts real programs and checks them with their own answers (an echo, a count),
their signal mask and their tracer as /proc shows them."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time

import pytest
from helpers import children, remap_cli, status, syscall_words, wait_until

from remap import inject, targets, torture
from remap.errors import UnsafeStep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def echo_ok(t, byte: bytes = b"q") -> bool:
    """The echo loop answers a byte with that byte (its own read, not an injected one)."""
    t.proc.stdin.write(byte)
    t.proc.stdin.flush()
    fd = t.proc.stdout.fileno()
    return bool(select.select([fd], [], [], 3.0)[0]) and os.read(fd, 1) == byte


# ------------------------------------------------------------------------------ PID namespace
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) not installed")
def test_batches_in_a_pid_namespace_signal_the_target_by_its_own_ids():
    """The batch stub ends with tgkill(own tgid, own tid, marker): ids the target itself gets
    from getpid/gettid, not the tracer's (which name nothing, or another process, there).
    On the old stub this waited in wait4 forever."""
    path = targets.build("echoloop")
    ns = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        wait_until("the namespace's init", lambda: _child_of(ns.pid) is not None)
        pid = _child_of(ns.pid)
        assert status(pid)["NSpid"].split() == [str(pid), "1"]
        code = (
            "import json, remap\n"
            f"with remap.attach({pid}) as s:\n"
            "    print(json.dumps([s.syscall('getpid'), s.syscalls([('getpid',)] * 5),"
            " s.syscalls([('gettid',)] * 5)]))\n"
        )
        r = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=20, cwd=ROOT
        )
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == [1, [1] * 5, [1] * 5]
        assert status(pid)["TracerPid"] == "0"
        r = remap_cli("squeeze", str(pid), "--json", timeout=30)
        assert r.returncode == 0, r.stderr
        ns.stdin.write(b"z")
        ns.stdin.flush()
        assert ns.stdout.read(1) == b"z"
    finally:
        ns.kill()
        ns.wait(timeout=5)


def _child_of(ppid: int) -> int | None:
    try:
        kids = children(ppid)
    except OSError:
        return None
    return kids[0] if kids else None


# ------------------------------------------------------------------------------ many threads
def test_many_threads_are_squeezed_again_and_again(spawn):
    """More threads than the old fixed number of scratch slots for safety frames: the old code
    gave up the chain in the middle of moving frames and died with an AttributeError (exit 70)
    from the second squeeze on.  Now every squeeze exits 0 and every worker keeps counting."""
    t = spawn("inject_threads", "default", "spawn", "12")
    assert t.proc.stdout.readline().split() == [b"ready", b"12"]
    counts0 = _counts(t)
    for _ in range(4):
        r = remap_cli("squeeze", str(t.pid), "--json", timeout=60)
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)
        assert not any("unprotected" in n for n in report["notes"]), report["notes"]
    counts1 = _counts(t)
    assert len(counts1) == len(counts0) == 12
    assert all(b > a for a, b in zip(counts0, counts1, strict=True))  # every thread still runs
    assert status(t.pid)["TracerPid"] == "0"


def _counts(t) -> list[int]:
    t.proc.stdin.write(b"\n")
    t.proc.stdin.flush()
    line = t.proc.stdout.readline().decode().split()
    assert line[0] == "counts", line
    return [int(x) for x in line[1:]]


def test_slot_size_holds_any_frame():
    assert inject._slot_size(1000) == 2048
    assert inject._slot_size(2048 - 64) == 2048
    assert inject._slot_size(3008) == 4096
    assert inject._slot_size(11_000) == 12_288  # AMX-sized XSAVE areas take whole pages


# ------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("name", ["pause", "vfork", "fork", "clone", "execve", "exit_group"])
def test_calls_that_would_harm_are_refused_before_the_stop(spawn, name):
    t = spawn("echoloop")
    t.wait_blocked()
    switches = status(t.pid)["voluntary_ctxt_switches"]
    r = remap_cli("syscall", str(t.pid), name)
    assert r.returncode == 6, r.stderr
    assert r.stderr.count("\n") == 1 and f"refusing to inject {name}" in r.stderr
    assert status(t.pid)["voluntary_ctxt_switches"] == switches  # never even woken
    assert echo_ok(t)


def test_refusals_from_python_touch_nothing(spawn):
    t = spawn("echoloop")
    t.wait_blocked()
    with inject.attach(t.pid) as s:
        with pytest.raises(UnsafeStep, match="vfork"):
            s.syscall("vfork")
        with pytest.raises(UnsafeStep, match="fork"):
            s.syscalls([("getpid",)] * 4 + [("fork",)])  # refused before the first call runs
        assert not s._threads[t.pid].ran
    assert echo_ok(t)


# ------------------------------------------------------------------------------ blocking calls
def test_a_call_that_never_returns_times_out_and_the_target_is_put_back(spawn):
    t = spawn("echoloop")
    t.wait_blocked()
    mask = status(t.pid)["SigBlk"]
    t0 = time.monotonic()
    r = remap_cli("syscall", str(t.pid), "read", "0", "0", "1", "--timeout", "0.5")
    assert r.returncode == 9, r.stderr
    assert time.monotonic() - t0 < 5
    assert "did not return within 0.5 s" in r.stderr and r.stderr.count("\n") == 1
    assert status(t.pid)["SigBlk"] == mask and status(t.pid)["TracerPid"] == "0"
    assert syscall_words(t.pid)[0] == "0"  # back in its own read
    assert echo_ok(t)  # the injected read took no byte of its input
    for bad in ("0", "-1", "nan"):
        assert remap_cli("syscall", str(t.pid), "getpid", "--timeout", bad).returncode == 2


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_aborts_a_blocking_call(spawn, sig):
    t = spawn("echoloop")
    t.wait_blocked()
    mask = status(t.pid)["SigBlk"]
    drv = subprocess.Popen(
        [sys.executable, "-m", "remap", "syscall", str(t.pid), "read", "0", "0", "1"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until("the injected read", lambda: _in_injected_read(t.pid, drv.pid))
        t0 = time.monotonic()
        drv.send_signal(sig)
        rc = drv.wait(timeout=5)
        assert time.monotonic() - t0 < 3
        assert rc != 0
    finally:
        if drv.poll() is None:
            drv.kill()
            drv.wait()
        drv.stderr.close()
    assert status(t.pid)["SigBlk"] == mask and status(t.pid)["TracerPid"] == "0"
    assert echo_ok(t)


def _in_injected_read(pid: int, tracer: int) -> bool:
    try:
        traced = status(pid)["TracerPid"] == str(tracer)
        line = syscall_words(pid)
    except (OSError, KeyError):
        return False
    return traced and line[:4] == ["0", "0x0", "0x0", "0x1"]


@pytest.mark.parametrize("variant", ["default", "bare"])
def test_driver_killed_inside_a_blocking_call(variant):
    """SIGKILL to the driver while the target sits in an injected read that nobody answers:
    the guardian (a process of the driver's) interrupts that read once the driver is gone,
    the safety chain takes the thread home, and the worker answers right with its own mask.
    (bare: a static program whose chain lives in scratch, which a kill leaves behind.)"""
    w = torture.start_worker(targets.build("torture_worker", variant), [])
    try:
        for _ in range(12):
            drv = subprocess.Popen(
                [sys.executable, "-m", "remap", "syscall", str(w.pid), "read", "0", "0", "1"],
                cwd=ROOT,
                stderr=subprocess.DEVNULL,
            )
            wait_until("the injected read", lambda d=drv: _in_injected_read(w.pid, d.pid))
            guardian = torture.guardian_of(drv.pid)
            drv.kill()
            drv.wait(timeout=5)
            torture.wait_gone(guardian, 5.0)  # it ends the blocked call, then exits
            assert torture.health(w, leak_ok=variant == "bare") == []
            wait_until("its own read again", lambda: syscall_words(w.pid)[0] == "0")
    finally:
        w.stop()


def test_torture_kills_during_blocking_calls():
    """The torture storm with every session ending in a blocking call (nanosleep, ppoll, a
    batch ending in nanosleep): 200 SIGKILLs at random instants, every one survived."""
    w = torture.start_worker(targets.build("torture_worker"), [])
    try:
        fig = torture.storm(w, 200, signal.SIGKILL, seed=200, blocking=True, max_delay_s=0.1)
    finally:
        w.stop()
    assert fig["failures"] == [], fig["failures"]
    assert fig["survived"] == 200 and fig["sessions"] > 0


# ------------------------------------------------------------------------------ mount namespace
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) not installed")
def test_a_process_in_another_mount_namespace_is_read_through_its_own_root(tmp_path):
    """Its executable lives on a tmpfs only its namespace sees: remap reads the ELF through
    /proc/PID/root (sections and symbols found), squeezes it, and the program still works."""
    prog = targets.build("glibcloop")
    mnt = tmp_path / "private"
    mnt.mkdir()
    script = f"mount -t tmpfs none {mnt} && cp {prog} {mnt}/prog && exec {mnt}/prog"
    p = subprocess.Popen(
        ["unshare", "--mount", "sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert p.stdout.readline().startswith(b"ready")
        assert not (mnt / "prog").exists()  # not in our namespace
        r = remap_cli("map", str(p.pid), "--json")
        assert r.returncode == 0, r.stderr
        exe = [v for v in json.loads(r.stdout)["vmas"] if v.get("path") == f"{mnt}/prog"]
        assert {"code", "rodata"} <= {v["label"] for v in exe}, exe
        r = remap_cli("squeeze", str(p.pid), "--json")
        assert r.returncode == 0, r.stderr
        p.stdin.write(b"x\n")  # it reads on, back in its own read, alive
        p.stdin.flush()
        wait_until("its read", lambda: syscall_words(p.pid)[0] == "0")
        assert p.poll() is None and status(p.pid)["TracerPid"] == "0"
    finally:
        p.kill()
        p.wait(timeout=5)
