"""The ``remap map`` table, written from smaps and status without building the snapshot model.

Why not ``render.map_text(snapshot(pid))``: the table needs per mapping only what smaps already
sums (Rss, Anonymous, Swap) and a label, yet the model reads every page of every mapping, builds
a Page object per present page and imports dataclasses for it -- most of the command's time on a
30 MB process (issue 15).  :func:`text` reads status and smaps, labels each mapping with the same
functions as the model (remap.labels), and walks the page tables only for the executable's own
mappings, whose label is the most common label of their present pages.  It prints exactly what
``render.map_text(snapshot(pid))`` prints for the same instant (both go through
``render.vma_table``; tests/test_cli_residency.py checks byte equality on real processes).

Raises what :func:`remap.residency.snapshot` raises (NoSuchProcess, ZombieProcess,
AccessDenied, UnsupportedTarget).
"""

from __future__ import annotations

from . import labels, pagemap, procfs
from .render import vma_table
from .seedline import seed_summary


def text(pid: int, *, tty: bool = False) -> str:
    """PID's mapping table (one row per VMA and a totals row), as ``remap map`` prints it."""
    procfs.check_target(pid)
    status = procfs.read_status(pid)
    entries = procfs.read_smaps(pid)
    exe = procfs.read_exe(pid)
    sps = labels.thread_sps(pid, status, [])
    fstypes = labels.fstypes_for(pid, entries)
    views = labels.elf_views(entries, exe, pid)
    classes = [
        labels.classify(e, v, exe, fstypes, sps) for e, v in zip(entries, views, strict=True)
    ]
    exe_parts = [
        i for i, (e, c) in enumerate(zip(entries, classes, strict=True)) if c[2] and e.path
    ]
    runs = pagemap.walk(pid, [(entries[i].start, entries[i].end) for i in exe_parts])[0]
    top = {
        i: _exe_label(entries[i], views[i], classes[i][0], rs)
        for i, rs in zip(exe_parts, runs, strict=True)
    }
    rows = []
    for i, (e, (label, kind, _)) in enumerate(zip(entries, classes, strict=True)):
        rss, anon, swap = e.get("Rss"), e.get("Anonymous"), e.get("Swap")
        shmem = rss - anon if kind == "shmem" else 0
        label = top.get(i) or label
        rows.append((e.start, e.perms, (e.end - e.start) >> 10, rss, anon, rss - anon - shmem,
                     shmem, swap, label, e.path))  # fmt: skip
    return vma_table(f"pid {pid}  {seed_summary(status)}", rows, tty=tty)


def _exe_label(e, view, label: str, runs: list) -> str | None:
    """The label of one of the executable's file mappings: the most common label of its present
    pages (as the model labels them: the page's ELF label, else the mapping's)."""
    page_labels = [
        d[0] or label for r in runs if not r.zero for d in view.describe_pages(r.start, r.end)
    ]
    return labels.exe_vma_label(e, view, page_labels)
