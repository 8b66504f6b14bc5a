"""Never harm a target, the fold side (issue 12): a stack is a stack only when proven, the
verifier re-proves every anonymous page a step drops, and --dry-run never stops the target.

Each test starts a real program whose data lies where a careless "dead stack" drop would zero
it (a coroutine stack carved from the heap or from an mmap'd region, a pthread), squeezes it
for real, and asks the program itself whether its data is intact (its own checksum).
"""

from __future__ import annotations

import subprocess

import pytest
from helpers import remap_cli, status, wait_blocked

import remap.fold as F
from remap import procfs, residency


def _ready(t) -> tuple[int, int]:
    """Wait for coroutine_heap's "ready MODE LO HI" line; the range the blocked rsp lies in."""
    words = t.proc.stdout.readline().split()
    assert words[:1] == [b"ready"], words
    t.wait_blocked()
    return int(words[2], 16), int(words[3], 16)


def _check(t) -> bytes:
    """One byte on stdin: the target re-checks every byte it must keep and answers OK/CORRUPT."""
    t.proc.stdin.write(b"x")
    t.proc.stdin.flush()
    return t.proc.stdout.readline().strip()


def _mapping(pid: int, addr: int) -> procfs.MapEntry:
    (m,) = [m for m in procfs.read_maps(pid) if m.start <= addr < m.end]
    return m


def _dead_stack(report) -> list[tuple[int, int]]:
    return [
        (s, e)
        for st in report.steps
        if st.name == "drop-dead-stack" and st.applied
        for s, e in st.detail["ranges"]
    ]


@pytest.mark.parametrize("mode", ["heap", "thread", "mmap", "altstack"])
def test_coroutine_stack_data_survives_squeeze(spawn, mode):
    """rsp on a coroutine stack (in [heap], run by main or by a pthread; in an mmap'd region
    with a guard page) or on a sigaltstack atop an mmap'd region: the live data below it is
    kept and the program's checksum holds."""
    t = spawn("coroutine_heap", "default", mode)
    lo, hi = _ready(t)
    assert _check(t).startswith(b"OK")
    where = _mapping(t.pid, lo)
    if mode in ("heap", "thread"):
        assert where.path == "[heap]"  # the precondition of the repro: the stack is heap
    r = F.squeeze(t.pid)
    assert _check(t).startswith(b"OK")  # the program's own verdict first
    for s, e in _dead_stack(r):
        assert not (s < hi and lo < e), f"dropped [{s:#x}, {e:#x}) of the coroutine's mapping"
    skipped = [st.detail["skipped"] for st in r.steps if st.name == "drop-dead-stack"
               and not st.applied]  # fmt: skip
    assert any("not a proven stack" in why for why in skipped), skipped
    assert t.proc.poll() is None


def test_proven_thread_stack_still_drops_its_dead_frames(spawn):
    """The positive control: a glibc pthread blocked on its own stack (TCB at the top, guard
    below) has 64 kB of dead frames below its rsp; those pages go, its live data stays."""
    t = spawn("coroutine_heap", "default", "pthread")
    lo, hi = _ready(t)
    assert _check(t).startswith(b"OK")
    r = F.squeeze(t.pid)
    inside = [(s, e) for s, e in _dead_stack(r) if lo <= s and e <= hi]
    assert sum(e - s for s, e in inside) >= 8 * 4096, r.steps
    assert _check(t).startswith(b"OK")


def _old_drop_dead_stack(ctx):
    """The planner before issue 12, kept here as the adversary: whatever mapping holds rsp,
    every present anonymous page below rsp - 128 was 'dead stack'."""
    from remap.fold.ranges import coalesce
    from remap.fold.steps import _dontneed

    rsp = ctx.session.regs()["rsp"]
    vma = ctx.snap.vma_at(rsp)
    dead = [p.addr for p in vma.pages if p.addr + 4096 <= (rsp - 128) & ~4095
            and p.backing == "anon"]  # fmt: skip
    return _dontneed("drop-dead-stack", "the old planner", coalesce(dead), set(dead))


