"""Views of a residency Snapshot: tables (like pmap -X / smem) and a PNG page map.

Why separate from remap.residency: the model knows nothing about colours or columns (pyelftools'
"parse lazily, describe separately"); every view here is computed from one Snapshot.

Example::

    >>> print(render.map_text(remap.snapshot(pid)), end="")
    >>> render.png(remap.snapshot(pid), "map.png")

The long listings (one row per mapping, one per page) are plain text (remap.texttable: a
70 MB process has 18,000 present pages); the short explain table is drawn with rich.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import kconst as K
from . import texttable

if TYPE_CHECKING:
    from rich.table import Table

    from .residency import Snapshot

COLOURS = {
    "elf-header": "#7f7f7f",
    "code": "#d62728",
    "rodata": "#ff9896",
    "data": "#1f77b4",
    "bss": "#aec7e8",
    "heap": "#2ca02c",
    "stack": "#ff7f0e",
    "thread-stack": "#ffbb78",
    "vdso": "#9467bd",
    "vvar": "#c5b0d5",
    "vsyscall": "#8c564b",
    "anon": "#17becf",
    "shmem": "#bcbd22",
    "hugetlb": "#637939",
}
_LIB_PALETTE = ["#e377c2", "#f7b6d2", "#c49c94", "#dbdb8d", "#9edae5", "#98df8a", "#c7c7c7"]
_GAP = "#ffffff"


def colour(label: str) -> str:
    """Colour of a label; each lib:NAME and file:NAME gets a stable colour from a small
    palette."""
    if label in COLOURS:
        return COLOURS[label]
    return _LIB_PALETTE[zlib.crc32(label.encode()) % len(_LIB_PALETTE)]


def _hex(a: int) -> str:
    return f"{a:012x}"


# --------------------------------------------------------------------------- tables
def map_text(snap: Snapshot, *, tty: bool = False) -> str:
    """One row per mapping (pmap -X style): address, perms, kB mapped/resident, the
    anon/file/shmem/swap split, label, path; a totals row.  Labels coloured when TTY."""
    rows, tot = [], Counter()
    for v in snap.vmas:
        rows.append([
            _hex(v.start), v.perms, str(v.size_kb), str(v.rss_kb), str(v.anon_kb),
            str(v.file_kb), str(v.shmem_kb), str(v.swap_kb), v.label, v.path,
        ])  # fmt: skip
        tot.update(
            size=v.size_kb, rss=v.rss_kb, anon=v.anon_kb, file=v.file_kb, shmem=v.shmem_kb,
            swap=v.swap_kb,
        )  # fmt: skip
    footer = [[
        "total", "", str(tot["size"]), str(tot["rss"]), str(tot["anon"]), str(tot["file"]),
        str(tot["shmem"]), str(tot["swap"]), "", f"{len(snap.vmas)} mappings",
    ]]  # fmt: skip
    headers = ["Address", "Perm", "Kbytes", "RSS", "Anon", "File", "Shmem", "Swap", "Label",
               "Mapping"]  # fmt: skip
    return texttable.render(
        f"pid {snap.pid}  {snap.summary}", headers, rows, right=set(range(2, 8)),
        footer=footer, colour=_label_colour(8) if tty else None,
    )  # fmt: skip


def pages_text(snap: Snapshot, *, tty: bool = False) -> str:
    """Every present page: backing (file clean / anon / anon CoW / shmem), label, section,
    symbol, PFN (root only)."""
    rows = []
    for v in snap.vmas:
        for p in v.pages:
            backing = "anon (CoW)" if p.cow else ("file (clean)" if p.clean_file else p.backing)
            rows.append([
                _hex(p.addr), backing, p.label, p.section or "", p.symbol or "",
                "" if p.pfn is None else f"{p.pfn:#x}",
            ])  # fmt: skip
    return texttable.render(
        f"pid {snap.pid}: {snap.present_pages} present pages",
        ["Address", "Backing", "Label", "Section", "Symbol", "PFN"], rows,
        colour=_label_colour(2) if tty else None,
    )  # fmt: skip


def _label_colour(col: int) -> tuple[int, Callable[[str], str]]:
    """Colour column COL (padded label cells) by the label it holds."""
    return col, lambda cell: texttable.ansi(colour(cell.strip()), cell)


COUNTER_TEXT = {
    "status_vmrss": "status VmRSS (counter)",
    "status_rss_anon": "status RssAnon (counter)",
    "status_rss_file": "status RssFile (counter)",
    "status_rss_shmem": "status RssShmem (counter)",
    "statm_rss": "statm resident (counter)",
    "smaps_rss": "smaps Rss sum (page walk)",
    "smaps_rollup_rss": "smaps_rollup Rss (page walk)",
    "pagemap_present": "pagemap present (page walk)",
}


def explain_table(snap: Snapshot) -> Table:
    """Every RSS figure side by side, with the difference to the exact page walk."""
    from rich.table import Table

    t = Table(title=f"pid {snap.pid} on Linux {snap.kernel}", box=None)
    t.add_column("Figure")
    t.add_column("kB", justify="right")
    t.add_column("vs page walk", justify="right")
    walk = snap.counters_kb["pagemap_present"]
    for k, v in snap.counters_kb.items():
        diff = "" if k.startswith("status_rss_") else f"{v - walk:+d}"
        t.add_row(COUNTER_TEXT.get(k, k), str(v), diff)
    return t


def label_totals(snap: Snapshot) -> dict[str, int]:
    """{label: present kB}, largest first (used by explain and watch)."""
    c = Counter(p.label for p in snap.pages())
    return {k: 4 * n for k, n in c.most_common()}


# --------------------------------------------------------------------------- PNG
def layout(snap: Snapshot, max_gap_cells: int = 1) -> list[tuple[int | None, str, bool]]:
    """Cells in address order: (addr or None for a gap, label, present).

    Gaps between VMAs are compressed to MAX_GAP_CELLS cells so a sparse 47-bit address space
    still fits in one picture; every page of every VMA keeps its own cell.
    """
    cells: list[tuple[int | None, str, bool]] = []
    prev_end = None
    for v in snap.vmas:
        if prev_end is not None and v.start != prev_end:
            cells.extend([(None, "", False)] * max_gap_cells)
        present = {p.addr: p.label for p in v.pages}
        for a in range(v.start, v.end, K.PAGE_SIZE):
            lb = present.get(a)
            cells.append((a, lb or v.label, lb is not None))
        prev_end = v.end
    return cells


def png(snap: Snapshot, path: str, width: int = 128, marked: set[int] | None = None) -> int:
    """Draw the address space: one cell per page, coloured by label, filled when present
    (pale when mapped but not present); pages in MARKED (e.g. touched while watching) get a
    black dot.  Returns the number of cells drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import to_rgb
    from matplotlib.patches import Patch

    cells = layout(snap)
    rows = max(1, -(-len(cells) // width))
    img = np.ones((rows, width, 3))
    rgb: dict[str, tuple[float, float, float]] = {}
    used: set[str] = set()
    for i, (addr, label, present) in enumerate(cells):
        if addr is None:
            c = (0.2, 0.2, 0.2)
        else:
            if label not in rgb:
                rgb[label] = to_rgb(colour(label))
            c = rgb[label]
            used.add(label)
            if not present:
                c = tuple(0.82 + 0.18 * x for x in c)
        img[i // width, i % width] = c
    h = min(40.0, 2 + rows / 16)
    fig, ax = plt.subplots(figsize=(10, h), dpi=100)
    ax.imshow(img, aspect="auto", interpolation="nearest")
    if marked:
        pts = [(i % width, i // width) for i, (a, _, _) in enumerate(cells) if a in marked]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.scatter(xs, ys, s=4, c="black", marker="o", label="touched")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"pid {snap.pid}: {snap.rss_kb} kB present of {len(cells)} cells\n{snap.summary}",
                 fontsize=8)  # fmt: skip
    handles = [Patch(color=colour(lb), label=lb) for lb in sorted(used)]
    handles.append(Patch(color=(0.2, 0.2, 0.2), label="gap (compressed)"))
    if marked:
        handles.append(Patch(color="black", label="touched while watched"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return len(cells)
