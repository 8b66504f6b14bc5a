"""One measurement of a running target, in the form experiment records store.

Why wait for "blocked" first: a record must be the same when the experiment is re-run, and a
process measured while it still runs (faulting pages in) gives a different answer each time.
Measuring only once it sleeps in a syscall makes the page walk a property of the program, not of
the scheduler.

The numbers come from remap.residency.snapshot (page walk, every counter, labelled pages); the
wait is remap.procwait.wait_blocked (re-exported here: steps call ``measure.wait_blocked``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .. import procfs
from ..errors import ExperimentError
from ..procwait import wait_blocked
from ..residency import snapshot
from ..stacklayout import stack_layout

__all__ = ["Measurement", "after_wakeup", "compare_mem", "measure", "stack", "switches",
           "wait_blocked"]  # fmt: skip


@dataclass
class Measurement:
    rss_kb: int
    vmrss_kb: int
    present_pages: int
    counters: dict[str, int]
    pages: list[dict[str, Any]] | None


def switches(pid: int) -> int:
    """The voluntary context switches of PID so far (each time it blocked)."""
    return int(procfs.read_status(pid).get("voluntary_ctxt_switches", 0))


def after_wakeup(pid: int, before: int, ctx) -> dict:
    """/proc/PID/status once PID has woken and blocked again since BEFORE (:func:`switches`).

    Why: a bot that reads its own status while handling a line (EnergyMech's MEMINFO) must be
    compared with /proc at *that* moment, not when its queued reply arrives seconds later.
    Bounded by ctx.case.measure.idle_timeout.
    """
    deadline = time.monotonic() + ctx.case.measure.idle_timeout
    while switches(pid) <= before:
        if time.monotonic() > deadline:
            raise ExperimentError(f"target {pid} did not wake up for the line sent to it")
        time.sleep(0.001)
    ctx.wait_idle()
    return procfs.read_status(pid)


MEM_STATUS_KEYS = ("VmSize", "VmPeak", "VmRSS", "VmExe", "VmData", "VmLib", "VmStk")


def compare_mem(text: str, reply: Any, status: dict, before: dict | None = None) -> dict[str, Any]:
    """The bot's memory line (parsed by remap.ircd) against /proc/PID/status read when it had
    handled TEXT (STATUS) and, if given, just before TEXT was sent (BEFORE); ExperimentError
    naming every field outside them.

    Why a bracket and not one reading: the bot reads its own status in the middle of handling
    the line and goes on faulting while it formats the reply; after a squeeze that fenced
    fault-around each page it touches comes back alone, so VmRSS rises by a few pages between
    its read and ours (measured: EnergyMech 164 vs 176 kB).  Its figure must lie between the
    two readings that enclose its own (equal to both when nothing moved)."""
    if not isinstance(reply, dict):
        raise ExperimentError(f"{text}: not a memory command (reply {reply!r})")
    proc = {k: int(status.get(k, 0)) for k in MEM_STATUS_KEYS}
    first = {k: int(before.get(k, 0)) for k in MEM_STATUS_KEYS} if before else proc
    diff = {
        k: (reply.get(k), first[k], proc[k])
        for k in MEM_STATUS_KEYS
        if not min(first[k], proc[k]) <= reply.get(k, -1) <= max(first[k], proc[k])
    }
    if diff:
        shown = ", ".join(
            f"{k} {a} vs {b} kB" if b == c else f"{k} {a} outside {b}..{c} kB"
            for k, (a, b, c) in diff.items()
        )
        raise ExperimentError(f"{text}: the bot's line differs from /proc: {shown}")
    out: dict[str, Any] = {"status": proc, "equal": all(reply[k] == proc[k] for k in proc)}
    if before:
        out["status_before"] = first
    return out


def measure(pid: int, *, pages: bool = False) -> Measurement:
    """Snapshot PID and reduce it to what a record keeps."""
    s = snapshot(pid)
    plist = None
    if pages:
        plist = [
            {
                "addr": f"{p.addr:#x}",
                "label": p.label,
                "backing": p.backing,
                **({"section": p.section} if p.section else {}),
                **({"symbol": p.symbol} if p.symbol else {}),
            }
            for v in s.vmas
            for p in v.pages
        ]
    counters = {k: int(v) for k, v in s.counters_kb.items()}
    return Measurement(
        rss_kb=s.rss_kb,
        vmrss_kb=int(s.status.get("VmRSS", 0)),
        present_pages=s.present_pages,
        counters=counters,
        pages=plist,
    )


def stack(pid: int) -> dict[str, Any]:
    """The stack layout (remap.stacklayout) as a JSON dict."""
    return stack_layout(pid).to_json()
