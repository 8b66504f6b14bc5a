"""procfs parsers against the kernel's files of real processes, and the error vocabulary."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import helpers
import pytest
from helpers import NOBODY

from remap import pagemap, procfs
from remap.errors import AccessDenied, NoSuchProcess, UnsupportedTarget, ZombieProcess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def echoloop(spawn):
    t = spawn("echoloop")
    t.wait_blocked()
    return t


def test_maps_and_smaps_describe_the_same_vmas(echoloop):
    maps = procfs.read_maps(echoloop.pid)
    smaps = procfs.read_smaps(echoloop.pid)
    assert [(m.start, m.end, m.perms, m.path) for m in maps] == [
        (s.start, s.end, s.perms, s.path) for s in smaps
    ]
    exe = [m for m in maps if m.path == str(echoloop.path)]
    assert exe and exe[0].offset == 0 and exe[0].inode == os.stat(echoloop.path).st_ino
    assert any(m.path == "[stack]" for m in maps)
    for s in smaps:
        assert s.fields["Size"] == (s.end - s.start) >> 10
        assert "rd" in s.vmflags or "--" in s.perms[:2] or s.path == "[vsyscall]"


def test_rollup_status_statm_agree_for_a_blocked_target(echoloop):
    pid = echoloop.pid
    st, statm = procfs.read_status(pid), procfs.read_statm(pid)
    rollup = procfs.read_smaps_rollup(pid)
    assert st["Pid"] == pid and st["Name"] == "echoloop"
    assert isinstance(st["VmRSS"], int) and st["VmRSS"] == statm.resident * 4
    assert rollup["Rss"] == sum(s.fields["Rss"] for s in procfs.read_smaps(pid))
    assert statm.size * 4 == st["VmSize"]


def test_stat_auxv_syscall_threads(echoloop):
    pid = echoloop.pid
    st = procfs.read_stat(pid)
    assert st.pid == pid and st.comm == "echoloop" and st.state == "S"
    stack = next(m for m in procfs.read_maps(pid) if m.path == "[stack]")
    for a in (st.start_stack, st.arg_start, st.arg_end, st.env_start, st.env_end):
        assert stack.start <= a <= stack.end
    aux = dict(procfs.read_auxv(pid))
    assert aux[6] == 4096  # AT_PAGESZ
    assert aux[9] == 0x40106F or aux[9] > 0  # AT_ENTRY
    sc = procfs.read_syscall(pid)
    assert not sc.running and sc.nr == 0 and sc.args[0] == 0  # read(0, ...)
    assert stack.start <= sc.sp < stack.end
    assert procfs.thread_ids(pid) == [pid]
    assert procfs.kernel_release() == os.uname().release


def test_syscall_parser_formats():
    assert procfs.parse_syscall(b"running\n").running
    s = procfs.parse_syscall(b"-1 0x7ffd0 0x401000\n")
    assert s.nr == -1 and s.sp == 0x7FFD0 and s.pc == 0x401000
    s = procfs.parse_syscall(b"0 0x0 0x10 0x1 0x0 0x0 0x0 0x7ffd0 0x401000\n")
    assert s.nr == 0 and s.args == (0, 0x10, 1, 0, 0, 0) and s.pc == 0x401000


def test_the_records_behave_as_the_named_tuples_they_replaced(echoloop):
    """remap.record's tuples (MapEntry, Syscall...) keep what callers used of namedtuple:
    tuple equality and unpacking, defaults, _replace, copy and pickle, and a TypeError for a
    field missing or unknown."""
    import copy
    import pickle

    maps = procfs.read_maps(echoloop.pid)
    m = maps[0]
    start, end, *_ = m
    assert (start, end) == (m.start, m.end) and m == tuple(m) and hash(m) == hash(tuple(m))
    assert m._replace(path="x") == (*m[:6], "x") and type(m._replace()) is procfs.MapEntry
    assert pickle.loads(pickle.dumps(m)) == m and copy.deepcopy(m) == m
    assert repr(m).startswith(f"MapEntry(start={m.start}, end={m.end}, perms=")
    sc = procfs.Syscall(running=True)
    assert sc == (True, None, (), None, None) and procfs.Syscall(False, 0) == (
        False,
        0,
        (),
        None,
        None,
    )
    for bad in ({"nr": 1}, {"running": True, "rip": 0}):
        with pytest.raises(TypeError):
            procfs.Syscall(**bad)
    with pytest.raises(TypeError):
        m._replace(rip=0)


def test_comm_with_spaces_and_parens():
    st = procfs.parse_stat(b"42 (a) b (c) S 1 42 42 0 -1 4194560 0 0 0 0" + b" 0" * 40)
    assert st.comm == "a) b (c" and st.state == "S" and st.ppid == 1


def test_pagemap_read_and_scan_agree(echoloop):
    if not pagemap.scan_supported():
        pytest.skip("no PAGEMAP_SCAN on this kernel")
    vmas = [m for m in procfs.read_maps(echoloop.pid) if m.path != "[vsyscall]"]
    ranges = [(m.start, m.end) for m in vmas]
    a = pagemap.present_scan(echoloop.pid, ranges)
    b = pagemap.present_read(echoloop.pid, ranges)
    for m, ra, rb in zip(vmas, a, b, strict=True):
        if m.path.startswith("[vvar"):
            continue  # VM_PFNMAP: the scan skips it by design
        pages_a = {(x, r.file) for r in ra for x in range(r.start, r.end, 4096)}
        pages_b = {(x, r.file) for r in rb for x in range(r.start, r.end, 4096)}
        assert pages_a == pages_b, m


# ---------------------------------------------------------------------------- errors
def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait(timeout=5)
    return p.pid


def test_no_such_process():
    pid = _dead_pid()
    with pytest.raises(NoSuchProcess):
        procfs.check_target(pid)
    with pytest.raises(NoSuchProcess):
        procfs.read_smaps(pid)


def test_zombie():
    p = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 5
        while procfs.read_stat(p.pid).state != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.005)
        with pytest.raises(ZombieProcess):
            procfs.check_target(p.pid)
        with pytest.raises(NoSuchProcess):  # ZombieProcess is a NoSuchProcess too
            procfs.check_target(p.pid)
    finally:
        p.wait(timeout=5)


def test_kernel_thread_is_refused():
    with pytest.raises(UnsupportedTarget, match="kernel thread"):
        procfs.check_target(2)  # kthreadd
    assert procfs.read_maps(2) == []


def test_access_denied_for_unprivileged_reader(echoloop, is_root):
    if not is_root:
        pytest.skip("needs root to drop to nobody")
    code = (
        "import sys; from remap import procfs\n"
        "from remap.errors import AccessDenied\n"
        f"try:\n procfs.read_smaps({echoloop.pid})\nexcept AccessDenied as e:\n"
        " print('denied', e); sys.exit(0)\nsys.exit(1)"
    )
    r = subprocess.run(
        [*NOBODY, sys.executable, "-c", code],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("denied")


def test_kpageflags_denied_for_unprivileged(is_root):
    if not is_root:
        with pytest.raises(AccessDenied):
            pagemap.kpageflags([1])
    else:
        assert pagemap.kpageflags([]) == {}
        assert pagemap.pfns_visible()


def test_many_vmas_fast_parsers_match_line_parsers():
    """300 unmergeable mappings: the regex record parsers (used from 100 VMAs on) must agree
    with the line-by-line ones and with the kernel's own Rss lines."""
    code = (
        "import mmap, sys\nms = []\nfor i in range(300):\n"
        " m = mmap.mmap(-1, 8192, prot=mmap.PROT_READ | (mmap.PROT_WRITE if i % 2 else 0))\n"
        " ms.append(m)\n if i % 2: m[0] = 1\nprint('ready', flush=True); sys.stdin.read()"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert p.stdout.readline().startswith(b"ready")
        with open(f"/proc/{p.pid}/smaps", "rb") as f:
            data = f.read()
        fast, slow = procfs.parse_smaps(data), procfs._parse_smaps_slow(data)
        assert len(fast) >= 300 and fast == slow
        assert [e.fields for e in fast] == [e.fields for e in slow]
        kernel_rss = sum(int(ln.split()[1]) for ln in data.splitlines() if ln.startswith(b"Rss:"))
        assert sum(e.get("Rss") for e in fast) == kernel_rss
        with open(f"/proc/{p.pid}/maps", "rb") as f:
            mdata = f.read()
        lines = [procfs.MapEntry(*procfs._parse_map_line(ln)) for ln in mdata.splitlines()]
        assert procfs.parse_maps(mdata) == lines
    finally:
        p.kill()
        p.wait(timeout=5)
        p.stdin.close()
        p.stdout.close()


def test_small_smaps_cut_by_line_count_match_the_line_parser(spawn):
    """Below 100 VMAs smaps is cut into records by line count (procfs._parse_smaps_uniform,
    here tried on any count): on real processes every field and flag equals the line parser's,
    the kernel's Rss lines sum alike, and a record that breaks the layout sends the text to
    the line parser."""
    t = spawn("echoloop")
    t.wait_blocked()
    for pid in (os.getpid(), t.pid):
        with open(f"/proc/{pid}/smaps", "rb") as f:
            data = f.read()
        cut, slow = procfs._parse_smaps_uniform(data), procfs._parse_smaps_slow(data)
        assert cut and cut == slow
        assert [e.fields for e in cut] == [e.fields for e in slow]
        assert [e.vmflags for e in cut] == [e.vmflags for e in slow]
        kernel_rss = sum(int(ln.split()[1]) for ln in data.splitlines() if ln.startswith(b"Rss:"))
        assert sum(e.get("Rss") for e in cut) == kernel_rss
        lines = data.split(b"\n")
        rss = next(i for i, ln in enumerate(lines) if ln.startswith(b"Rss:"))
        for bad in (
            data.replace(b"\nSwap:", b"\nSwop:", 1),  # one record names a field otherwise
            data.replace(b" kB\n", b" kB more\n", 1),  # one value is not a number and kB
            b"\n".join(lines[:rss] + lines[rss + 1 :]),  # one record lacks a field
        ):
            assert procfs._parse_smaps_uniform(bad) is None
            assert procfs.parse_smaps(bad) == procfs._parse_smaps_slow(bad)


# ---------------------------------------------------------------------------- the other readers
def test_thread_files_read_through_procfs_match_the_kernel_text(spawn):
    """status per thread, wchan, children, personality, mem and exe, each read through its one
    procfs reader, against the kernel's own text of the same file."""
    t = spawn("inject_threads", "default", "futex_pi")  # main + one thread, both asleep
    t.wait_blocked()
    tids = helpers.wait_until("two threads", lambda: len(procfs.thread_ids(t.pid)) == 2 and
                              procfs.thread_ids(t.pid))  # fmt: skip
    assert tids[0] == t.pid
    for tid in tids:
        st = procfs.read_status(t.pid, tid)
        assert st["Pid"] == tid and st["Tgid"] == t.pid
        assert f"{st['SigBlk']:016x}" == helpers.status(t.pid, tid)["SigBlk"]
    with open(f"/proc/{t.pid}/wchan") as f:  # a kernel function, or '0' (hidden, or running)
        assert procfs.read_wchan(t.pid) == f.read()
    assert procfs.read_children(os.getpid()) and t.pid in procfs.read_children(os.getpid())
    assert procfs.read_children(t.pid) == []
    assert procfs.read_personality(t.pid) == int(open(f"/proc/{t.pid}/personality").read(), 16)
    stack = next(m for m in procfs.read_maps(t.pid) if m.path == "[stack]")
    top = stack.end - 4096  # the page holding argv and env: always resident
    with open(f"/proc/{t.pid}/mem", "rb") as f:
        f.seek(top)
        assert procfs.read_mem(t.pid, top, 4096) == f.read(4096)
    assert procfs.stat_exe(t.pid).st_ino == os.stat(t.path).st_ino
    with pytest.raises(NoSuchProcess):
        procfs.read_wchan(_dead_pid())


def test_system_files():
    scope = procfs.read_sysctl("kernel/yama/ptrace_scope")
    assert scope is None or scope.isdigit()
    assert procfs.read_sysctl("kernel/osrelease") == os.uname().release
    assert procfs.read_sysctl("no/such/knob") is None
    sizes = procfs.huge_page_sizes_kb()
    listed = os.listdir("/sys/kernel/mm/hugepages") if os.path.isdir(procfs.HUGEPAGES_DIR) else []
    assert sorted(f"hugepages-{kb}kB" for kb in sizes) == sorted(listed)


def test_one_errno_table_for_real_refusals():
    """errors.translate on OSErrors the kernel really raised: a read-only sysctl opened for
    writing (EACCES even for root), a vanished PID's file (ENOENT), something else (ENOTDIR)."""
    from remap.errors import translate

    with pytest.raises(OSError) as denied:
        open("/proc/sys/kernel/osrelease", "w")
    assert isinstance(translate(denied.value, what="sysctl"), AccessDenied)
    pid = _dead_pid()
    with pytest.raises(OSError) as gone:
        open(f"/proc/{pid}/status")
    e = translate(gone.value, pid=pid, what="status")
    assert isinstance(e, NoSuchProcess) and not isinstance(e, ZombieProcess)
    assert isinstance(procfs.translate(pid, gone.value, "status"), NoSuchProcess)
    with pytest.raises(OSError) as other:
        open("/proc/self/status/x")
    assert translate(other.value, what="x") is other.value  # not a refusal: left to the caller