def test_altstack_check_refuses_and_puts_back_what_it_borrowed(spawn):
    """A proven thread stack whose sigaltstack lies in its dead frames: the squeeze refuses,
    and the 24 bytes the kernel's sigaltstack answer was written into are as they were."""
    from remap.errors import UnsafeStep

    t = spawn("coroutine_heap", "default", "pthread-altstack")
    lo, hi = _ready(t)
    dry = F.squeeze(t.pid, dry_run=True)
    (drop,) = [s for s in dry.steps if s.name == "drop-dead-stack" and "ranges" in s.detail]
    first = drop.detail["ranges"][0][0]  # where the kernel writes its sigaltstack answer
    assert any(lo <= a < hi for a, _ in drop.detail["ranges"])  # the thread's dead frames too

    def peek() -> bytes:
        with open(f"/proc/{t.pid}/mem", "rb", buffering=0) as f:
            f.seek(first)
            return f.read(4096)

    was = peek()
    with pytest.raises(UnsafeStep, match="alternate signal stack"):
        F.squeeze(t.pid)
    assert peek() == was
    assert _check(t).startswith(b"OK")


def test_dry_run_says_a_running_thread_is_decided_at_the_stop(spawn):
    """A thread spinning on a CPU has no registers to read from outside: the dry run says so
    for it (one line), plans the rest, and still never stops the process."""
    t = spawn("coroutine_heap", "default", "spin")
    t.proc.stdout.readline()
    t.wait_blocked()
    spinner = [tid for tid in procfs.thread_ids(t.pid) if tid != t.pid]
    watch = _TracerWatch(t.pid)
    dry = _dry_run_cli(t.pid)
    assert watch.stop() == {0}
    skipped = [s["skipped"] for s in dry["steps"] if s["name"] == "drop-dead-stack"
               and not s["applied"] and "skipped" in s]  # fmt: skip
    assert skipped == [f"thread {spinner[0]} was running: its registers are read at the stop"]
    real = F.squeeze(t.pid)  # every thread stopped: the spinner's stack is decided now
    assert not any("running" in s.text for s in real.steps)
    assert _check(t).startswith(b"OK")


def test_verifier_refuses_what_a_wrong_planner_would_drop(spawn):
    """The verifier's proof is independent of the planners: fed the old planner (which zeroed
    the heap below a coroutine's rsp), the plan is refused before anything is done."""
    from remap.errors import UnsafeStep
    from remap.fold.plan import run_plan

    t = spawn("coroutine_heap", "default", "heap")
    _ready(t)
    before = residency.snapshot(t.pid).rss_kb
    with pytest.raises(UnsafeStep, match="neither a clean file page nor proven dead stack"):
        run_plan(t.pid, "squeeze", [_old_drop_dead_stack])
    assert _check(t).startswith(b"OK")
    assert residency.snapshot(t.pid).rss_kb == before
    # and the dry run refuses the same way, without stopping it
    with pytest.raises(UnsafeStep, match="proven dead stack"):
        run_plan(t.pid, "squeeze", [_old_drop_dead_stack], dry_run=True)


def test_squeeze_reports_dropped_stack_apart_from_verified(spawn, capsys):
    """'verified N bytes unchanged' counts no dropped page; the dropped ones are their own
    figure, equal to the dead-stack pages the steps list."""
    from remap.cli import main as remap_main

    t = spawn("coroutine_heap", "default", "pthread")
    _ready(t)
    r = F.squeeze(t.pid)
    dead = sum(e - s for s, e in _dead_stack(r))
    assert dead >= 8 * 4096 and r.dropped_anon_bytes == dead
    assert remap_main(["squeeze", str(t.pid)]) == 0
    out = capsys.readouterr().out
    assert "bytes of proven dead stack" in out and "anonymous memory unchanged" in out
    assert _check(t).startswith(b"OK")


