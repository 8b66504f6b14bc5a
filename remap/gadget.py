"""Find a `syscall` instruction (0f 05) that already exists in an executable mapping of a target.

Why from disk: remap never patches bytes in the target (a patched private page turns into an
anonymous copy; tests/test_inject.py checks that no byte changes), and reading the target's
memory would fault its pages in.  The bytes of a private file mapping are, page for page, the
bytes of the file at the mapping's offset, so we search the file (through /proc/PID/map_files
when we may, which is the exact file even if the path was replaced) and translate the hit into
the target's address.  The vdso has no file: every 64-bit process on this kernel maps the same
image, so we search our own copy.

Any 0f 05 pair works, even one in the middle of a longer instruction: the CPU decodes from
wherever rip points, and setting rip through ptrace is not an indirect branch (no IBT check).

Example::

    >>> from remap import gadget
    >>> g = gadget.find(pid)         # Gadget(addr=0x401a2c, path='/usr/bin/foo')
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from . import procfs
from .errors import RemapError

SYSCALL_INSN = b"\x0f\x05"
SYSCALL_RET = b"\x0f\x05\xc3"  # syscall; ret
# mov $15, %rax; syscall  /  mov $15, %eax; syscall: rt_sigreturn (libc's __restore_rt)
RESTORERS = (b"\x48\xc7\xc0\x0f\x00\x00\x00\x0f\x05", b"\xb8\x0f\x00\x00\x00\x0f\x05")


# One line of /proc/PID/maps: the project's one parser of maps (remap.procfs) serves here too.
Mapping = procfs.MapEntry


@dataclass(frozen=True)
class Gadget:
    """A `syscall` instruction at `addr` in the target, found in `path` (or "[vdso]")."""

    addr: int
    path: str


def read_maps(pid: int | str) -> list[Mapping]:
    """/proc/PID/maps parsed, through procfs (PID may be "self").  Raises NoSuchProcess or
    AccessDenied for a process that is gone or not ours to read (procfs.translate)."""
    return procfs.read_maps(pid)  # type: ignore[arg-type]


_SCAN_CACHE: dict[tuple, int] = {}  # (dev/ino/size/mtime of the file, offset, size, pattern)


def _scan(pid: int, m: Mapping, pattern: bytes, lo: int = 0, hi: int | None = None) -> int:
    """Offset of pattern in mapping m's file bytes, wholly inside [LO, HI) if given (-1: none
    or unreadable), memoised per file identity: a driver running session after session must
    not re-read libc every time."""
    key = None
    with contextlib.suppress(OSError):
        st = os.stat(procfs.map_files_path(pid, m.start, m.end))
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, m.offset, m.end - m.start,
               pattern, lo, hi)  # fmt: skip
        if key in _SCAN_CACHE:
            return _SCAN_CACHE[key]
    data = _file_bytes(pid, m)
    i = data.find(pattern, lo, hi) if data is not None else -1
    if key is not None and data is not None and len(_SCAN_CACHE) < 4096:
        _SCAN_CACHE[key] = i
    return i


def _file_bytes(pid: int, m: Mapping) -> bytes | None:
    """The on-disk bytes backing mapping m, or None if the file cannot be trusted or read."""
    if m.path.endswith(" (deleted)") or not m.path.startswith("/"):
        return None
    size = m.end - m.start
    # map_files is the mapped file itself (root); /proc/PID/root resolves the path in the
    # target's own mount namespace (a container's /usr/lib is not ours); our own path last.
    names = (procfs.map_files_path(pid, m.start, m.end), procfs.path(pid, "root") + m.path, m.path)
    for name in names:
        try:
            with open(name, "rb") as f:
                if not _same_file(os.fstat(f.fileno()), m):
                    continue  # the path now names another file: its bytes are not mapped
                f.seek(m.offset)
                return f.read(size)
        except OSError:
            continue
    return None


def _same_file(st: os.stat_result, m: Mapping) -> bool:
    """Is the open file the one maps names: same inode and same device (an inode number alone
    repeats across filesystems, e.g. another mount namespace's root)?"""
    major, _, minor = m.dev.partition(":")
    try:
        dev = os.makedev(int(major, 16), int(minor, 16))
    except ValueError:
        return False
    return st.st_ino == m.inode and st.st_dev == dev


def _own_vdso() -> bytes | None:
    """Our own vdso image (identical in every 64-bit process of this kernel)."""
    for m in read_maps("self"):
        if m.path == "[vdso]":
            return procfs.read_mem("self", m.start, m.end - m.start)  # type: ignore[arg-type]
    return None


def candidates(pid: int, maps: list[Mapping] | None = None) -> list[Gadget]:
    """Every mapping's first `syscall` instruction, best first.

    Order: the target's own executable, then libc, then other files, then the vdso (touching a
    vdso page makes it count in RSS: it is an ordinary page once touched, unlike vvar).  One
    per mapping is enough.
    """
    maps = maps if maps is not None else read_maps(pid)
    try:
        exe = procfs.read_exe(pid)
    except (OSError, RemapError):
        exe = ""
    found: list[tuple[int, Gadget]] = []
    for m in maps:
        if "x" not in m.perms:
            continue
        if m.path == "[vdso]":
            data = _own_vdso()
            if data is None or len(data) != m.end - m.start:
                continue
            rank = 3
            i = data.find(SYSCALL_INSN)
        else:
            i = _scan(pid, m, SYSCALL_INSN)
            rank = 0 if m.path == exe else 1 if "/libc" in m.path else 2
        if i >= 0:
            found.append((rank, Gadget(m.start + i, m.path)))
    found.sort(key=lambda rg: rg[0])
    return [g for _, g in found]


@dataclass(frozen=True)
class Chain:
    """The two pieces of existing code the injection's safety chain needs (inject/chain.py).

    `syscall_ret` is a `syscall; ret` sequence: an injected call made there returns into
    whatever the stack holds.  `restorer` is `mov $15, %rax; syscall` (rt_sigreturn), which
    glibc and musl carry for sigaction.  Both outside any page remap maps itself."""

    syscall_ret: int
    restorer: int
    paths: tuple[str, str]


def find_chain(
    pid: int, maps: list[Mapping] | None = None, prefer: set[int] | frozenset[int] = frozenset()
) -> Chain | None:
    """A `syscall; ret` and an rt_sigreturn restorer in PID's executable mappings, or None.

    PREFER: pages (addresses) that stay resident whatever the session does -- e.g. the page of
    the `syscall` a thread is blocked in, which the squeeze keeps because resuming the call
    faults it back anyway.  A `syscall; ret` there is taken first: every injected call runs
    through the chain's instruction, and one on a page the squeeze drops is faulted straight
    back by the session's own last calls (issue 17: agetty's 0x40d885, one page every squeeze,
    while musl's blocked `syscall; ret` sat on the kept page).
    """
    maps = maps if maps is not None else read_maps(pid)
    sret: tuple[int, str] | None = _in_pages(pid, maps, prefer, SYSCALL_RET)
    rest: tuple[int, str] | None = None
    for m in maps:
        if "x" not in m.perms or (sret and rest):
            continue
        if m.path == "[vdso]":
            data = _own_vdso()
            if data is None or len(data) != m.end - m.start:
                continue

            def find(pat: bytes, data: bytes = data) -> int:
                return data.find(pat)
        else:

            def find(pat: bytes, m: Mapping = m) -> int:
                return _scan(pid, m, pat)

        if sret is None and (i := find(SYSCALL_RET)) >= 0:
            sret = (m.start + i, m.path)
        if rest is None:
            for pat in RESTORERS:
                if (i := find(pat)) >= 0:
                    rest = (m.start + i, m.path)
                    break
    if sret is None or rest is None:
        return None
    return Chain(sret[0], rest[0], (sret[1], rest[1]))


def syscall_ret_in(
    pid: int, maps: list[Mapping], pages: set[int] | frozenset[int]
) -> tuple[int, str] | None:
    """(address, path) of a `syscall; ret` lying wholly inside one of PAGES, or None."""
    return _in_pages(pid, maps, pages, SYSCALL_RET)


def _in_pages(
    pid: int, maps: list[Mapping], pages: set[int] | frozenset[int], pat: bytes
) -> tuple[int, str] | None:
    """(address, path) of PAT lying wholly inside one of PAGES of an executable file mapping."""
    for page in sorted(pages):
        m = next((m for m in maps if m.start <= page < m.end and "x" in m.perms), None)
        if m is not None and (i := _scan(pid, m, pat, page - m.start, page - m.start + 4096)) >= 0:
            return m.start + i, m.path
    return None


def find(pid: int) -> Gadget | None:
    """The best `syscall` gadget of PID, or None if it has none anywhere (then refuse)."""
    c = candidates(pid)
    return c[0] if c else None


def in_page(pid: int, page_addr: int, page_size: int = 4096) -> Gadget | None:
    """A `syscall` instruction inside the page at page_addr (for the fold's surviving page)."""
    for m in read_maps(pid):
        if not (m.start <= page_addr < m.end) or "x" not in m.perms:
            continue
        data = _file_bytes(pid, m)
        if data is None:
            return None
        lo = page_addr - m.start
        i = data[lo : lo + page_size].find(SYSCALL_INSN)
        return Gadget(page_addr + i, m.path) if i >= 0 else None
    return None
