"""Which label a mapping and each of its present pages get, and what backs each page.

Labels (issue 2): elf-header, code, rodata, data, bss, heap, stack, thread-stack, vdso, vvar,
vsyscall, lib:NAME (an ELF file other than the executable: a shared object), file:NAME (any other
file, e.g. a data file), anon, shmem (memfd, SysV, MAP_SHARED anonymous, tmpfs files), hugetlb
(hugetlbfs: MAP_HUGETLB, SHM_HUGETLB, MFD_HUGETLB) -- from the maps path, the mount table, the
threads' stack pointers and the mapped ELF files read from disk (remap.elfmap), never from the
target's memory.

Why its own module: :func:`remap.residency.snapshot` and the streaming ``map --json`` writer
(:mod:`remap.mapjson`) must label every page identically, and the writer must start fast -- this
module imports no dataclasses.
"""

from __future__ import annotations

import os

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
_SHMEM_FS = {"tmpfs", "ramfs", "devtmpfs"}
_PFNMAP_FLAGS = frozenset({"pf"})
# mm/hugetlb.c names the file behind MAP_ANONYMOUS|MAP_HUGETLB "anon_hugepage" (HUGETLB_ANON_FILE)
_HUGETLB_ANON = "/anon_hugepage"
_hugetlb_devs: frozenset[str] | None = None


def is_pfnmap(vmflags: frozenset[str]) -> bool:
    """VM_PFNMAP/VM_IO (smaps 'pf'/'io'): raw frames that no RSS counter ever counts."""
    return "pf" in vmflags or "io" in vmflags


def name_flags(path: str) -> frozenset[str]:
    """VmFlags we can infer from a maps path alone (no smaps read): vvar is a PFN map.
    (A hugetlb mapping's 'ht' needs its device too: :func:`is_hugetlb`.)"""
    return _PFNMAP_FLAGS if path.startswith("[vvar") else frozenset()


def fstypes_for(pid: int, entries) -> dict[str, str] | None:
    """{'maj:min': fstype} when some file mapping lives on an anonymous device (00:NN: tmpfs,
    ramfs...), so shmem files can be told from others; None when not needed or not readable.

    Keys are in the maps format (hex, two digits: '00:17'); mountinfo writes the same device
    in decimal ('0:23'), so its keys are converted here."""
    if not any(e.inode and e.dev.startswith("00:") for e in entries):
        return None
    try:
        found = procfs.read_mount_fstypes(pid)
    except AccessDenied:
        return None
    out: dict[str, str] = {}
    for dev, fstype in found.items():
        major, _, minor = dev.partition(":")
        if major.isdecimal() and minor.isdecimal():
            out[f"{int(major):02x}:{int(minor):02x}"] = fstype
    return out


def hugetlb_devs() -> frozenset[str]:
    """Devices ('maj:min', maps format) of the kernel's internal hugetlbfs mounts, one per huge
    page size, which back MAP_HUGETLB, SHM_HUGETLB and MFD_HUGETLB and are in no mount table.

    Why: maps alone (no smaps VmFlags 'ht') cannot otherwise tell a hugetlb memfd or SysV
    segment from a shmem one.  Learned once from memfd_create(MFD_HUGETLB | size) in our own
    process (creating the file reserves no huge page); sizes the kernel lacks are skipped."""
    global _hugetlb_devs
    if _hugetlb_devs is None:
        found = set()
        for size_kb in procfs.huge_page_sizes_kb():
            flag = os.MFD_HUGETLB | ((size_kb << 10).bit_length() - 1) << os.MFD_HUGE_SHIFT
            try:
                fd = os.memfd_create("remap-hugetlb-probe", flag | os.MFD_CLOEXEC)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
            finally:
                os.close(fd)
            found.add(f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}")
        _hugetlb_devs = frozenset(found)
    return _hugetlb_devs


def is_hugetlb(e, fstypes: dict[str, str] | None) -> bool:
    """Whether maps entry E is a hugetlbfs mapping: smaps says so ('ht'), or maps does (the
    anon_hugepage file, a hugetlbfs mount, or an internal hugetlbfs device)."""
    if "ht" in getattr(e, "vmflags", ()):  # smaps entries have VmFlags, maps entries do not
        return True
    if not e.dev.startswith("00:") or e.path.startswith("[") or not e.path:
        return False
    if e.path.startswith(_HUGETLB_ANON) or (fstypes and fstypes.get(e.dev) == "hugetlbfs"):
        return True
    return e.dev in hugetlb_devs()


def memory_kind(e, fstypes: dict[str, str] | None) -> str:
    """'hugetlb', 'shmem' (memfd, SysV, /dev/zero, a tmpfs file...) or '' for maps entry E."""
    if is_hugetlb(e, fstypes):
        return "hugetlb"
    if e.path.startswith(_SHMEM_PREFIXES):
        return "shmem"
    if e.inode and not e.path.startswith("[") and e.dev.startswith("00:") and fstypes:
        return "shmem" if fstypes.get(e.dev) in _SHMEM_FS else ""
    return ""


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


def vma_label(e, exe: str, kind: str, elf: bool, sps: list[int]) -> str:
    """The label of maps entry E from its path, its memory KIND (:func:`memory_kind`) and
    whether the file it maps is ELF (ELF refinement: :func:`classify`)."""
    if e.path in SPECIAL:
        return SPECIAL[e.path]
    if kind:
        return kind
    if e.inode and not e.path.startswith("["):
        if e.path == exe:
            return "code" if "x" in e.perms else ("data" if "w" in e.perms else "rodata")
        return label_for_file(e.path, elf)
    for sp in sps:
        if e.start <= sp < e.end:
            return "thread-stack"
    return "anon"


