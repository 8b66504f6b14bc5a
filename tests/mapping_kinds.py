"""Test helpers around csrc/targets/mappings.c (one mapping of each kind, self-checking) and the
huge pages it needs: shared by test_small_defects.py and test_realprog_mappings.py."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

NR_HUGEPAGES = "/proc/sys/vm/nr_hugepages"
HUGE_PAGE_KB = 2048


@contextlib.contextmanager
def reserved_hugepages(want: int, may_reserve: bool) -> Iterator[int]:
    """Yield WANT when that many 2 MiB huge pages are free (reserving the missing ones when
    MAY_RESERVE, i.e. as root, and giving them back after), else 0."""
    try:
        with open(NR_HUGEPAGES) as f:
            old = int(f.read())
    except OSError:
        yield 0  # no hugetlb in this kernel
        return
    free = _meminfo("HugePages_Free")
    reserved = free < want and may_reserve
    if reserved:
        _set_hugepages(old + want - free)
    try:
        yield want if _meminfo("HugePages_Free") >= want else 0
    finally:
        if reserved:
            _set_hugepages(old)


def _set_hugepages(n: int) -> None:
    with open(NR_HUGEPAGES, "w") as f:
        f.write(str(n))


def _meminfo(key: str) -> int:
    """One /proc/meminfo figure (a count or kB), 0 if absent."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def start_mappings(spawn, folder: Path, huge: int = 0):
    """The mappings target with its files in FOLDER and HUGE hugetlb pages:
    (target, {mapping name: start address}), once it blocks reading its commands."""
    t = spawn("mappings", "default", str(folder), str(huge))
    where = {}
    while (line := t.proc.stdout.readline().decode()) != "ready\n":
        assert line, t.proc.stderr.read().decode()
        name, start, _len = line.split()
        where[name] = int(start, 16)
    t.wait_blocked()
    return t, where


def self_check(t) -> dict[str, str]:
    """Ask the mappings target to re-check every byte: {name: its checksum}; fails on BAD."""
    t.proc.stdin.write(b"check\n")
    t.proc.stdin.flush()
    sums = {}
    while (line := t.proc.stdout.readline().decode()) != "done\n":
        assert line.startswith("ok "), line or t.proc.stderr.read().decode()
        _, name, value = line.split()
        sums[name] = value
    return sums


def smaps_of(pid: int, start: int) -> dict[str, int]:
    """The kernel's own smaps fields (kB) of PID's VMA starting at START."""
    out: dict[str, int] = {}
    found = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):
                if found:
                    break
                found = int(head.split("-")[0], 16) == start
            elif found and line.split()[-1] == "kB":
                out[head.rstrip(":")] = int(line.split()[1])
    assert found, hex(start)
    return out
