"""remap.profile on real processes: the demo bot and EnergyMech single-stepped over real IRC
workloads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from helpers import assert_one_line_error, remap_cli, status

from remap import energymech, procfs, sources
from remap.errors import NoSuchProcess, UnsupportedTarget, UsageError
from remap.ircd import IrcServer
from remap.layout import musl_libc, plan_layout
from remap.profile import Profile, irc_workload, profile, render_png
from remap.sources import SourceMissing

pytest.importorskip("capstone")


def _tracer(pid: int) -> int:
    return int(status(pid)["TracerPid"])


@pytest.fixture
def bot(spawn):
    """The plain (function-sections) demo bot, registered with a loopback server and idle."""
    with IrcServer() as srv:
        t = spawn("minibot-auto", "default", *srv.bot_args())
        srv.accept_bot()
        t.wait_blocked()
        yield t, srv


def test_profile_over_workload_finds_the_steady_state(bot):
    t, srv = bot
    wl = irc_workload(srv, 30)
    prof = profile(t.pid, workload=wl, baseline=wl)
    names = prof.function_names()
    # the steady state: the loop, the line handler, !mem's parser, the one syscall gadget
    for fn in ("hot_main", "handle_line", "hot_syscall", "read_status", "out_num"):
        assert fn in names
    # ... and none of the startup code, which ran before the profile
    for fn in ("main", "read_line", "copy_arg", "__libc_start_main"):
        assert fn not in names
    data = {d.name: d for d in prof.data}
    assert data["linebuf"].writes > 0 and data["linebuf"].reads > 0
    assert data["s_ping"].reads > 0 and data["s_ping"].writes == 0
    assert "hot_main" in data["linebuf"].by
    assert prof.stack.root == "hot_main"
    assert 0 < prof.stack.peak_depth < 1024
    assert prof.results["unchanged"] is True
    assert prof.results["profiled"]["!ping"] == "pong"
    assert prof.overhead.steps > 1000 and prof.overhead.slowdown > 1
    assert prof.reason_stopped == "idle"
    assert prof.signals.caught == [] and signal.SIGPIPE in prof.signals.ignored
    # the target is released and unharmed: not traced, still serving correctly
    assert _tracer(t.pid) == 0
    srv.ping(50)
    assert srv.command("!ping") == "pong"
    assert set(srv.command("!mem")) >= {"VmRSS", "VmSize"}


def test_profile_json_round_trip_and_png(bot, tmp_path):
    t, srv = bot
    prof = profile(t.pid, workload=irc_workload(srv, 5))
    path = tmp_path / "p.json"
    prof.save(path)
    again = Profile.load(path)
    assert again == prof
    render_png(prof, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_for_seconds_while_idle_leaves_the_target_working(bot):
    """Stepping into a blocking read and giving up there must not leave a SIGTRAP behind (its
    default action would kill the bot once we detach)."""
    t, srv = bot
    prof = profile(t.pid, seconds=0.3)
    assert prof.reason_stopped == "time"
    assert "hot_syscall" in prof.function_names()
    assert _tracer(t.pid) == 0
    srv.ping(10)
    assert srv.command("!ping") == "pong"
    assert t.proc.poll() is None


def test_profile_refuses_blocked_sigtrap():
    def block_trap():
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTRAP])

    p = subprocess.Popen(["sleep", "30"], preexec_fn=block_trap)
    try:
        with pytest.raises(UnsupportedTarget, match="SIGTRAP"):
            profile(p.pid, seconds=0.1)
        assert p.poll() is None and _tracer(p.pid) == 0
    finally:
        p.kill()
        p.wait(timeout=5)


def test_profile_refuses_ignored_sigtrap_with_what_to_do_instead():
    """An ignored SIGTRAP survives exec (sysvinit's init ignores it too): coreutils' sleep
    started by a shell that ignores it is refused, in one line saying what to do instead."""
    p = subprocess.Popen(["sh", "-c", "trap '' TRAP; exec sleep 30"])
    try:
        deadline = time.monotonic() + 5
        while os.readlink(f"/proc/{p.pid}/exe") != "/usr/bin/sleep":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(UnsupportedTarget, match="ignores SIGTRAP") as e:
            profile(p.pid, seconds=0.1)
        assert f"remap watch {p.pid}" in str(e.value)
        res = remap_cli("profile", str(p.pid), "--for", "0.1")
        assert_one_line_error(res, UnsupportedTarget.exit_code)
        assert "instead" in res.stderr
        assert p.poll() is None and _tracer(p.pid) == 0
    finally:
        p.kill()
        p.wait(timeout=5)


def test_profile_no_such_process():
    with pytest.raises(NoSuchProcess):
        profile(2**22 - 3, seconds=0.1)


def test_cli_profile_json(bot, tmp_path):
    t, srv = bot
    out = tmp_path / "p.json"
    res = remap_cli("profile", str(t.pid), "--for", "0.2", "--json", "-o", str(out))
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["pid"] == t.pid and d["exe"].endswith("minibot-auto")
    assert "trace" not in d
    assert Profile.load(out).stack.root
    assert srv.command("!ping") == "pong"


def test_cli_profile_errors_are_one_line():
    res = remap_cli("profile", str(2**22 - 3), "--for", "1")
    assert_one_line_error(res, 3)
    assert "no such process" in res.stderr


def test_profile_refuses_threads(spawn):
    t = spawn("inject_threads", "default", "spawn", "2")
    t.wait_blocked()
    deadline = time.monotonic() + 5
    while len(os.listdir(f"/proc/{t.pid}/task")) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(UnsupportedTarget, match="threads"):
        profile(t.pid, seconds=0.1)
    assert _tracer(t.pid) == 0 and t.proc.poll() is None


def test_profile_steps_a_vfork_child_up_to_its_exec(spawn):
    """A vfork child runs in its parent's memory and below its frames until it execs (busybox
    init's respawn): the profile steps it too, up to its exec, which still happens; the
    parent reaps it as before, also once the profile has let both go."""
    t = spawn("vforker")
    assert t.proc.stdout.readline().startswith(b"ready ")
    t.wait_blocked()

    def once() -> str:
        t.proc.stdin.write(b"go\n")
        t.proc.stdin.flush()
        return t.proc.stdout.readline().decode().strip()

    prof = profile(t.pid, seconds=60, workload=once)
    assert prof.results["profiled"] == "reaped 0"  # the child exec'd /bin/true, which exited 0
    names = prof.function_names()
    assert "run_child" in names and "execve" in names and "main" in names
    assert _tracer(t.pid) == 0
    assert once() == "reaped 0"


# ---------------------------------------------------------------------------- a real program
def _mech(variant: str):
    try:
        r = sources.recipe("energymech", variant)
        sources.source_path(r)
    except SourceMissing as e:
        pytest.skip(f"EnergyMech source not found: {e.path}")
    return sources.build(r)


@pytest.fixture(scope="module")
def mech_static():
    return _mech("static")


def test_profile_energymech_objects_by_mapping_and_its_idle_timer(mech_static):
    """EnergyMech (static musl): every data object is sized by its symbol, its section or its
    own page of its own mapping (two anonymous regions once merged into a 140 TB object), the
    heap is reported by page, and an idle window after the PINGs reaches its timer path
    (``update``, run once the 5 s select timeout brings a new second)."""
    run = energymech.start(mech_static)
    pid = run.launched.pid
    try:
        srv = run.server
        srv.accept_bot()
        srv.timeout = 60  # replies of a single-stepped bot are slow

        def wl() -> int:
            srv.ping(10)
            return srv.pings

        prof = profile(pid, workload=wl, idle=6)
        maps = [(m.start, m.end) for m in procfs.read_maps(pid)]
        assert prof.reason_stopped == "idle" and prof.results["profiled"] == 10
        names = prof.function_names()
        assert {"doit", "process_server_input", "update"} <= set(names)
        heap = [d for d in prof.data if d.section == "[heap]"]
        assert heap and all(d.name.startswith("[heap]+0x") for d in heap)
        for d in prof.data:
            if d.section in prof.sections:
                lo, n = prof.sections[d.section][:2]
                assert lo <= d.addr and d.addr + d.size <= lo + n, d
            else:  # one page of one mapping
                assert d.addr % 4096 == 0 and 0 < d.size <= 4096, d
                assert any(a <= d.addr and d.addr + d.size <= b for a, b in maps), d
        assert _tracer(pid) == 0
        srv.timeout = 5
        srv.ping(20)
        assert srv.pings == 30
    finally:
        energymech.stop(run)


def test_profile_dynamic_energymech_names_plt_targets_and_layout_refuses(tmp_path):
    """The dynamic build calls libc through its PLT: the profile names each stub for its
    target (``vsprintf@plt``, not ``.plt+0x405040``), and the layout refuses in one line
    naming them and the way out (a static build)."""
    run = energymech.start(_mech("dynamic"))
    try:
        srv = run.server
        srv.accept_bot()
        srv.timeout = 60
        prof = profile(run.launched.pid, workload=lambda: srv.ping(5))
        assert srv.pings == 5
    finally:
        energymech.stop(run)
    names = prof.function_names()
    plt = [n for n in names if n.endswith("@plt")]
    assert plt and not [n for n in names if n.startswith(".plt")], names
    libc = [k for k in prof.outside if "musl" in k or "libc" in k]
    assert libc and prof.outside[libc[0]] > 0
    with pytest.raises(UsageError, match=r"dynamically linked: .* PLT entries .*@plt.*static"):
        plan_layout(prof, [musl_libc()])
    path = tmp_path / "dyn.json"
    prof.save(path)
    res = remap_cli("layout", str(path), "--inputs", str(musl_libc()), "-o", str(tmp_path / "x"))
    assert_one_line_error(res, UsageError.exit_code)
    assert "@plt" in res.stderr
