"""Pure, fast parsers for the /proc files remap reads: one small function per file, no policy.

This is remap's kernel boundary (with remap.pagemap for pagemap, kpageflags and the other
page-level files): every /proc and /sys file any module reads has its reader here -- per
process (maps, smaps, status, stat, syscall, auxv, wchan, children, personality, mem, exe...),
and system-wide (``/proc/sys/...``, the huge page sizes of ``/sys/kernel/mm/hugepages``).
The few magic links a caller must open itself (``exe``, ``root/...``, ``map_files/A-B``) are
named by :func:`path` / :func:`map_files_path`.

Why here and only here: a raw ``OSError`` from /proc means different things depending on whether
the process still exists (psutil's ``wrap_exceptions`` lesson).  Every reader goes through
:func:`translate`, which looks for a zombie before blaming the process and hands the errno to
:func:`remap.errors.translate`, the one table that turns ENOENT/ESRCH into
:class:`NoSuchProcess` (or :class:`ZombieProcess`) and EACCES/EPERM into :class:`AccessDenied`.

Example::

    >>> from remap import procfs
    >>> procfs.check_target(os.getpid())
    >>> procfs.read_status(os.getpid())["VmRSS"]          # kB, as an int
    >>> procfs.read_smaps(os.getpid())[0].fields["Rss"]  # kB
"""

from __future__ import annotations

import errno
import os

from . import errors
from .errors import GONE_ERRNOS, UnsupportedTarget, ZombieProcess
from .kconst import PF_KTHREAD
from .record import record

TYPE_CHECKING = False  # re for annotations only: imported where a big process needs it
if TYPE_CHECKING:
    import re


