"""The ``remap map --json`` document, written straight from the page runs.

Why not ``snapshot(pid).to_json()``: on a process with thousands of mappings that builds a Vma
and a Page object per mapping and page, then a dict per object, then encodes the dicts -- three
copies of the same facts, most of the command's time.  :func:`document` reads the same files
(maps, status, pagemap: PAGEMAP_SCAN where the kernel has it), labels with the same functions
(remap.labels) and writes each run of present pages at once, as ASCII bytes (the document is
ASCII: every string in it is escaped so) formatted by ``bytes % tuple``, ~40% faster than
joining str() of each address (issue 15).  It prints exactly what
``json.dumps(snapshot(pid, pfns=False, smaps=False).to_json(), separators=(",", ":"))`` prints
for the same instant (tests/test_residency.py checks byte equality on real processes).

It imports neither dataclasses nor rich: interpreter start-up is a good part of a command this
size, and every import is paid by each run.
"""

from __future__ import annotations

try:  # the json package's C escaper, without importing json (and re) around it
    from _json import encode_basestring_ascii as _enc
except ImportError:  # an interpreter without the C accelerator
    from json.encoder import encode_basestring_ascii as _enc

from . import kconst as K
from . import labels, pagemap, procfs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator


_CHUNK_PAGES = 512  # pages per piece of a long run: ~45 kB, reused by malloc from piece to piece


def document(pid: int, *, method: str = "auto") -> str:
    """PID's ``{"pid", "kernel", "vmas": [...]}`` document (issue 2's map --json shape) as
    compact JSON text.  Raises what :func:`remap.residency.snapshot` raises."""
    return b"".join(pieces(pid, method=method)).decode("ascii")


def pieces(pid: int, *, method: str = "auto") -> Iterator[bytes]:
    """:func:`document`'s text (ASCII bytes) in pieces of at most ~50 kB, to be written one
    after another.

    Why: a page fault costs ~5-7 us on this VM; a 30 MB process's document is ~1 MB, and held
    whole (then encoded whole for stdout) it is ~700 fresh pages faulted in -- ~4 ms of
    ``map --json`` (issue 15).  Pieces this size reuse the same memory.  Everything is read
    from /proc (and raises what :func:`remap.residency.snapshot` raises) before this returns;
    the iterator only formats."""
    procfs.check_target(pid)
    kernel = procfs.kernel_release()
    status = procfs.read_status(pid)
    entries = procfs.read_maps(pid)
    ranges = [(e.start, e.end) for e in entries]
    pfnmap = [i for i, e in enumerate(entries) if labels.is_pfnmap(labels.name_flags(e.path))]
    runs, _, _ = pagemap.walk(pid, ranges, pfnmap, method=method)
    exe = procfs.read_exe(pid)
    sps = labels.thread_sps(pid, status, [])
    fstypes = labels.fstypes_for(pid, entries)
    views = labels.elf_views(entries, exe, pid)
    return _pieces(pid, kernel, entries, runs, views, exe, sps, fstypes, set(pfnmap))


