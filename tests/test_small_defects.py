"""Issue 12's smaller defects, each checked on real processes: hugetlb counted like smaps, honest
labels for files and shared memory, squeeze --no-stop's permission error, PID forms, syscall
arguments above 64 bits, and `remap run` on a file that is not an experiment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import NOBODY, assert_one_line_error, remap_cli, rollup_kb
from mapping_kinds import reserved_hugepages, smaps_of, start_mappings

import remap
from remap import inject, native, procfs, targets
from remap.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
HUGE = 2  # 2 MiB hugetlb pages the mappings target maps and writes


def refused(r: subprocess.CompletedProcess, code: int, *words: str) -> None:
    """R failed with exit CODE and one stderr line holding every one of WORDS."""
    assert_one_line_error(r, code)
    for w in words:
        assert w in r.stderr, (w, r.stderr)


@pytest.fixture
def hugepages(is_root) -> Iterator[int]:
    """HUGE free 2 MiB huge pages for the test (reserved as root and restored), else skip."""
    with reserved_hugepages(HUGE, is_root) as n:
        if not n:
            pytest.skip("no free huge pages and none could be reserved (not root, fragmented?)")
        yield n


# --------------------------------------------------------------------------- 1. hugetlb
def test_hugetlb_mapping_counted_like_smaps(spawn, tmp_path, hugepages):
    t, where = start_mappings(spawn, tmp_path, hugepages)
    start = where["hugetlb"]
    kernel = smaps_of(t.pid, start)
    assert kernel["Rss"] == 0 and kernel["Private_Hugetlb"] == 2048 * hugepages, kernel
    doc = json.loads(remap_cli("map", str(t.pid), "--json").stdout)
    (v,) = [v for v in doc["vmas"] if v["start"] == start]
    assert v["rss_kb"] == kernel["Rss"] == 0, v["rss_kb"]
    assert v["label"] == "hugetlb"
    assert len(v["pages"]) == 512 * hugepages  # present in pagemap, 4 kB entries
    assert {p["backing"] for p in v["pages"]} == {"hugetlb"}
    rollup = rollup_kb(t.pid)["Rss"]
    assert sum(x["rss_kb"] for x in doc["vmas"]) == rollup
    for smaps in (True, False):  # the model, from smaps and from maps alone
        s = remap.snapshot(t.pid, smaps=smaps)
        hv = s.vma_at(start)
        assert hv.hugetlb and hv.label == "hugetlb" and hv.rss_kb == 0
        assert s.rss_kb == 4 * s.present_pages == s.counters_kb["smaps_rollup_rss"] == rollup
        assert any("Private_Hugetlb" in n and f"{2048 * hugepages} kB" in n for n in s.notes)
    row = [ln for ln in remap_cli("map", str(t.pid)).stdout.splitlines() if f"{start:012x}" in ln]
    assert row and row[0].split()[3] == "0", row  # the table's RSS column


# --------------------------------------------------------------------------- 2. labels
def test_file_and_shared_memory_labels(spawn, tmp_path):
    t, where = start_mappings(spawn, tmp_path)
    want = {
        "priv-file": "file:priv.bin",
        "deleted-file": "file:deleted.bin",
        "shared-file": "file:shared.bin",
        "memfd": "shmem",
        "shared-anon": "shmem",
        "sysv": "shmem",
        "thp": "anon",
    }
    doc = json.loads(remap_cli("map", str(t.pid), "--json").stdout)
    by_start = {v["start"]: v for v in doc["vmas"]}
    s = remap.snapshot(t.pid)
    for name, label in want.items():
        assert by_start[where[name]]["label"] == label, (name, by_start[where[name]]["path"])
        assert s.vma_at(where[name]).label == label, name
    libs = {v["label"] for v in doc["vmas"] if "libc.so" in v["path"]}
    assert libs == {"lib:libc.so.6"}  # an ELF shared object keeps lib:NAME


DELETED_ELF = """
import ctypes, os, shutil, sys
shutil.copy(sys.argv[1], sys.argv[2])
lib = ctypes.CDLL(sys.argv[2])  # a shared object loaded the usual way, then deleted on disk
os.unlink(sys.argv[2])
print("ready", flush=True)
sys.stdin.read()
"""


def test_deleted_shared_object_is_still_a_library(tmp_path, is_root):
    """A library replaced on disk (an upgrade) is read through /proc/PID/map_files (root)."""
    if not is_root:
        pytest.skip("map_files needs CAP_SYS_ADMIN")
    src = "/usr/lib/x86_64-linux-gnu/libm.so.6"
    if not os.path.isfile(src):
        pytest.skip(f"no {src}")
    copy = tmp_path / "libremapcopy.so"
    p = subprocess.Popen(
        [sys.executable, "-c", DELETED_ELF, src, str(copy)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert p.stdout.readline() == b"ready\n"
        vmas = [v for v in remap.snapshot(p.pid).vmas if v.path == f"{copy} (deleted)"]
        assert vmas and {v.label for v in vmas} == {"lib:libremapcopy.so"}, vmas
        code = [pg for v in vmas for pg in v.pages if pg.section == ".text"]
        assert code, "its code pages are described from the ELF file"
    finally:
        p.kill()
        p.wait(timeout=5)
        p.stdin.close()
        p.stdout.close()


def test_tmpfs_file_is_shmem(spawn, tmp_path):
    """A file on tmpfs (/dev/shm) is shared memory: mountinfo's decimal devices must be matched
    against maps' hex ones."""
    if not os.path.isdir("/dev/shm") or os.statvfs("/dev/shm").f_bavail < 1024:
        pytest.skip("no writable /dev/shm")
    folder = Path("/dev/shm") / f"remap-test-{os.getpid()}"
    folder.mkdir()
    try:
        t, where = start_mappings(spawn, folder)
        s = remap.snapshot(t.pid)
        v = s.vma_at(where["priv-file"])
        assert v.label == "shmem", v.label
        assert {p.backing for p in v.pages} == {"shmem"}
        assert v.shmem_kb == smaps_of(t.pid, v.start)["Rss"] == 1024
    finally:
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()


