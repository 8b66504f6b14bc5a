"""The typed ptrace layer (remap.inject.ptrace) against real processes and the real kernel.

One errno map for every ptrace user: the same refusal must give the same remap error and exit
code whether the session, the profiler's stepper or the layer itself meets it (EPERM used to
be 4, 70 and 5).  Each test provokes the kernel's own answer -- an unprivileged tracer, a
process tracing itself, a second tracer, a reaped pid -- and then checks the target is fine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_inject_refusals import _as_nobody  # setpriv to nobody, this checkout importable

from remap import kconst as K
from remap import procfs
from remap.errors import AccessDenied, AlreadyTraced, NoSuchProcess
from remap.inject.ptrace import Ptrace, ptrace_error
from remap.profile import _Stepper

ROOT = Path(__file__).resolve().parents[1]


def _echo_ok(t) -> None:
    """The echo loop still answers: its own proof of health."""
    t.proc.stdin.write(b"k")
    t.proc.stdin.flush()
    assert os.read(t.proc.stdout.fileno(), 1) == b"k"


def _ready(t) -> None:
    line = t.proc.stdout.readline()
    assert line.startswith(b"ready"), line
    t.wait_blocked()


def test_eperm_is_one_error_with_exit_code_4_for_every_user(spawn, is_root):
    """As nobody, seizing root's process fails with EPERM: the layer, the profiler's stepper
    and the session's seize all raise AccessDenied, exit code 4."""
    if not is_root or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to drop to nobody")
    t = spawn("echoloop")
    t.wait_blocked()
    code = (
        "import remap.errors as e, remap.inject as i\n"
        "from remap.inject.ptrace import Ptrace\n"
        "from remap.profile import _Stepper\n"
        f"pid = {t.pid}\n"
        "def session_seize():\n"
        "    s = i.Session(pid)\n"
        "    try:\n"
        "        s._seize()\n"
        "    finally:\n"
        "        s.close()\n"
        "users = (('layer', lambda: Ptrace(pid).seize(pid)),\n"
        "         ('stepper', lambda: _Stepper(pid).seize()), ('session', session_seize))\n"
        "for name, fn in users:\n"
        "    try:\n"
        "        fn()\n"
        "        print(name, 'SEIZED')\n"
        "    except e.RemapError as x:\n"
        "        print(name, type(x).__name__, x.exit_code)\n"
    )
    res = _as_nobody(code)
    lines = res.stdout.split("\n")[:3]
    assert lines == [
        "layer AccessDenied 4",
        "stepper AccessDenied 4",
        "session AccessDenied 4",
    ], res.stdout + res.stderr
    assert procfs.read_status(t.pid)["TracerPid"] == 0
    _echo_ok(t)


def test_a_process_cannot_seize_itself():
    """The kernel's EPERM for the tracer's own thread group, with no other tracer: AccessDenied."""
    me = os.getpid()
    with pytest.raises(AccessDenied) as e:
        Ptrace(me).seize(me)
    assert e.value.exit_code == 4 and "operation not permitted" in str(e.value)


def test_second_tracer_is_already_traced(spawn):
    """A target held by another tracer: EPERM with TracerPid set -> AlreadyTraced (exit 5)
    from the layer and from the profiler; the holder's trace is not disturbed."""
    t = spawn("echoloop")
    t.wait_blocked()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys\nfrom remap.inject.ptrace import Ptrace\n"
         f"assert Ptrace({t.pid}).seize({t.pid})\nprint('held', flush=True)\nsys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == b"held\n"
        assert procfs.read_status(t.pid)["TracerPid"] == holder.pid
        with pytest.raises(AlreadyTraced) as e:
            Ptrace(t.pid).seize(t.pid)
        assert e.value.exit_code == 5 and str(holder.pid) in str(e.value)
        with pytest.raises(AlreadyTraced):
            _Stepper(t.pid).seize()
        assert procfs.read_status(t.pid)["TracerPid"] == holder.pid
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    deadline = time.monotonic() + 5
    while procfs.read_status(t.pid)["TracerPid"] != 0:  # a dead tracer's tracees are let go
        assert time.monotonic() < deadline
        time.sleep(0.01)
    _echo_ok(t)


