"""Never harm a target, the fold side (issue 12): a stack is a stack only when proven, the
verifier re-proves every anonymous page a step drops, and --dry-run never stops the target.

Each test starts a real program whose data lies where a careless "dead stack" drop would zero
it (a coroutine stack carved from the heap or from an mmap'd region, a pthread), squeezes it
for real, and asks the program itself whether its data is intact (its own checksum).
"""

from __future__ import annotations

import subprocess

import pytest

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


@pytest.mark.parametrize("mode", ["heap", "thread", "mmap"])
def test_coroutine_stack_data_survives_squeeze(spawn, mode):
    """rsp on a coroutine stack (in [heap], run by main or by a pthread; in an mmap'd region
    with a guard page): the live data below it is kept and the program's checksum holds."""
    t = spawn("coroutine_heap", "default", mode)
    lo, hi = _ready(t)
    assert _check(t).startswith(b"OK")
    where = _mapping(t.pid, lo)
    if mode != "mmap":
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
