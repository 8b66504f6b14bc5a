"""Helpers of the real-program suite (tests/test_realprog_*.py): start programs nobody on this
project wrote, talk to them, run remap on them with a deadline, and check that they were left
alone afterwards.

Why a module of its own: every test of the suite does the same three things -- start a real
server or runtime and wait until it answers, run ``remap`` against it without ever waiting
forever, and prove from the kernel's own files that the target is detached and running -- and
each of them must be written once.  Everything here is real: real processes, real ptrace (in
the ``remap`` subprocess), real sockets on 127.0.0.1 (inside a private network namespace where
the test asks for one).
"""

from __future__ import annotations

import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import children, status, wait_until  # noqa: F401 (children: for the suite)

from remap import kconst as K
from remap import procfs

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ROOT / "csrc" / "targets"
OP_TIMEOUT = 30.0  # seconds one remap operation may take before it counts as a hang
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]


def need(*programs: str) -> None:
    """Skip the calling test when a program scripts/bootstrap.sh installs is missing, or when
    not root (attaching to another user's process, entering namespaces)."""
    if os.geteuid() != 0:
        pytest.skip("the real-program suite needs root (setpriv, unshare, ptrace of nobody)")
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (run scripts/bootstrap.sh)")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- processes
@contextmanager
def started(argv: list[str], log: Path, *, piped: bool = False) -> Iterator[subprocess.Popen]:
    """Popen(ARGV) in a session of its own, its output to LOG (with PIPED: stdin and stdout are
    pipes to the test, stderr goes to LOG); at exit the whole process group is SIGKILLed and
    the leader reaped, so no server outlives its test."""
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE} if piped else {}
    with log.open("wb") as out:
        p = subprocess.Popen(
            argv,
            stdout=pipes.get("stdout", out),
            stdin=pipes.get("stdin", subprocess.DEVNULL),
            stderr=out if piped else subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield p
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(timeout=10)
        for f in (p.stdin, p.stdout):
            if f:
                f.close()


def wait_for(what: str, probe, timeout: float = 20.0, proc: subprocess.Popen | None = None):
    """Call PROBE until it returns something true (OSError counts as "not yet") and return that;
    AssertionError naming WHAT when TIMEOUT passes or PROC exits first."""
    return wait_until(what, probe, timeout, proc, interval=0.05)


def nspid(pid: int) -> int:
    """PID as its own (innermost) PID namespace numbers it: the last NSpid field of status."""
    return int(str(procfs.read_status(pid)["NSpid"]).split()[-1])


def thread_states(pid: int) -> dict[int, tuple[int, str]]:
    """{tid: (TracerPid, state letter)} for every thread of PID, from task/TID/status."""
    out = {}
    for tid in procfs.thread_ids(pid):
        try:
            st = status(pid, tid)
        except FileNotFoundError:
            continue  # a thread that exited since the listing
        out[tid] = (int(st["TracerPid"]), st["State"][0])
    return out


def assert_released(pid: int, timeout: float = 3.0) -> None:
    """PID is alive, no thread of it is traced, and none is left stopped (t or T)."""
    deadline = time.monotonic() + timeout
    while True:
        states = thread_states(pid)
        bad = {t: s for t, s in states.items() if s[0] != 0 or s[1] in "tTZX"}
        if states and not bad:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"target {pid} not released after remap: {bad or 'no threads'}")
        time.sleep(0.02)


# --------------------------------------------------------------------------- remap with a deadline
@dataclass
class RemapRun:
    """One `remap` command line run against a target, with what it printed and how it ended."""

    argv: list[str]
    returncode: int | None  # None: still running at the deadline, SIGKILLed
    stdout: str
    stderr: str
    seconds: float

    @property
    def outcome(self) -> str:
        """'hang' or 'exit N': what a tally of many runs counts."""
        return "hang" if self.returncode is None else f"exit {self.returncode}"

    def __str__(self) -> str:
        return f"`remap {' '.join(self.argv)}`: {self.outcome} after {self.seconds:.1f} s, " + (
            f"stderr {self.stderr.strip()[-400:]!r}"
        )


