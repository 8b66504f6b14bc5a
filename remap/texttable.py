"""Plain-text tables for long listings (pmap and smem style): a title line, aligned columns,
one column coloured with ANSI escapes when the output is a terminal.

Why not rich, which draws remap's short tables: rich lays out every cell as objects, which
took 10 s for the 18,000 rows of ``remap map --pages`` on a 70 MB CPython (and ~0.2 s of
import and layout for the mapping table alone); this writes the same columns in milliseconds.

Example::

    >>> print(render("title", ["A", "Bee"], [["1", "x"], ["22", "y"]], right={0}))
    title
     A Bee
     1 x
    22 y
"""

from __future__ import annotations

TYPE_CHECKING = False  # collections.abc brings collections: ~2 ms of every `remap map` (issue 15)
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    Row = Sequence[str]


def ansi(hex_colour: str, text: str) -> str:
    """TEXT in the 24-bit colour #rrggbb (terminals that lack it show the nearest)."""
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"\x1b[38;2;{r};{g};{b}m{text}\x1b[0m"


def render(
    title: str,
    headers: Row,
    rows: Sequence[Row],
    *,
    right: set[int] = frozenset(),  # type: ignore[assignment]
    footer: Sequence[Row] = (),
    colour: tuple[int, Callable[[str], str]] | None = None,
) -> str:
    """The table as text: TITLE, HEADERS, ROWS, then a blank line and FOOTER rows if any.
    Columns in RIGHT are right-aligned; the last column is never padded (long paths).
    COLOUR = (column, fn): that column's cells pass through fn (e.g. ansi) after padding, so
    escapes never count towards widths."""
    n = len(headers)
    widths = [len(h) for h in headers]
    for r in (*rows, *footer):
        for i in range(n - 1):
            if len(r[i]) > widths[i]:
                widths[i] = len(r[i])
    fmts = [
        (f"{{:>{w}}}" if i in right else f"{{:<{w}}}") if i < n - 1 else "{}"
        for i, w in enumerate(widths)
    ]

    def line(r: Row, paint: bool = True) -> str:
        cells = [f.format(c) for f, c in zip(fmts, r, strict=True)]
        if colour is not None and paint:
            i, fn = colour
            cells[i] = fn(cells[i])
        return " ".join(cells).rstrip()

    out = [title, line(headers, paint=False)]
    out += [line(r) for r in rows]
    if footer:
        out.append("")
        out += [line(r, paint=False) for r in footer]
    return "\n".join(out) + "\n"
