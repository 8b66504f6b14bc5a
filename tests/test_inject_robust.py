"""The cure runs whatever happens: SIGTERM to the driver, a target killed mid-session, signals
sent while stopped; and the CPU pinning is undone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import ROOT, maps_text, status

from remap import inject, torture
from remap.errors import NoSuchProcess


def blocked_reader(spawn):
    t = spawn("block_syscall", "default", "read")
    assert t.proc.stdout.readline().startswith(b"ready ")
    t.wait_blocked()
    return t


def test_sigterm_to_the_driver_restores_and_detaches(spawn):
    t = blocked_reader(spawn)
    maps0 = maps_text(t.pid)
    code = (
        "import sys, time, remap\n"
        f"with remap.attach({t.pid}) as s:\n"
        "    s.syscalls([('getpid',)])\n"  # scratch page mapped
        "    print('in', flush=True)\n"
        "    time.sleep(30)\n"
    )
    drv = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert drv.stdout.readline() == b"in\n"
        assert maps_text(t.pid) != maps0
        drv.send_signal(signal.SIGTERM)
        drv.wait(timeout=10)
    finally:
        if drv.poll() is None:
            drv.kill()
            drv.wait()
        drv.stdout.close()
        drv.stderr.close()
    st = status(t.pid)
    assert st["TracerPid"] == "0" and st["State"].startswith("S")
    assert maps_text(t.pid) == maps0
    t.proc.stdin.write(b"k")
    t.proc.stdin.flush()
    assert t.proc.stdout.readline().startswith(b"read ret=1 ")


def test_target_killed_mid_session_is_reported_and_nothing_hangs(spawn):
    t = blocked_reader(spawn)
    start = time.monotonic()
    with pytest.raises(NoSuchProcess), inject.attach(t.pid) as s:
        s.syscall("getpid")
        os.kill(t.pid, signal.SIGKILL)
        t.proc.wait(timeout=5)  # reaped by us (its parent): ptrace sees it gone
        s.syscall("getpid")
    assert time.monotonic() - start < 5


def test_signal_sent_while_stopped_is_delivered_after(spawn):
    t = spawn("block_syscall", "default", "pause")
    assert t.proc.stdout.readline().startswith(b"ready ")
    t.wait_blocked()
    with inject.attach(t.pid) as s:
        os.kill(t.pid, signal.SIGUSR1)
        time.sleep(0.02)
        for _ in range(10):  # blocked during injection: no handler runs inside our calls
            assert s.syscall("getpid") == t.pid
        assert s.syscalls([("getpid",)] * 10) == [t.pid] * 10
        assert int(status(t.pid)["ShdPnd"], 16) & 1 << (signal.SIGUSR1 - 1)
    line = t.proc.stdout.readline().decode()
    assert line.startswith("pause ret=-1 errno=4 ") and "usr1=1" in line


def test_cpu_pinning_is_undone(spawn):
    """Tracer and target share one CPU while the session injects (a round trip between two
    CPUs costs several times one within one); both get their own affinity back at the cure."""
    t = blocked_reader(spawn)
    own = os.sched_getaffinity(0)
    theirs = os.sched_getaffinity(t.pid)
    with inject.attach(t.pid) as s:
        s.syscall("getpid")  # pins the tracer, then the thread, to the CPU it was stopped on
        pinned = os.sched_getaffinity(0)
        assert len(pinned) == 1 and pinned <= own
        assert os.sched_getaffinity(t.pid) == pinned
    assert os.sched_getaffinity(0) == own
    assert os.sched_getaffinity(t.pid) == theirs


def test_pinned_target_gets_its_cpus_back_when_the_driver_is_killed(spawn):
    """A SIGKILLed driver cannot undo the pin: its guardian does, once the driver is gone."""
    t = blocked_reader(spawn)
    theirs = os.sched_getaffinity(t.pid)
    code = (
        "import time, remap\n"
        f"with remap.attach({t.pid}) as s:\n"
        "    s.syscall('getpid')\n"
        "    print('in', flush=True)\n"
        "    time.sleep(30)\n"
    )
    drv = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert drv.stdout.readline() == b"in\n"
        assert len(os.sched_getaffinity(t.pid)) == 1 < len(theirs)
        guardian = torture.guardian_of(drv.pid)
        drv.kill()
        drv.wait(timeout=5)
        torture.wait_gone(guardian, 5.0)
    finally:
        if drv.poll() is None:
            drv.kill()
            drv.wait()
        drv.stdout.close()
    assert os.sched_getaffinity(t.pid) == theirs
    assert status(t.pid)["TracerPid"] == "0"
    t.proc.stdin.write(b"k")
    t.proc.stdin.flush()
    assert t.proc.stdout.readline().startswith(b"read ret=1 ")
