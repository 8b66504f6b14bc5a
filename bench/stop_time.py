"""How long does `remap squeeze` stop a real process?  Each stop beside `pmap -XX` of the same run.

Starts each program below (loopback only, every wait bounded), waits until it idles, then, in one
run and on that same process:

    remap.fold.squeeze(PID)            report["stopped_us"] and its breakdown (seize, snapshot,
                                       steps, cure; "verify": the part of the steps spent proving
                                       that nothing else changed, "calls": the part spent in the
                                       steps' actions -- the fence and drops run in one batch)
    remap.fold.squeeze(PID, dry_run)   the dry run's stop (it must not stop the target: 0)
    pmap -XX PID                       wall time of procps reading smaps and printing it: the
                                       yardstick, so that ratios hold on another machine

and asks the program itself whether it still works (its own answer: an echo, a row count and
sum, a checksum of its objects, an HTTP response) after the squeezes.

Programs: the user's own (agetty at its login prompt on a pty, busybox init as PID 1 of a PID
namespace -- both built from Debian's sources --, EnergyMech static and dynamic on remap's
loopback IRC server; each skipped with the reason where its source is missing), a static musl
echo loop (csrc/targets/echoloop.c), busybox cat (static), sqlite3 with 100k rows in memory,
CPython holding ~14 MB of live objects, python -m http.server on 127.0.0.1, and a Python process
with 1 GB of touched anonymous memory (allocate, touch every page, wait).  Health is each one's
own: agetty alive after each squeeze and a login accepted at the end, init's child running and a
killed child respawned, the bot answering 5 PINGs, the echo, the row count and sum, the checksum
of the objects, the HTTP listing.

Usage:  .venv/bin/python bench/stop_time.py [--repeat 3] [--only NAME,...] [--gb 1.0]
Goals (issue 15): stop <= 5 ms under 1 MB RSS, <= 20 ms for CPython and sqlite3, <= 50 ms for
1 GB of anonymous memory; the dry run 0 ms.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

READY_S = 60.0  # the slowest start (1 GB touched) takes a few seconds here

PY_OBJECTS = r"""
import sys, zlib
d = {i: ("v%07d" % i) * 2 for i in range(int(sys.argv[1]))}
def checksum():
    return zlib.crc32(repr(sorted(d.items())[:: 97]).encode()) ^ len(d)
want = checksum()
print("ready", flush=True)
for line in sys.stdin:
    print("OK" if checksum() == want else "CORRUPT", flush=True)
"""

PY_ANON = r"""
import sys
n = int(float(sys.argv[1]) * (1 << 30)) // 4096 * 4096
b = bytearray(n)
pat = bytes(range(251)) * 17  # 4267 bytes: each page's first 4096 differ from the next's
for off in range(0, n, 4096):
    b[off] = (off >> 12) & 0xFF  # touch every page with a value the check can predict
b[:4096] = pat[:4096]
def ok():
    head = b[:4096] == pat[:4096]
    return head and all(b[o] == (o >> 12) & 0xFF for o in range(4096, n, 4096 * 7))
print("ready", flush=True)
for line in sys.stdin:
    print("OK" if ok() else "CORRUPT", flush=True)