# --------------------------------------------------------------------------- 3. --no-stop
def test_squeeze_no_stop_as_nobody_is_a_permission_error(is_root):
    """nobody on its own process: process_madvise wants CAP_SYS_NICE (mm/madvise.c): exit 4."""
    if not is_root:
        pytest.skip("needs root to drop to nobody")
    native.load()  # built as root, readable by nobody
    path = targets.build("echoloop")
    p = subprocess.Popen([*NOBODY, str(path)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while procfs.read_status(p.pid).get("Uid", "").split()[:1] != ["65534"]:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        r = remap_cli(
            "squeeze", "--no-stop", str(p.pid), prefix=NOBODY,
            env={"REMAP_BUILD_DIR": str(path.parents[1])},
        )  # fmt: skip
        refused(r, 4, "CAP_SYS_NICE", "process_madvise")
        assert p.poll() is None
    finally:
        p.kill()
        p.wait(timeout=5)
        p.stdin.close()


# --------------------------------------------------------------------------- 4. PIDs
def _arabic(n: int) -> str:
    return "".join(chr(0x660 + int(d)) for d in str(n))


COMMANDS = [
    ("map", "{}"),
    ("map", "{}", "--json"),
    ("explain", "{}"),
    ("watch", "{}", "--count", "1", "--interval", "0.1"),
    ("syscall", "{}", "getpid"),
    ("squeeze", "{}", "--dry-run"),
    ("fold", "{}", "--dry-run"),
    ("profile", "{}", "--for", "0.1"),
]


def test_pid_accepts_only_ascii_digits(spawn, capsys):
    """Each form would act on our own target were it accepted (never on init)."""
    t = spawn("echoloop")
    t.wait_blocked()
    forms = [f" {t.pid}", f"+{t.pid}", f"{t.pid} ", _arabic(t.pid), f"{t.pid:_}", f"0x{t.pid:x}"]
    from remap.cli import main

    for cmd in COMMANDS:
        for form in forms:
            argv = [x.format(form) for x in cmd]
            assert main(argv) == 2, argv
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "not a PID" in err[0], (argv, err)
    refused(remap_cli("map", _arabic(t.pid)), 2, "not a PID")
    assert t.proc.poll() is None and t.state() == "S"


# --------------------------------------------------------------------------- 5. 64 bits
def test_syscall_argument_above_64_bits_refused(spawn):
    t = spawn("echoloop")
    t.wait_blocked()
    refused(remap_cli("syscall", str(t.pid), "getpid", "0x1ffffffffffffffff"), 2, "64 bits")
    refused(remap_cli("syscall", str(t.pid), "getpid", str(-(1 << 63) - 1)), 2, "64 bits")
    r = remap_cli("syscall", str(t.pid), "close", "0xffffffffffffffff")  # fits: fd -1
    assert r.returncode == 1 and "EBADF" in r.stdout, (r.stdout, r.stderr)
    with inject.attach(t.pid) as s:
        for bad in ((1 << 64) | 1, 1 << 64, -(1 << 63) - 1):
            with pytest.raises(UsageError, match="64 bits"):
                s.syscall("getpid", bad)
            with pytest.raises(UsageError, match="64 bits"):
                s.syscalls([("getpid",), ("getpid", bad)])
        assert s.syscall("getpid") == t.pid
        with pytest.raises(OSError) as e:
            s.syscall("close", (1 << 64) - 1)  # -1 as a register word
        assert e.value.errno == 9
    t.proc.stdin.write(b"x")
    t.proc.stdin.close()
    assert t.proc.wait(timeout=5) == 0


# --------------------------------------------------------------------------- 6. remap run
def test_run_a_file_that_is_not_an_experiment(tmp_path):
    refused(remap_cli("run", "/etc/passwd"), 7, "/etc/passwd", "not an experiment file", "TOML")
    plain = tmp_path / "settings.toml"
    plain.write_text('title = "not an experiment"\n[owner]\nname = "x"\n')
    refused(remap_cli("run", str(plain)), 7, "not an experiment file", "[target]", "owner")
    refused(remap_cli("run", str(targets.build("echoloop"))), 7, "not an experiment file")
    refused(remap_cli("run", "no-such-experiment"), 7, "unknown experiment")