# --------------------------------------------------------------------------- error translation
def _state_or_none(pid: int) -> str | None:
    """The one-letter state of PID, or None if it is gone (never raises)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return data[data.rindex(b")") + 2 : data.rindex(b")") + 3].decode()
    except (OSError, ValueError):
        return None


def translate(pid: int, e: OSError, what: str) -> Exception:
    """Turn a raw OSError from reading /proc/PID/WHAT (or a call on PID) into remap's error
    vocabulary (:func:`remap.errors.translate`, the one errno table).

    Checks whether the process still exists before blaming it (a zombie looks like ENOENT or
    ESRCH for many files; a process that exited mid-read as well).
    """
    zombie = e.errno in GONE_ERRNOS and _state_or_none(pid) == "Z"
    return errors.translate(e, pid=pid, what=what, zombie=zombie)


def _read(pid: int, what: str) -> bytes:
    """Read /proc/PID/WHAT in one go, translating errors."""
    try:
        with open(f"/proc/{pid}/{what}", "rb", buffering=0) as f:
            chunks = []
            while True:
                b = f.read(1 << 20)
                if not b:
                    break
                chunks.append(b)
            return b"".join(chunks)
    except OSError as e:
        raise translate(pid, e, what) from None


def open_proc(pid: int, what: str) -> int:
    """os.open /proc/PID/WHAT read-only, translating errors; the caller closes the fd."""
    try:
        return os.open(f"/proc/{pid}/{what}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise translate(pid, e, what) from None


# --------------------------------------------------------------------------- maps / smaps
class MapEntry(record("MapEntry", "start end perms offset dev inode path")):
    """One line of /proc/PID/maps."""

    __slots__ = ()
    start: int
    end: int
    perms: str
    offset: int
    dev: str
    inode: int
    path: str


class SmapsEntry:
    """One VMA of /proc/PID/smaps: the maps line plus every field (kB ints) and VmFlags.

    Why lazy: the fast parser keeps each record's raw numbers and builds ``fields`` (a dict) only
    when asked; :meth:`get` reads one field without building it (5,000 VMAs in the bench).
    """

    __slots__ = ("start", "end", "perms", "offset", "dev", "inode", "path")
    __slots__ += ("_keys", "_vals", "_fields", "_flags", "_vmflags")

    def __init__(self, start, end, perms, offset, dev, inode, path, fields=None, vmflags=None,
                 keys=None, vals=None, flags_raw=b""):  # fmt: skip
        self.start, self.end, self.perms, self.offset = start, end, perms, offset
        self.dev, self.inode, self.path = dev, inode, path
        self._fields = fields
        self._keys = keys or {}
        self._vals = vals
        self._flags = flags_raw
        self._vmflags = vmflags

    @property
    def fields(self) -> dict[str, int]:
        if self._fields is None:
            self._fields = {k: int(self._vals[i]) for k, i in self._keys.items()}
        return self._fields

    @property
    def vmflags(self) -> frozenset[str]:
        if self._vmflags is None:
            self._vmflags = frozenset(self._flags.decode().split())
        return self._vmflags

    def get(self, key: str, default: int = 0) -> int:
        """One smaps field in kB (``default`` if this kernel does not print it)."""
        if self._fields is not None:
            return self._fields.get(key, default)
        i = self._keys.get(key)
        return default if i is None else int(self._vals[i])

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, SmapsEntry)
            and (self.start, self.end, self.perms, self.offset, self.dev, self.inode, self.path)
            == (
                other.start,
                other.end,
                other.perms,
                other.offset,
                other.dev,
                other.inode,
                other.path,
            )
            and self.fields == other.fields
            and self.vmflags == other.vmflags
        )

    def __repr__(self) -> str:
        return (
            f"SmapsEntry({self.start:#x}-{self.end:#x} {self.perms} {self.path!r} "
            f"Rss={self.get('Rss')} kB)"
        )


def _parse_map_line(line: bytes) -> tuple:
    # "start-end perms offset dev inode    path" -- the path may contain spaces.
    parts = line.split(None, 5)
    start, end = parts[0].split(b"-")
    path = parts[5].decode(errors="surrogateescape").rstrip("\n") if len(parts) > 5 else ""
    return (
        int(start, 16),
        int(end, 16),
        parts[1].decode(),
        int(parts[2], 16),
        parts[3].decode(),
        int(parts[4]),
        path,
    )


_MAPS_RE: list = []  # the maps line regex, compiled when first needed
# Below this many lines the line parser alone: it costs ~0.4 us a line more than the regex,
# and importing re ~5-9 ms (with enum), paid by every `remap map` (issue 15).
_MAPS_REGEX_LINES = 10_000


def parse_maps(data: bytes) -> list[MapEntry]:
    """Parse maps text; one regex pass over the decoded text for a big process, the line
    parser for a small one and as fallback.  Paths are decoded with surrogateescape, as
    everywhere here."""
    if data.count(b"\n") < _MAPS_REGEX_LINES:
        mk = MapEntry._make
        return [mk(_parse_map_line(ln)) for ln in data.splitlines() if ln]
    if not _MAPS_RE:
        import re

        _MAPS_RE.append(
            re.compile(r"([0-9a-f]+)-([0-9a-f]+) (\S+) ([0-9a-f]+) (\S+) (\d+) *([^\n]*)\n")
        )
    recs = _MAPS_RE[0].findall(data.decode(errors="surrogateescape"))
    if len(recs) != data.count(b"\n"):
        return [MapEntry(*_parse_map_line(ln)) for ln in data.splitlines() if ln]
    mk = MapEntry._make  # tuple.__new__: much cheaper than the generated __new__ per line
    return [
        mk((int(a, 16), int(b, 16), p, int(o, 16), d, int(i), n)) for a, b, p, o, d, i, n in recs
    ]


def read_maps(pid: int) -> list[MapEntry]:
    """Every VMA of PID from /proc/PID/maps (empty for kernel threads and zombies)."""
    return parse_maps(_read(pid, "maps"))


def read_maps_text(pid: int) -> bytes:
    """/proc/PID/maps as the kernel wrote it: for comparing two readings without parsing
    either (thousands of lines after a fault-around fence; the fold compares inside a stop)."""
    return _read(pid, "maps")


_HEADER_START = frozenset(b"0123456789abcdef")


def _parse_smaps_slow(data: bytes) -> list[SmapsEntry]:
    """Line-by-line smaps parser: handles any field layout (the fallback of parse_smaps)."""
    out: list[SmapsEntry] = []
    fields: dict[str, int] = {}
    cur: SmapsEntry | None = None
    hdr = _HEADER_START
    for line in data.split(b"\n"):
        if not line:
            continue
        if line[0] in hdr:
            fields = {}
            cur = SmapsEntry(*_parse_map_line(line), fields=fields, vmflags=frozenset())
            out.append(cur)
            continue
        key, _, rest = line.partition(b":")
        if key == b"VmFlags":
            if cur is not None:
                cur._vmflags = frozenset(rest.decode().split())
            continue
        v = rest.split(None, 1)
        if v:
            fields[key.decode()] = int(v[0])
    return out


_HDR_RE = rb"([0-9a-f]+)-([0-9a-f]+) (\S+) ([0-9a-f]+) (\S+) (\d+) *([^\n]*)\n"
_record_res: dict[tuple[str, ...], re.Pattern] = {}


def _record_re(keys: tuple[str, ...]) -> re.Pattern:
    """One regex matching a whole smaps record with this kernel's field order."""
    if keys not in _record_res:
        import re  # only for a big process's smaps (parse_smaps)

        body = b"".join(re.escape(k.encode()) + rb":[ \t]+(\d+)(?: kB)?\n" for k in keys)
        _record_res[keys] = re.compile(_HDR_RE + body + rb"VmFlags:([^\n]*)\n")
    return _record_res[keys]


