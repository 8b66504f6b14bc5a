"""remap floor: the page budget of a live process (issue 17, part 3), on real programs.

floorprobe (csrc/targets/floorprobe.c) knows its own budget: N heap pages it wrote, K hot
functions each alone in a page it calls every 200 ms, a cold one in a page never called.  The
floor must list exactly those heap pages as heap, the K hot pages as code and never the cold
or the uncalled ones; a squeeze, then the program's own work, must leave the floor (±1 page)
with the program still correct (it checks every heap page at exit).  Floor against squeeze on
agetty and busybox init: tests/test_getty.py runs their shipped experiments, whose check-floor
step compares the steady state after the squeeze with the floor recorded before it.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time

import pytest
from helpers import assert_one_line_error, remap_cli, status, wait_until

from remap import floor as F
from remap.errors import AlreadyTraced, NoSuchProcess, UnsupportedTarget
from remap.fold import squeeze
from remap.residency import snapshot

N_HEAP, K_HOT = 5, 3
PROFILE_S = 1.5  # seven of floorprobe's 200 ms wake-ups


@pytest.fixture
def probe(spawn):
    """floorprobe N_HEAP K_HOT, ready: (target, heap range, hot pages, cold page)."""
    t = spawn("floorprobe", "default", str(N_HEAP), str(K_HOT))
    words = t.proc.stdout.readline().decode().split()
    assert words[0] == "ready", words
    lo, hi, *hot, cold = (int(w, 16) for w in words[1:])
    return t, (lo, hi), hot, cold


def _healthy(t) -> None:
    """floorprobe checks every heap page against its loop count at EOF: exit 0."""
    t.proc.stdin.close()
    assert t.proc.wait(timeout=5) == 0


def test_floor_lists_exactly_the_pages_the_program_uses(probe):
    t, (lo, hi), hot, cold = probe
    fl = F.floor(t.pid, seconds=PROFILE_S)
    cls = {p.addr: p for p in fl.pages}
    heap = sorted(p.addr for p in fl.pages if p.cls == "heap")
    assert heap == list(range(lo, hi, 4096))  # exactly the N pages it wrote
    for a in hot[:K_HOT]:
        assert cls[a].cls == "code" and cls[a].needed and cls[a].use[0] > 0, cls[a]
    for a in [*hot[K_HOT:], cold]:  # never called: droppable when fault-around mapped them
        assert a not in cls or (cls[a].cls == "droppable" and not cls[a].needed)
    assert fl.floor_kb == 4 * sum(1 for p in fl.pages if p.needed)
    assert fl.rss_kb == snapshot(t.pid).rss_kb  # nothing was dropped by the floor
    assert fl.stack is not None and fl.stack.pages == fl.by_class()["stack"]
    frames = [d["function"] for d in fl.largest["stack"] if d.get("frame") is not None]
    assert {"main", "poll"} <= set(frames), fl.largest["stack"]  # the idle frames, by CFI
    assert status(t.pid)["TracerPid"] == "0"
    # the squeeze then the program's own work reach the floor, and it still works
    squeeze(t.pid)
    time.sleep(1.0)
    wait_until("floorprobe blocked", lambda: open(f"/proc/{t.pid}/syscall").read()[0] != "r", 5)
    now = snapshot(t.pid)
    assert abs(now.present_pages - fl.floor_pages) <= 1, (now.present_pages, fl.floor_pages)
    assert {p.addr for p in now.pages()} >= set(heap)  # anonymous: kept, never dropped
    _healthy(t)


def test_cli_floor_json_schema_and_png(probe, tmp_path):
    t, (lo, hi), _hot, _cold = probe
    png = tmp_path / "floor.png"
    r = remap_cli("floor", str(t.pid), "--seconds", "0.5", "--json", "--png", str(png))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert {"pid", "exe", "rss_kb", "floor_kb", "floor_pages", "by_class", "pages", "stack",
            "largest", "notes", "profiled"} <= set(d)  # fmt: skip
    assert d["pid"] == t.pid and d["profiled"] is True
    for p in d["pages"]:
        assert set(p) == {"addr", "cls", "needed", "reason", "label", "section", "symbol",
                          "present", "use", "what"}  # fmt: skip
        assert p["cls"] in F.CLASSES and p["reason"] and p["needed"] == (p["cls"] != "droppable")
    assert d["floor_pages"] == sum(p["needed"] for p in d["pages"]) == sum(d["by_class"].values())
    assert d["floor_kb"] == 4 * d["floor_pages"]
    assert d["by_class"]["heap"] == (hi - lo) // 4096
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = remap_cli("floor", str(t.pid), "--seconds", "0.3")
    assert text.returncode == 0 and "floor" in text.stdout and "RSS now" in text.stdout
    _healthy(t)


def test_no_profile_counts_every_present_file_page(probe):
    t, *_ = probe
    fl = F.floor(t.pid, use_profile=False)
    assert not fl.profiled and any("--no-profile" in n for n in fl.notes)
    assert not [p for p in fl.pages if p.cls == "droppable" and p.label != "stack"]
    # the table groups the code and rodata reasons whole, not cut at a colon inside them
    rows = [ln for ln in F.table(fl).splitlines() if ln.startswith(("code ", "rodata "))]
    assert rows and all(ln.count("(") == ln.count(")") for ln in rows), rows
    assert any("present file page, counted as needed (--no-profile) (" in ln for ln in rows)
    _healthy(t)


def test_floor_refusals_are_one_line():
    r = remap_cli("floor", str(2**22 - 3), "--seconds", "1")
    assert_one_line_error(r, 3)
    with pytest.raises(NoSuchProcess):
        F.floor(2**22 - 3, seconds=0.1)
    r = remap_cli("floor", "1", "--seconds", "0")
    assert_one_line_error(r, 2)

    def block_trap():
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTRAP])

    p = subprocess.Popen(["sleep", "30"], preexec_fn=block_trap)
    try:
        with pytest.raises(UnsupportedTarget, match="SIGTRAP.*--no-profile"):
            F.floor(p.pid, seconds=0.1)
        r = remap_cli("floor", str(p.pid), "--seconds", "0.1")
        assert_one_line_error(r, 5)
        assert "--no-profile" in r.stderr
        assert remap_cli("floor", str(p.pid), "--no-profile").returncode == 0
        assert p.poll() is None and status(p.pid)["TracerPid"] == "0"
    finally:
        p.kill()
        p.wait(timeout=5)


def test_floor_refuses_a_traced_process(probe):
    if not shutil.which("strace"):
        pytest.skip("strace not installed")
    t, *_ = probe
    st = subprocess.Popen(["strace", "-qq", "-e", "trace=none", "-p", str(t.pid)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_until("strace attached", lambda: status(t.pid)["TracerPid"] != "0", 5)
        with pytest.raises(AlreadyTraced, match="--no-profile"):
            F.floor(t.pid, seconds=0.2)
        r = remap_cli("floor", str(t.pid), "--seconds", "0.2")
        assert_one_line_error(r, AlreadyTraced.exit_code)
        assert "traced" in r.stderr
        fl = F.floor(t.pid, use_profile=False)  # reads only: works beside the other tracer
        assert fl.floor_pages > 0 and not fl.profiled
    finally:
        st.terminate()
        st.wait(timeout=5)
    _healthy(t)


def test_the_floor_window_is_kept_inside_one_wall_clock_period():
    """EnergyMech's update() (src/core.c) runs its ten-minute bookkeeping after each multiple
    of 600 s: the floor step waits past a boundary that would fall in its window, and
    check-floor counts the boundaries a window held (steps_floor's docstring)."""
    from remap.errors import ExperimentError
    from remap.experiment import steps_floor as SF

    t = 1_764_684_000.0  # a multiple of 600 (and of 3,600)
    assert SF.period_wait(t + 100, 600, 150) == 0.0  # the next boundary is 500 s away
    assert SF.period_wait(t + 450, 600, 150) == 0.0  # exactly the window away: clear
    assert SF.period_wait(t + 451, 600, 150) == 149 + SF.PERIOD_MARGIN_S
    assert SF.period_wait(t - 0.5, 600, 150) == 0.5 + SF.PERIOD_MARGIN_S
    start = t - 0.5 + SF.period_wait(t - 0.5, 600, 150)  # the window starts after the wait
    assert SF.periods_crossed(start, start + 150, 600) == 0
    assert SF.periods_crossed(t - 1, t, 600) == 1 and SF.periods_crossed(t, t + 599, 600) == 0
    assert SF.periods_crossed(t - 1, t + 601, 600) == 2
    assert SF._period_params({}) is None
    assert SF._period_params({"period": 600, "window": 150}) == (600, 150)
    for bad in ({"period": 600}, {"window": 150}, {"period": 600, "window": 594},
                {"period": 10, "window": 1}, {"period": 600.5, "window": 150}):  # fmt: skip
        with pytest.raises(ExperimentError):
            SF._period_params(bad)
