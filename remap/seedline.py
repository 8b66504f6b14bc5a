"""The seed bot's one-line memory summary, from /proc/PID/status.

``VM 1000 kB (Max 2988 kB), RSS 4 kB [ Code 212 kB, Data 68 kB, Libs 556 kB, Stack 132 kB ]`` is
what EnergyMech's MEMINFO printed; remap prints the same line for any process (``remap map``'s
title, the snapshot's ``summary``).  Its own module because both the snapshot model and the lean
``map`` table (remap.maptable) print it, and the table must not import the model.
"""

from __future__ import annotations


def seed_summary(status: dict) -> str:
    """The seed bot's one-line summary, built from /proc/PID/status (missing fields read 0)."""
    g = lambda k: int(status.get(k, 0))  # noqa: E731
    return (
        f"VM {g('VmSize')} kB (Max {g('VmPeak')} kB), RSS {g('VmRSS')} kB "
        f"[ Code {g('VmExe')} kB, Data {g('VmData')} kB, Libs {g('VmLib')} kB, "
        f"Stack {g('VmStk')} kB ]"
    )
