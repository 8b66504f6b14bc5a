"""A stop whose cost does not grow with anonymous memory (issue 15), and a proof that still bites.

A pure drop is verified by the kept pages' pagemap frames (present, same PFN), not by hashing
them.  These tests start real programs that checksum their own data, feed the runner a step
that *lies* (it declares one clean file page and drops a page of the program's heap as well),
and check that the runner refuses it naming that page -- by frames as root, by hashes as
nobody (PFNs hidden) or when hashes are asked for -- and that the loss was real: the program
itself then reports CORRUPT.  A step that writes is hashed even as root: a write keeps the PFN.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import remap.fold as F
from remap import kconst as K
from remap import pagemap, procfs, targets
from remap.errors import UnsafeStep
from remap.fold.plan import Action, run_plan
from remap.pagemap import Present

ROOT = Path(__file__).resolve().parents[1]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


def _line(p: subprocess.Popen, timeout: float = 20.0) -> bytes:
    r, _, _ = select.select([p.stdout], [], [], timeout)
    assert r, "the target did not answer in time"
    return p.stdout.readline()


def _start(argv: list[str]) -> subprocess.Popen:
    """Start ARGV (it prints "ready ..."), and wait until it sleeps in read(2)."""
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert _line(p).startswith(b"ready"), "target did not start"
    _wait_sleeping(p.pid)
    return p


def _wait_sleeping(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while procfs.read_stat(pid).state != "S":
        assert time.monotonic() < deadline, f"process {pid} did not go to sleep"
        time.sleep(0.005)


def _check(p: subprocess.Popen) -> bytes:
    """coroutine_heap re-checks every byte it keeps: b"OK" or b"CORRUPT"."""
    p.stdin.write(b"x")
    p.stdin.flush()
    return _line(p).split()[0]


def _poke(p: subprocess.Popen, answer: bytes) -> None:
    """One line to the target, which changes its memory and says ANSWER; wait until it sleeps."""
    p.stdin.write(b"\n")
    p.stdin.flush()
    assert _line(p).strip() == answer
    _wait_sleeping(p.pid)


def _stop(p: subprocess.Popen) -> None:
    p.kill()
    p.wait(timeout=5)
    for f in (p.stdin, p.stdout):
        f.close()


@pytest.fixture
def heap_target():
    """coroutine_heap in pthread mode: 400 kB of checksummed heap chunks in [heap]."""
    p = _start([str(targets.build("coroutine_heap")), "pthread"])
    yield p
    _stop(p)


def sneaky_drop(after: str = "") -> object:
    """A planner whose step declares one clean file page as its drop but MADV_DONTNEEDs a page
    of [heap] data too -- a planner bug the independent drop proof (check_drops) cannot see,
    since it checks what a step declares.  AFTER="read": then read the page back (the kernel
    maps the shared zero page there); "write": write 8 bytes to a heap page instead of
    dropping it (the step is then no pure drop).  Exposes .victim, the heap page chosen."""

    def plan(ctx):
        (heap,) = [v for v in ctx.snap.vmas if v.path == "[heap]"]
        anon = [p.addr for p in heap.pages if p.backing == "anon"]
        victim = plan.victim = anon[len(anon) // 2]
        clean = next(p.addr for v in ctx.snap.vmas if v.is_file for p in v.pages if p.clean_file)

        def run(c):
            c.call("madvise", clean, K.PAGE_SIZE, K.MADV_DONTNEED)
            if after == "write":
                c.session.write(victim, b"\xff" * 8)
                return {}
            c.call("madvise", victim, K.PAGE_SIZE, K.MADV_DONTNEED)
            if after == "read":
                c.session.read(victim, 8)
            return {}

        drops = None if after == "write" else [(clean, clean + K.PAGE_SIZE)]
        return Action("sneaky-drop", "one clean file page (it says)", run, drops=drops)

    plan.victim = 0
    return plan


def _refused(pid: int, planners, **kw) -> str:
    """Run PLANNERS (one or a list) as a plan: the UnsafeStep it must raise, as text."""
    with pytest.raises(UnsafeStep) as e:
        run_plan(pid, "squeeze", planners if isinstance(planners, list) else [planners], **kw)
    return str(e.value)


@pytest.mark.skipif(not pagemap.pfns_visible(), reason="needs PFNs (root)")
def test_frames_catch_a_dropped_heap_page(heap_target):
    """As root: the kept heap page is no longer present after the step -> refused, named."""
    assert _check(heap_target) == b"OK"
    planner = sneaky_drop()
    why = _refused(heap_target.pid, planner)
    assert f"anonymous page {planner.victim:#x} is gone (dropped)" in why
    assert _check(heap_target) == b"CORRUPT"  # the loss was real: the program says so itself


@pytest.mark.skipif(not pagemap.pfns_visible(), reason="needs PFNs (root)")
def test_frames_carried_from_the_last_drop_still_catch_it(heap_target):
    """A real drop of dead stack first (its check's reading becomes the next step's
    baseline, not read again), then the lying step: caught all the same."""
    from remap.fold import steps

    planner = sneaky_drop()
    why = _refused(heap_target.pid, [steps.drop_dead_stack, planner])
    assert f"anonymous page {planner.victim:#x} is gone (dropped)" in why
    assert _check(heap_target) == b"CORRUPT"


@pytest.mark.skipif(not pagemap.pfns_visible(), reason="needs PFNs (root)")
def test_frames_catch_a_dropped_page_read_back_in(heap_target):
    """Dropped, then read (present again, on the zero page): the frame differs -> refused."""
    planner = sneaky_drop("read")
    why = _refused(heap_target.pid, planner)
    assert f"anonymous page {planner.victim:#x} now maps frame {pagemap.zero_pfn():#x}" in why
    assert _check(heap_target) == b"CORRUPT"


def test_hashes_catch_it_when_asked(heap_target):
    """evidence="hash" (the fallback's code path, explicitly): the same lie is caught."""
    planner = sneaky_drop()
    why = _refused(heap_target.pid, planner, evidence="hash")
    assert why == f"anonymous page {planner.victim:#x} changed during the fold"
    assert _check(heap_target) == b"CORRUPT"


def test_a_writing_step_is_hashed_even_with_frames(heap_target):
    """A write keeps the page's PFN, so a step that is not a pure drop is hashed: 8 bytes it
    writes where it said nothing are caught, as root too."""
    planner = sneaky_drop("write")
    why = _refused(heap_target.pid, planner)
    assert why == f"anonymous page {planner.victim:#x} changed during the fold"
    assert _check(heap_target) == b"CORRUPT"


NOBODY_RUN = """
import json, sys
sys.path.insert(0, "tests")
from test_verify_scale import sneaky_drop
from remap.errors import UnsafeStep
from remap.fold.plan import run_plan
import remap.fold as F
pid = int(sys.argv[1])
r = F.squeeze(pid, move=False)
out = {"verified_by": r.verified_by, "notes": r.notes}
planner = sneaky_drop()
try:
    run_plan(pid, "squeeze", [planner])
    out["refused"] = None
except UnsafeStep as e:
    out["refused"], out["victim"] = str(e), planner.victim
print(json.dumps(out))
"""


def test_hash_fallback_as_nobody():
    """As nobody (PFNs hidden): a real squeeze is verified by hashes and says why in its notes,
    and the lying step is caught by them."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to drop to nobody")
    import json

    p = _start([*NOBODY, str(targets.build("coroutine_heap")), "pthread"])
    try:
        res = subprocess.run(
            [*NOBODY, sys.executable, "-c", NOBODY_RUN, str(p.pid)],
            capture_output=True, text=True, cwd=ROOT, timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert out["verified_by"]["frames"] == 0 and out["verified_by"]["hashes"] >= 400 << 10
        assert any("PFNs are hidden" in n and "sha256" in n for n in out["notes"])
        assert out["refused"] == f"anonymous page {out['victim']:#x} changed during the fold"
        assert _check(p) == b"CORRUPT"
    finally:
        _stop(p)


BIG = r"""
import sys, zlib
b = bytearray(int(sys.argv[1]) << 20)
for o in range(0, len(b), 4096):
    b[o : o + 8] = o.to_bytes(8, "little")
want = zlib.crc32(b)
print("ready", flush=True)
for line in sys.stdin:
    print("OK" if zlib.crc32(b) == want else "CORRUPT", flush=True)
"""


@pytest.mark.skipif(not pagemap.pfns_visible(), reason="needs PFNs (root)")
def test_frames_cost_does_not_grow_like_hashing():
    """256 MB of anonymous memory: the pure drops are proven by frames (every kept byte),
    in a small fraction of what hashing the same pages costs in the same run; the program's
    own checksum holds after both squeezes."""
    p = _start([sys.executable, "-c", BIG, "256"])
    try:
        by_frames = F.squeeze(p.pid, move=False)
        p.stdin.write(b"\n")
        p.stdin.flush()
        assert _line(p).strip() == b"OK"
        _wait_sleeping(p.pid)
        os.environ["REMAP_VERIFY"] = "hash"
        try:
            by_hashes = F.squeeze(p.pid, move=False)
        finally:
            del os.environ["REMAP_VERIFY"]
        p.stdin.write(b"\n")
        p.stdin.flush()
        assert _line(p).strip() == b"OK"
    finally:
        _stop(p)
    assert by_frames.verified_by["frames"] >= 256 << 20 and by_frames.verified_by["hashes"] == 0
    assert by_hashes.verified_by["hashes"] >= 256 << 20 and by_hashes.verified_by["frames"] == 0
    assert any("hashes asked for" in n for n in by_hashes.notes)
    t_frames = by_frames.stop_breakdown_us["verify"]
    t_hashes = by_hashes.stop_breakdown_us["verify"]
    assert t_frames * 5 < t_hashes, (t_frames, t_hashes)


GROWER = r"""
import sys
keep = [bytearray(b"x" * (1 << 20))]
print("ready", flush=True)
for line in sys.stdin:
    keep.append(bytearray(b"y" * (1 << 20)))  # 256 new anonymous pages
    print("grown", flush=True)
"""


def test_the_stop_reuses_the_prior_model_only_while_it_holds():
    """The model built before the stop is the one a stopped snapshot builds (same VMAs,
    pages, backings) and is used; after the process grew, it is not."""
    from remap.fold.plan import Prior, stopped_snapshot
    from remap.inject import attach

    def layout(snap):
        return [(v.start, v.end, v.label, [(p.addr, p.backing) for p in v.pages]) for v in
                snap.vmas]  # fmt: skip

    p = _start([sys.executable, "-c", GROWER])
    try:
        prior = Prior.take(p.pid)
        with attach(p.pid) as s:
            reused = prior.reuse(s)
            fresh = stopped_snapshot(p.pid)
        assert reused is prior.snap
        assert layout(reused) == layout(fresh)
        prior = Prior.take(p.pid)
        _poke(p, b"grown")
        with attach(p.pid) as s:
            assert prior.reuse(s) is None
    finally:
        _stop(p)


def test_a_stale_prior_with_the_same_maps_walks_only_the_pages():
    """Pages gone since the model was built, the maps text the same (DROPPER): the prior is
    not used, but its VMAs are (Prior.same_maps), and the walk built on them inside the stop
    is the stopped snapshot built from scratch -- VMAs, labels, pages, backings."""
    from remap.fold.plan import Prior, stopped_snapshot
    from remap.inject import attach

    def layout(snap):
        return [(v.start, v.end, v.perms, v.path, v.label, v.anon_kb, v.rss_kb,
                 [(p.addr, p.backing, p.label, p.section) for p in v.pages])
                for v in snap.vmas]  # fmt: skip

    p = _start([sys.executable, "-c", DROPPER])
    try:
        prior = Prior.take(p.pid)
        _poke(p, b"dropped")
        with attach(p.pid) as s:
            assert prior.reuse(s) is None and prior.same_maps
            walked = stopped_snapshot(p.pid, like=prior.snap)
            fresh = stopped_snapshot(p.pid)
        assert layout(walked) == layout(fresh) != layout(prior.snap)
    finally:
        _stop(p)


def test_pointer_candidates_never_miss_a_pointer():
    """relocate.candidates skips words at C speed: every aligned word that lies in [lo, hi)
    must still be among its candidates, whatever the block and the page around it."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from remap.fold.relocate import candidates

    @settings(max_examples=400, deadline=None)
    @given(
        st.integers(0, 2**64 - 2),
        st.integers(1, 2**40),
        st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=64),
        st.lists(st.integers(0, 2**40), max_size=4),
    )
    def prop(lo, size, words, inside):
        hi = min(lo + size, 2**64)
        words = [*words, *((lo + k % (hi - lo)) for k in inside)]
        buf = b"".join(w.to_bytes(8, "little") for w in words)
        want = {8 * i for i, w in enumerate(words) if lo <= w < hi}
        assert want <= set(candidates(buf, lo, hi))

    prop()