"""

SQL_LOAD = (
    b"create table t(a integer, b blob);\n"
    b"with recursive c(x) as (select 1 union all select x+1 from c where x<100000) "
    b"insert into t select x, randomblob(32) from c;\n"
    b"select 'ready', count(*) from t;\n"
)


@dataclass
class Prog:
    """One benchmark target: how to start it, when it is ready, how it proves it works."""

    name: str
    argv: list[str]
    feed: bytes  # written to stdin at start
    ready: bytes  # the first output line starts with this
    check: Callable[[subprocess.Popen], bool]
    port: int = 0


@dataclass
class Live:
    """A started target: its pid, its own health check, and how it is stopped (FINAL: the
    check it can pass only once, at the end -- agetty's login ends agetty)."""

    pid: int
    check: Callable[[], bool]
    stop: Callable[[], None]
    final: Callable[[], bool] = lambda: True


@dataclass
class Real:
    """A real program remap starts with its own launcher (remap.getty, remap.initns,
    remap.energymech): built from its source on first use, skipped when that is missing."""

    name: str
    start: Callable[[], Live]


def _line(p: subprocess.Popen, timeout: float) -> bytes:
    r, _, _ = select.select([p.stdout], [], [], timeout)
    if not r:
        raise TimeoutError("no answer")
    return p.stdout.readline()


def _ask(p: subprocess.Popen, q: bytes, timeout: float = 30.0) -> bytes:
    p.stdin.write(q)
    p.stdin.flush()
    return _line(p, timeout).strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_ok(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
        return r.status == 200 and b"Directory listing" in r.read()


def programs(gb: float) -> list[Prog]:
    from remap import targets

    echo = str(targets.build("echoloop"))
    py = sys.executable
    port = _free_port()
    return [
        Prog("echoloop (musl)", [echo], b"", b"", lambda p: _ask(p, b"k\n") == b"k"),
        Prog("busybox cat", ["busybox", "cat"], b"", b"", lambda p: _ask(p, b"k\n") == b"k"),
        Prog("sqlite3 100k rows", ["sqlite3", ":memory:"], SQL_LOAD, b"ready|100000",
             lambda p: _ask(p, b"select count(*), sum(a) from t;\n") == b"100000|5000050000"),
        Prog("CPython 14 MB", [py, "-c", PY_OBJECTS, "45000"], b"", b"ready",
             lambda p: _ask(p, b"\n") == b"OK"),
        Prog("http.server", [py, "-m", "http.server", "--bind", "127.0.0.1", str(port)], b"",
             b"", lambda p: _http_ok(port), port),
        Prog(f"{gb:g} GB anonymous", [py, "-c", PY_ANON, str(gb)], b"", b"ready",
             lambda p: _ask(p, b"\n", 120) == b"OK"),
    ]  # fmt: skip


def real_programs() -> list[Real]:
    """The user's own programs (issue 15's table): agetty at its login prompt on a pty,
    busybox init as PID 1 of a PID namespace, EnergyMech static and dynamic on our loopback
    IRC server in a private network namespace."""

    def agetty() -> Live:
        from remap import getty, sources

        run = getty.start(sources.build(sources.recipe("agetty")))
        return Live(run.launched.pid, run.launched.alive, lambda: getty.stop(run),
                    lambda: getty.login(run, "remap").startswith(getty.LOGIN_MARKER))  # fmt: skip

    def init() -> Live:
        from remap import initns, sources

        run = initns.start(sources.build(sources.recipe("busybox")))
        time.sleep(1.5)  # its child started, init back in wait()
        respawned = lambda: len(set(initns.respawn(run))) == 2  # noqa: E731 -- old, new pid
        return Live(run.launched.pid, lambda: initns.child(run) is not None,
                    lambda: initns.stop(run), respawned)  # fmt: skip

    def mech(variant: str) -> Callable[[], Live]:
        def start() -> Live:
            from remap import energymech, sources

            run = energymech.start(sources.build(sources.recipe("energymech", variant)))
            run.server.accept_bot()
            time.sleep(2)  # joined, its first timers run
            return Live(run.launched.pid, lambda: run.server.ping(5) == 5,
                        lambda: energymech.stop(run))  # fmt: skip

        return start

    return [
        Real("agetty (util-linux)", agetty),
        Real("busybox init", init),
        Real("EnergyMech static", mech("static")),
        Real("EnergyMech dynamic", mech("dynamic")),
    ]


def _start_real(prog: Real) -> Live | None:
    from remap.sources import SourceMissing

    try:
        live = prog.start()
    except SourceMissing as e:  # any other failure to start fails the bench
        print(f"{prog.name}: skipped ({e})")
        return None
    _wait_sleeping(live.pid)
    return live


def _start(prog: Prog) -> subprocess.Popen:
    p = subprocess.Popen(prog.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, cwd="/tmp")  # fmt: skip
    if prog.feed:
        p.stdin.write(prog.feed)
        p.stdin.flush()
    if prog.ready and not _line(p, READY_S).startswith(prog.ready):
        raise SystemExit(f"{prog.name} did not start")
    if prog.port:
        _wait_port(prog.port)
    if not prog.check(p):  # warm: whatever the check faults in is part of its working set
        raise SystemExit(f"{prog.name} fails its own check before any squeeze")
    _wait_sleeping(p.pid)
    return p


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def _wait_sleeping(pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "S":
                return
        time.sleep(0.01)
    raise SystemExit(f"process {pid} never went to sleep")


def _rss_kb(pid: int) -> tuple[int, int]:
    """(Rss, Anonymous) kB from smaps_rollup."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        kv = {ln.split(":")[0]: ln.split()[1] for ln in f if ":" in ln}
    return int(kv["Rss"]), int(kv["Anonymous"])


def _pmap_ms(pid: int) -> float:
    from timing import run_timed  # bench/timing.py: run(timeout=) rounds up to ~50 ms steps

    t, rc, err = run_timed(["pmap", "-XX", str(pid)], 60)
    if rc != 0:
        raise SystemExit(f"pmap -XX {pid} failed: {err.decode().strip()}")
    return t * 1e3


def _live(prog: Prog) -> Live:
    p = _start(prog)

    def stop() -> None:
        p.kill()
        p.wait(timeout=10)

    return Live(p.pid, lambda: prog.check(p), stop)


def bench_one(prog: Prog | Real, repeat: int) -> dict | None:
    """Squeeze PROG's process REPEAT times (a dry run first); the stops, pmap -XX and health
    (None: a real program whose source is missing here)."""
    import remap.fold as F

    live = _live(prog) if isinstance(prog, Prog) else _start_real(prog)
    if live is None:
        return None
    try:
        rss, anon = _rss_kb(live.pid)
        dry = F.squeeze(live.pid, dry_run=True)
        stops, pmaps = [], []
        healthy = True
        for _ in range(repeat):
            pmaps.append(_pmap_ms(live.pid))
            r = F.squeeze(live.pid)
            applied = " ".join(f"{s.name}:{s.syscalls}" for s in r.steps if s.applied)
            stops.append((r.stopped_us / 1e3, r.stop_breakdown_us, r.verified_bytes, r.notes,
                          applied))  # fmt: skip
            # the program works (and faults back what it needs): the next squeeze has work too
            healthy = live.check() and healthy
            _wait_sleeping(live.pid)
        healthy = live.final() and healthy
    finally:
        live.stop()
    return {"name": prog.name, "rss_kb": rss, "anon_kb": anon, "dry_ms": dry.stopped_us / 1e3,
            "stops": stops, "pmap_ms": statistics.median(pmaps), "ok": healthy}  # fmt: skip


def _goal(name: str, rss_kb: int) -> float:
    if rss_kb < 1024:
        return 5.0
    if "GB anonymous" in name:
        return 50.0
    if name.startswith(("CPython", "sqlite3")):
        return 20.0
    return float("nan")  # no goal stated (http.server): reported only


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated name prefixes")
    ap.add_argument("--gb", type=float, default=1.0, help="GB of anonymous memory (<= 4)")
    args = ap.parse_args()
    if not 0 < args.gb <= 4 or not 1 <= args.repeat <= 50:
        raise SystemExit("--gb must be in (0, 4], --repeat in [1, 50]")
    from remap import pagemap

    print(f"kernel {os.uname().release}, PFNs visible: {pagemap.pfns_visible()}, "
          f"PAGEMAP_SCAN: {pagemap.scan_supported()}")  # fmt: skip
    only = [s.strip().lower() for s in args.only.split(",") if s.strip()]
    progs: list[Prog | Real] = [*real_programs(), *programs(args.gb)]
    rows = [r for p in progs if not only or p.name.lower().startswith(tuple(only))
            if (r := bench_one(p, args.repeat)) is not None]  # fmt: skip
    hdr = (
        f"{'program':<20}{'RSS kB':>9}{'anon kB':>9}{'first ms':>10}{'later ms':>10}"
        f"{'pmap ms':>9}{'later/pmap':>11}{'goal ms':>9}{'dry ms':>8}  ok  goal"
    )
    print(hdr)  # fmt: skip
    for r in rows:
        ms = [s[0] for s in r["stops"]]
        later = statistics.median(ms[1:]) if len(ms) > 1 else ms[0]
        goal = _goal(r["name"], r["rss_kb"])
        met = "" if goal != goal else ("met" if max(ms) <= goal else "MISSED")
        print(f"{r['name']:<20}{r['rss_kb']:>9}{r['anon_kb']:>9}{ms[0]:>10.1f}{later:>10.1f}"
              f"{r['pmap_ms']:>9.1f}{later / r['pmap_ms']:>10.2f}x{goal:>9.0f}{r['dry_ms']:>8.1f}"
              f"  {'yes' if r['ok'] else 'NO'}  {met}")  # fmt: skip
    print("stops in ms, each squeeze: total [seize snapshot steps (of which verify, calls) cure] "
          "verified; the steps applied with their injected calls")  # fmt: skip
    for r in rows:
        print(f"  {r['name']}:")
        for ms, bd, ver, _notes, applied in r["stops"]:
            parts = " ".join(f"{bd.get(k, 0) / 1e3:.1f}" for k in ("seize", "snapshot", "steps"))
            print(f"    {ms:7.1f} [{parts} ({bd.get('verify', 0) / 1e3:.1f}, "
                  f"{bd.get('calls', 0) / 1e3:.1f}) {bd.get('cure', 0) / 1e3:.1f}] "
                  f"{ver >> 10} kB  {applied}")  # fmt: skip
    for r in rows:
        for n in sorted({n for s in r["stops"] for n in s[3] if "verif" in n.lower()}):
            print(f"note ({r['name']}): {n}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
