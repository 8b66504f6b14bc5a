"""Debian's sqlite3 shell with an in-memory database, squeezed 10 times while it waits for SQL.

Issue 12 asks for sqlite3 with an in-memory DB among the real programs.  The shell runs as
nobody and holds 100k rows (15 MB of text, a b-tree and an index, all in its heap) that the
test generated itself.  After every squeeze sqlite checks its own structures (PRAGMA
integrity_check: every page, every index entry against its row), and the test reads back 300
sampled rows, the row count and a lookup through the index; every row before the first squeeze
and after the last.
"""

from __future__ import annotations

import hashlib
import random
import subprocess

import pytest
from realprog import NOBODY, need, read_line, squeeze, squeezed, started

ROWS = 100_000
SQUEEZES = 10


def row(i: int) -> str:
    """32 to 192 characters, different for every row, never quoted or split by the shell."""
    h = hashlib.blake2b(i.to_bytes(8, "little"), digest_size=16).hexdigest()
    return f"{i}:" + h * (1 + i % 6)


class Shell:
    """The sqlite3 shell over pipes: it prints each result row on a line of its own and
    flushes after every statement, so one statement is one bounded read."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def run(self, sql: str) -> None:
        self.proc.stdin.write(sql.encode() + b"\n")
        self.proc.stdin.flush()

    def one(self, sql: str) -> str:
        """The single-line answer of SQL (AssertionError if none comes within 30 s)."""
        self.run(sql)
        return read_line(self.proc).decode().rstrip("\n")

    def values(self, where: str) -> list[str]:
        """v of the rows WHERE selects, in key order (one line: group_concat with ',')."""
        sql = f"SELECT group_concat(v, ',') FROM (SELECT v FROM t {where} ORDER BY k);"
        return self.one(sql).split(",")


@pytest.mark.timeout(120)
def test_sqlite_memory_db_100k_rows_squeezed_10_times(tmp_path):
    need("sqlite3")
    argv = [*NOBODY, "sqlite3", "-batch", ":memory:"]
    with started(argv, tmp_path / "sqlite.log", piped=True) as p:
        db = Shell(p)
        db.run("CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT NOT NULL); CREATE INDEX t_v ON t(v);")
        db.run("BEGIN;")
        for start in range(0, ROWS, 2000):
            rows = ",".join(f"({i},'{row(i)}')" for i in range(start, min(start + 2000, ROWS)))
            db.run(f"INSERT INTO t VALUES {rows};")
        db.run("COMMIT;")
        everything = [row(i) for i in range(ROWS)]
        assert db.one("SELECT count(*) FROM t;") == str(ROWS)
        assert db.values("") == everything

        rng = random.Random(7)
        for i in range(SQUEEZES):
            r = squeeze(p.pid)
            assert p.poll() is None, f"sqlite3 died after squeeze {i + 1}: {r}"
            squeezed(r)
            assert db.one("PRAGMA integrity_check;") == "ok", f"after squeeze {i + 1}"
            sample = sorted(rng.sample(range(ROWS), 300))
            got = db.values(f"WHERE k IN ({','.join(map(str, sample))})")
            assert got == [row(k) for k in sample], f"rows lost after squeeze {i + 1}"
            probe = rng.randrange(ROWS)
            by_index = f"SELECT k FROM t INDEXED BY t_v WHERE v = '{row(probe)}';"
            assert db.one(by_index) == str(probe), f"index lookup wrong after squeeze {i + 1}"
            assert db.one("SELECT count(*) FROM t;") == str(ROWS)
        assert db.values("") == everything
        db.run("INSERT INTO t VALUES (-1, 'written after the squeezes');")
        assert db.one("SELECT v FROM t WHERE k = -1;") == "written after the squeezes"
