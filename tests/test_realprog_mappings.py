"""Real programs with every kind of mapping, squeezed, then asked whether their data survived.

Issue 12: a squeeze must lose nothing.  Two programs check their own data afterwards:
csrc/targets/mappings.c (hugetlb when huge pages can be had, THP, memfd, MAP_SHARED anonymous,
SysV, shared and private files, a deleted file -- every byte re-checked by the program), and
Debian's sqlite3 with a 100,000-row in-memory database (its own count and sums).
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
from helpers import wait_blocked
from mapping_kinds import reserved_hugepages, self_check, smaps_of, start_mappings

import remap
from remap import fold

SQLITE3 = "/usr/bin/sqlite3"
ROWS = 100_000


def _squeeze_twice(pid: int) -> Iterator[fold.FoldReport]:
    """Squeeze PID with the stack move, then with drops only (the two runs a user makes),
    yielding each report before the next squeeze starts."""
    yield fold.squeeze(pid)
    yield fold.squeeze(pid, move=False)


def test_mappings_program_checks_every_byte_after_squeeze(spawn, tmp_path, is_root):
    with reserved_hugepages(2, is_root) as huge:
        t, where = start_mappings(spawn, tmp_path, huge)
        assert ("hugetlb" in where) == bool(huge)
        before = self_check(t)
        assert set(before) >= {"thp", "memfd", "shared-anon", "sysv", "shared-file", "priv-file"}
        thp = smaps_of(t.pid, where["thp"])
        rss_before = remap.snapshot(t.pid).rss_kb
        for report in _squeeze_twice(t.pid):
            assert report.after is not None and report.after["rss_kb"] <= report.before["rss_kb"]
            s = remap.snapshot(t.pid)  # before the program's check reads its files back in
            assert s.rss_kb < rss_before  # something was dropped: the clean file pages
            assert not s.vma_at(where["priv-file"]).pages  # read-only data file: dropped
            for name in ("memfd", "shared-anon", "sysv"):  # shared memory: kept, all of it
                assert len(s.vma_at(where[name]).pages) == 256, name
            assert len(s.vma_at(where["thp"]).pages) == 1024  # anonymous: never dropped
            assert smaps_of(t.pid, where["thp"])["AnonHugePages"] == thp["AnonHugePages"]
            if huge:
                hv = s.vma_at(where["hugetlb"])
                assert hv.label == "hugetlb" and len(hv.pages) == 512 * huge
                assert smaps_of(t.pid, hv.start)["Private_Hugetlb"] == 2048 * huge
            assert self_check(t) == before  # the program's own verdict: nothing lost
        t.proc.stdin.write(b"quit\n")
        t.proc.stdin.flush()
        assert t.proc.wait(timeout=10) == 0


class Sqlite:
    """Debian's sqlite3 shell on an in-memory database, driven through a pipe, every read
    bounded by a deadline."""

    MARK = "__remap_end__"

    def __init__(self):
        self.proc = subprocess.Popen(
            [SQLITE3, ":memory:"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip

    def ask(self, sql: str, timeout: float = 30.0) -> str:
        """Run SQL and return what the shell printed for it."""
        self.proc.stdin.write(f"{sql}\n.print {self.MARK}\n".encode())
        self.proc.stdin.flush()
        out = b""
        deadline = time.monotonic() + timeout
        while f"{self.MARK}\n".encode() not in out:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, left))
            assert ready, f"sqlite3 silent for {timeout}s after {sql[:60]!r}: {out[-200:]!r}"
            chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
            assert chunk, self.proc.stderr.read().decode()
            out += chunk
        return out.decode().replace(f"{self.MARK}\n", "").strip()

    def wait_blocked(self, timeout: float = 5.0) -> None:
        wait_blocked(self.proc.pid, timeout, self.proc)

    def close(self) -> int:
        self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=5)
            self.proc.stdout.close()
            self.proc.stderr.close()


CHECK = "SELECT count(*), sum(n), sum(length(v)), sum(unicode(substr(v, 1, 1)) * k) FROM t;"


def test_sqlite3_in_memory_database_survives_squeeze():
    if not os.access(SQLITE3, os.X_OK) or shutil.which("sqlite3") is None:
        pytest.skip("Debian's sqlite3 is not installed (apt-get install sqlite3)")
    db = Sqlite()
    try:
        db.ask(
            "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT, n INTEGER);"
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < "
            f"{ROWS}) INSERT INTO t SELECT x, printf('%08x-%d', (x * 2654435761) % 4294967296,"
            " x), x * 7 FROM c;"
        )
        before = db.ask(CHECK)
        count, total = (int(x) for x in before.split("|")[:2])
        assert (count, total) == (ROWS, 7 * ROWS * (ROWS + 1) // 2)  # its own data, as built
        for _ in range(3):
            db.wait_blocked()
            for report in _squeeze_twice(db.proc.pid):
                assert report.after is not None and any(st.applied for st in report.steps)
                assert report.after["rss_kb"] <= report.before["rss_kb"]
            assert db.ask(CHECK) == before
        assert db.ask("PRAGMA integrity_check;") == "ok"
    finally:
        assert db.close() == 0
