"""remap.attach refuses what it cannot inject into safely, in one line, leaving the target as is."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from helpers import NOBODY, ROOT, state, status, wait_until

from remap import inject, targets
from remap.errors import (
    AlreadyTraced,
    NoSuchProcess,
    UnsupportedTarget,
    ZombieProcess,
)


def untouched(pid: int, before: dict[str, str]) -> None:
    # a restarted call may be running for an instant
    now = wait_until(
        f"process {pid} back in state {before['State']}",
        lambda: (st := status(pid))["State"] == before["State"] and st,
        2,
    )
    for k in ("State", "TracerPid", "SigBlk", "SigIgn", "SigCgt", "SigPnd", "ShdPnd"):
        assert now[k] == before[k], k


def one_line(e: BaseException) -> str:
    msg = str(e)
    assert msg and "\n" not in msg
    return msg


def test_no_such_process():
    p = subprocess.Popen(["true"])
    p.wait()
    with pytest.raises(NoSuchProcess) as e, inject.attach(p.pid):
        pass
    assert str(p.pid) in one_line(e.value)


def test_zombie():
    p = subprocess.Popen(["true"])
    wait_until(f"process {p.pid} a zombie", lambda: state(p.pid) == "Z", 5)
    try:
        with pytest.raises(ZombieProcess) as e, inject.attach(p.pid):
            pass
        assert "zombie" in one_line(e.value)
    finally:
        p.wait()


def test_kernel_thread():
    with pytest.raises(UnsupportedTarget) as e, inject.attach(2):  # kthreadd
        pass
    assert "kernel thread" in one_line(e.value)


def test_already_traced(spawn):
    if not shutil.which("strace"):
        pytest.skip("strace not installed")
    t = spawn("block_syscall", "default", "read")
    t.wait_blocked()
    st = subprocess.Popen(
        ["strace", "-qq", "-e", "trace=none", "-p", str(t.pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until("strace attached", lambda: status(t.pid)["TracerPid"] != "0", 5)
        before = status(t.pid)
        with pytest.raises(AlreadyTraced) as e, inject.attach(t.pid):
            pass
        assert "already traced" in one_line(e.value)
        untouched(t.pid, before)
    finally:
        st.terminate()
        st.wait(timeout=5)


def _as_nobody(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run CODE in a Python as user nobody (setpriv), with this checkout importable."""
    return subprocess.run(
        [*NOBODY, "--", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )


def test_permission_denied_as_nobody(spawn, is_root):
    if not is_root or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to drop to nobody")
    t = spawn("block_syscall", "default", "read")
    t.wait_blocked()
    before = status(t.pid)
    code = (
        "import remap.inject as i, remap.errors as e\n"
        "try:\n"
        f"    i.preflight({t.pid})\n"
        "except e.AccessDenied as x:\n"
        "    print('DENIED', x)\n"
    )
    res = _as_nobody(code)
    assert res.stdout.startswith("DENIED permission denied"), res.stdout + res.stderr
    untouched(t.pid, before)


def test_32bit_target(spawn):
    t = spawn("inject_i386")
    t.wait_blocked()
    before = status(t.pid)
    with pytest.raises(UnsupportedTarget) as e, inject.attach(t.pid):
        pass
    assert "32-bit" in one_line(e.value)
    untouched(t.pid, before)


def test_seccomp_filter_refused_then_suspended(spawn, is_root):
    t = spawn("inject_seccomp")
    assert t.proc.stdout.readline() == b"ready\n"
    t.wait_blocked()
    before = status(t.pid)
    assert before["Seccomp"] == "2"
    with pytest.raises(UnsupportedTarget) as e, inject.attach(t.pid):
        pass
    assert "seccomp" in one_line(e.value)
    untouched(t.pid, before)
    if not is_root:
        return
    # with the filter suspended for the tracer, even the fatal getppid is harmless
    with inject.attach(t.pid, suspend_seccomp=True) as s:
        assert s.syscall("getppid") == os.getpid()
    untouched(t.pid, before)
    t.proc.stdin.write(b"?\n")
    t.proc.stdin.flush()
    assert t.proc.stdout.readline() == b"alive\n"


def test_ptrace_eperm_is_access_denied(spawn, is_root):
    """Refusal from ptrace itself (not preflight): attach to a process of another user as nobody."""
    if not is_root or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv")
    path = targets.build("block_syscall")
    t = spawn("block_syscall", "default", "read")
    t.wait_blocked()
    code = (
        "import remap.inject as i, remap.errors as e\n"
        f"s = i.Session({t.pid})\n"
        "try:\n"
        "    s._seize()\n"
        "except e.AccessDenied as x:\n"
        "    print('DENIED', x)\n"
    )
    res = _as_nobody(code, REMAP_BUILD_DIR=str(path.parents[1]))
    assert res.stdout.startswith("DENIED ptrace refused"), res.stdout + res.stderr
    assert status(t.pid)["TracerPid"] == "0"
