"""CLI commands for the residency side of remap (see remap.cli for the shared contract).

``remap map PID``      one row per mapping (pmap -X style); --pages, --png FILE, --json
``remap explain PID``  every RSS figure side by side, the seed summary line, and why they differ
``remap watch PID``    re-snapshot every --interval seconds, --count times: RSS changes and the
                       pages referenced in between (clear_refs + smaps Referenced)
"""

from __future__ import annotations

import os
import sys
import time

from ..errors import AccessDenied, UsageError
from .common import add_json, int_at_least, pid_arg, print_json

TYPE_CHECKING = False  # argparse for annotations only: `remap map` runs without it (remap.cli)
if TYPE_CHECKING:
    import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the remap parser."""
    p = sub.add_parser("map", help="every mapping and (with --pages) every present page")
    p.add_argument("pid", type=pid_arg)
    p.add_argument("--pages", action="store_true", help="list every present page")
    p.add_argument("--png", metavar="FILE", help="draw the address space into FILE")
    add_json(p)
    p.set_defaults(func=cmd_map)

    p = sub.add_parser("explain", help="every RSS counter side by side, and why they differ")
    p.add_argument("pid", type=pid_arg)
    add_json(p)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("watch", help="re-snapshot and print RSS changes and referenced pages")
    p.add_argument("pid", type=pid_arg)
    p.add_argument("--interval", type=_positive_float, default=1.0, metavar="S")
    p.add_argument("--count", type=int_at_least(1), default=5, metavar="N")
    p.add_argument(
        "--no-refs", action="store_true", help="do not clear/read referenced bits (clear_refs)"
    )
    p.add_argument(
        "--png", metavar="FILE", help="draw the last snapshot, pages touched while watching marked"
    )
    add_json(p)
    p.set_defaults(func=cmd_watch)


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise UsageError(f"not a number: {text!r}") from None
    if not 0 < v <= 3600:
        raise UsageError(f"interval must be in (0, 3600] seconds: {text!r}")
    return v


def cmd_map(args: argparse.Namespace) -> int:
    if args.json and not args.pages and not args.png:
        # The JSON shape needs neither PFNs nor the smaps-only fields (swap, VmFlags): written
        # straight from maps + the page walk (exact: results are stated in page-walk kB).
        from ..mapjson import pieces

        out = sys.stdout
        buf = getattr(out, "buffer", None)  # a text stream without bytes (StringIO): decoded
        out.flush()  # what it holds goes first
        write = buf.write if buf is not None else lambda b: out.write(b.decode("ascii"))
        for piece in pieces(args.pid):  # piece by piece: the whole would be ~1 MB of new pages
            write(piece)
        write(b"\n")
        return 0
    if not args.pages and not args.png:  # the table alone: smaps + status (remap.maptable)
        from ..maptable import text

        sys.stdout.write(text(args.pid, tty=sys.stdout.isatty()))
        return 0
    from .. import pagemap
    from ..residency import snapshot

    # the picture and the table need no frame numbers where PAGEMAP_SCAN tells zero-page
    # mappings by their category (~10 ms of a 30 MB process's `map --png`, issue 15); --pages
    # prints each page's PFN and --json carries it
    snap = snapshot(args.pid, pfns=bool(args.pages or args.json or not pagemap.scan_supported()))
    if args.png:
        from ..render import png

        try:
            png(snap, args.png)
        except OSError as e:
            raise UsageError(f"cannot write {args.png}: {e.strerror}") from None
    if args.json:
        _print_json_fast(snap.to_json())
        return 0
    from ..render import map_text, pages_text

    tty = sys.stdout.isatty()
    sys.stdout.write(map_text(snap, tty=tty))
    if args.pages:
        sys.stdout.write("\n")
        sys.stdout.write(pages_text(snap, tty=tty))
    if args.png:
        sys.stdout.write(f"wrote {args.png}\n")
    return 0


def _print_json_fast(obj: dict) -> None:
    """Same output as common.print_json, via json.dumps: json.dump (a stream) never uses the C
    encoder, which is ~5x slower on the 100,000-page documents of big processes."""
    import json

    sys.stdout.write(json.dumps(obj, separators=(",", ":")))
    sys.stdout.write("\n")


def cmd_explain(args: argparse.Namespace) -> int:
    from ..residency import snapshot

    snap = snapshot(args.pid)
    if args.json:
        print_json(snap.explain_json())
        return 0
    from ..render import explain_text, label_totals
    from ..residency import fault_around, rss_lag_of

    # plain lines, as `map` prints (a terminal wraps them; a pipe gets them whole)
    totals = ", ".join(f"{k} {v}" for k, v in label_totals(snap).items())
    out = [snap.summary, explain_text(snap).rstrip("\n"), f"present by label (kB): {totals}",
           fault_around(snap).sentence(), rss_lag_of(snap).sentence()]  # fmt: skip
    out += [f"- {n}" for n in snap.notes]
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def _clear_refs(pid: int, what: str = "1") -> None:
    """Write WHAT to clear_refs: '1' clears the referenced bits of every page, '4' the
    soft-dirty bits (fs/proc/task_mmu.c), so the next interval shows what was touched."""
    from ..procfs import write_clear_refs

    write_clear_refs(pid, what)


def _written_pages(pid: int, snap) -> list[int]:
    """Present pages whose soft-dirty bit (pagemap bit 55) is set: written since the last
    clear_refs '4'.  Per page, where smaps' Referenced is only a per-mapping sum."""
    from ..kconst import PAGE_SHIFT, PAGE_SIZE, PM_PRESENT, PM_SOFT_DIRTY
    from ..pagemap import read_entries
    from ..procfs import open_proc, translate

    out = []
    fd = open_proc(pid, "pagemap")
    try:
        for v in snap.vmas:
            if not v.pages:
                continue
            lo, hi = v.pages[0].addr, v.pages[-1].addr + PAGE_SIZE
            try:
                entries = read_entries(fd, lo, hi)
            except OSError as e:
                raise translate(pid, e, "pagemap") from None
            for i, e in enumerate(entries):
                if e & PM_PRESENT and e & PM_SOFT_DIRTY:
                    out.append(lo + (i << PAGE_SHIFT))
    finally:
        os.close(fd)
    return out