def _parse_smaps_uniform(data: bytes) -> list[SmapsEntry] | None:
    """Parse smaps text cut into records by line count, when every record has the first one's
    fields in its order; None when one does not (or a value is not one number and its unit).

    Why, below the regex's 100 VMAs: the line parser decodes and converts every field of every
    record, ~2 ms of the `remap map` table on a CPython process (1,000 lines, issue 15).  Here
    each field is a column -- the same line of every record, one slice -- checked and split
    whole, and a record keeps its raw numbers: ``get`` converts the few it is asked for."""
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    per = next((i for i, ln in enumerate(lines) if ln.startswith(b"VmFlags:")), -1) + 1
    n = len(lines) // per if per > 1 else 0
    if not n or n * per != len(lines):
        return None
    heads = [ln.partition(b":")[0] + b":" for ln in lines[1 : per - 1]]
    index = {h[:-1].decode(): i for i, h in enumerate(heads)}
    if len(index) != len(heads):
        return None  # a key twice: the line parser keeps its last value
    columns = []
    for k, head in enumerate([*heads, b"VmFlags:"], 1):
        col = b"\n" + b"\n".join(lines[k::per])
        if col.count(b"\n" + head) != n:  # this line of some record is another field
            return None
        if k < per - 1:
            words = col.split()  # "Rss:", "123", "kB" (or no unit) on every line alike
            step = len(words) // n
            if step not in (2, 3) or step * n != len(words) or words[::step].count(head) != n:
                return None
            if step == 3 and words[2::3].count(b"kB") != n:
                return None
            columns.append(words[1::step])
    if not columns:
        return None
    hdr, out = _HEADER_START, []
    rows = zip(*columns, strict=True)
    for head, vals, flags in zip(lines[::per], rows, lines[per - 1 :: per], strict=True):
        if not head or head[0] not in hdr:
            return None
        out.append(SmapsEntry(*_parse_map_line(head), keys=index, vals=vals, flags_raw=flags[8:]))
    return out


def parse_smaps(data: bytes) -> list[SmapsEntry]:
    """Parse smaps text.

    Hot path (5,000 VMAs x 25 lines in bench/map_speed.py): every record has the same fields in
    the same order, so one regex built from the first record matches whole records at C speed;
    if any record does not fit (a field missing or added), fall back to the line parser.  Below
    100 VMAs, the same layout is cut by line count (:func:`_parse_smaps_uniform`).
    """
    if data.count(b"VmFlags:") < 100:  # small process: not worth compiling the record regex
        out = _parse_smaps_uniform(data)
        return _parse_smaps_slow(data) if out is None else out
    first_end = data.find(b"\nVmFlags:")
    if first_end < 0:
        return _parse_smaps_slow(data)
    first = _parse_smaps_slow(data[: data.find(b"\n", first_end + 1) + 1])
    if len(first) != 1:
        return _parse_smaps_slow(data)
    keys = tuple(first[0].fields)
    rx = _record_re(keys)
    index = {k: 7 + i for i, k in enumerate(keys)}
    recs = rx.findall(data)
    if len(recs) != data.count(b"VmFlags:"):  # some record did not fit the layout
        return _parse_smaps_slow(data)
    strs: dict[bytes, str] = {}  # perms, devs and paths repeat: decode each once

    def s(b: bytes) -> str:
        v = strs.get(b)
        if v is None:
            v = strs[b] = b.decode(errors="surrogateescape")
        return v

    flags_at = 7 + len(keys)
    new = SmapsEntry
    return [
        new(
            int(g[0], 16),
            int(g[1], 16),
            s(g[2]),
            int(g[3], 16),
            s(g[4]),
            int(g[5]),
            s(g[6]),
            keys=index,
            vals=g,
            flags_raw=g[flags_at],
        )  # fmt: skip
        for g in recs
    ]


