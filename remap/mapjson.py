"""The ``remap map --json`` document, written straight from the page runs.

Why not ``snapshot(pid).to_json()``: on a process with thousands of mappings that builds a Vma
and a Page object per mapping and page, then a dict per object, then encodes the dicts -- three
copies of the same facts, most of the command's time.  :func:`document` reads the same files
(maps, status, pagemap: PAGEMAP_SCAN where the kernel has it), labels with the same functions
(remap.labels) and writes each run of present pages as text at once.  It prints exactly what
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


def document(pid: int, *, method: str = "auto") -> str:
    """PID's ``{"pid", "kernel", "vmas": [...]}`` document (issue 2's map --json shape) as
    compact JSON text.  Raises what :func:`remap.residency.snapshot` raises."""
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
    pfnmap_set = set(pfnmap)

    enc: dict[str, str] = {}  # path/label -> JSON string literal, encoded once per distinct one

    def lit(text: str) -> str:
        v = enc.get(text)
        if v is None:
            v = enc[text] = _enc(text)
        return v

    mids: dict[tuple[str, str, str], str] = {}  # (perms, path, label) -> their JSON members

    vmas: list[str] = []
    for i, (e, rs, view) in enumerate(zip(entries, runs, views, strict=True)):
        if not e.path and view is None and not sps and not rs:
            # most VMAs of a big process: anonymous, nothing present -- classify() would say
            # "anon" too; skipped for its cost over thousands of mappings
            label, kind, is_exe_part = "anon", "", False
        else:
            label, kind, is_exe_part = labels.classify(e, view, exe, fstypes, sps)
        private_file = e.inode != 0 and not e.path.startswith("[") and e.perms[3] == "p"
        pages: list[str] = []
        page_labels: list[str] = []
        n = 0
        for r in rs:
            if r.zero:
                continue
            backing, _cow = labels.backing(r.file, i in pfnmap_set, kind, private_file)
            if kind != "hugetlb":  # smaps counts hugetlb in *_Hugetlb, not Rss (residency)
                n += r.npages
            if view is None:
                tail = f',"backing":"{backing}","label":{lit(label)},"section":null,"symbol":null}}'
                pages.append(
                    '{"addr":'
                    + (tail + ',{"addr":').join(map(str, range(r.start, r.end, K.PAGE_SIZE)))
                    + tail
                )
                continue
            for a, (pl, sec, sym) in zip(
                range(r.start, r.end, K.PAGE_SIZE), view.describe_pages(r.start, r.end), strict=True
            ):
                if not (is_exe_part and pl):
                    pl = label
                if is_exe_part:
                    page_labels.append(pl)
                pages.append(
                    f'{{"addr":{a},"backing":"{backing}","label":{lit(pl)},'
                    f'"section":{"null" if sec is None else lit(sec)},'
                    f'"symbol":{"null" if sym is None else _enc(sym)}}}'
                )
        if is_exe_part and e.path:
            label = labels.exe_vma_label(e, view, page_labels) or label
        key = (e.perms, e.path, label)
        mid = mids.get(key)
        if mid is None:
            mid = mids[key] = f'"perms":{lit(e.perms)},"path":{lit(e.path)},"label":{lit(label)},'
        vmas.append(
            f'{{"start":{e.start},"end":{e.end},{mid}"rss_kb":{4 * n},"pages":[{",".join(pages)}]}}'
        )
    return f'{{"pid":{pid},"kernel":{_enc(kernel)},"vmas":[{",".join(vmas)}]}}'
