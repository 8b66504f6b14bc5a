"""How fast are remap's outputs on a 30 MB process, next to the interpreter's start-up and pmap?

Issue 15's goals, on one CPython child holding ~30 MB of live objects, in one run (these
machines are noisy: the ratios matter, not the absolute times):

    floor     .venv/bin/python -c pass     (the interpreter's own start-up, same venv)
    pmap      pmap -XX PID                 (procps, in C)
    remap map --json / map / map --pages / map --png FILE / explain

Goals: ``map --json`` and the ``map`` table each <= floor + 2 x pmap; ``--pages`` and ``--png``
<= floor + 200 ms.  Each command runs REPEAT times; the median is printed.  The floor and pmap
are timed in every row, interleaved with its command, and that row's goal comes from them:
timed once beforehand, a floor of 18 ms taken in a quiet moment set a 36 ms goal for commands
then timed while the machine was twice as slow.  With ``--baseline DIR`` (another checkout
with its own .venv, e.g. a worktree of main) its ``remap`` runs each command too, interleaved
with this checkout's on the same process, and the ratio is printed.
Each remap reads its own ELF cache (REMAP_ELF_CACHE: a fresh directory per checkout, filled by
one untimed ``map --json`` first): remap prunes other formats' entries from the cache it
stores into (remap.elfmap), so two checkouts of different formats sharing ~/.cache/remap/elf
evict each other's entries at every miss, as any other remap on the machine may mid-run, and
each then parses every mapped library again (~40 ms) instead of reading it.

Usage:  .venv/bin/python bench/output_speed.py [--mb 30] [--repeat 7] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

from timing import run_timed  # bench/timing.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REMAP = os.path.join(ROOT, ".venv", "bin", "remap")
CHILD = r"""
import sys, time
keep = [bytes(1000) for _ in range(int(sys.argv[1]) * 1000)]
print("ready", flush=True)
time.sleep(600)
"""


_ENVS: dict[str, dict[str, str]] = {}  # a remap executable -> its environment (_own_caches)


def _medians(argvs: list[list[str]], repeat: int) -> list[float]:
    """The median wall time of each of ARGVS, run in turn REPEAT times (interleaved, so that
    a noisy moment of the machine falls on all of them alike)."""
    times: list[list[float]] = [[] for _ in argvs]
    for _ in range(repeat):
        for argv, ts in zip(argvs, times, strict=True):
            t, rc, err = run_timed(argv, 120, env=_ENVS.get(argv[0]))
            if rc != 0:
                raise SystemExit(f"{' '.join(argv)} failed ({rc}): {err.decode().strip()}")
            ts.append(t)
    return [statistics.median(ts) for ts in times]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--baseline", metavar="DIR", help="a checkout whose .venv/bin/remap to compare")
    a = ap.parse_args()
    base = os.path.join(a.baseline, ".venv", "bin", "remap") if a.baseline else None
    if base and not os.access(base, os.X_OK):
        raise SystemExit(f"no {base} (run scripts/bootstrap.sh in {a.baseline})")
    argv = [sys.executable, "-c", CHILD, str(a.mb)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE) as child:  # waited for on the way out
        try:
            assert child.stdout is not None and child.stdout.readline() == b"ready\n"
            _report(str(child.pid), a.repeat, base)
        finally:
            child.kill()
    return 0


def _report(pid: str, repeat: int, base: str | None = None) -> None:
    """Time every command on PID and print the table with the goals (and BASE's times)."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(ln.split()[1] for ln in f if ln.startswith("VmRSS:"))
    tmp = tempfile.mkdtemp(prefix="remap-bench-")
    png = os.path.join(tmp, "map.png")
    _own_caches(tmp, pid, [REMAP] + ([base] if base else []))
    yardsticks = [[sys.executable, "-c", "pass"], ["pmap", "-XX", pid]]
    rows = [  # name, arguments, goal from (floor, pmap)
        ("map --json", ["map", pid, "--json"], lambda f, p: f + 2 * p),
        ("map", ["map", pid], lambda f, p: f + 2 * p),
        ("map --pages", ["map", pid, "--pages"], lambda f, p: f + 0.2),
        ("map --png", ["map", pid, "--png", png], lambda f, p: f + 0.2),
        ("explain", ["explain", pid], None),
    ]
    print(f"process: {rss} kB RSS; floor = python -c pass, pmap = pmap -XX, timed in each row "
          f"beside its command; median of {repeat}")  # fmt: skip
    if base:
        print(f"baseline: {base}")
    extra = f"{'base ms':>9}{'ratio':>7}" if base else ""
    print(
        f"{'command':<14}{'ms':>6}{'floor':>7}{'pmap':>6}{'x floor':>9}{'goal ms':>9}  met{extra}"
    )
    for name, args, goal_of in rows:
        floor, pmap, t, *tb = _medians(
            [*yardsticks, [REMAP, *args]] + ([[base, *args]] if base else []), repeat
        )
        goal = goal_of(floor, pmap) if goal_of else None
        g = f"{goal * 1e3:9.0f}  {'yes' if t <= goal else 'no '}" if goal else f"{'-':>9}  - "
        b = f"{tb[0] * 1e3:9.0f}{t / tb[0]:7.2f}" if base else ""
        print(f"{name:<14}{t * 1e3:6.0f}{floor * 1e3:7.0f}{pmap * 1e3:6.0f}{t / floor:9.1f}{g}{b}")


def _own_caches(tmp: str, pid: str, remaps: list[str]) -> None:
    """Give each of REMAPS an ELF cache of its own under TMP (see the module docstring), filled
    by one untimed ``map PID --json``."""
    for i, remap in enumerate(remaps):
        _ENVS[remap] = dict(os.environ, REMAP_ELF_CACHE=os.path.join(tmp, f"elf-{i}"))
        _t, rc, err = run_timed([remap, "map", pid, "--json"], 120, env=_ENVS[remap])
        if rc != 0:
            raise SystemExit(f"{remap} map {pid} --json failed ({rc}): {err.decode().strip()}")


if __name__ == "__main__":
    sys.exit(main())
