"""`remap syscall PID NAME ARGS...` from the shell, against a real blocked target."""

from __future__ import annotations

import json

from helpers import assert_one_line_error, remap_cli


def test_syscall_prints_result_and_errno(spawn):
    t = spawn("block_syscall", "default", "read")
    assert t.proc.stdout.readline().startswith(b"ready ")
    t.wait_blocked()
    r = remap_cli("syscall", str(t.pid), "getpid")
    assert (r.returncode, r.stdout.strip()) == (0, str(t.pid)), r.stderr
    r = remap_cli("syscall", str(t.pid), "0x27", "--json")  # 39 = getpid, as a number
    assert json.loads(r.stdout)["result"] == t.pid
    r = remap_cli("syscall", str(t.pid), "close", "0x3039", "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 1
    assert (out["syscall"], out["args"], out["errno"], out["result"]) == (
        "close",
        [12345],
        "EBADF",
        -9,
    )
    r = remap_cli("syscall", str(t.pid), "close", "12345")
    assert r.stdout.startswith("-1 EBADF")
    # the target is still blocked in its read and takes input as before
    t.wait_blocked()
    t.proc.stdin.write(b"z")
    t.proc.stdin.flush()
    assert t.proc.stdout.readline().startswith(b"read ret=1 ")


def test_syscall_errors_are_one_line(spawn):
    r = remap_cli("syscall", "4194304", "getpid")
    assert_one_line_error(r, 3)
    assert "no such process" in r.stderr
    t = spawn("block_syscall", "default", "read")
    t.wait_blocked()
    r = remap_cli("syscall", str(t.pid), "no_such_call")
    assert_one_line_error(r, 2)
    assert "unknown syscall" in r.stderr
    r = remap_cli("syscall", str(t.pid), "getpid", "zz")
    assert_one_line_error(r, 2)
    assert "not an integer" in r.stderr
