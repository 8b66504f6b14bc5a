"""The quick torture suite: a driver killed, interrupted or disturbed at random instants, against
a real worker whose answers depend on its memory, FP state and signal state.  The long runs
(500 kills per signal) are `remap run torture` (experiments/torture.toml)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import maps_text, state, status, wait_until

from remap import inject, targets, torture
from remap.errors import AlreadyTraced, NoSuchProcess, ZombieProcess


@pytest.fixture
def worker():
    started: list[torture.Worker] = []

    def start(*modes: str) -> torture.Worker:
        w = torture.start_worker(targets.build("torture_worker"), list(modes))
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


def no_failures(fig: dict) -> None:
    assert fig["failures"] == [], fig["failures"]
    assert fig["survived"] == fig["kills"]


@pytest.mark.parametrize(
    ("sig", "modes", "kills"),
    [
        (signal.SIGKILL, (), 60),
        (signal.SIGKILL, ("alarm", "threads"), 40),
        (signal.SIGINT, ("alarm",), 25),
        (signal.SIGTERM, (), 25),
    ],
)
def test_driver_killed_at_random_instants(worker, sig, modes, kills):
    if sig == signal.SIGKILL:
        fig = torture.storm(worker(*modes), kills, sig, seed=kills)
    else:
        fig = _storm_in_fresh_interpreter(modes, kills, sig, seed=kills)
    no_failures(fig)
    assert fig["sessions"] > 0  # the kills landed in and between real sessions
    if "alarm" in modes:
        assert fig["signals_delivered"] > 100  # ~1 per ms kept arriving through it all


def _storm_in_fresh_interpreter(modes, kills: int, sig: int, seed: int) -> dict:
    """storm() from a new Python process, as `remap` itself runs.

    Why: the driver is forked from the storm's process, and the SIGINT/SIGTERM rounds test how
    a driver *started as remap is* turns the signal into its cure.  Forked from this long-lived
    pytest process it inherits the Python signal handlers that pytest, its plugins and earlier
    tests installed, and in about one full run in two one round of 25 kept running after the
    signal (seen with py-spy: the driver back in a new session) -- noted on the issue."""
    code = (
        "import json\n"
        "from remap import targets, torture\n"
        f"w = torture.start_worker(targets.build('torture_worker'), {list(modes)!r})\n"
        "try:\n"
        f"    print(json.dumps(torture.storm(w, {kills}, {int(sig)}, seed={seed}), default=str))\n"
        "finally:\n"
        "    w.stop()\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=200)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.splitlines()[-1])


def test_a_storm_in_a_fresh_build_dir_runs_sessions(tmp_path):
    """In a fresh checkout the batch stub is assembled at its first use.  Each forked driver
    did that itself and was killed within the storm's 30 ms before a session ended: 30 of 30
    "survived" with 0 sessions.  storm() now does the once-per-process work before it forks."""
    code = (
        "import json\n"
        "from remap import targets, torture\n"
        "w = torture.start_worker(targets.build('torture_worker'))\n"
        "try:\n"
        "    print(json.dumps(torture.storm(w, 30, seed=1), default=str))\n"
        "finally:\n"
        "    w.stop()\n"
    )
    env = {**os.environ, "REMAP_BUILD_DIR": str(tmp_path)}  # nothing built yet
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    fig = json.loads(r.stdout.splitlines()[-1])
    no_failures(fig)
    assert fig["sessions"] > 0, fig


def test_stop_and_cont_from_outside_during_sessions(worker):
    no_failures(torture.storm(worker(), 20, signal.SIGKILL, seed=3, stop_target=True))


def test_seccomp_target_with_the_filter_suspended(worker):
    w = worker("seccomp")
    assert status(w.pid)["Seccomp"] == "2"
    no_failures(torture.storm(w, 20, signal.SIGKILL, seed=4))


def test_driver_killed_during_fold_sessions(worker):
    """squeeze/stack-fold sessions drop the dead stack the safety frames sit in: the frames
    move (resident stack page, or scratch and back); a kill anywhere leaves a working worker."""
    fig = torture.storm(worker(), 12, signal.SIGKILL, seed=5, max_delay_s=0.3, fold=True)
    no_failures(fig)


def test_target_killed_mid_session(worker):
    w = worker()
    t0 = time.monotonic()
    out = torture.target_dies(w, delay_s=0.02)
    assert time.monotonic() - t0 < 6
    assert out["driver_exit"] == 1  # the loop ended on NoSuchProcess, it did not hang
    with pytest.raises(NoSuchProcess):
        inject.preflight(w.pid)


def test_batches_without_an_ignorable_marker_run_call_by_call(worker):
    """A target that catches SIGURG, SIGWINCH and SIGCHLD offers no marker for the stub: the
    batch runs one call at a time and no scratch area is mapped."""
    w = worker("catchall")
    maps0 = maps_text(w.pid)
    with inject.attach(w.pid) as s:
        assert s.syscalls([("getpid",)] * 3) == [w.pid] * 3
        assert maps_text(w.pid) == maps0
    assert torture.health(w) == []


def test_scratch_mapping_is_never_left_and_windows_are_measured(worker):
    w = worker()
    with inject.attach(w.pid) as s:
        s.syscalls([("getpid",)] * 4)
        assert s.scratch_area
        assert s.notes == []  # the chain is in place: protected from the start
    assert s.windows_ns.get("scratch_leak", 0) == 0  # mapped through the boot frame
    assert "unprotected" not in s.windows_ns
    assert torture.health(w) == []


def test_frames_are_invisible_to_reads(worker):
    """What the session reads below the stack pointer is what the cure will leave there."""
    w = worker()
    with inject.attach(w.pid) as s:
        rsp = s.regs()["rsp"]
        before = s.read(rsp - 8192, 8192)
        s.syscall("getpid")  # arms the frame below rsp - 128
        t = s._threads[w.pid]
        assert t.frame_at and rsp - 8192 < t.frame_at < rsp
        assert s.read(rsp - 8192, 8192) == before
        assert s.mem.read(t.frame_at, 16) != before[t.frame_at - rsp + 8192 :][:16]
    with open(f"/proc/{w.pid}/mem", "rb") as f:
        f.seek(rsp - 8192)
        assert f.read(8192) == before


def test_already_traced_by_strace(worker):
    if not os.path.exists("/usr/bin/strace"):
        pytest.skip("strace not installed")
    w = worker()
    st = subprocess.Popen(
        ["/usr/bin/strace", "-p", str(w.pid), "-o", "/dev/null"], stderr=subprocess.DEVNULL
    )
    try:
        wait_until("strace attached", lambda: status(w.pid)["TracerPid"] != "0", 5)
        with pytest.raises(AlreadyTraced):
            with inject.attach(w.pid):
                pass
    finally:
        st.send_signal(signal.SIGINT)
        st.wait(timeout=5)
    assert torture.health(w) == []


def test_process_gone_between_check_and_seize(worker):
    """The pidfd opened at preflight names the process checked; once it has exited, the
    seize is refused even though its PID is still there (a zombie) or used again."""
    w = worker()
    s = inject.Session(w.pid)
    s._open_pidfd()
    try:
        s._same_process()
        w.proc.kill()
        wait_until("a zombie", lambda: state(w.pid) == "Z", 5)
        with pytest.raises(ZombieProcess):
            s._same_process()
    finally:
        s._close_pidfd()
        w.proc.wait()


def test_chainless_target_gets_its_chain_from_scratch(worker):
    """A static program with no rt_sigreturn restorer in its code: the chain is built in the
    scratch area after a bootstrap of two injected calls (their in-flight time measured)."""
    w = torture.start_worker(targets.build("torture_worker", "bare"), [])
    try:
        with inject.attach(w.pid) as s:
            s.syscall("getpid")
            assert s.chain_in_scratch and s._threads[w.pid].frame_at
            assert s.syscalls([("getpid",)] * 3) == [w.pid] * 3
        assert 0 < s.windows_ns["in_flight"] < 50_000_000
        assert torture.health(w) == []  # scratch released on the normal path
    finally:
        w.stop()


@pytest.mark.parametrize("variant", ["default", "bare"])
def test_driver_killed_between_calls(variant):
    """Killed while parked between calls, with or without a chain in the target's code: the
    worker resumes its read and answers right (a chain built in scratch leaves it behind)."""
    w = torture.start_worker(targets.build("torture_worker", variant), [])
    code = (
        "import sys, time, remap\n"
        f"with remap.attach({w.pid}) as s:\n"
        "    s.syscall('getpid'); s.syscalls([('getpid',)] * 4); s.syscall('getpid')\n"
        "    print('in', flush=True)\n"
        "    time.sleep(30)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    drv = subprocess.Popen([sys.executable, "-c", code], cwd=root, stdout=subprocess.PIPE)
    try:
        assert drv.stdout.readline() == b"in\n"
        guardian = torture.guardian_of(drv.pid)
        drv.kill()
        drv.wait(timeout=5)
        torture.wait_gone(guardian, 5.0)  # it gives the worker its CPUs back
        assert torture.health(w, leak_ok=variant == "bare") == []
    finally:
        drv.stdout.close()
        w.stop()
