"""The residency model against the kernel's own files, on three real targets.

Each test starts a real process (static musl echoloop, dynamic glibc glibcloop, a CPython),
waits until it blocks, snapshots it and checks the snapshot against /proc read by the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from elftools.elf.elffile import ELFFile
from helpers import rollup_kb, state, wait_until

import remap
from remap import kconst as K
from remap import pagemap, residency, targets

LABELS = {
    "elf-header", "code", "rodata", "data", "bss", "heap", "stack", "thread-stack",
    "vdso", "vvar", "vsyscall", "anon", "shmem",
}  # fmt: skip
FILE_LABELS = ("lib:", "file:")  # lib:NAME an ELF object, file:NAME any other file


def _all_blocked(pid: int, timeout: float = 5.0) -> None:
    """Wait until every thread of PID sleeps (state S): nothing faults while we compare."""

    def all_asleep() -> bool:
        return all(state(pid, int(tid)) == "S" for tid in os.listdir(f"/proc/{pid}/task"))

    wait_until(f"every thread of {pid} blocked", all_asleep, timeout)


def _kernel_smaps_rss(pid: int) -> int:
    """Sum of Rss: lines of /proc/PID/smaps, parsed here independently of remap.procfs."""
    with open(f"/proc/{pid}/smaps") as f:
        return sum(int(ln.split()[1]) for ln in f if ln.startswith("Rss:"))


def _kernel_rollup_rss(pid: int) -> int:
    return rollup_kb(pid)["Rss"]


@pytest.fixture
def echoloop(spawn):
    t = spawn("echoloop")
    t.wait_blocked()
    return t


@pytest.fixture
def glibcloop(spawn):
    t = spawn("glibcloop", "default", "512", "2")
    assert t.proc.stdout.readline().startswith(b"ready")
    _all_blocked(t.pid)
    return t


@contextlib.contextmanager
def _python_child(code: str, *args: str) -> Iterator[subprocess.Popen]:
    """A CPython running CODE (which prints 'ready' then blocks reading stdin), once every
    thread sleeps; killed and reaped afterwards."""
    p = subprocess.Popen(
        [sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert p.stdout.readline().startswith(b"ready")
        _all_blocked(p.pid)
        yield p
    finally:
        p.kill()
        p.wait(timeout=5)
        p.stdin.close()
        p.stdout.close()


@pytest.fixture
def cpython():
    code = "import sys; b = bytearray(3 << 20); print('ready', flush=True); sys.stdin.read()"
    with _python_child(code) as p:
        yield p
        p.stdout.close()


def _check_counters_and_labels(pid: int) -> residency.Snapshot:
    s = remap.snapshot(pid)
    kernel_smaps, kernel_rollup = _kernel_smaps_rss(pid), _kernel_rollup_rss(pid)
    c = s.counters_kb
    assert c["smaps_rss"] == c["smaps_rollup_rss"] == c["pagemap_present"], (c, s.notes)
    assert c["smaps_rss"] == kernel_smaps == kernel_rollup
    assert s.rss_kb == c["pagemap_present"] == 4 * s.present_pages
    assert set(c) == {
        "status_vmrss", "status_rss_anon", "status_rss_file", "status_rss_shmem",
        "statm_rss", "smaps_rss", "smaps_rollup_rss", "pagemap_present",
    }  # fmt: skip
    for v in s.vmas:
        assert v.rss_kb == 4 * len(v.pages) or v.pfnmap, (v, len(v.pages))
        assert v.pages == sorted(v.pages, key=lambda p: p.addr)
        for p in v.pages:
            assert v.contains(p.addr)
            if v.label.startswith(FILE_LABELS) or v.label in ("heap", "stack", "anon", "vdso"):
                assert p.label == v.label, (v, p)  # incl. a library's anonymous .bss tail
            assert p.label in LABELS or p.label.startswith(FILE_LABELS), p
            assert p.backing in ("file", "anon", "shmem", "pfnmap")
    assert s.summary.startswith("VM ") and "Stack" in s.summary
    assert s.notes
    return s


def test_static_musl_counters_agree_and_labels(echoloop):
    s = _check_counters_and_labels(echoloop.pid)
    labels = {p.label for p in s.pages()}
    assert {"elf-header", "code", "stack"} <= labels
    # musl writes its own globals at start-up: that page of the RW mapping is CoW'd (anon)
    data = [p for p in s.pages() if p.label == "data" and p.backing == "anon"]
    assert data and all(p.cow for p in data)
    assert all(p.clean_file for p in s.pages() if p.label == "code")
    assert not any(p.clean_file for p in s.pages() if p.label == "stack")


def test_static_target_labels_match_elf_sections(echoloop):
    """Every present page of the exe: label and section agree with the ELF file (pyelftools)."""
    s = remap.snapshot(echoloop.pid)
    with open(echoloop.path, "rb") as f:
        elf = ELFFile(f)
        secs = [
            (x.name, x["sh_addr"], x["sh_addr"] + x["sh_size"], x["sh_flags"], x["sh_type"])
            for x in elf.iter_sections()
            if x["sh_flags"] & 2 and x["sh_size"]
        ]
        first = min(p["p_vaddr"] for p in elf.iter_segments() if p["p_type"] == "PT_LOAD")
    exe_pages = [p for v in s.vmas if v.path == str(echoloop.path) for p in v.pages]
    assert len(exe_pages) >= 3
    for p in exe_pages:  # static, non-PIE: ELF vaddr == address
        over = [x for x in secs if x[1] < p.addr + 4096 and x[2] > p.addr]
        if p.addr == first & ~0xFFF:
            want = "elf-header"
        elif any(x[3] & 4 for x in over):
            want = "code"
        elif any(x[3] & 1 and x[4] != "SHT_NOBITS" for x in over):
            want = "data"
        elif any(not x[3] & 1 for x in over):
            want = "rodata"
        else:
            want = "bss"
        assert p.label == want, (hex(p.addr), p.label, over)
        if over:
            assert p.section in {x[0] for x in over}
        else:
            assert p.section is None
    # and the readelf view of the first code page agrees on the symbol being a real function
    code = [p for p in exe_pages if p.label == "code"]
    assert code and all(p.symbol for p in code)


def test_glibc_dynamic_counters_agree_and_labels(glibcloop):
    s = _check_counters_and_labels(glibcloop.pid)
    labels = {p.label for p in s.pages()}
    assert "lib:libc.so.6" in labels
    assert any(lb.startswith("lib:ld-linux") for lb in labels)
    assert "heap" in labels or "anon" in labels  # 512 kB malloc may be an mmap
    assert {"code", "elf-header"} <= labels
    # two idle threads: their stacks are found from /proc/PID/task/TID/syscall
    assert len(s.find("thread-stack")) == 2
    # the written global 'counter' lives in a CoW page of the exe's RW mapping
    with open(glibcloop.path, "rb") as f:
        sym = ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name("counter")[0]
    base = min(v.start for v in s.vmas if v.path == str(glibcloop.path))  # PIE: bias = base
    page = next(p for p in s.pages() if p.addr == (base + sym["st_value"]) & ~0xFFF)
    assert page.backing == "anon" and page.cow and page.label == "data"
    assert page.section in (".data", ".got.plt", ".got")
    libc_code = [p for p in s.pages() if p.label == "lib:libc.so.6" and p.section == ".text"]
    assert libc_code and all(p.clean_file for p in libc_code)


def test_cpython_counters_agree(cpython):
    s = _check_counters_and_labels(cpython.pid)
    assert s.counters_kb["pagemap_present"] > 3 << 10  # the 3 MB bytearray is resident


@pytest.mark.skipif(not pagemap.scan_supported(), reason="kernel lacks PAGEMAP_SCAN (6.7+)")
def test_scan_and_plain_read_agree(glibcloop, echoloop):
    for pid in (glibcloop.pid, echoloop.pid):
        a = remap.snapshot(pid, method="scan")
        b = remap.snapshot(pid, method="read")
        assert a.method == "scan" and b.method == "read"
        pa = [(p.addr, p.backing, p.label, p.section, p.symbol) for p in a.pages()]
        pb = [(p.addr, p.backing, p.label, p.section, p.symbol) for p in b.pages()]
        assert pa == pb
        assert a.counters_kb == b.counters_kb


def test_fast_snapshot_without_smaps_gives_the_same_map(glibcloop, echoloop):
    """snapshot(smaps=False) (what `map --json` uses) must give the smaps figures exactly."""
    for pid in (glibcloop.pid, echoloop.pid):
        full, fast = remap.snapshot(pid), remap.snapshot(pid, smaps=False, pfns=False)
        assert fast.to_json() == full.to_json()
        assert [(v.anon_kb, v.file_kb, v.shmem_kb) for v in fast.vmas] == [
            (v.anon_kb, v.file_kb, v.shmem_kb) for v in full.vmas
        ]
        assert fast.counters_kb["smaps_rss"] is None
        assert fast.counters_kb["pagemap_present"] == full.counters_kb["smaps_rss"]


def test_lean_snapshot_for_a_stopped_process_has_the_same_pages(glibcloop, echoloop):
    """snapshot(counters=False) (the fold's view while it holds the process stopped) reads only
    maps and pagemap: the same VMAs, labels and pages, no counters or notes."""
    for pid in (glibcloop.pid, echoloop.pid):
        fast = remap.snapshot(pid, smaps=False, pfns=False)
        lean = remap.snapshot(pid, smaps=False, pfns=False, counters=False)
        assert lean.to_json() == fast.to_json()
        assert lean.counters_kb == {"pagemap_present": fast.counters_kb["pagemap_present"]}
        assert lean.notes == [] and lean.summary == ""
    with pytest.raises(ValueError):
        remap.snapshot(echoloop.pid, counters=False)


def test_pfns_and_kpageflags_as_root(echoloop, is_root):
    if not is_root:
        pytest.skip("PFNs need CAP_SYS_ADMIN")
    s = remap.snapshot(echoloop.pid, kpageflags=True)
    pages = s.pages()
    assert all(p.pfn for p in pages)
    anon = [p for p in pages if p.backing == "anon"]
    assert anon and all(p.flags & (1 << K.KPF_ANON) for p in anon)
    files = [p for p in pages if p.backing == "file"]
    assert files and not any(p.flags & (1 << K.KPF_ANON) for p in files)
    counts = pagemap.kpagecount([p.pfn for p in pages])
    assert all(counts[p.pfn] >= 1 for p in pages)


def test_zero_page_is_present_but_not_counted(tmp_path):
    """A read-only touch maps the shared zero page: pagemap sees it, no RSS counts it."""
    code = (
        "import mmap, sys; m = mmap.mmap(-1, 64 << 12, flags=mmap.MAP_PRIVATE|mmap.MAP_ANONYMOUS)\n"
        "s = sum(m[i << 12] for i in range(64)); print('ready', flush=True); sys.stdin.read()"
    )
    with _python_child(code) as p:
        s = remap.snapshot(p.pid)
        c = s.counters_kb
        assert c["smaps_rss"] == c["pagemap_present"] == _kernel_smaps_rss(p.pid)
        if pagemap.scan_supported() or pagemap.pfns_visible():
            assert sum(v.zero_pages for v in s.vmas) >= 64
            assert any("zero page" in n for n in s.notes)


def test_snapshot_of_tiny_static_process_is_fast(echoloop):
    remap.snapshot(echoloop.pid)  # warm the ELF cache and imports
    t = time.perf_counter()
    for _ in range(20):
        remap.snapshot(echoloop.pid)
    per = (time.perf_counter() - t) / 20
    assert per < 0.02, f"{per * 1e3:.1f} ms per snapshot"


def test_mechanism_for_names_the_kernel_mechanism():
    assert "split RSS" in residency.mechanism_for("4.19.0-amd64")
    assert "64" in residency.mechanism_for("6.1.0-13-amd64")
    assert "per-CPU" in residency.mechanism_for("6.5.0")
    assert "2025" in residency.mechanism_for("6.18.44")
    assert "atomically" in residency.mechanism_for("2.6.32")


# ---------------------------------------------------------------------------- map --json writer
def _same_document(pid: int) -> None:
    """remap.mapjson writes byte for byte what the snapshot model encodes for the same instant."""
    from remap import mapjson

    fast = mapjson.document(pid)
    model = json.dumps(
        remap.snapshot(pid, pfns=False, smaps=False).to_json(), separators=(",", ":")
    )
    assert fast == model
    d = json.loads(fast)
    assert d["pid"] == pid and d["vmas"]
    assert sum(v["rss_kb"] for v in d["vmas"] if v["path"] != "[vvar]") == _kernel_smaps_rss(pid)


def test_map_json_writer_matches_the_model(echoloop, glibcloop, cpython):
    for pid in (echoloop.pid, glibcloop.pid, cpython.pid):
        _same_document(pid)


_ODD_NAMES = (
    "import mmap, os, sys\n"
    "ms = []\n"
    "for name in sys.argv[2:]:\n"
    "    path = os.path.join(sys.argv[1], name)\n"
    "    with open(path, 'wb') as f: f.write(b'x' * 3 * 4096)\n"
    "    with open(path, 'rb') as f: ms.append(mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ))\n"
    "    ms[-1][0], ms[-1][8192]\n"
    "print('ready', flush=True); sys.stdin.read()\n"
)  # a mapped file per name, two of its pages read (present, file-backed)


def test_map_json_writer_matches_the_model_for_odd_file_names(tmp_path):
    """Mapped files whose names hold a '%' (the writer formats page templates with bytes %),
    a quote, a backslash, a space and non-ASCII: the same bytes as json.dumps of the model."""
    from remap import mapjson

    names = ["a%d%s%%.dat", 'q"uote\\back slash', "caf\u00e9-\u2603.bin"]
    with _python_child(_ODD_NAMES, str(tmp_path), *names) as p:
        _same_document(p.pid)
        d = json.loads(mapjson.document(p.pid))
        paths = {v["path"] for v in d["vmas"] if v["pages"]}
        assert {str(tmp_path / n) for n in names} <= paths


def test_a_mapped_elf_cache_entry_is_what_a_parse_gives(tmp_path, monkeypatch):
    """An entry is used in place, mapped (libc's: ~100 kB): what comes back is what a fresh
    parse gives, every symbol's name included."""
    from remap import elfmap, procfs

    maps = procfs.read_maps(os.getpid())
    libc = next(e.path for e in maps if os.path.basename(e.path).startswith("libc.so"))
    monkeypatch.setenv("REMAP_ELF_CACHE", str(tmp_path))
    elfmap._cache.clear()
    fresh = elfmap.load(libc)  # parsed, and stored
    (entry,) = tmp_path.iterdir()
    elfmap._cache.clear()
    again = elfmap.load(libc)
    assert again is not fresh
    for name in ("path", "segments", "sections", "sym_addr", "sym_end", "sym_name"):
        assert getattr(again, name) == getattr(fresh, name), name
    assert again.strtab() == fresh.strtab()
    assert [again._name(i) for i in range(len(again.sym_name))] == [
        fresh._name(i) for i in range(len(fresh.sym_name))
    ]
    # every page's description comes from the entry's page table, as the parse computes it
    lo, n = fresh.base_vaddr, fresh._page_count()
    assert again._page_table() is not None and fresh._page_table() is None
    assert again.describe_pages(lo, lo + n * K.PAGE_SIZE) == fresh.describe_pages(
        lo, lo + n * K.PAGE_SIZE
    )
    mid = lo + n // 2 * K.PAGE_SIZE  # a run inside, one running past the table, one before it
    for a, b in ((mid, mid + 3 * K.PAGE_SIZE), (mid, lo + (n + 2) * K.PAGE_SIZE), (0, 8192)):
        assert again.describe_pages(a, b) == fresh.walk_pages(a, b), (a, b)
    elfmap._cache.clear()


def test_map_json_pieces_cut_anywhere_still_make_the_document(cpython, monkeypatch):
    """`map --json` writes mapjson.pieces one by one; cut into runs of 2 pages (every run of
    more is then split) they still make the model's document, byte for byte."""
    from remap import mapjson, procfs

    monkeypatch.setattr(mapjson, "_CHUNK_PAGES", 2)
    parts = list(mapjson.pieces(cpython.pid))
    assert len(parts) > 2 * len(procfs.read_maps(cpython.pid))  # long runs were cut
    model = json.dumps(
        remap.snapshot(cpython.pid, pfns=False, smaps=False).to_json(), separators=(",", ":")
    )
    assert b"".join(parts).decode("ascii") == model


def test_map_table_writer_matches_the_model(echoloop, glibcloop, cpython):
    """remap.maptable (smaps + status, no page objects) prints byte for byte the model's table,
    with and without colour, and its rows sum to the kernel's own smaps Rss."""
    from remap import maptable, render

    for pid in (echoloop.pid, glibcloop.pid, cpython.pid):
        for tty in (False, True):
            assert maptable.text(pid, tty=tty) == render.map_text(remap.snapshot(pid), tty=tty)
        total = maptable.text(pid).splitlines()[-1].split()
        assert total[0] == "total" and int(total[2]) == _kernel_smaps_rss(pid)


_MANY_RUNS = (
    "import mmap, sys\n"
    "ms = [mmap.mmap(-1, 8 << 12, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,\n"
    "      prot=mmap.PROT_READ | mmap.PROT_WRITE * (i % 2)) for i in range(int(sys.argv[1]))]\n"
    "for i, m in enumerate(ms):\n"
    "    if i % 2: m[0] = 1; m[5 << 12] = 1\n"
    "print('ready', flush=True); sys.stdin.read()\n"
)  # N anonymous mappings, each odd one with two present pages apart: N runs in all


@pytest.mark.skipif(not pagemap.scan_supported(), reason="kernel lacks PAGEMAP_SCAN (6.7+)")
def test_scan_over_more_runs_than_one_ioctl_returns():
    """More present runs than one PAGEMAP_SCAN vector holds: the resumed walk must neither
    repeat nor lose a run (6.18 reports a walk_end below what it already returned)."""
    # the last ioctl must return more than its 512-entry bounce buffer holds but not a full
    # vector: that is when 6.18 reported the stale walk_end
    with _python_child(_MANY_RUNS, str(pagemap._VEC_LEN + 1500)) as p:
        maps = [m for m in remap.procfs.read_maps(p.pid) if m.path != "[vsyscall]"]
        ranges = [(m.start, m.end) for m in maps]
        scan = pagemap.present_scan(p.pid, ranges)
        read = pagemap.present_read(p.pid, ranges)
        assert sum(len(rs) for rs in scan) > pagemap._VEC_LEN
        for m, ra, rb in zip(maps, scan, read, strict=True):
            assert all(r.start < r.end for r in ra), m
            # sorted, no overlap
            assert all(a.end <= b.start for a, b in zip(ra, ra[1:], strict=False)), m
            if m.path.startswith("[vvar"):
                continue
            pages_a = {(x, r.file) for r in ra for x in range(r.start, r.end, 4096)}
            pages_b = {(x, r.file) for r in rb for x in range(r.start, r.end, 4096)}
            assert pages_a == pages_b, m
        s = remap.snapshot(p.pid)
        assert s.counters_kb["pagemap_present"] == _kernel_smaps_rss(p.pid)
        _same_document(p.pid)


def test_elf_cache_is_keyed_by_file_version(tmp_path, monkeypatch):
    """The on-disk ELF cache returns what a fresh parse returns, re-parses a touched file,
    and ignores a corrupt or foreign entry."""
    import marshal

    from remap import elfmap

    src = targets.build("echoloop")
    exe = tmp_path / "echoloop"
    exe.write_bytes(src.read_bytes())
    cache = tmp_path / "cache"
    monkeypatch.setenv("REMAP_ELF_CACHE", str(cache))

    def fields(i):
        return (i.path, i.segments, i.sections, i.sym_addr, i.sym_end, i.sym_name, i.strtab())

    def entry_of(head: list, body: bytes) -> bytes:  # the layout elfmap's cache comment gives
        h = marshal.dumps(tuple(head))
        return len(h).to_bytes(8, "little") + h + bytes(-len(h) % 8) + body

    fresh = elfmap._parse(str(exe))
    elfmap._cache.clear()
    assert fields(elfmap.load(str(exe))) == fields(fresh)
    (entry,) = cache.iterdir()
    good = entry.read_bytes()
    assert good == elfmap.cache_entry(fresh)
    n = int.from_bytes(good[:8], "little")
    head, body = list(marshal.loads(good[8 : 8 + n])), good[8 + n + (-n % 8) :]
    assert len(body) == sum(head[4:]) and head[4] == 8 * len(fresh.sym_addr) > 0
    # an entry with one section renamed: served as long as it is ours and unshared...
    entry.write_bytes(
        entry_of(head[:3] + [[("renamed", *s[1:]) for s in head[3]]] + head[4:], body)
    )
    elfmap._cache.clear()
    assert elfmap.load(str(exe)).sections[0].name == "renamed"
    # ...not when others could have written it, nor when it is garbage
    entry.chmod(0o666)
    elfmap._cache.clear()
    assert fields(elfmap.load(str(exe))) == fields(fresh)
    for garbage in (b"\x00garbage", b"", good[:-1], good + b"x", good[:8] + b"\xff" * 64):
        entry.write_bytes(garbage)
        elfmap._cache.clear()
        assert fields(elfmap.load(str(exe))) == fields(fresh)
    # symbol columns not whole words, or of unequal length: not served
    na = head[4]
    for cols in ((na - 3, na - 3, na - 3), (na, na - 8, na), (na, na, na + 8)):
        entry.write_bytes(entry_of(head[:4] + list(cols) + head[7:], body))
        elfmap._cache.clear()
        assert fields(elfmap.load(str(exe))) == fields(fresh)
    # a page table of the wrong length, or not marshal: the rest is served, the pages computed
    pages = elfmap.page_table(fresh)
    top = fresh.base_vaddr + fresh._page_count() * K.PAGE_SIZE
    for bad in (marshal.dumps(marshal.loads(pages)[:-1]), b"\xff" * len(pages)):
        entry.write_bytes(entry_of(head[:8] + [len(bad)], body[: -len(pages)] + bad))
        elfmap._cache.clear()
        info = elfmap.load(str(exe))
        assert fields(info) == fields(fresh) and info._page_table() is None
        assert info.describe_pages(fresh.base_vaddr, top) == fresh.walk_pages(fresh.base_vaddr, top)
    # a touched file is another version: parsed again; its entry replaces the old one's
    st = exe.stat()
    os.utime(exe, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    elfmap._cache.clear()
    assert fields(elfmap.load(str(exe))) == fields(fresh)
    (newer,) = cache.iterdir()
    assert newer.name != entry.name and newer.name.endswith(
        f"-{exe.stat().st_mtime_ns:x}-{exe.stat().st_ctime_ns:x}"
    )
    monkeypatch.setenv("REMAP_ELF_CACHE", "off")
    assert elfmap.cache_dir() is None


def test_an_elf_past_the_page_table_limit_is_described_page_by_page(tmp_path, monkeypatch):
    """A file with more pages than elfmap._PAGE_TABLE_MAX (a huge .bss) gets no stored page
    table; its entry is still served and its pages still described."""
    from remap import elfmap

    exe = str(targets.build("echoloop"))
    monkeypatch.setenv("REMAP_ELF_CACHE", str(tmp_path))
    monkeypatch.setattr(elfmap, "_PAGE_TABLE_MAX", 1)
    elfmap._cache.clear()
    fresh = elfmap.load(exe)
    elfmap._cache.clear()
    again = elfmap.load(exe)
    assert again is not fresh and again.sections == fresh.sections
    assert fresh._page_count() > 1 and again._page_table() is None
    lo, hi = fresh.base_vaddr, fresh.base_vaddr + fresh._page_count() * K.PAGE_SIZE
    assert again.describe_pages(lo, hi) == [fresh.describe(a) for a in range(lo, hi, 4096)]
    elfmap._cache.clear()


def test_elf_cache_stays_bounded(tmp_path, monkeypatch):
    """Each store prunes: another format's hour-old entries and a killed writer's old
    temporary go, a fresh temporary stays, and beyond CACHE_MAX_ENTRIES the oldest-written
    entries go first (real files parsed: the libraries this interpreter maps)."""
    from remap import elfmap, procfs

    monkeypatch.setenv("REMAP_ELF_CACHE", str(tmp_path))
    monkeypatch.setattr(elfmap, "CACHE_MAX_ENTRIES", 3)
    libs = sorted({e.path for e in procfs.read_maps(os.getpid()) if ".so" in e.path})
    assert len(libs) >= 5, libs
    old_fmt, old_tmp, new_tmp = (tmp_path / n for n in ("v2-1-2-3-4-5", "v3-x.9.tmp", "v3-y.8.tmp"))
    for f in (old_fmt, old_tmp, new_tmp):
        f.write_bytes(b"left over")
    hour_ago = time.time() - 2 * elfmap._TMP_STALE_S
    os.utime(old_tmp, (hour_ago, hour_ago))
    hour_ago = time.time() - 2 * elfmap._OTHER_FORMAT_STALE_S
    os.utime(old_fmt, (hour_ago, hour_ago))
    elfmap._cache.clear()
    stored = []
    for i, lib in enumerate(libs[:5]):
        elfmap.load(lib)
        (name,) = {p.name for p in tmp_path.iterdir()} - set(stored) - {new_tmp.name}
        stored.append(name)
        t = time.time() - 100 + i  # written in this order, a second apart
        os.utime(tmp_path / name, (t, t))
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {*stored[2:], new_tmp.name}, (stored, left)
    assert elfmap._load_cached(libs[4], os.stat(libs[4])) is not None  # the newest serves
    elfmap._cache.clear()


def test_another_remaps_fresh_cache_entries_are_kept(tmp_path, monkeypatch):
    """Another format's entries written within the hour belong to another remap version in
    use: a store leaves them (pruned at once, two versions taking turns evicted each other's
    entries and parsed every library at every run); older ones go."""
    from remap import elfmap

    monkeypatch.setenv("REMAP_ELF_CACHE", str(tmp_path))
    other, fmt = elfmap._CACHE_FORMAT + 1, elfmap._CACHE_FORMAT
    fresh, old = tmp_path / f"v{other}-1-2-3-4-5", tmp_path / f"v{other}-6-7-8-9-a"
    for f in (fresh, old):
        f.write_bytes(b"another version's entry")
    hour_ago = time.time() - 2 * elfmap._OTHER_FORMAT_STALE_S
    os.utime(old, (hour_ago, hour_ago))
    elfmap._cache.clear()
    elfmap.load(str(targets.build("echoloop")))  # parsed and stored: the store prunes
    left = {p.name for p in tmp_path.iterdir()}
    assert fresh.name in left and old.name not in left
    assert any(n.startswith(f"v{fmt}-") for n in left), left
    elfmap._cache.clear()


def test_describe_pages_is_describe_of_each_page():
    """ElfInfo.describe_pages (one pass over a run) equals describe() page by page, over every
    page of real files: a static musl program, libc, and CPython's big shared library."""
    import sysconfig

    from remap import elfmap

    files = [str(targets.build("echoloop")), "/usr/lib/x86_64-linux-gnu/libc.so.6"]
    libpython = os.path.join(sysconfig.get_config_var("LIBDIR") or "", "libpython3.11.so.1.0")
    if os.path.exists(libpython):
        files.append(libpython)
    for path in files:
        info = elfmap.load(path)
        lo, hi = info.base_vaddr, (info.end_vaddr + K.PAGE_SIZE - 1) & ~(K.PAGE_SIZE - 1)
        each = [info.describe(a) for a in range(lo, hi, K.PAGE_SIZE)]
        assert info.describe_pages(lo, hi) == each, path
        mid = lo + (hi - lo) // 2 & ~(K.PAGE_SIZE - 1)  # a run starting inside the file
        end = min(mid + 5 * K.PAGE_SIZE, hi)
        assert info.describe_pages(mid, end) == each[(mid - lo) >> 12 : (end - lo) >> 12]
        assert any(d[2] for d in each) and any(d[0] == "code" for d in each), path


def test_elf_tables_agree_with_pyelftools(tmp_path):
    """elftables.ElfTables (the one struct reader the hot page finder, profiler and layout writer
    share) against pyelftools on the hot-page demo bot: every section header, every symbol,
    the hot page's bytes, the ELF class and machine."""
    from remap import elfmap, elftables

    path = str(targets.build("minibot", "hotpage"))
    t = elftables.open_elf(path)
    assert t is not None and t.etype == K.ET_EXEC and t.machine == K.EM_X86_64
    assert t.interpreter is None  # musl-gcc -static
    py = elftables.open_elf(os.path.realpath(sys.executable))
    assert py is not None and py.interpreter == "/lib64/ld-linux-x86-64.so.2"
    with open(path, "rb") as f:
        e = ELFFile(f)
        assert [(s.name, s["sh_addr"], s["sh_size"], s["sh_flags"]) for s in e.iter_sections()] == [
            (s.name, s.addr, s.size, s.flags) for s in t.sections
        ]
        syms = list(e.get_section_by_name(".symtab").iter_symbols())
        assert [(s.name, s["st_value"], s["st_size"]) for s in syms] == [
            (s.name, s.value, s.size) for s in t.symbols
        ]
        start = t.symbol_values(["__hot_start"])["__hot_start"]
        seg = next(s for s in e.iter_segments() if s["p_type"] == "PT_LOAD"
                   and s["p_vaddr"] <= start < s["p_vaddr"] + s["p_memsz"])  # fmt: skip
        data = seg.data()[start - seg["p_vaddr"] :][:4096]
        assert t.bytes_at(start, 4096) == data + bytes(4096 - len(data))
    with open(path, "rb") as f:
        assert elfmap.class_and_machine(f.read(20)) == (K.ELFCLASS64, K.EM_X86_64)
    assert elfmap.class_and_machine(b"#!/bin/sh\n" * 2) is None
    (tmp_path / "sh").write_bytes(b"#!/bin/sh\n")
    assert elftables.open_elf(str(tmp_path / "sh")) is None
