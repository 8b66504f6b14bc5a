"""How fast is `remap map --json` on a big address space, next to pmap -XX and smem?

Builds one process with >= 5,000 mappings and >= 1 GB mapped (a Python child that mmaps
alternating protections so neighbouring VMAs cannot merge, and touches some pages: writes in the
RW ones, reads -- the shared zero page -- in some read-only ones), then times, on that same
process and in one run:

    remap map --json PID      (the console script: interpreter start-up included)
    pmap -XX PID              (procps: one smaps read and formatting, in C)
    smem -P REGEX             (Python: reads smaps of the matching processes)

The "ELF cache off" row runs remap with REMAP_ELF_CACHE=off: what a first run on a machine
costs, when every mapped ELF file's symbols are read and sorted (remap.elfmap keeps them).

Usage:  .venv/bin/python bench/map_speed.py [--maps 5000] [--kb 256] [--repeat 5]
Goal (issue 2): remap within 2x of pmap -XX, faster than smem.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

from timing import run_timed  # bench/timing.py: exact wall times (no 50 ms polling)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = "remap_map_speed_child"

CHILD = r"""
import mmap, sys
n, kb, marker = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
maps = []
for i in range(n):
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if i % 2 else 0)
    m = mmap.mmap(-1, kb << 10, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=prot)
    if i % 2:
        m[0] = 1; m[(kb << 10) // 2] = 1     # two anonymous pages
    elif i % 8 == 0:
        _ = m[0]                            # a read: the shared zero page
    maps.append(m)
print("ready", flush=True)
sys.stdin.read()
"""


def _time_all(rows: list[tuple], repeat: int) -> dict[str, tuple[float, float]]:
    """{name: (median, min) wall seconds}, the commands interleaved round by round so that load
    from anything else on the machine hits all of them alike; stdout is discarded.
    A row is (name, argv) or (name, argv, extra environment)."""
    times: dict[str, list[float]] = {row[0]: [] for row in rows}
    for _ in range(repeat):
        for name, cmd, *extra in rows:
            env = {**os.environ, **extra[0]} if extra else None
            t, rc, err = run_timed(cmd, 300, env=env)
            times[name].append(t)
            if rc != 0:
                raise SystemExit(f"{name} failed: {err.decode().strip()}")
    return {name: (statistics.median(ts), min(ts)) for name, ts in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--maps", type=int, default=5000)
    ap.add_argument("--kb", type=int, default=256, help="kB per mapping")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    remap_bin = os.path.join(os.path.dirname(sys.executable), "remap")
    remap_cmd = [remap_bin] if os.path.exists(remap_bin) else [sys.executable, "-m", "remap"]
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(args.maps), str(args.kb), MARKER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        line = child.stdout.readline()
        if not line.startswith(b"ready"):
            raise SystemExit("bench child failed to start")
        pid = child.pid
        with open(f"/proc/{pid}/maps") as f:
            nmaps = sum(1 for _ in f)
        with open(f"/proc/{pid}/status") as f:
            st = {ln.split(":")[0]: ln.split()[1] for ln in f if ln.startswith(("VmSize", "VmRSS"))}
        print(f"target pid {pid}: {nmaps} mappings, VmSize {int(st['VmSize']) >> 10} MB, "
              f"VmRSS {st['VmRSS']} kB, kernel {os.uname().release}")  # fmt: skip
        if nmaps < 5000 or int(st["VmSize"]) < 1 << 20:
            raise SystemExit("target too small: need >= 5000 mappings and >= 1 GB")
        rows: list[tuple] = [("remap map --json", [*remap_cmd, "map", "--json", str(pid)])]
        if shutil.which("pmap"):
            rows.append(("pmap -XX", ["pmap", "-XX", str(pid)]))
        if shutil.which("smem"):
            rows.append(("smem -P", ["smem", "-P", MARKER]))
        # the same command with remap's on-disk ELF cache off: every mapped ELF parsed again
        rows.append(("  ELF cache off", rows[0][1], {"REMAP_ELF_CACHE": "off"}))
        # in-process figure: the snapshot alone, without interpreter start-up
        sys.path.insert(0, ROOT)
        import remap

        remap.snapshot(pid)
        t = time.perf_counter()
        for _ in range(args.repeat):
            snap = remap.snapshot(pid, smaps=False, pfns=False)
        in_proc = (time.perf_counter() - t) / args.repeat
        from remap import mapjson

        t = time.perf_counter()
        for _ in range(args.repeat):
            mapjson.document(pid)
        doc_in_proc = (time.perf_counter() - t) / args.repeat
        res = _time_all(rows, args.repeat)
        base = res.get("pmap -XX", (None,))[0]
        print(f"{'command':<20}{'median ms':>11}{'min ms':>9}{'vs pmap -XX':>13}")
        for name, (med, mn) in res.items():
            ratio = f"{med / base:.2f}x" if base else "-"
            print(f"{name:<20}{med * 1e3:>11.1f}{mn * 1e3:>9.1f}{ratio:>13}")
        print(f"{'snapshot(fast) in-proc':<20}{in_proc * 1e3:>11.1f}{'':>9}"
              f"{'':>13}  ({snap.present_pages} present pages, method {snap.method})")  # fmt: skip
        print(f"{'map JSON in-proc':<20}{doc_in_proc * 1e3:>11.1f}{'':>9}{'':>13}"
              "  (remap.mapjson.document: what `map --json` runs)")  # fmt: skip
        r = res["remap map --json"][0]
        if "pmap -XX" in res:
            verdict = "OK" if r <= 2 * res["pmap -XX"][0] else "MISSED"
            print(f"goal within 2x of pmap -XX: {verdict} ({r / res['pmap -XX'][0]:.2f}x)")
        if "smem -P" in res:
            verdict = "OK" if r < res["smem -P"][0] else "MISSED"
            print(f"goal faster than smem: {verdict} ({res['smem -P'][0] / r:.2f}x faster)")
    finally:
        child.kill()
        child.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