def test_a_reaped_process_is_no_such_process(spawn):
    t = spawn("echoloop")
    t.wait_blocked()
    t.kill()  # killed and reaped: its pid names nothing now
    pt = Ptrace(t.pid)
    assert pt.seize(t.pid) is False  # exited meanwhile: the session's rescan skips it
    with pytest.raises(NoSuchProcess) as e:
        pt.interrupt(t.pid, gone_ok=False)
    assert e.value.exit_code == 3


def test_a_thread_we_do_not_trace_is_esrch(spawn):
    """ptrace on a live process that is not our tracee answers ESRCH: NoSuchProcess, as the
    kernel says, and the process is untouched."""
    t = spawn("echoloop")
    t.wait_blocked()
    with pytest.raises(NoSuchProcess):
        Ptrace(t.pid).getregs(t.pid)
    _echo_ok(t)


def test_round_trip_on_a_real_thread(spawn):
    """Seize, interrupt, wait for the stop; the registers, mask and rseq area the layer reads
    agree with the kernel's /proc; one call through call_at returns the target's pid; then
    the registers go back, it is detached and finishes its own work with exit status 0."""
    t = spawn("glibcloop")
    _ready(t)
    pt = Ptrace(t.pid)
    status = pt.ffi.new("int *")
    assert pt.seize(t.pid, K.PTRACE_O_TRACESYSGOOD)
    try:
        assert pt.interrupt(t.pid)
        assert pt.wait(t.pid, status, 0) == t.pid
        assert status[0] >> 16 == K.PTRACE_EVENT_STOP
        regs = pt.getregs(t.pid)
        sc = procfs.read_syscall(t.pid)  # the kernel's view of the same stopped thread
        assert (sc.nr, sc.sp, sc.pc) == (regs.orig_rax, regs.rsp, regs.rip)
        assert pt.getsigmask(t.pid) == procfs.read_status(t.pid)["SigBlk"]
        assert len(pt.xstate(t.pid)) > 512  # an XSAVE area, not the legacy FXSAVE image
        area = pt.rseq_configuration(t.pid)  # glibc 2.35+ registers one per thread
        assert area is not None
        maps = procfs.read_maps(t.pid)
        assert any(m.start <= area[0] < m.end and "rw" in m.perms for m in maps)
        from remap import gadget

        g = gadget.find(t.pid)
        assert pt.call_at(t.pid, regs, g.addr, K.SYSCALLS["getpid"]) == t.pid
        assert pt.call_at(t.pid, regs, g.addr, K.SYSCALLS["close"], 987654) == -9  # -EBADF
        pt.setregs(t.pid, regs)  # back where it was: its read(2) restarts on detach
    finally:
        pt.detach(t.pid)
    t.proc.stdin.close()
    assert t.proc.wait(timeout=10) == 0


def test_error_map_for_plain_codes():
    """The map itself, for the codes that need no process (pure values)."""
    me = os.getpid()
    assert isinstance(ptrace_error(me, -3, "PTRACE_GETREGS"), NoSuchProcess)  # ESRCH
    assert isinstance(ptrace_error(me, 1, "injected getpid"), NoSuchProcess)  # RN_EXITED
    assert isinstance(ptrace_error(me, -16, "PTRACE_SEIZE"), AlreadyTraced)  # EBUSY
    lost = ptrace_error(me, 2, "batch stub", me + 1)  # RN_LOST
    assert lost.exit_code == 70 and "unexpected stops" in str(lost) and str(me + 1) in str(lost)
    other = ptrace_error(me, -22, "PTRACE_SETOPTIONS")
    assert other.exit_code == 70 and "Invalid argument" in str(other)