def read_smaps(pid: int) -> list[SmapsEntry]:
    """Every VMA of PID with its smaps fields (kB) and VmFlags."""
    return parse_smaps(_read(pid, "smaps"))


def parse_kv_kb(data: bytes) -> dict[str, int]:
    """Parse 'Key:   123 kB' lines (smaps_rollup) into {key: int}; non-numeric lines skipped."""
    out: dict[str, int] = {}
    for line in data.split(b"\n"):
        key, sep, rest = line.partition(b":")
        if not sep:
            continue
        v = rest.split(None, 1)
        if v and v[0].isdigit():
            out[key.decode()] = int(v[0])
    return out


def read_smaps_rollup(pid: int) -> dict[str, int]:
    """/proc/PID/smaps_rollup as {field: kB} (Rss, Pss, Anonymous, Swap, ...)."""
    data = _read(pid, "smaps_rollup")
    # first line is the "[rollup]" pseudo-maps line; it has no ':' after the key -- skipped.
    return parse_kv_kb(data.split(b"\n", 1)[1] if b"\n" in data else b"")


# --------------------------------------------------------------------------- status / statm / stat
# status fields printed as hex masks (fs/proc/array.c render_sigset_t, render_cap_t)
_HEX_MASKS = frozenset(
    ("SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt", "CapInh", "CapPrm", "CapEff", "CapBnd",
     "CapAmb")
)  # fmt: skip


def parse_status(data: bytes) -> dict[str, int | str]:
    """status as a dict: 'kB' fields become ints (kB), plain integers ints, the rest strings."""
    out: dict[str, int | str] = {}
    for line in data.decode(errors="replace").splitlines():
        key, sep, rest = line.partition(":")
        if not sep:
            continue
        val = rest.strip()
        if val.endswith(" kB"):
            out[key] = int(val[:-3])
        elif key in _HEX_MASKS:
            out[key] = int(val, 16)  # '0000000000000002' is a mask, not the decimal 2
        elif val.isdigit():
            out[key] = int(val)
        else:
            out[key] = val
    return out


def read_status(pid: int, tid: int | None = None) -> dict[str, int | str]:
    """/proc/PID/status (or /proc/PID/task/TID/status); e.g. ``read_status(pid)["VmRSS"]`` is
    the RSS counter in kB, ``["SigBlk"]`` the blocked-signal mask as an int."""
    return parse_status(_read(pid, "status" if tid is None else f"task/{tid}/status"))


class Statm(record("Statm", "size resident shared text lib data dt")):
    """/proc/PID/statm, in pages (man 5 proc): lib and dt are always 0 since 2.6."""

    __slots__ = ()
    size: int
    resident: int
    shared: int
    text: int
    lib: int
    data: int
    dt: int


def read_statm(pid: int) -> Statm:
    return Statm(*(int(x) for x in _read(pid, "statm").split()[:7]))


_STAT_FIELDS = (
    "pid comm state ppid flags minflt majflt num_threads vsize rss start_code end_code "
    "start_stack kstkesp kstkeip processor start_data end_data start_brk arg_start arg_end "
    "env_start env_end"
)


class Stat(record("Stat", _STAT_FIELDS)):
    """The fields of /proc/PID/stat remap uses (numbering as in proc(5))."""

    __slots__ = ()
    pid: int
    comm: str
    state: str
    ppid: int
    flags: int
    minflt: int
    majflt: int
    num_threads: int
    vsize: int
    rss: int  # pages
    start_code: int
    end_code: int
    start_stack: int
    kstkesp: int
    kstkeip: int
    processor: int
    start_data: int
    end_data: int
    start_brk: int
    arg_start: int
    arg_end: int
    env_start: int
    env_end: int