def cmd_watch(args: argparse.Namespace) -> int:
    from ..pagemap import IDLE_BITMAP, idle_bitmap_access, soft_dirty_supported
    from ..render import label_totals
    from ..residency import snapshot

    prev = snapshot(args.pid)
    refs = not args.no_refs
    notes = []
    if refs:
        try:
            _clear_refs(args.pid)
            _clear_refs(args.pid, "4")  # soft-dirty: harmless where the kernel lacks it
        except AccessDenied as e:
            print(f"remap: {e}; watching without referenced bits", file=sys.stderr)
            refs = False
    dirty = refs and soft_dirty_supported()
    if refs and not dirty:
        notes.append(
            "soft-dirty bits unavailable (kernel built without CONFIG_MEM_SOFT_DIRTY): "
            "written pages cannot be told apart; 'written' is null"
        )
    if idle_bitmap_access() == "missing":
        notes.append(
            f"idle page tracking unavailable ({IDLE_BITMAP} missing: kernel built without "
            "CONFIG_IDLE_PAGE_TRACKING); touched pages come from clear_refs: Referenced per "
            "mapping, soft-dirty (written) per page"
        )
    touched: set[int] = set()
    t0 = time.monotonic()
    if not args.json:
        print(f"t=0.0s rss {prev.rss_kb} kB  {prev.summary}", flush=True)
    for _ in range(args.count):
        time.sleep(args.interval)
        snap = snapshot(args.pid)
        before = {p.addr: p.label for p in prev.pages()}
        after = {p.addr: p.label for p in snap.pages()}
        added = sorted(set(after) - set(before))
        removed = sorted(set(before) - set(after))
        referenced = {}
        written: list[int] = []
        if refs:
            for v in snap.vmas:
                kb = v.smaps_kb("Referenced")
                if kb:
                    referenced[v.label] = referenced.get(v.label, 0) + kb
            _clear_refs(args.pid)
            if dirty:
                written = _written_pages(args.pid, snap)
                _clear_refs(args.pid, "4")
        touched.update(added, written)
        sample = {
            "pid": args.pid,
            "t": round(time.monotonic() - t0, 3),
            "rss_kb": snap.rss_kb,
            "delta_kb": snap.rss_kb - prev.rss_kb,
            "vmrss_kb": snap.counters_kb["status_vmrss"],
            "added": [{"addr": a, "label": after[a]} for a in added],
            "removed": [{"addr": a, "label": before[a]} for a in removed],
            "referenced_kb": sum(referenced.values()) if refs else None,
            "referenced_by_label": referenced if refs else None,
            "written": [{"addr": a, "label": after.get(a, "")} for a in written] if dirty else None,
            "written_kb": 4 * len(written) if dirty else None,
            "notes": notes,
            "by_label_kb": label_totals(snap),
        }
        if args.json:
            print_json(sample)
        else:
            ref = (
                f", referenced {sample['referenced_kb']} kB"
                + (f", written {len(written)} pages" if dirty else "")
                if refs
                else ""
            )
            print(
                f"t={sample['t']:.1f}s rss {snap.rss_kb} kB ({sample['delta_kb']:+d}), "
                f"+{len(added)} -{len(removed)} pages{ref}"
                + (f" {referenced}" if referenced else ""),
                flush=True,
            )
        prev = snap
    if args.png:
        from ..render import png

        png(prev, args.png, marked=touched)
    if notes and not args.json:
        for n in notes:
            print(f"note: {n}", file=sys.stderr)
    return 0
