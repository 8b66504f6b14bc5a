"""Turn sets of page addresses into the fewest [start, end) ranges, for batched madvise/munmap.

Why: one injected syscall per range, not per page, keeps the target's stop short (each remote
call costs microseconds; a tiny bot's whole fold must stay under 5 ms).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..kconst import PAGE_SIZE


def coalesce(addrs: Iterable[int], page: int = PAGE_SIZE) -> list[tuple[int, int]]:
    """Sorted page addresses -> merged [start, end) ranges of adjacent pages."""
    out: list[tuple[int, int]] = []
    for a in sorted(set(addrs)):
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], a + page)
        else:
            out.append((a, a + page))
    return out


def page_floor(addr: int) -> int:
    return addr & ~(PAGE_SIZE - 1)


def page_ceil(addr: int) -> int:
    return (addr + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def total(ranges: Iterable[tuple[int, int]]) -> int:
    """Bytes covered by RANGES."""
    return sum(e - s for s, e in ranges)