def label_for_file(path: str, elf: bool) -> str:
    """lib:NAME for an ELF file (a shared object), file:NAME for any other file."""
    return ("lib:" if elf else "file:") + os.path.basename(path.removesuffix(" (deleted)"))


class ElfView:
    """ELF description of the pages of one mapped file (exe or library) at its load bias.
    PATH is the file's path as maps shows it (' (deleted)' included)."""

    def __init__(self, info: elfmap.ElfInfo, bias: int, path: str):
        self.info, self.bias, self.path = info, bias, path

    def describe(self, addr: int) -> tuple:
        """(label, section, symbol) of the page at ADDR."""
        return _describe(self.info, addr - self.bias)

    def describe_pages(self, lo: int, hi: int) -> list[tuple]:
        """describe() of every page in [LO, HI), in one pass (elfmap.ElfInfo.describe_pages)."""
        return self.info.describe_pages(lo - self.bias, hi - self.bias)


_described: dict[tuple[int, int], tuple] = {}


def _describe(info: elfmap.ElfInfo, vaddr: int) -> tuple:
    """info.describe, memoised per (file, page): `watch` re-describes the same pages each time."""
    key = (id(info), vaddr)
    d = _described.get(key)
    if d is None:
        d = _described[key] = info.describe(vaddr)
    return d


def elf_views(entries, exe: str, pid: int | None = None) -> list[ElfView | None]:
    """For each VMA, the ELF view describing it (file mappings, plus the exe's anon .bss tail).

    A deleted file (a library replaced by an upgrade) is read through PID's
    /proc/PID/map_files link when we may (CAP_SYS_ADMIN); otherwise it has no view."""
    views: list[ElfView | None] = [None] * len(entries)
    lowest: dict[tuple[str, int], tuple[int, int]] = {}
    for e in entries:
        if e.inode and not e.path.startswith("[") and (e.path, e.inode) not in lowest:
            lowest[(e.path, e.inode)] = (e.start, e.offset)
    cache: dict[tuple[str, int], ElfView | None] = {}
    root = procfs.file_root(pid) if pid is not None else ""
    prev_file: ElfView | None = None
    prev_end = -1
    for i, e in enumerate(entries):
        if e.inode and not e.path.startswith("["):
            key = (e.path, e.inode)
            if key not in cache:
                info = elfmap.load(_disk_path(e, pid, root), e.inode)
                if info is None or not info.segments:
                    cache[key] = None
                else:
                    s, off = lowest[key]
                    cache[key] = ElfView(info, elfmap.load_bias(info, s, off), e.path)
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


def _disk_path(e, pid: int | None, root: str = "") -> str:
    """Where to read the file maps entry E maps: its path (under ROOT, procfs.file_root, for a
    process in another mount namespace), or for a deleted file the map_files link of the
    mapping (the inode itself, still on disk while mapped)."""
    if pid is None or not e.path.endswith(" (deleted)"):
        return root + e.path
    return procfs.map_files_path(pid, e.start, e.end)


def classify(e, view: ElfView | None, exe: str, fstypes, sps: list[int]) -> tuple[str, str, bool]:
    """(label, kind, is_exe_part) of maps entry E whose ELF view is VIEW; KIND is
    :func:`memory_kind`'s ('hugetlb', 'shmem' or '').

    An anonymous mapping described by an ELF view is that file's .bss tail: 'bss' for the
    executable's, lib:NAME for a library's.  is_exe_part: its pages get their labels from the
    executable's sections (code, rodata, data, bss, elf-header) and the mapping the most common
    of them (:func:`exe_vma_label`).
    """
    kind = memory_kind(e, fstypes)
    label = vma_label(e, exe, kind, view is not None, sps)
    is_exe_part = view is not None and view.path == exe
    if view is not None and not e.path:
        label = "bss" if is_exe_part else label_for_file(view.path, True)
    return label, kind, is_exe_part


def backing(file: bool, pfnmap: bool, kind: str, private_file: bool) -> tuple[str, bool]:
    """(backing, cow) of a present page: pfnmap | hugetlb | file | shmem | anon; cow marks an
    anonymous page inside a private file mapping (written .data, relocations).

    hugetlb pages are their own backing: no RSS figure counts them (smaps puts them in
    *_Hugetlb), and they are neither droppable file pages nor movable 4 kB anonymous ones."""
    if pfnmap:
        return "pfnmap", False
    if kind == "hugetlb":
        return "hugetlb", False
    if file:
        return ("shmem" if kind == "shmem" else "file"), False
    return "anon", private_file


def exe_vma_label(e, view: ElfView, page_labels: list[str]) -> str | None:
    """A file mapping of the executable is labelled by its most common page label (the first
    64 pages' ELF labels when none is present)."""
    if not page_labels:
        page_labels = [d[0] for d in view.describe_pages(e.start, min(e.end, e.start + (64 << 12)))]
    counts: dict[str, int] = {}  # a Counter's work without importing collections (issue 15)
    for label in page_labels:
        counts[label] = counts.get(label, 0) + 1
    # max() keeps the first of equal counts, in first-seen order, as Counter.most_common(1)
    return max(counts.items(), key=_count)[0] if counts else None


def _count(item: tuple[str, int]) -> int:
    return item[1]