def run_remap(*args: str, timeout: float = OP_TIMEOUT) -> RemapRun:
    """Run `remap ARGS...`; at TIMEOUT SIGKILL it (its whole process group) instead of waiting.

    Why: a remap that hangs must cost its test TIMEOUT seconds, never CI's whole budget, and
    the caller must still get to check the target afterwards (detached? running? data?)."""
    t0 = time.monotonic()
    p = subprocess.Popen(
        [sys.executable, "-m", "remap", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = p.communicate(timeout=timeout)
        rc: int | None = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate(timeout=10)
        rc = None
    return RemapRun(list(args), rc, out, err, time.monotonic() - t0)


def squeeze(pid: int, timeout: float = OP_TIMEOUT) -> RemapRun:
    """`remap squeeze PID --json` with a deadline, then PID checked released (detached, running)."""
    r = run_remap("squeeze", str(pid), "--json", timeout=timeout)
    assert_released(pid)
    return r


def squeezed(r: RemapRun) -> dict:
    """The JSON report of a squeeze that exited 0; AssertionError (saying how it ended) else."""
    assert r.returncode == 0, str(r)
    report = json.loads(r.stdout)
    assert report["kind"] == "squeeze" and not report["dry_run"], report
    return report


def squeezed_or_refused(r: RemapRun) -> dict | None:
    """A squeeze either succeeded (its report) or refused in one line with a non-zero exit code
    that is not 70 (internal error) -- never a hang."""
    if r.returncode == 0:
        return squeezed(r)
    assert r.returncode is not None and r.returncode != 70, str(r)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("remap: "), str(r)
    return None


# --------------------------------------------------------------------------- line-protocol programs
def read_line(proc: subprocess.Popen, timeout: float = 30.0) -> bytes:
    """One line of PROC's stdout within TIMEOUT, else AssertionError (and PROC killed, which
    is what unblocks the reading thread; the owner's `started` reaps it)."""
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(proc.stdout.readline()))
    reader.start()
    reader.join(timeout)
    if reader.is_alive() or not got or not got[0]:
        proc.kill()
        reader.join(10)
        raise AssertionError(f"target {proc.pid} gave no answer within {timeout:.0f} s")
    return got[0]


class LineProgram:
    """A target that prints one JSON "ready" line, then answers each stdin line with one JSON
    line (csrc/targets/ChecksumThreads.java, dict_threads.py): {"sum": ..., "ticks": [...]}."""

    def __init__(self, proc: subprocess.Popen, timeout: float = 60.0):
        self.proc = proc
        self.pid = proc.pid
        self.ready = self._line(timeout)
        assert self.ready.get("ready"), self.ready

    def _line(self, timeout: float) -> dict:
        return json.loads(read_line(self.proc, timeout))

    def ask(self, timeout: float = 30.0) -> dict:
        """One request, one answer (the data's checksum recomputed now, each worker's ticks)."""
        self.proc.stdin.write(b"verify\n")
        self.proc.stdin.flush()
        return self._line(timeout)


def check_squeezes_keep_data(prog: LineProgram, times: int) -> list[RemapRun]:
    """Squeeze PROG TIMES in a row; then its data must hash as at start and every worker thread
    must still tick.  Returns the runs (each one exited 0 with a JSON report)."""
    before = prog.ask()
    assert before["sum"] == prog.ready["sum"]
    runs = []
    for i in range(times):
        r = squeeze(prog.pid)
        runs.append(r)
        assert prog.proc.poll() is None, f"target died after squeeze {i + 1}: {r}"
        squeezed(r)
    time.sleep(0.5)  # let every worker tick at least once more
    after = prog.ask()
    assert after["sum"] == prog.ready["sum"], (after["sum"], prog.ready["sum"])
    stuck = [
        w for w, (a, b) in enumerate(zip(before["ticks"], after["ticks"], strict=True)) if b <= a
    ]
    assert not stuck, f"workers {stuck} stopped ticking after {times} squeezes"
    return runs


# --------------------------------------------------------------------------- HTTP on loopback
def http_get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """GET http://127.0.0.1:PORT/PATH -> (status, body).  http.client, not urllib: it never
    consults *_proxy variables, so the request cannot leave the machine."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# --------------------------------------------------------------------------- network namespaces
def connect_in_netns(pid: int, port: int, timeout: float = 10.0) -> socket.socket:
    """A TCP connection to 127.0.0.1:PORT inside PID's network namespace.

    A socket belongs to the namespace it was created in, whatever thread uses it later: a
    short-lived thread enters the namespace (setns applies to the calling thread only), connects
    and exits, and the test keeps the socket.  Raises OSError when it cannot connect."""
    got: dict[str, object] = {}

    def enter_and_connect() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
            try:
                if libc.setns(fd, K.CLONE_NEWNET) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, f"setns(net of {pid}): {os.strerror(e)}")
            finally:
                os.close(fd)
            got["sock"] = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        except OSError as e:
            got["error"] = e

    t = threading.Thread(target=enter_and_connect)
    t.start()
    t.join()
    if "error" in got:
        raise got["error"]  # type: ignore[misc]
    return got["sock"]  # type: ignore[return-value]


class RespError(Exception):
    """An error reply (-ERR ...) from redis."""


class Resp:
    """A minimal RESP2 client (redis' wire protocol) over one socket: enough to load keys,
    read them back and ask DEBUG DIGEST, without a client library."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""

    @staticmethod
    def encode(*args: bytes | str | int) -> bytes:
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
        return b"".join(parts)

    def _need(self, n: int) -> None:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk

    def _readline(self) -> bytes:
        while (i := self.buf.find(b"\r\n")) < 0:
            self._need(len(self.buf) + 1)
        line, self.buf = self.buf[:i], self.buf[i + 2 :]
        return line

    def reply(self):
        """One reply: bytes, int, None (nil), a list, or RespError for an error reply."""
        line = self._readline()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            return RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            self._need(n + 2)
            data, self.buf = self.buf[:n], self.buf[n + 2 :]
            return data
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise ConnectionError(f"not a RESP reply: {line[:80]!r}")

    def pipeline(self, commands: list[tuple]) -> list:
        """Send every command, then read every reply (in order)."""
        self.sock.sendall(b"".join(self.encode(*c) for c in commands))
        return [self.reply() for _ in commands]

    def call(self, *args: bytes | str | int):
        """One command; raises RespError on an error reply."""
        (r,) = self.pipeline([args])
        if isinstance(r, RespError):
            raise r
        return r
