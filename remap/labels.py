"""Which label a mapping and each of its present pages get, and what backs each page.

Labels (issue 2): elf-header, code, rodata, data, bss, heap, stack, thread-stack, vdso, vvar,
vsyscall, lib:NAME, anon, shmem -- from the maps path, the mount table (tmpfs files are shmem),
the threads' stack pointers and the mapped ELF files read from disk (remap.elfmap), never from the
target's memory.

Why its own module: :func:`remap.residency.snapshot` and the streaming ``map --json`` writer
(:mod:`remap.mapjson`) must label every page identically, and the writer must start fast -- this
module imports no dataclasses.
"""

from __future__ import annotations

import os
from collections import Counter

from . import elfmap, procfs
from .errors import AccessDenied, NoSuchProcess

SPECIAL = {
    "[heap]": "heap",
    "[stack]": "stack",
    "[vdso]": "vdso",
    "[vvar]": "vvar",
    "[vvar_vclock]": "vvar",
    "[vsyscall]": "vsyscall",
}
_SHMEM_PREFIXES = ("/memfd:", "/SYSV", "/dev/zero", "[anon_shmem")
_SHMEM_FS = {"tmpfs", "ramfs", "hugetlbfs", "devtmpfs"}
_PFNMAP_FLAGS = frozenset({"pf"})


def is_pfnmap(vmflags: frozenset[str]) -> bool:
    """VM_PFNMAP/VM_IO (smaps 'pf'/'io'): raw frames that no RSS counter ever counts."""
    return "pf" in vmflags or "io" in vmflags


def name_flags(path: str) -> frozenset[str]:
    """VmFlags we can infer from a maps path alone (no smaps read): vvar is a PFN map."""
    return _PFNMAP_FLAGS if path.startswith("[vvar") else frozenset()


def fstypes_for(pid: int, entries) -> dict[str, str] | None:
    """{'maj:min': fstype} when some file mapping lives on an anonymous device (00:NN: tmpfs,
    ramfs...), so shmem files can be told from others; None when not needed or not readable."""
    if not any(e.inode and e.dev.startswith("00:") for e in entries):
        return None
    try:
        return procfs.read_mount_fstypes(pid)
    except AccessDenied:
        return None


def is_shmem(e, fstypes: dict[str, str] | None) -> bool:
    """Whether maps entry E is shared memory (memfd, SysV, /dev/zero, a tmpfs file...)."""
    if e.path.startswith(_SHMEM_PREFIXES):
        return True
    if e.inode and not e.path.startswith("[") and e.dev.startswith("00:") and fstypes:
        return fstypes.get(e.dev) in _SHMEM_FS
    return False


def thread_sps(pid: int, status: dict, notes: list[str]) -> list[int]:
    """Stack pointers of the non-main threads (for the thread-stack label); a note in NOTES
    when some thread's could not be read."""
    if int(status.get("Threads", 1)) <= 1:
        return []
    sps = []
    unknown = 0
    for tid in procfs.thread_ids(pid):
        if tid == pid:
            continue
        sp = None
        try:
            sc = procfs.read_syscall(pid, tid)
            sp = sc.sp
            if sp is None:
                sp = procfs.read_stat(pid, tid).kstkesp or None
        except (NoSuchProcess, AccessDenied):
            pass
        if sp:
            sps.append(sp)
        else:
            unknown += 1
    if unknown:
        notes.append(
            f"{unknown} thread(s) were running or unreadable: their stacks may be labelled "
            "'anon' instead of 'thread-stack'"
        )
    return sps


def vma_label(e, exe: str, shmem: bool, sps: list[int]) -> str:
    """The label of maps entry E from its path alone (ELF refinement: :func:`classify`)."""
    if e.path in SPECIAL:
        return SPECIAL[e.path]
    if shmem:
        return "shmem"
    if e.inode and not e.path.startswith("["):
        if e.path == exe:
            return "code" if "x" in e.perms else ("data" if "w" in e.perms else "rodata")
        return label_for_file(e.path)
    for sp in sps:
        if e.start <= sp < e.end:
            return "thread-stack"
    return "anon"