def _pieces(pid, kernel, entries, runs, views, exe, sps, fstypes, pfnmap_set) -> Iterator[bytes]:
    enc: dict[str, bytes] = {}  # path/label -> JSON string literal, encoded once per distinct one

    def lit(text: str) -> bytes:
        v = enc.get(text)
        if v is None:
            v = enc[text] = _enc(text).encode()
        return v

    mids: dict[tuple[str, str, str], bytes] = {}  # (perms, path, label) -> their JSON members

    yield b'{"pid":%d,"kernel":%s,"vmas":[' % (pid, lit(kernel))
    for i, (e, rs, view) in enumerate(zip(entries, runs, views, strict=True)):
        if not e.path and view is None and not sps and not rs:
            # most VMAs of a big process: anonymous, nothing present -- classify() would say
            # "anon" too; skipped for its cost over thousands of mappings
            label, kind, is_exe_part = "anon", "", False
        else:
            label, kind, is_exe_part = labels.classify(e, view, exe, fstypes, sps)
        private_file = e.inode != 0 and not e.path.startswith("[") and e.perms[3] == "p"
        n = 0 if kind == "hugetlb" else sum(r.npages for r in rs if not r.zero)
        # smaps counts hugetlb in *_Hugetlb, not Rss (residency)
        if is_exe_part and e.path:  # its label is its pages' most common: pages first
            page_labels: list[str] = []
            pages = [
                p for r in rs if not r.zero for p in _run_pages(
                    r, i in pfnmap_set, kind, private_file, view, label, True, lit, page_labels
                )
            ]  # fmt: skip
            label = labels.exe_vma_label(e, view, page_labels) or label
            head = _head(e, label, n, mids, lit)
            yield b"%s%s%s]}" % (b"," if i else b"", head, b",".join(pages))
            continue
        yield b"%s%s" % (b"," if i else b"", _head(e, label, n, mids, lit))
        sep = b""
        for r in rs:
            if r.zero:
                continue
            for piece in _run_pages(
                r, i in pfnmap_set, kind, private_file, view, label, is_exe_part, lit, None
            ):
                yield sep + piece
                sep = b","
        yield b"]}"
    yield b"]}"


def _head(e, label: str, n: int, mids: dict, lit) -> bytes:
    """A VMA's members up to its page list, open: ``{"start":..,"rss_kb":..,"pages":[``."""
    key = (e.perms, e.path, label)
    mid = mids.get(key)
    if mid is None:
        mid = mids[key] = b'"perms":%s,"path":%s,"label":%s,' % (
            lit(e.perms),
            lit(e.path),
            lit(label),
        )
    return b'{"start":%d,"end":%d,%s"rss_kb":%d,"pages":[' % (e.start, e.end, mid, 4 * n)


def _run_pages(r, pfnmap: bool, kind, private_file, view, label, is_exe_part, lit, page_labels):
    """The JSON objects of run R's pages, in pieces of _CHUNK_PAGES pages, each formatted by
    one ``bytes %`` over its pages' values (their labels go to PAGE_LABELS for the
    executable's mappings)."""
    backing, _cow = labels.backing(r.file, pfnmap, kind, private_file)
    step = _CHUNK_PAGES * K.PAGE_SIZE
    if view is None:
        # the template is formatted again below: a '%' in the label (a file's name) doubled
        esc = lit(label).replace(b"%", b"%%")
        page = b'{"addr":%%d,"backing":"%s","label":%s,"section":null,"symbol":null}' % (
            backing.encode(),
            esc,
        )
        out = []
        for lo in range(r.start, r.end, step):
            addrs = tuple(range(lo, min(lo + step, r.end), K.PAGE_SIZE))
            out.append(b",".join([page] * len(addrs)) % addrs)
        return out
    described = view.describe_pages(r.start, r.end)
    if page_labels is not None:
        page_labels.extend(pl if is_exe_part and pl else label for pl, _, _ in described)
    page = b'{"addr":%%d,"backing":"%s","label":%%s,"section":%%s,"symbol":%%s}' % backing.encode()
    lab, known = lit(label), {None: b"null"}  # section -> its JSON value, for this run
    out = []
    for k, lo in enumerate(range(r.start, r.end, step)):
        values: list = []
        put = values.extend
        for a, (pl, sec, sym) in zip(
            range(lo, min(lo + step, r.end), K.PAGE_SIZE),
            described[k * _CHUNK_PAGES : (k + 1) * _CHUNK_PAGES],
            strict=True,
        ):
            put((
                a, lit(pl) if is_exe_part and pl else lab,
                known.get(sec) or known.setdefault(sec, lit(sec)),
                b"null" if sym is None else _enc(sym).encode(),
            ))  # fmt: skip
        out.append(b",".join([page] * (len(values) // 4)) % tuple(values))
    return out