def parse_stat(data: bytes) -> Stat:
    lp, rp = data.index(b"("), data.rindex(b")")  # comm may contain ')' and spaces
    f = data[rp + 2 :].split()
    # f[0] is field 3 (state); field N is f[N - 3].
    g = lambda n: int(f[n - 3]) if len(f) > n - 3 else 0  # noqa: E731
    return Stat(
        pid=int(data[:lp]),
        comm=data[lp + 1 : rp].decode(errors="replace"),
        state=f[0].decode(),
        ppid=g(4),
        flags=g(9),
        minflt=g(10),
        majflt=g(12),
        num_threads=g(20),
        vsize=g(23),
        rss=g(24),
        start_code=g(26),
        end_code=g(27),
        start_stack=g(28),
        kstkesp=g(29),
        kstkeip=g(30),
        processor=g(39),
        start_data=g(45),
        end_data=g(46),
        start_brk=g(47),
        arg_start=g(48),
        arg_end=g(49),
        env_start=g(50),
        env_end=g(51),
    )


def read_stat(pid: int, tid: int | None = None) -> Stat:
    """/proc/PID/stat (or /proc/PID/task/TID/stat).  Address fields are 0 without ptrace access."""
    return parse_stat(_read(pid, "stat" if tid is None else f"task/{tid}/stat"))