def label_for_file(path: str) -> str:
    return "lib:" + os.path.basename(path.removesuffix(" (deleted)"))


class ElfView:
    """ELF description of the pages of one mapped file (exe or library) at its load bias."""

    def __init__(self, info: elfmap.ElfInfo, bias: int):
        self.info, self.bias = info, bias

    def describe(self, addr: int) -> tuple:
        """(label, section, symbol) of the page at ADDR."""
        return _describe(self.info, addr - self.bias)


_described: dict[tuple[int, int], tuple] = {}


def _describe(info: elfmap.ElfInfo, vaddr: int) -> tuple:
    """info.describe, memoised per (file, page): `watch` re-describes the same pages each time."""
    key = (id(info), vaddr)
    d = _described.get(key)
    if d is None:
        d = _described[key] = info.describe(vaddr)
    return d


def elf_views(entries, exe: str) -> list[ElfView | None]:
    """For each VMA, the ELF view describing it (file mappings, plus the exe's anon .bss tail)."""
    views: list[ElfView | None] = [None] * len(entries)
    lowest: dict[tuple[str, int], tuple[int, int]] = {}
    for e in entries:
        if e.inode and not e.path.startswith("[") and (e.path, e.inode) not in lowest:
            lowest[(e.path, e.inode)] = (e.start, e.offset)
    cache: dict[tuple[str, int], ElfView | None] = {}
    prev_file: ElfView | None = None
    prev_end = -1
    for i, e in enumerate(entries):
        if e.inode and not e.path.startswith("["):
            key = (e.path, e.inode)
            if key not in cache:
                info = elfmap.load(e.path, e.inode)
                if info is None or not info.segments:
                    cache[key] = None
                else:
                    s, off = lowest[key]
                    cache[key] = ElfView(info, elfmap.load_bias(info, s, off))
            views[i] = cache[key]
            prev_file, prev_end = views[i], e.end
        elif not e.path and prev_file is not None and e.start == prev_end:
            # anonymous tail right after a file's last mapping: its .bss past the file size
            v = prev_file
            if e.start < v.bias + v.info.end_vaddr:
                views[i] = v
            prev_file = None
        else:
            prev_file = None
    return views


def classify(e, view: ElfView | None, exe: str, fstypes, sps: list[int]) -> tuple[str, bool, bool]:
    """(label, shmem, is_exe_part) of maps entry E whose ELF view is VIEW.

    An anonymous mapping described by an ELF view is that file's .bss tail: 'bss' for the
    executable's, lib:NAME for a library's.  is_exe_part: its pages get their labels from the
    executable's sections (code, rodata, data, bss, elf-header) and the mapping the most common
    of them (:func:`exe_vma_label`).
    """
    shmem = is_shmem(e, fstypes)
    label = vma_label(e, exe, shmem, sps)
    is_exe_part = view is not None and view.info.path == exe
    if view is not None and not e.path:
        label = "bss" if is_exe_part else label_for_file(view.info.path)
    return label, shmem, is_exe_part


def backing(file: bool, pfnmap: bool, shmem: bool, private_file: bool) -> tuple[str, bool]:
    """(backing, cow) of a present page: pfnmap | file | shmem | anon; cow marks an anonymous
    page inside a private file mapping (written .data, relocations)."""
    if pfnmap:
        return "pfnmap", False
    if file:
        return ("shmem" if shmem else "file"), False
    return "anon", private_file


def exe_vma_label(e, view: ElfView, page_labels: list[str]) -> str | None:
    """A file mapping of the executable is labelled by its most common page label (the first
    64 pages' ELF labels when none is present)."""
    labels = Counter(page_labels) or Counter(
        view.describe(a)[0] for a in range(e.start, min(e.end, e.start + (64 << 12)), 4096)
    )
    return labels.most_common(1)[0][0] if labels else None
