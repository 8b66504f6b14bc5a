"""`remap syscall PID NAME ARGS...` from the shell, against a real blocked target."""

from __future__ import annotations

import json
import subprocess
import sys


def remap(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "remap", *args], capture_output=True, text=True, timeout=60
    )


def test_syscall_prints_result_and_errno(spawn):
    t = spawn("block_syscall", "default", "read")
    assert t.proc.stdout.readline().startswith(b"ready ")
    t.wait_blocked()
    r = remap("syscall", str(t.pid), "getpid")
    assert (r.returncode, r.stdout.strip()) == (0, str(t.pid)), r.stderr
    r = remap("syscall", str(t.pid), "0x27", "--json")  # 39 = getpid, as a number
    assert json.loads(r.stdout)["result"] == t.pid
    r = remap("syscall", str(t.pid), "close", "0x3039", "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 1
    assert (out["syscall"], out["args"], out["errno"], out["result"]) == (
        "close",
        [12345],
        "EBADF",
        -9,
    )
    r = remap("syscall", str(t.pid), "close", "12345")
    assert r.stdout.startswith("-1 EBADF")
    # the target is still blocked in its read and takes input as before
    t.wait_blocked()
    t.proc.stdin.write(b"z")
    t.proc.stdin.flush()
    assert t.proc.stdout.readline().startswith(b"read ret=1 ")


def test_syscall_errors_are_one_line(spawn):
    r = remap("syscall", "4194304", "getpid")
    assert r.returncode == 3 and r.stderr.count("\n") == 1 and "no such process" in r.stderr
    t = spawn("block_syscall", "default", "read")
    t.wait_blocked()
    r = remap("syscall", str(t.pid), "no_such_call")
    assert r.returncode == 2 and "unknown syscall" in r.stderr
    r = remap("syscall", str(t.pid), "getpid", "zz")
    assert r.returncode == 2 and "not an integer" in r.stderr
