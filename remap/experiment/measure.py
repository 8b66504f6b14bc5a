"""One measurement of a running target, in the form experiment records store.

Why wait for "blocked" first: a record must be the same when the experiment is re-run, and a
process measured while it still runs (faulting pages in) gives a different answer each time.
Measuring only once it sleeps in a syscall makes the page walk a property of the program, not of
the scheduler.

The numbers come from remap.residency.snapshot (page walk, every counter, labelled pages).
``_mini_snapshot`` is a small private reader used only if that module cannot be imported.
"""

from __future__ import annotations

import os
import struct
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from .. import procfs
from ..errors import ExperimentError, NoSuchProcess
from ..kconst import PAGE_SIZE, PM_FILE, PM_PRESENT
from ..stacklayout import stack_layout


@dataclass
class Measurement:
    rss_kb: int
    vmrss_kb: int
    present_pages: int
    counters: dict[str, int]
    pages: list[dict[str, Any]] | None


def wait_blocked(pid: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Return once PID sleeps in a syscall (state S, same syscall twice 2 ms apart)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ExperimentError(f"target {pid} exited with status {proc.returncode}")
        st = procfs.read_stat(pid)
        if st.state == "Z":
            raise NoSuchProcess(pid, f"target {pid} exited (zombie)")
        if st.state == "S":
            sc = procfs.read_syscall(pid)
            cur = None if sc.running else (sc.nr, sc.pc, sc.sp)
            if cur is not None and cur == last:
                return
            last = cur
        else:
            last = None
        time.sleep(0.002)
    raise ExperimentError(f"target {pid} did not block in a syscall within {timeout:g} s")


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


def compare_mem(text: str, reply: Any, status: dict) -> dict[str, Any]:
    """The bot's memory line (parsed by remap.ircd) against /proc/PID/status read at the moment
    it handled TEXT; ExperimentError naming every field that differs."""
    if not isinstance(reply, dict):
        raise ExperimentError(f"{text}: not a memory command (reply {reply!r})")
    proc = {k: int(status.get(k, 0)) for k in MEM_STATUS_KEYS}
    diff = {k: (reply[k], proc[k]) for k in MEM_STATUS_KEYS if reply.get(k) != proc[k]}
    if diff:
        shown = ", ".join(f"{k} {a} vs {b} kB" for k, (a, b) in diff.items())
        raise ExperimentError(f"{text}: the bot's line differs from /proc: {shown}")
    return {"status": proc, "equal": True}


def measure(pid: int, *, pages: bool = False) -> Measurement:
    """Snapshot PID and reduce it to what a record keeps."""
    try:
        from ..residency import snapshot
    except ImportError:
        snapshot = None
    if snapshot is None:
        return _mini_snapshot(pid, pages)
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


def _mini_snapshot(pid: int, pages: bool) -> Measurement:
    """Fallback reader: status, statm, smaps_rollup and a plain pagemap walk (no labels)."""
    status = procfs.read_status(pid)
    statm = procfs.read_statm(pid)
    rollup = procfs.read_smaps_rollup(pid)
    maps = procfs.read_maps(pid)
    fd = procfs.open_proc(pid, "pagemap")
    present, plist = 0, []
    try:
        for e in maps:
            if e.path in ("[vvar]", "[vvar_vclock]", "[vsyscall]"):
                continue  # PFN maps: no RSS counter includes them
            n = (e.end - e.start) // PAGE_SIZE
            data = os.pread(fd, n * 8, e.start // PAGE_SIZE * 8)
            for i, ent in enumerate(struct.unpack(f"<{len(data) // 8}Q", data)):
                if ent & PM_PRESENT:
                    present += 1
                    if pages:
                        backing = "file" if ent & PM_FILE and e.inode else "anon"
                        plist.append(
                            {
                                "addr": f"{e.start + i * PAGE_SIZE:#x}",
                                "label": e.path or "anon",
                                "backing": backing,
                            }
                        )
    finally:
        os.close(fd)
    counters = {
        "status_vmrss": int(status.get("VmRSS", 0)),
        "statm_rss": statm.resident * PAGE_SIZE // 1024,
        "smaps_rollup_rss": int(rollup.get("Rss", 0)),
        "pagemap_present": present * PAGE_SIZE // 1024,
    }
    return Measurement(
        present * 4, counters["status_vmrss"], present, counters, plist if pages else None
    )
