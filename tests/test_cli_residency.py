"""`remap map / explain / watch` on real targets: JSON shapes of issue 2, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from helpers import NOBODY, assert_one_line_error, remap_cli, rollup_kb, state, status, wait_until

import remap
from remap import targets
from remap.render import COUNTER_TEXT


@pytest.fixture
def echoloop(spawn):
    t = spawn("echoloop")
    t.wait_blocked()
    return t


@pytest.mark.parametrize("png", [False, True], ids=["streamed", "with-png"])
def test_map_json_shape(echoloop, tmp_path, png):
    """Both paths: plain --json is written straight from the page runs (remap.mapjson); with
    --png the snapshot model is built for the picture and encoded."""
    path = tmp_path / "map.png"
    extra = ["--png", str(path)] if png else []
    r = remap_cli("map", str(echoloop.pid), "--json", *extra)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert set(d) == {"pid", "kernel", "vmas"} and d["pid"] == echoloop.pid
    assert d["kernel"] == os.uname().release
    for v in d["vmas"]:
        assert set(v) == {"start", "end", "perms", "path", "label", "rss_kb", "pages"}
        assert isinstance(v["start"], int) and v["start"] < v["end"]
        assert v["rss_kb"] == 4 * len(v["pages"]) or v["label"] == "vvar"
        for p in v["pages"]:
            assert set(p) == {"addr", "backing", "label", "section", "symbol"}
            assert v["start"] <= p["addr"] < v["end"] and p["label"]
    assert sum(v["rss_kb"] for v in d["vmas"]) == rollup_kb(echoloop.pid)["Rss"]
    assert {p["label"] for v in d["vmas"] for p in v["pages"]} >= {"elf-header", "stack"}
    if png:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_map_table_and_pages(echoloop):
    r = remap_cli("map", str(echoloop.pid), "--pages")
    assert r.returncode == 0, r.stderr
    assert "elf-header" in r.stdout and "[stack]" in r.stdout and "file (clean)" in r.stdout
    assert "VM " in r.stdout and "RSS" in r.stdout


def test_fast_map_path_prints_what_the_argparse_path_prints(echoloop):
    """`map PID` and `map PID --json` skip argparse (remap.cli.fast_map_args); the same command
    spelt so that argparse parses it (`--` before the PID, an abbreviated --json) prints the same
    bytes on the same live process, and an error the same line and exit code."""
    pid = str(echoloop.pid)
    for fast, slow in (
        (["map", pid], ["map", "--", pid]),
        (["map", pid, "--json"], ["map", "--js", "--", pid]),
        (["map", "--json", pid], ["map", pid, "--js"]),
    ):
        a, b = remap_cli(*fast), remap_cli(*slow)
        assert a.returncode == b.returncode == 0, (a.stderr, b.stderr)
        assert a.stdout == b.stdout and a.stdout, fast
    p = subprocess.Popen(["true"])
    p.wait(timeout=5)
    for fast, slow in (
        (["map", str(p.pid)], ["map", "--", str(p.pid)]),
        (["map", str(p.pid), "--json"], ["map", "--json", "--", str(p.pid)]),
    ):
        a, b = remap_cli(*fast), remap_cli(*slow)
        assert_one_line_error(a, 3)
        assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr)


def test_the_remap_command_runs_map_without_argparse_or_re(echoloop):
    """The installed command (bin/remap, not pip's entry-point wrapper, which imports re) and
    the fast `map` path load neither argparse nor re: what issue 15's start-up budget needs."""
    script = os.path.join(os.path.dirname(sys.executable), "remap")
    with open(script) as f:
        assert "import re" not in f.read()
    argv = [script, "map", str(echoloop.pid), "--json"]
    assert remap_cli(*argv[1:]).returncode == 0  # the ELF cache now holds the target's entry
    for cmd in (argv, argv[:-1]):
        r = subprocess.run([sys.executable, "-X", "importtime", *cmd], capture_output=True,
                           text=True, timeout=60)  # fmt: skip
        assert r.returncode == 0, r.stderr
        loaded = {ln.rsplit("|", 1)[-1].strip() for ln in r.stderr.splitlines() if "|" in ln}
        assert {"remap.mapjson" if cmd is argv else "remap.maptable"} <= loaded
        # struct and bisect only parse ELF files: a cached entry is used as it is; collections
        # (and array, which imports it) would be ~2.5 ms: remap.record, pagemap._address
        unwanted = {"re", "argparse", "enum", "ctypes", "contextlib", "struct", "bisect"}
        unwanted |= {"collections", "array", "typing"}
        assert loaded.isdisjoint(unwanted), sorted(loaded & unwanted)
    assert json.loads(remap_cli(*argv[1:]).stdout)["pid"] == echoloop.pid


def test_an_in_process_map_keeps_the_garbage_collector(echoloop, capsys):
    """The command's own `map` runs with the cyclic collector off (it ends the process:
    remap.cli.main's quick_exit); a caller of main() in its own process keeps it on."""
    import gc

    from remap.cli import main

    assert gc.isenabled()
    assert main(["map", str(echoloop.pid), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pid"] == echoloop.pid
    assert gc.isenabled()


def test_explain_json_shape_and_text(echoloop):
    r = remap_cli("explain", str(echoloop.pid), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert set(d) == {
        "pid", "kernel", "summary", "counters_kb", "fault_around", "rss_lag", "notes",
    }  # fmt: skip
    assert set(d["counters_kb"]) == {
        "status_vmrss", "status_rss_anon", "status_rss_file", "status_rss_shmem",
        "statm_rss", "smaps_rss", "smaps_rollup_rss", "pagemap_present",
    }  # fmt: skip
    c = d["counters_kb"]
    assert c["smaps_rss"] == c["smaps_rollup_rss"] == c["pagemap_present"]
    with open(f"/proc/{echoloop.pid}/status") as f:
        vmrss = next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))
    assert c["status_vmrss"] == vmrss
    assert d["summary"].startswith("VM ") and f"RSS {vmrss} kB [ Code " in d["summary"]
    assert d["notes"] and any("Linux" in n for n in d["notes"])
    lag = d["rss_lag"]  # status's classes beside the page walk's, and the thread's faults
    assert lag["counted_kb"]["anon"] == c["status_rss_anon"]
    assert sum(lag["walked_kb"].values()) == c["pagemap_present"]
    with open(f"/proc/{echoloop.pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    assert lag["faults"] == {str(echoloop.pid): int(fields[7]) + int(fields[9])}
    r = remap_cli("explain", str(echoloop.pid))
    assert r.returncode == 0 and "pagemap present" in r.stdout and "status counts" in r.stdout
    # plain lines: the summary, each figure and each note whole on its line (rich, which drew
    # this once, cut them at its width), in a process that never imports rich
    lines = r.stdout.splitlines()
    assert lines[0] == d["summary"] and all(f"- {n}" in lines for n in d["notes"]), lines
    for k, v in d["counters_kb"].items():  # each figure's row: its name, then its kB
        name = COUNTER_TEXT[k]
        row = next(ln for ln in lines if ln.startswith(name + " "))
        assert row[len(name) :].split()[0] == str(v), row
    probe = "import runpy, sys; sys.argv = ['remap', 'explain', sys.argv[1]]; "
    probe += "runpy.run_module('remap', run_name='__main__', alter_sys=True)"
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", probe, str(echoloop.pid)],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    loaded = {ln.rsplit("|", 1)[-1].strip() for ln in r.stderr.splitlines() if "|" in ln}
    assert r.returncode == 0 and "remap.render" in loaded and "rich" not in loaded, r.stderr[-500:]


def test_watch_is_bounded_and_sees_growth(spawn):
    t = spawn("echoloop")
    t.wait_blocked()
    r = remap_cli("watch", str(t.pid), "--interval", "0.05", "--count", "2", "--json")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(lines) == 2
    assert all(x["pid"] == t.pid and x["delta_kb"] == 0 for x in lines)
    assert all(isinstance(x["referenced_kb"], int) for x in lines)


def test_unprivileged_user_on_own_process_gets_a_note(is_root):
    if not is_root:
        pytest.skip("needs root to drop to nobody")
    path = targets.build("echoloop")
    p = subprocess.Popen([*NOBODY, str(path)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:

        def asleep() -> bool:  # setpriv execs the target in place: same PID
            return status(p.pid)["Name"] == "echoloop" and state(p.pid) == "S"

        wait_until("echoloop asleep as nobody", asleep, 5)
        r = remap_cli("explain", str(p.pid), "--json", prefix=NOBODY)
        assert r.returncode == 0, r.stderr
        d = json.loads(r.stdout)
        c = d["counters_kb"]
        assert c["smaps_rss"] == c["pagemap_present"]
        assert any("CAP_SYS_ADMIN" in n for n in d["notes"])
    finally:
        p.kill()
        p.wait(timeout=5)
        p.stdin.close()


# ---------------------------------------------------------------------------- errors
def test_no_such_pid():
    p = subprocess.Popen(["true"])
    p.wait(timeout=5)
    for cmd in (["map"], ["map", "--json"], ["explain"], ["watch"]):
        r = remap_cli(*cmd, str(p.pid))
        assert_one_line_error(r)
        assert r.returncode == 3 and "no such process" in r.stderr


def test_zombie():
    p = subprocess.Popen(["true"])
    try:
        wait_until("a zombie", lambda: state(p.pid) == "Z", 5)
        for extra in ([], ["--json"]):  # the table path and the streaming JSON path
            r = remap_cli("map", str(p.pid), *extra)
            assert_one_line_error(r)
            assert "zombie" in r.stderr
    finally:
        p.wait(timeout=5)


def test_kernel_thread():
    for cmd in (["explain"], ["map", "--json"]):
        r = remap_cli(*cmd, "2")
        assert_one_line_error(r)
        assert r.returncode == 5 and "kernel thread" in r.stderr


def test_permission_denied(echoloop, is_root):
    if not is_root:
        pytest.skip("needs root to drop to nobody")
    for extra in ([], ["--json"]):
        r = remap_cli("map", str(echoloop.pid), *extra, prefix=NOBODY)
        assert_one_line_error(r)
        assert r.returncode == 4 and "permission denied" in r.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["map"],
        ["map", "abc"],
        ["map", "-5"],
        ["map", "0"],
        ["explain", "99999999999"],
        ["watch", "1", "--interval", "soon"],
        ["watch", "1", "--count", "0"],
        ["map", "1", "--bogus"],
    ],
)
def test_garbage_arguments(args):
    r = remap_cli(*args)
    assert_one_line_error(r)
    assert r.returncode == 2


def test_watch_sees_written_pages_and_draws_them(spawn, tmp_path):
    """Soft-dirty bits per page (where the kernel keeps them): an idle target writes nothing;
    fed input while watched, it writes its stack (the byte it reads).  Where the kernel lacks
    soft-dirty (this machine's 6.18 build does), `written` is null and a note says why.  Either
    way the PNG is drawn, with what was touched marked."""
    from remap.pagemap import soft_dirty_supported

    dirty = soft_dirty_supported()
    t = spawn("echoloop")
    t.wait_blocked()
    r = remap_cli("watch", str(t.pid), "--interval", "0.2", "--count", "2", "--json")
    idle = [json.loads(x) for x in r.stdout.splitlines()]
    assert r.returncode == 0
    assert [x["written"] for x in idle] == ([[], []] if dirty else [None, None])
    assert dirty or any("CONFIG_MEM_SOFT_DIRTY" in n for n in idle[0]["notes"])
    png = tmp_path / "watch.png"
    cmd = [sys.executable, "-m", "remap", "watch", str(t.pid), "--interval", "0.3", "--count", "3"]
    w = subprocess.Popen([*cmd, "--json", "--png", str(png)], stdout=subprocess.PIPE, text=True)
    for _ in range(4):
        time.sleep(0.2)
        t.proc.stdin.write(b"x")
        t.proc.stdin.flush()
        assert t.proc.stdout.read(1) == b"x"
    out, _ = w.communicate(timeout=30)
    samples = [json.loads(x) for x in out.splitlines()]
    assert w.returncode == 0 and len(samples) == 3
    if dirty:
        assert "stack" in {p["label"] for s in samples for p in s["written"]}, samples
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert all("notes" in s for s in samples)


FAULT_AROUND_TARGET = """
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
m = mmap.mmap(fd, 1 << 20, mmap.MAP_PRIVATE, mmap.PROT_READ)
m[5 * 4096 + 7]  # one read fault, in the middle of the file's first 64 KiB window
print("ready", flush=True)
sys.stdin.read()
"""


def test_explain_shows_fault_around_of_one_touch(tmp_path):
    """One page read from a cached 1 MiB file mapped privately: the kernel maps it with cached
    neighbours, and explain names the mechanism and counts the crowded windows."""
    data = tmp_path / "cached.bin"
    with open(data, "wb") as f:  # written, so every page is in the page cache; synced, so
        f.write(os.urandom(1 << 20))  # none is locked for writeback when the fault maps them
        f.flush()
        os.fsync(f.fileno())
    p = subprocess.Popen(
        [sys.executable, "-c", FAULT_AROUND_TARGET, str(data)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert p.stdout.readline() == b"ready\n"
        d = json.loads(remap_cli("explain", str(p.pid), "--json").stdout)["fault_around"]
        assert d["active"] and d["window_bytes"] == 65536
        snap = remap.snapshot(p.pid)
        (v,) = [v for v in snap.vmas if v.path == str(data)]
        # the touched page, and whatever cached neighbours the kernel mapped with it (how
        # many, and whether only from the aligned window, depends on the page cache's folios
        # at that moment: with large folios 6.18 was seen mapping pages beyond it)
        present = [pg.addr for pg in v.pages]
        assert v.start + 5 * 4096 in present
        others = sum(len(x.pages) for x in snap.vmas if x.is_file and x is not v)
        assert d["file_pages"] >= len(present) and d["file_pages"] <= len(present) + others
        if len(present) > 1:
            assert d["pages_in_shared_windows"] >= 2
        text = remap_cli("explain", str(p.pid)).stdout
        assert "fault-around: a read fault on a file mapping maps up to 65536 bytes" in text
    finally:
        p.kill()
        p.wait(timeout=5)


def test_png_cells_are_the_page_walk(echoloop, tmp_path):
    """The picture shows what the page walk found: one full-coloured cell per present page
    (pale: mapped only; dark: a compressed gap), and a touched page gets its black dot."""
    from PIL import Image

    from remap.render import GAP_RGB, grid, png
    from remap.residency import snapshot

    snap = snapshot(echoloop.pid)
    rgb, rows, used, starts = grid(snap)  # starts: each VMA's first cell
    flat = [tuple(rgb[i : i + 3]) for i in range(0, len(rgb), 3)]
    full = [c for c in flat if c != GAP_RGB and min(c) < 209]  # pale cells are all >= 209
    assert len(full) == sum(len(v.pages) for v in snap.vmas) > 0
    assert {"code", "stack"} <= used
    gaps = sum(1 for i in range(1, len(snap.vmas)) if snap.vmas[i].start != snap.vmas[i - 1].end)
    assert flat.count(GAP_RGB) == gaps
    stack_page = next(p.addr for v in snap.vmas for p in v.pages if p.label == "stack")
    path = tmp_path / "m.png"
    n = png(snap, str(path), marked={stack_page})
    assert n == sum((v.end - v.start) // 4096 for v in snap.vmas) + gaps
    # the marked cell's middle pixel: black when marked, the stack's colour when not
    v0, i0 = next(
        (v, i) for v, i in zip(snap.vmas, starts, strict=True) if v.start <= stack_page < v.end
    )
    i = i0 + (stack_page - v0.start) // 4096
    cell = min(6, 4000 // rows)
    xy = (8 + (i % 128) * cell + cell // 2, 36 + (i // 128) * cell + cell // 2)
    assert Image.open(path).convert("RGB").getpixel(xy) == (0, 0, 0)
    png(snap, str(path))
    assert Image.open(path).convert("RGB").getpixel(xy) == flat[i]
    other = tmp_path / "m.picture"  # no .png: the format is named, the file is still a PNG
    png(snap, str(other))
    assert other.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(other).size == Image.open(path).size
    # `map --png` reads no PFNs where the scan tells zero pages: the same picture, byte for byte
    cli = tmp_path / "cli.png"
    remap_cli("map", str(echoloop.pid), "--png", str(cli))
    assert cli.read_bytes() == path.read_bytes()


def test_a_reader_that_goes_away_is_not_an_error(echoloop):
    """`remap map PID --json | head -c1`: the closed pipe ends the command quietly, exit 0,
    not "internal error: BrokenPipeError" (exit 70); `explain` and the other tables printed
    through rich end the same way, not with rich's own exit 1 (cli.common.console)."""
    exe = os.path.join(os.path.dirname(sys.executable), "remap")
    pid = str(echoloop.pid)
    for args in (["map", pid, "--json"], ["map", pid, "--pages"], ["explain", pid], ["map", pid]):
        r, w = os.pipe()
        os.close(r)  # no reader at all: the first write fails with EPIPE
        p = subprocess.run([exe, *args], stdout=w, stderr=subprocess.PIPE, timeout=60)
        os.close(w)
        assert p.returncode == 0 and p.stderr == b"", (args, p.returncode, p.stderr)
