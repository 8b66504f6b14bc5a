"""Views of a residency Snapshot: tables (like pmap -X / smem) and a PNG page map.

Why separate from remap.residency: the model knows nothing about colours or columns (pyelftools'
"parse lazily, describe separately"); every view here is computed from one Snapshot.

Example::

    >>> print(render.map_text(remap.snapshot(pid)), end="")
    >>> render.png(remap.snapshot(pid), "map.png")

Every table is plain text (remap.texttable): a 70 MB process has 18,000 present pages, and
rich, which drew the short explain table once, cost `remap explain` ~60 ms to import and cut
its sentences mid-word when piped.
"""

from __future__ import annotations

from . import kconst as K
from . import texttable

TYPE_CHECKING = False  # typing itself costs ~3 ms of every `remap map` (issue 15), collections ~2
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

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
    import zlib  # here, not at the top: the `map` table imports this module (remap.maptable)

    return _LIB_PALETTE[zlib.crc32(label.encode()) % len(_LIB_PALETTE)]


def _hex(a: int) -> str:
    return f"{a:012x}"


# --------------------------------------------------------------------------- tables
def map_text(snap: Snapshot, *, tty: bool = False) -> str:
    """One row per mapping (pmap -X style): address, perms, kB mapped/resident, the
    anon/file/shmem/swap split, label, path; a totals row.  Labels coloured when TTY."""
    rows = [
        (v.start, v.perms, v.size_kb, v.rss_kb, v.anon_kb, v.file_kb, v.shmem_kb, v.swap_kb,
         v.label, v.path)
        for v in snap.vmas
    ]  # fmt: skip
    return vma_table(f"pid {snap.pid}  {snap.summary}", rows, tty=tty)