def test_skipped_relocation_names_the_mapping(spawn, capsys, monkeypatch):
    """The one-line reason keeps its '[stack]' (rich took it for markup and printed 'in ;')."""
    from remap.cli import main as remap_main

    monkeypatch.setenv("COLUMNS", "400")  # one table row per line
    t = spawn("coroutine_heap", "default", "heap")
    _ready(t)
    assert remap_main(["squeeze", str(t.pid), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "rsp is not in [stack]; not moving it" in out
    assert "is in [heap], not a proven stack" in out


# ----------------------------------------------------------------------------- dry run
def _switches(pid: int) -> dict[int, tuple[str, str]]:
    """Every thread's (voluntary, nonvoluntary) context switches: an idle blocked thread's
    never change, and a ptrace stop (seize + interrupt) wakes it, which changes them."""
    out = {}
    for tid in procfs.thread_ids(pid):
        kv = status(pid, tid)
        out[tid] = (kv["voluntary_ctxt_switches"], kv["nonvoluntary_ctxt_switches"])
    return out


class _TracerWatch:
    """Polls /proc/PID/status from a thread of its own while a command runs: TracerPid seen."""

    def __init__(self, pid: int):
        import threading

        self.pid, self.seen, self.polls = pid, set(), 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.seen.add(int(procfs.read_status(self.pid)["TracerPid"]))
            self.polls += 1

    def stop(self) -> set[int]:
        self._stop.set()
        self._t.join(5)
        return self.seen


def _dry_run_cli(pid: int) -> dict:
    import json

    out = remap_cli("squeeze", str(pid), "--dry-run", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _plan_of(steps: list[dict]) -> list[tuple]:
    return [(s["name"], s["text"], s.get("pages")) for s in steps]


def _settled(pid: int) -> dict[int, tuple[str, str]]:
    """Context switches once every thread sleeps and none switched for 100 ms (bounded)."""
    import time

    deadline = time.monotonic() + 5
    last = _switches(pid)
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = _switches(pid)
        states = {procfs.read_stat(pid, tid).state for tid in now}
        if now == last and states == {"S"}:
            return now
        last = now
    raise AssertionError(f"process {pid} did not settle: {last}")


def _dry_then_real(pid: int) -> tuple[list, list]:
    """Dry run (from another process, TracerPid and context switches watched), then the real
    squeeze; returns both plans.  Asserts the dry run never stopped the target and that the
    real one did (the watch can see a stop)."""
    before = _settled(pid)
    watch = _TracerWatch(pid)
    dry = _dry_run_cli(pid)
    seen = watch.stop()
    assert seen == {0} and watch.polls > 10, (seen, watch.polls)
    assert _switches(pid) == before, "the dry run woke the target"
    assert dry["dry_run"] and dry["after"] is None and dry["stopped_us"] == 0
    real = F.squeeze(pid)
    assert _switches(pid) != before  # the control: a real stop is seen
    return _plan_of(dry["steps"]), _plan_of([s.to_json() for s in real.steps])


@pytest.mark.parametrize("mode", ["heap", "pthread", "mmap", "altstack"])
def test_dry_run_never_stops_and_plans_the_real_run_coroutines(spawn, mode):
    t = spawn("coroutine_heap", "default", mode)
    _ready(t)
    dry, real = _dry_then_real(t.pid)
    assert dry == real
    assert _check(t).startswith(b"OK")


def test_dry_run_never_stops_and_plans_the_real_run_echoloop(spawn):
    """A static musl loop: the real run moves the stack first, then drops the old frames --
    the dry run counts the same dead-stack pages (it applies the move's effect)."""
    t = spawn("echoloop")
    t.proc.stdin.write(b"hi\n")
    t.proc.stdin.flush()
    assert t.proc.stdout.readline() == b"hi\n"
    t.wait_blocked()
    dry, real = _dry_then_real(t.pid)
    assert dry == real
    t.proc.stdin.write(b"again\n")
    t.proc.stdin.flush()
    assert t.proc.stdout.readline() == b"again\n"


def test_dry_run_never_stops_and_plans_the_real_run_sqlite3():
    """Debian's sqlite3 with an in-memory database, blocked in read(0)."""
    import shutil

    if shutil.which("sqlite3") is None:
        pytest.skip("sqlite3 not installed (apt-get install sqlite3)")
    p = subprocess.Popen(["sqlite3", ":memory:"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        q = b"create table t(x); insert into t select value from generate_series(1, 50000);\n"
        p.stdin.write(q + b"select sum(x), count(*) from t;\n")
        p.stdin.flush()
        want = p.stdout.readline()
        assert want == b"1250025000|50000\n"
        _wait_sleeping(p.pid)
        dry, real = _dry_then_real(p.pid)
        assert dry == real
        p.stdin.write(b"select sum(x), count(*) from t;\n")
        p.stdin.flush()
        assert p.stdout.readline() == want
    finally:
        p.kill()
        p.wait()


def test_dry_run_never_stops_and_plans_the_real_run_busybox_httpd(tmp_path):
    """busybox httpd on 127.0.0.1, blocked in accept; it serves the same page afterwards."""
    import shutil
    import socket

    if shutil.which("busybox") is None:
        pytest.skip("busybox not installed")
    (tmp_path / "index.html").write_text("remap-ok\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen(["busybox", "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h",
                          str(tmp_path)])  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/index.html"
        body = _get(url)
        assert body == b"remap-ok\n"
        _wait_sleeping(p.pid)
        dry, real = _dry_then_real(p.pid)
        assert dry == real
        assert _get(url) == body
    finally:
        p.kill()
        p.wait()


def _get(url: str) -> bytes:
    """GET URL (loopback only), retrying for up to 5 s while the server starts."""
    import time
    import urllib.request

    deadline = time.monotonic() + 5
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _wait_sleeping(pid: int) -> None:
    import time

    wait_blocked(pid)
    time.sleep(0.05)


def test_go_webhook_keeps_serving_and_its_arena_is_never_dead_stack(tmp_path):
    """Debian's webhook (Go, cgo): goroutine stacks live in the Go heap arena.  Three squeezes
    drop dead stack only in [stack] or guarded thread stacks, and every hook still answers."""
    import shutil
    import socket

    if shutil.which("webhook") is None:
        pytest.skip("webhook not installed (apt-get install webhook)")
    hooks = tmp_path / "hooks.json"
    hooks.write_text('[{"id": "ping", "execute-command": "/bin/true", "response-message": "pong"}]')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["webhook", "-hooks", str(hooks), "-ip", "127.0.0.1", "-port", str(port)]
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/hooks/ping"
        assert _get(url) == b"pong"
        for _ in range(3):
            _wait_sleeping(p.pid)
            maps = procfs.read_maps(p.pid)
            r = F.squeeze(p.pid)
            for s, e in _dead_stack(r):
                (i,) = [i for i, m in enumerate(maps) if m.start <= s and e <= m.end]
                guarded = i > 0 and maps[i - 1].perms.startswith("---")
                assert maps[i].path == "[stack]" or guarded, f"dropped [{s:#x}, {e:#x})"
                assert not (s < 0xC000000000 + (64 << 30) and 0xC000000000 < e)  # the Go arena
            assert _get(url) == b"pong"
        assert p.poll() is None
    finally:
        p.kill()
        p.wait()


FORKED = r"""
import ctypes, mmap, os, sys, time
m = mmap.mmap(-1, 3 * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
m.write(bytes(range(256)) * 48)
addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
child = os.fork()
if child == 0:  # shares the three pages copy-on-write, and never writes them
    time.sleep(60)
    os._exit(0)
print(addr, child, flush=True)
for line in sys.stdin:
    print(sum(m[:]), flush=True)
"""


def _frame(pid: int, addr: int) -> int:
    from remap import kconst as K
    from remap import pagemap

    (raw,) = pagemap.entries_for(pid, [(addr, addr + K.PAGE_SIZE)])
    return int.from_bytes(raw, "little") & K.PM_PFN_MASK


def test_reading_a_forked_targets_memory_keeps_its_pages_shared():
    """process_vm_readv pins what it reads, and a read-only pin of a page a forked child still
    shares gives the target a copy (a new frame, same bytes): reading a forking server's heap
    copied it, and the frames evidence then refused the squeeze (busybox httpd in CI).  remap
    reads through /proc/PID/mem: after a dry run, a session's reads of every shared page and a
    real squeeze, the three pages parent and child share are still one frame each."""
    import os
    import sys

    import remap
    from remap import pagemap

    if not pagemap.pfns_visible():
        pytest.skip("needs PFNs (root)")
    p = subprocess.Popen([sys.executable, "-c", FORKED], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)  # fmt: skip
    addr, child = map(int, p.stdout.readline().split())
    pages = [addr + i * 4096 for i in range(3)]
    try:
        _wait_sleeping(p.pid)
        shared = [_frame(child, a) for a in pages]
        assert [_frame(p.pid, a) for a in pages] == shared
        dry = F.squeeze(p.pid, dry_run=True)
        assert [_frame(p.pid, a) for a in pages] == shared, "the dry run copied them"
        with remap.attach(p.pid) as s:
            assert all(s.read(a, 4096) == bytes(range(256)) * 16 for a in pages)
        assert [_frame(p.pid, a) for a in pages] == shared, "the session's reads copied them"
        real = F.squeeze(p.pid)
        assert [s.name for s in real.steps] == [s.name for s in dry.steps]
        assert [_frame(p.pid, a) for a in pages] == shared, "the squeeze copied them"
        p.stdin.write(b"sum\n")
        p.stdin.flush()
        assert int(p.stdout.readline()) == sum(range(256)) * 48
    finally:
        os.kill(child, 9)
        p.kill()
        p.wait()