# --------------------------------------------------------------------------- auxv / syscall / tasks
def read_auxv(pid: int) -> list[tuple[int, int]]:
    """The auxiliary vector as [(AT_type, value), ...] up to (not including) AT_NULL."""
    import struct  # here: `remap map` needs no struct (~0.7 ms with _struct, issue 15)

    data = _read(pid, "auxv")
    out = []
    for t, v in struct.iter_unpack("<QQ", data[: len(data) // 16 * 16]):
        if t == 0:
            break
        out.append((t, v))
    return out


class Syscall(record("Syscall", "running nr args sp pc", defaults=(None, (), None, None))):
    """/proc/PID/syscall: what a blocked thread is doing.

    ``running`` means the thread was on a CPU (no registers); ``nr == -1`` means blocked but not
    in a syscall (e.g. stopped by a signal).  sp/pc are the user stack pointer and pc.
    """

    __slots__ = ()
    running: bool
    nr: int | None
    args: tuple[int, ...]
    sp: int | None
    pc: int | None


def parse_syscall(data: bytes) -> Syscall:
    parts = data.split()
    if not parts or parts[0] == b"running":
        return Syscall(running=True)
    nr = int(parts[0])
    nums = [int(p, 16) for p in parts[1:]]
    if nr == -1:
        return Syscall(running=False, nr=-1, sp=nums[0], pc=nums[1])
    return Syscall(running=False, nr=nr, args=tuple(nums[:6]), sp=nums[6], pc=nums[7])


def read_syscall(pid: int, tid: int | None = None) -> Syscall:
    """What PID (or thread TID) is blocked in; needs ptrace access (root or same user)."""
    return parse_syscall(_read(pid, "syscall" if tid is None else f"task/{tid}/syscall"))


def thread_ids(pid: int) -> list[int]:
    """Sorted TIDs of PID's threads (the main thread's TID equals PID)."""
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError as e:
        raise translate(pid, e, "task") from None


def read_cmdline(pid: int) -> list[str]:
    """PID's argument vector from /proc/PID/cmdline ([] for a kernel thread or a zombie)."""
    return [a.decode(errors="replace") for a in _read(pid, "cmdline").split(b"\0")[:-1]]


def kernel_release() -> str:
    """The running kernel's release string, e.g. '6.18.44-...'."""
    return os.uname().release


def read_exe(pid: int) -> str:
    """The path of PID's executable ('' if it has none, e.g. a kernel thread)."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError as e:
        if e.errno == errno.ENOENT and _state_or_none(pid) not in (None, "Z"):
            return ""  # kernel thread: no exe link
        raise translate(pid, e, "exe") from None


FAULT_AROUND_BYTES = "/sys/kernel/debug/fault_around_bytes"  # mm/memory.c, debugfs
FAULT_AROUND_DEFAULT = 65536  # mm/memory.c: rounddown_pow_of_two(65536)


def read_fault_around_bytes() -> int | None:
    """fault_around_bytes from debugfs (root, debugfs mounted); None when it cannot be read."""
    try:
        with open(FAULT_AROUND_BYTES) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def file_root(pid: int) -> str:
    """The prefix under which this process's paths name PID's files: "" when PID shares our
    mount namespace, else "/proc/PID/root" (its own root, through which its /usr/lib is read
    -- a container's library is not ours).  "" too when its namespace cannot be read."""
    try:
        if os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
            return ""
    except OSError:
        return ""
    return f"/proc/{pid}/root"


def read_mount_fstypes(pid: int) -> dict[str, str]:
    """{'maj:min': fstype} from /proc/PID/mountinfo (to tell tmpfs/shmem files from others)."""
    out: dict[str, str] = {}
    for line in _read(pid, "mountinfo").decode(errors="replace").splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        parts = left.split()
        if len(parts) > 2:
            out.setdefault(parts[2], right.split()[0])
    return out


# --------------------------------------------------------------------------- more per-process files
def path(pid: int, what: str) -> str:
    """The path of /proc/PID/WHAT, for the few callers that must hand a path on instead of
    reading it here: a magic link opened through the kernel (``exe``, ``root/...``,
    ``map_files/A-B``: the very file mapped, even when replaced or deleted), or a file a
    library reads itself (pyelftools on ``exe``)."""
    return f"/proc/{pid}/{what}"


def map_files_path(pid: int, start: int, end: int) -> str:
    """/proc/PID/map_files/START-END: the inode the mapping maps (root only; it stays valid
    for a deleted or replaced file)."""
    return path(pid, f"map_files/{start:x}-{end:x}")


def stat_exe(pid: int) -> os.stat_result:
    """os.stat of the file PID executes (through /proc/PID/exe: the mapped inode itself)."""
    try:
        return os.stat(path(pid, "exe"))
    except OSError as e:
        raise translate(pid, e, "exe") from None


def read_wchan(pid: int) -> str:
    """/proc/PID/wchan: the kernel function PID sleeps in ('0' while it runs)."""
    return _read(pid, "wchan").decode(errors="replace")


def read_children(pid: int, tid: int | None = None) -> list[int]:
    """PIDs of the children of thread TID of PID (/proc/PID/task/TID/children); with TID None
    the children of every thread of PID."""
    tids = thread_ids(pid) if tid is None else [tid]
    return [int(k) for t in tids for k in _read(pid, f"task/{t}/children").split()]


def read_personality(pid: int) -> int:
    """The persona of PID (/proc/PID/personality, hex; needs ptrace access)."""
    return int(_read(pid, "personality").strip(), 16)


def read_mem(pid: int, addr: int, n: int) -> bytes:
    """N bytes of PID's memory at ADDR through /proc/PID/mem (ptrace access needed).  Reading
    faults the pages in, like the process touching them: only for pages known resident."""
    fd = open_mem(pid)
    try:
        return os.pread(fd, n, addr)
    except OSError as e:
        raise translate(pid, e, "mem") from None
    finally:
        os.close(fd)


class MemFile:
    """/proc/PID/mem opened once, for many reads of a process's memory: remap's one way to
    read another process's bytes (the write side stays process_vm_writev: inject.memory).

    Why not process_vm_readv: it *pins* the pages it reads (FOLL_PIN), and a read-only pin of
    an anonymous page still shared copy-on-write with a forked child unshares it first
    (mm/gup.c, gup_must_unshare, since 5.19): the target is handed a new frame holding the
    same bytes, the child keeps the old one, and the system pays a page for every page read.
    A dry run that reads a forking server's heap copied it, and a fold whose frames evidence
    saw the new frame refused its own squeeze (busybox httpd, which forks per request; CI
    stop 23).  /proc/PID/mem reads through get_user_pages without a pin (FOLL_GET |
    FOLL_FORCE): nothing is copied (tests/test_never_harm_fold.py: a forked target's shared
    pages keep their frames through a dry run, a session's reads and a squeeze).  It is as
    fast: 3.1-3.9 ms for 8 MB in 1 MB reads here, against 3.5-5.7 ms.  Raises remap's errors
    (NoSuchProcess, AccessDenied) when it cannot be opened."""

    def __init__(self, pid: int):
        self.pid = pid
        self._fd = open_mem(pid)

    def read(self, addr: int, n: int) -> bytes:
        """N bytes at ADDR; fewer when the range runs into unmapped memory; raises OSError
        (EIO) when not even its first byte is mapped."""
        return os.pread(self._fd, n, addr)

    def read_exact(self, addr: int, n: int) -> bytes:
        """N bytes at ADDR, or OSError(EFAULT) naming the address; NoSuchProcess or
        ZombieProcess when the process is gone (its memory then reads as nothing)."""
        try:
            out = self.read(addr, n)
        except OSError:
            out = b""
        if len(out) != n:
            state = _state_or_none(self.pid)
            if state is None:
                raise errors.NoSuchProcess(self.pid)
            if state == "Z":
                raise ZombieProcess(self.pid)
            raise OSError(errno.EFAULT, f"cannot read {n} bytes at {addr:#x}")
        return out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:  # a session dropped without close(): no fd left behind
        if getattr(self, "_fd", -1) >= 0:  # (not set when open_mem raised)
            self.close()


def open_mem(pid: int, *, write: bool = False) -> int:
    """os.open /proc/PID/mem (read-write with WRITE), translating errors; the caller closes
    the fd and uses os.pread/os.pwrite at target addresses."""
    try:
        return os.open(path(pid, "mem"), (os.O_RDWR if write else os.O_RDONLY) | os.O_CLOEXEC)
    except OSError as e:
        raise translate(pid, e, "mem") from None


def write_clear_refs(pid: int, what: str) -> None:
    """Write WHAT to /proc/PID/clear_refs: '1' clears the referenced bits of every page, '4'
    the soft-dirty bits (fs/proc/task_mmu.c)."""
    try:
        with open(path(pid, "clear_refs"), "w") as f:
            f.write(what)
    except OSError as e:
        raise translate(pid, e, "clear_refs") from None


def open_thread_ns(tid: int, kind: str) -> int:
    """os.open /proc/self/task/TID/ns/KIND (a namespace of one of our own threads: a thread
    that unshared holds it alone); the caller closes the fd."""
    return os.open(f"/proc/self/task/{tid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)


def self_fd_path(fd: int) -> str:
    """/proc/self/fd/FD: a path naming our open FD, for a child that inherits it."""
    return f"/proc/self/fd/{fd}"


# --------------------------------------------------------------------------- system-wide files
def read_sysctl(name: str) -> str | None:
    """/proc/sys/NAME (e.g. 'kernel/yama/ptrace_scope') stripped; None when this kernel has no
    such knob or it cannot be read."""
    try:
        with open(f"/proc/sys/{name}") as f:
            return f.read().strip()
    except OSError:
        return None


HUGEPAGES_DIR = "/sys/kernel/mm/hugepages"  # one hugepages-NkB folder per supported size


def huge_page_sizes_kb() -> list[int]:
    """Huge page sizes this kernel supports (/sys/kernel/mm/hugepages/hugepages-NkB)."""
    try:
        names = os.listdir(HUGEPAGES_DIR)
    except OSError:
        return []
    return [int(n[10:-2]) for n in names if n.startswith("hugepages-") and n[10:-2].isdecimal()]


# --------------------------------------------------------------------------- target check
def check_target(pid: int) -> Stat:
    """Refuse what remap cannot look into: gone, zombie, kernel thread.  Returns its stat.

    Why the stat flags: a kernel thread has no mm (empty maps) and PF_KTHREAD set; reading its
    empty maps would otherwise look like an empty but valid process.
    """
    st = read_stat(pid)
    if st.state == "Z":
        raise ZombieProcess(pid)
    if st.flags & PF_KTHREAD:
        raise UnsupportedTarget(f"process {pid} ({st.comm}) is a kernel thread: it has no memory")
    return st


def read_max_map_count() -> int:
    """/proc/sys/vm/max_map_count: how many VMAs one process may have (mm/mmap.c refuses the
    mmap, mprotect or madvise split that would pass it with ENOMEM)."""
    with open("/proc/sys/vm/max_map_count") as f:
        return int(f.read())


# readers for the inject package
def read_exe_header(pid: int, n: int = 64) -> bytes:
    """The first N bytes of PID's executable (/proc/PID/exe: the file itself, even if deleted
    or outside our mount namespace), e.g. its ELF header."""
    try:
        with open(f"/proc/{pid}/exe", "rb") as f:
            return f.read(n)
    except OSError as e:
        raise translate(pid, e, "exe") from None


def read_task_status(pid: int, tid: int) -> dict[str, int | str]:
    """/proc/PID/task/TID/status: one thread's own fields (Seccomp, SigBlk, SigPnd...)."""
    return parse_status(_read(pid, f"task/{tid}/status"))