def vma_table(title: str, rows: list[tuple], *, tty: bool = False) -> str:
    """The ``map`` table of ROWS, each (start, perms, size, rss, anon, file, shmem, swap kB,
    label, path): one text for the model's view (:func:`map_text`) and the lean one
    (remap.maptable), so the two cannot drift apart."""
    body, tot = [], [0] * 6
    for start, perms, *kb, label, path in rows:
        body.append([_hex(start), perms, *map(str, kb), label, path])
        tot = [t + k for t, k in zip(tot, kb, strict=True)]
    footer = [["total", "", *map(str, tot), "", f"{len(rows)} mappings"]]
    headers = ["Address", "Perm", "Kbytes", "RSS", "Anon", "File", "Shmem", "Swap", "Label",
               "Mapping"]  # fmt: skip
    return texttable.render(
        title, headers, body, right=set(range(2, 8)),
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


def explain_text(snap: Snapshot) -> str:
    """Every RSS figure side by side, with the difference to the exact page walk."""
    walk = snap.counters_kb["pagemap_present"]
    head = ["Figure", "kB", "vs page walk"]
    rows = []
    for k, v in snap.counters_kb.items():
        diff = "" if k.startswith("status_rss_") else f"{v - walk:+d}"
        # right-aligned by hand: texttable leaves the last column unpadded (long paths)
        rows.append([COUNTER_TEXT.get(k, k), str(v), diff.rjust(len(head[2]))])
    return texttable.render(f"pid {snap.pid} on Linux {snap.kernel}", head, rows, right={1})


def label_totals(snap: Snapshot) -> dict[str, int]:
    """{label: present kB}, largest first (used by explain and watch)."""
    counts: dict[str, int] = {}  # a Counter's work without importing collections
    for p in snap.pages():
        counts[p.label] = counts.get(p.label, 0) + 1
    # a stable sort: equal counts stay in first-seen order, as Counter.most_common() keeps them
    return {k: 4 * n for k, n in sorted(counts.items(), key=lambda kv: kv[1], reverse=True)}


# --------------------------------------------------------------------------- PNG
GAP_RGB = (51, 51, 51)  # the compressed gap between two VMAs
MAX_GRID_PX = 4000  # the grid's height at most; cells shrink (to 1 px) to stay inside it
CELL_PX = 6
GRID_LEFT = 8  # the grid's left edge in the picture; its top follows the title lines


def _rgb(hexcolour: str) -> tuple[int, int, int]:
    h = hexcolour.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def _pale(c: tuple[int, int, int]) -> tuple[int, int, int]:
    """Mapped but not present: the label's colour washed out toward white."""
    return tuple(round(0.82 * 255 + 0.18 * x) for x in c)  # type: ignore[return-value]


def grid(snap: Snapshot, width: int = 128, max_gap_cells: int = 1):
    """The picture's cells: (rgb bytes, rows, labels used, each VMA's first cell).

    One cell per page of every VMA in address order, coloured by label: full where the page is
    present, pale where it is only mapped; the gap between two VMAs is MAX_GAP_CELLS dark
    cells, so a sparse 47-bit address space still fits.  RGB holds rows x WIDTH cells of 3
    bytes (white padding after the last VMA), filled a VMA range at a time by slice
    assignment: the cost follows the present pages, not the mapped ones, and no numpy is
    imported (its import alone cost more than the whole picture).
    """
    n = 0
    starts: list[int] = []
    for i, v in enumerate(snap.vmas):
        if i and v.start != snap.vmas[i - 1].end:
            n += max_gap_cells
        starts.append(n)
        n += (v.end - v.start) // K.PAGE_SIZE
    rows = max(1, -(-n // width))
    rgb = bytearray(b"\xff" * (rows * width * 3))
    used: set[str] = set()
    gap = bytes(GAP_RGB)
    prev = 0
    for v, i0 in zip(snap.vmas, starts, strict=True):
        rgb[prev * 3 : i0 * 3] = gap * (i0 - prev)  # the compressed gap (empty when adjacent)
        i1 = i0 + (v.end - v.start) // K.PAGE_SIZE
        rgb[i0 * 3 : i1 * 3] = bytes(_pale(_rgb(colour(v.label)))) * (i1 - i0)
        used.add(v.label)
        full: dict[str, bytes] = {}
        for p in v.pages:
            c = full.get(p.label)
            if c is None:
                c = full[p.label] = bytes(_rgb(colour(p.label)))
                used.add(p.label)
            i = (i0 + (p.addr - v.start) // K.PAGE_SIZE) * 3
            rgb[i : i + 3] = c
        prev = i1
    return rgb, rows, used, starts


def png(snap: Snapshot, path: str, width: int = 128, marked: set[int] | None = None) -> int:
    """Draw the address space: one cell per page, coloured by label, filled when present
    (pale when mapped but not present); pages in MARKED (e.g. touched while watching) get a
    black dot.  Returns the number of cells drawn (gaps included).

    Drawn with Pillow (a matplotlib dependency, ~40 ms to import against ~1.4 s for
    matplotlib's pyplot): the cells are one pixel each, scaled up by whole pixels (nearest
    neighbour); the title and the legend are text beside them.  Raises OSError when PATH
    cannot be written.
    """
    from PIL import Image, ImageDraw, ImageFont

    rgb, rows, used, starts = grid(snap, width)
    n = _cells(snap, starts)
    cell = max(1, min(CELL_PX, MAX_GRID_PX // rows))
    cells = Image.frombytes("RGB", (width, rows), bytes(rgb))
    big = cells.resize((width * cell, rows * cell), Image.Resampling.NEAREST)
    font = ImageFont.load_default()
    title = [f"pid {snap.pid}: {snap.rss_kb} kB present of {n} cells", snap.summary]
    legend = [(lb, _rgb(colour(lb))) for lb in sorted(used)]
    legend.append(("gap (compressed)", GAP_RGB))
    if marked:
        legend.append(("touched while watched", (0, 0, 0)))
    line = 14
    top = line * len(title) + 8
    legend_w = 12 + max(len(lb) for lb, _ in legend) * 7 + 20
    canvas = Image.new(
        "RGB", (big.width + legend_w + 16, max(top + big.height, top + line * len(legend)) + 8),
        "white",
    )  # fmt: skip
    canvas.paste(big, (GRID_LEFT, top))
    draw = ImageDraw.Draw(canvas)
    first_cell = {v.start: i0 for v, i0 in zip(snap.vmas, starts, strict=True)}
    d = cell // 3  # a dot over the middle third of the cell (the whole cell when it is small)
    for a in sorted(marked or ()):
        v = snap.vma_at(a)
        if v is not None:
            i = first_cell[v.start] + (a - v.start) // K.PAGE_SIZE
            x, y = GRID_LEFT + (i % width) * cell, top + (i // width) * cell
            draw.rectangle((x + d, y + d, x + cell - 1 - d, y + cell - 1 - d), fill="black")
    for k, text in enumerate(title):
        draw.text((GRID_LEFT, 4 + k * line), text, fill="black", font=font)
    lx = big.width + 16
    for k, (lb, c) in enumerate(legend):
        y = top + k * line
        draw.rectangle((lx, y + 2, lx + 9, y + 11), fill=c, outline="black")
        draw.text((lx + 14, y), lb, fill="black", font=font)
    save_png(canvas, path, compress_level=3)
    return n


def save_png(im: Any, path: str, **options: Any) -> None:
    """Write Pillow image IM to PATH as a PNG (OPTIONS: Pillow's PNG options).

    Why not im.save(path, "PNG"): a format named makes Pillow import the five plugins of
    Image.preinit (BMP, GIF, JPEG, PPM, PNG); a ".png" path imports the PNG one alone, ~11 ms
    of every picture (issue 15).  Another path still gets a PNG.  Raises OSError when PATH
    cannot be written."""
    im.save(path, None if path.lower().endswith(".png") else "PNG", **options)


def _cells(snap: Snapshot, starts: list[int]) -> int:
    """Cells drawn: the last VMA's end in cells (gaps included)."""
    if not snap.vmas:
        return 0
    v = snap.vmas[-1]
    return starts[-1] + (v.end - v.start) // K.PAGE_SIZE