def ahead_lie(victim_of) -> object:
    """Like sneaky_drop, as a step the runner plans ahead (plans_ahead) and batches with the
    fence and the real drops: it declares one clean file page and its calls drop a page of
    [heap] data too.  VICTIM_OF(ctx) picks the page; exposed as .victim."""

    def plan(ctx):
        victim = plan.victim = victim_of(ctx)
        clean = next(p.addr for v in ctx.snap.vmas if v.is_file for p in v.pages if p.clean_file)
        calls = [("madvise", a, K.PAGE_SIZE, K.MADV_DONTNEED) for a in (clean, victim)]

        def run(c):
            c.batch(calls)
            return {}

        drops = [(clean, clean + K.PAGE_SIZE)]
        return Action("ahead-lie", "one clean file page (it says)", run, drops=drops, calls=calls)

    plan.victim = 0
    plan.plans_ahead = True
    return plan


def _heap_victim(ctx) -> int:
    (heap,) = [v for v in ctx.snap.vmas if v.path == "[heap]"]
    anon = [p.addr for p in heap.pages if p.backing == "anon"]
    return anon[len(anon) // 2]


@pytest.mark.skipif(not pagemap.pfns_visible(), reason="needs PFNs (root)")
def test_a_lie_batched_with_the_fence_and_drops_is_caught(heap_target):
    """The squeeze's pure steps are planned ahead and run in one batch, proven together by
    the frames read when the stop checked the prior model and once after the batch: a lying
    step among them is caught all the same, the page named, and the loss was real."""
    from remap.fold import steps

    planner = ahead_lie(_heap_victim)
    plan = [steps.use_own_syscall, steps.fence_fault_around, steps.drop_dead_stack, planner,
            steps.drop_clean_file]  # fmt: skip
    why = _refused(heap_target.pid, plan)
    assert f"anonymous page {planner.victim:#x} is gone (dropped)" in why
    assert _check(heap_target) == b"CORRUPT"


@pytest.mark.skipif(not pagemap.pfns_visible(), reason="needs PFNs (root)")
def test_squeeze_batches_its_pure_steps_and_proves_them(heap_target):
    """A real squeeze: the fence and both drops run (one batch), every kept anonymous byte is
    proven by frames, the reports keep the plan's order, and the program's data is intact."""
    r = F.squeeze(heap_target.pid, move=False)
    names = [s.name for s in r.steps if s.applied]
    assert names == ["fence-fault-around", "drop-dead-stack", "drop-clean-file"], names
    assert all(s.syscalls > 0 for s in r.steps if s.applied)
    assert r.verified_by["frames"] >= 400 << 10 and r.verified_by["hashes"] == 0
    assert _check(heap_target) == b"OK"


DROPPER = r"""
import mmap, sys
m = mmap.mmap(-1, 8 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for o in range(0, len(m), 4096):
    m[o] = 1
print("ready", flush=True)
for line in sys.stdin:
    m.madvise(mmap.MADV_DONTNEED, 100 * 4096, 4096)  # one page gone, the maps line the same
    print("dropped", flush=True)
"""


@pytest.mark.skipif(not pagemap.pfns_visible(), reason="needs PFNs (root)")
def test_prior_frames_at_the_stop_are_the_pages_as_they_are():
    """reuse(frames=True): the pagemap entries it keeps for the first pure drops equal a fresh
    reading of the same spans; and a page dropped inside a big anonymous span after the model
    was built (same maps text, presence read from those entries) makes it refuse the model."""
    from remap.fold import verify
    from remap.fold.plan import Prior
    from remap.inject import attach

    p = _start([sys.executable, "-c", DROPPER])
    try:
        prior = Prior.take(p.pid)
        with attach(p.pid) as s:
            assert prior.reuse(s, frames=True) is prior.snap
            fresh = verify.read_frames(p.pid, prior.at_stop.spans)
        assert prior.at_stop.entries == fresh.entries
        assert any(hi - lo >= 8 << 20 for lo, hi in prior.at_stop.spans)
        prior = Prior.take(p.pid)
        _poke(p, b"dropped")
        with attach(p.pid) as s:
            assert prior.reuse(s, frames=True) is None
            assert prior.at_stop is None
    finally:
        _stop(p)


FENCED = r"""
import mmap, sys
f = open(sys.argv[1], "rb")
m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
s = sum(m[o] for o in range(0, len(m), 4096))  # every page of the file mapped
print("ready", s, flush=True)
for line in sys.stdin:
    if line.startswith("drop"):
        m.madvise(mmap.MADV_DONTNEED, 37 * 4096, 4096)  # one page of one one-page VMA
    else:
        s = sum(m[o] for o in range(0, len(m), 4096))  # all back
    print("done", flush=True)
"""


def test_prior_on_a_fenced_process_compares_page_by_page(tmp_path):
    """After the fault-around fence split a file mapping into one-page VMAs, the model is
    compared by merge group, not VMA by VMA (Prior's docstring): it is still reused while the
    pages are as they were, and one page gone from one of those VMAs makes it refuse."""
    from remap.fold.plan import Prior, _groups, run_plan
    from remap.fold.steps import fence_fault_around
    from remap.inject import attach

    data = tmp_path / "data"
    data.write_bytes(os.urandom(1 << 20))
    p = _start([sys.executable, "-c", FENCED, str(data)])
    try:
        run_plan(p.pid, "squeeze", [fence_fault_around])
        vmas = [m for m in procfs.read_maps(p.pid) if m.path == str(data)]
        assert len(vmas) == 256  # one page each
        for frames in (False, True):
            prior = Prior.take(p.pid)
            assert len(set(_groups(prior.snap.vmas))) < len(prior.snap.vmas) - 200
            with attach(p.pid) as s:
                assert prior.reuse(s, frames=frames) is prior.snap
            prior = Prior.take(p.pid)
            p.stdin.write(b"drop\n")
            p.stdin.flush()
            assert _line(p).strip() == b"done"
            _wait_sleeping(p.pid)
            with attach(p.pid) as s:
                assert prior.reuse(s, frames=frames) is None, "a dropped file page went unseen"
            p.stdin.write(b"back\n")
            p.stdin.flush()
            assert _line(p).strip() == b"done"
            _wait_sleeping(p.pid)
    finally:
        _stop(p)


# zero-page and anonymous mappings, with a fork between two rounds of writes: the first
# round's pages are then shared with the child (pagemap: not PM_MMAP_EXCLUSIVE), the
# second's copied again (exclusive to the parent)
ZEROS = r"""
import mmap, os, sys
m = mmap.mmap(-1, 4 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
s = sum(m[o] for o in range(0, 2 << 20, 4096 * 2))  # read: the shared zero page
for o in range(4096, 4 << 20, 4096 * 3):
    m[o] = 1  # written: anonymous pages
child = os.fork()
if child == 0:
    sys.stdin.readline()
    os._exit(0)
for o in range(4096, 4 << 20, 4096 * 6):
    m[o] = 2  # written again: copied, exclusive to the parent
print("ready", child, flush=True)
sys.stdin.readline()
"""

_TOP_PRESENT = bytes(1 if b & 0x80 else 0 for b in range(256))  # top byte: bit 63 set


def _runs_page_by_page(start: int, data: bytes, zero_pfn: int | None) -> list[Present]:
    """The oracle: present runs in one VMA's entries, read page by page, equal neighbours
    merged (pagemap's own parser until runs_of_entries replaced it)."""
    flags = data[7::8].translate(_TOP_PRESENT)
    runs: list[Present] = []
    i = flags.find(1)
    if i < 0:
        return runs
    ent = memoryview(data).cast("Q")
    cur_s = cur_e = -1
    cur_key: tuple = ()
    while i >= 0:
        e = ent[i]
        addr = start + (i << K.PAGE_SHIFT)
        file = bool(e & K.PM_FILE)
        if zero_pfn is None:
            zero = None
        else:
            zero = (e & K.PM_PFN_MASK) == zero_pfn and not file
        key = (file, zero)
        if addr == cur_e and key == cur_key:
            cur_e = addr + K.PAGE_SIZE
        else:
            if cur_s >= 0:
                runs.append(Present(cur_s, cur_e, *cur_key))
            cur_s, cur_e, cur_key = addr, addr + K.PAGE_SIZE, key
        i = flags.find(1, i + 1)
    runs.append(Present(cur_s, cur_e, *cur_key))
    return runs


def test_runs_of_entries_equal_the_page_by_page_reading():
    """pagemap.runs_of_entries (translate + finds) gives the runs the page-by-page parser
    gives, on every VMA of a real process with file, anonymous and zero-page mappings, its
    anonymous pages both exclusive and shared with a forked child (only the shared ones are
    searched for the zero page's frame)."""
    from remap.pagemap import read_entries, runs_of_entries

    p = subprocess.Popen([sys.executable, "-c", ZEROS], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)  # fmt: skip
    child = int(_line(p).split()[1])
    _wait_sleeping(p.pid)
    try:
        tops = set()
        zpfn = pagemap.zero_pfn() if pagemap.pfns_visible() else None
        fd = os.open(f"/proc/{p.pid}/pagemap", os.O_RDONLY)
        try:
            kinds = set()
            for m in procfs.read_maps(p.pid):
                if m.start >= 1 << 63:
                    continue
                data = read_entries(fd, m.start, m.end).tobytes()
                want = _runs_page_by_page(m.start, data, zpfn)
                assert runs_of_entries(m.start, data, zpfn) == want, hex(m.start)
                kinds |= {(r.file, r.zero) for r in want}
                tops |= {b & 0xA1 for b in data[7::8] if b & 0x80}  # present, file, exclusive
        finally:
            os.close(fd)
        assert (True, False if zpfn is not None else None) in kinds  # file pages
        assert (False, False if zpfn is not None else None) in kinds  # anonymous pages
        assert {0x81, 0x80} <= tops  # anonymous pages exclusive and not (shared, zero page)
        if zpfn is not None:
            assert (False, True) in kinds  # zero-page mappings
    finally:
        os.kill(child, signal.SIGKILL)
        _stop(p)


def test_drop_proof_by_runs_names_the_first_page_that_may_not_go():
    """verify.check_drops walks a drop range a run at a time: every clean file page of a real
    process passes; a range reaching into a copy-on-written page of the same file mapping
    (written .data) or a page not present is refused, naming exactly that page."""
    from remap.fold.plan import stopped_snapshot
    from remap.fold.verify import check_drops

    p = _start([sys.executable, "-c", GROWER])
    try:
        vmas = stopped_snapshot(p.pid).vmas
        clean = [(q.addr, q.addr + K.PAGE_SIZE) for v in vmas if v.is_file for q in v.pages
                 if q.clean_file]  # fmt: skip
        assert len(clean) > 100 and check_drops("t", clean, p.pid, vmas, {}, None) == 0
        # a file mapping holding both: a run of clean pages, then its first anonymous page
        v = next(v for v in vmas if v.is_file and {"file", "anon"} <= {q.backing for q in v.pages})
        cow = next(q.addr for q in v.pages if q.backing == "anon")
        lo, files = cow, {q.addr for q in v.pages if q.clean_file}
        while lo - K.PAGE_SIZE in files:  # the run of clean pages right below it
            lo -= K.PAGE_SIZE
        with pytest.raises(UnsafeStep, match=f"would drop page {cow:#x}, which is neither"):
            check_drops("t", [(lo, cow + K.PAGE_SIZE)], p.pid, vmas, {}, None)
        assert check_drops("t", [(cow, cow)], p.pid, vmas, {}, None) == 0
        have = {q.addr for w in vmas for q in w.pages}
        hole = next(a for w in vmas if w.is_file for a in range(w.start, w.end, K.PAGE_SIZE)
                    if a not in have)  # fmt: skip
        with pytest.raises(UnsafeStep, match=f"would drop page {hole:#x}"):
            check_drops("t", [(hole, hole + K.PAGE_SIZE)], p.pid, vmas, {}, None)
    finally:
        _stop(p)


_IMPORTS_IN_STOP = r"""
import contextlib, sys
import remap.fold as F
import remap.inject as inj

seen = {}
orig = inj.attach


@contextlib.contextmanager
def attach(pid, **kw):
    with orig(pid, **kw) as s:
        seen["stopped"] = set(sys.modules)
        yield s
    seen["released"] = set(sys.modules)


inj.attach = attach  # run_plan imports it when it runs
F.squeeze(int(sys.argv[1]))
print(" ".join(sorted(seen["released"] - seen["stopped"])) or "-")
"""


@pytest.mark.parametrize("target", ["echoloop", "glibcloop"])
def test_the_stop_loads_no_module(target):
    """A fresh driver's first squeeze imports nothing while the target is stopped: what the
    stop needs is loaded before it (issue 15: the zero page's probe imported ctypes inside the
    stop, 3 of static musl's 9-11 ms).  echoloop has no chain of its own (scratch, the batch
    stub, a stack move); glibcloop's chain is its own code."""
    exe = str(targets.build(target))
    p = subprocess.Popen([exe], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        if target == "glibcloop":
            assert _line(p).startswith(b"ready")
        _wait_sleeping(p.pid)
        r = subprocess.run([sys.executable, "-c", _IMPORTS_IN_STOP, str(p.pid)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["-"], f"imported while {target} was stopped: {r.stdout}"
        p.stdin.write(b"z\n")
        p.stdin.flush()
        if target == "echoloop":  # it still echoes, byte for byte
            assert _line(p) == b"z\n"
        else:
            _wait_sleeping(p.pid)  # it read the line and is back in read(2)
    finally:
        _stop(p)
