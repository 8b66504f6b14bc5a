"""remap launch --no-vdso: the vdso is hidden from the program and unmapped before it runs."""

from __future__ import annotations

import subprocess

from helpers import maps_text

from remap import procfs, targets
from remap.kconst import AT_SYSINFO_EHDR
from remap.launch import launch


def _specials(pid: int) -> list[str]:
    return [m.path for m in procfs.read_maps(pid) if m.path.startswith("[v")]


def _echo_without_vdso(lb, *, saved_auxv: bool = True) -> None:
    """LB (echoloop launched with vdso=False) has no vdso, no tracer, and echoes a line; its
    kernel-saved auxv (/proc/PID/auxv) agrees where remap could update it (root)."""
    try:
        assert _specials(lb.pid) == ["[vsyscall]"]
        if saved_auxv:
            assert AT_SYSINFO_EHDR not in dict(procfs.read_auxv(lb.pid))
        assert procfs.read_status(lb.pid)["TracerPid"] == 0
        lb.proc.stdin.write(b"hello\n")
        lb.proc.stdin.flush()
        assert lb.proc.stdout.readline() == b"hello\n"
    finally:
        lb.stop()


def _date_without_vdso(**kw) -> None:
    """glibc's `date` launched with vdso=False (and KW) still tells the time: it would have
    jumped into the unmapped vdso had the auxv entry not been hidden."""
    lb = launch(["date", "+%s"], vdso=False, stdout=subprocess.PIPE, **kw)
    out, _ = lb.proc.communicate(timeout=10)
    assert lb.proc.returncode == 0 and int(out) > 1_700_000_000


def test_no_vdso_static_musl_runs_without_vdso():
    lb = launch([str(targets.build("echoloop"))], vdso=False, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE)  # fmt: skip
    _echo_without_vdso(lb)


def test_with_vdso_is_untouched():
    lb = launch([str(targets.build("echoloop"))], stdin=subprocess.PIPE)
    try:
        maps = maps_text(lb.pid)
        assert "[vdso]" in _specials(lb.pid), maps
        assert AT_SYSINFO_EHDR in dict(procfs.read_auxv(lb.pid))
    finally:
        lb.stop()


def test_no_vdso_dynamic_glibc_falls_back_to_syscalls():
    """glibc's clock_gettime uses the vdso when AT_SYSINFO_EHDR is present; hidden, it makes
    the real syscall and `date` still prints the time."""
    _date_without_vdso()


def test_launch_returns_after_the_image_is_complete():
    """Popen returns in begin_new_exec, before the ELF and the vdso are mapped (CI stop 19 saw
    only [stack] and [vsyscall] in 136 of 300 launches); launch() waits for the auxv."""
    exe = str(targets.build("echoloop"))
    for _ in range(30):
        lb = launch([exe], stdin=subprocess.PIPE)
        try:
            paths = [m.path for m in procfs.read_maps(lb.pid)]
            assert "[vdso]" in paths and exe in paths, paths
        finally:
            lb.stop()


def test_no_vdso_combines_with_user_and_netns():
    """--no-vdso with --user and --netns (EnergyMech's isolation): nsenter is followed through
    its exec; the program runs unprivileged, in the namespace, with no vdso (the kernel's saved
    auxv copy stays stale: PR_SET_MM_MAP needs a capability the target lacks)."""
    import os

    from remap.netns import NetNamespace

    echo = str(targets.build("echoloop"))
    with NetNamespace() as ns:
        lb = launch([echo], vdso=False, user="nobody", netns=ns, stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE)  # fmt: skip
        where = (procfs.read_exe(lb.pid), procfs.read_status(lb.pid)["Uid"].split()[0],
                 os.readlink(f"/proc/{lb.pid}/ns/net"))  # fmt: skip
        _echo_without_vdso(lb, saved_auxv=False)
        assert where[:2] == (os.path.realpath(echo), "65534")
        assert where[2] != os.readlink("/proc/self/ns/net")
        _date_without_vdso(user="nobody", netns=ns)
    _date_without_vdso(user="nobody")
