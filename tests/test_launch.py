"""remap launch and remap.stacklayout: controlled ASLR and environment, measured stack layout."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from remap import procfs, targets
from remap.cli import main
from remap.errors import NoSuchProcess, UnsupportedTarget, UsageError
from remap.kconst import AT_PLATFORM, AT_RANDOM, PAGE_SIZE
from remap.launch import DEFAULT_ENV, env_bytes, launch
from remap.stacklayout import stack_layout


def _idle_layout(aslr: bool, env_size: int | None = 512):
    """Launch the echo loop, wait until it blocks in read(0), measure its stack, stop it."""
    exe = str(targets.build("echoloop"))
    t = launch([exe], aslr=aslr, env_size=env_size, stdin=subprocess.PIPE)
    try:
        t.wait_blocked()
        return stack_layout(t.pid), dict(procfs.read_auxv(t.pid)), t.pid
    finally:
        t.stop()


def test_no_aslr_gives_the_same_stack_twice():
    a, _, pa = _idle_layout(aslr=False)
    b, _, pb = _idle_layout(aslr=False)
    assert pa != pb
    assert a == b  # every address and page, not just the sizes
    assert a.gap < 16  # only the 16-byte rounding of arch_align_stack
    assert a.rsp is not None and a.present_pages >= 1


def test_aslr_moves_the_stack_and_the_gap():
    layouts = [_idle_layout(aslr=True)[0] for _ in range(4)]
    assert len({la.vma_end for la in layouts}) > 1
    assert len({la.gap for la in layouts}) > 1
    assert all(0 <= la.gap < 8192 + 16 for la in layouts)


def test_layout_is_consistent_with_the_kernel_files():
    lay, aux, _ = _idle_layout(aslr=True)
    assert aux[AT_RANDOM] + 16 == aux[AT_PLATFORM]  # the anchors the gap is measured from
    assert lay.vma_start <= lay.rsp < lay.start_stack < lay.aligned_top <= lay.arg_start
    assert lay.arg_start < lay.arg_end == lay.env_start < lay.env_end <= lay.vma_end
    # present: the top page (the strings exec wrote) and the page rsp is in; with a large gap
    # a page between them can stay untouched, and startup may have touched pages below rsp
    top = (lay.vma_end - 1) // PAGE_SIZE
    assert 0 in lay.present and top - lay.rsp // PAGE_SIZE in lay.present
    assert lay.live_pages == (lay.env_end - 1) // PAGE_SIZE - lay.live_lo // PAGE_SIZE + 1


def test_env_size_is_exact_and_default_env_minimal():
    exe = str(targets.build("echoloop"))
    for size in (None, 300, 4096):
        t = launch([exe], env_size=size, stdin=subprocess.PIPE)
        try:
            t.wait_blocked()
            with open(f"/proc/{t.pid}/environ", "rb") as f:
                env = f.read()
        finally:
            t.stop()
        assert len(env) == (size if size is not None else env_bytes(DEFAULT_ENV))
        assert t.env_size == len(env)
    with pytest.raises(UsageError):
        launch([exe], env_size=10)


def test_no_vdso_hook():
    exe = str(targets.build("echoloop"))
    if importlib.util.find_spec("remap.fold.vdso") is None:
        with pytest.raises(UnsupportedTarget, match="remap.fold.vdso"):
            launch([exe], vdso=False)
    else:
        t = launch([exe], vdso=False, stdin=subprocess.PIPE)
        try:
            t.wait_blocked()
            assert not any(e.path == "[vdso]" for e in procfs.read_maps(t.pid))
        finally:
            t.stop()


def test_cli_launch_no_aslr_json():
    """The real console script, twice: the targets keep running after remap exits, same stack."""
    exe = str(targets.build("echoloop"))
    remap_bin = os.path.join(os.path.dirname(sys.executable), "remap")
    pids: list[int] = []
    r, w = os.pipe()  # the targets' stdin: they block in read(0) until we close w
    try:
        for _ in range(2):
            cmd = [remap_bin, "launch", "--no-aslr", "--env-size", "256", "--json", "--", exe]
            res = subprocess.run(cmd, stdin=r, capture_output=True, text=True, timeout=30)
            assert res.returncode == 0, res.stderr
            out = json.loads(res.stdout)
            assert out["aslr"] is False and out["env_size"] == 256
            pids.append(out["pid"])
        deadline = time.monotonic() + 5
        while any(procfs.read_stat(p).state != "S" for p in pids):
            assert time.monotonic() < deadline
            time.sleep(0.005)
        a, b = (stack_layout(p) for p in pids)
        assert (a.start_stack, a.arg_start, a.rsp) == (b.start_stack, b.arg_start, b.rsp)
    finally:
        os.close(r)
        os.close(w)  # EOF: the echo loops exit on their own
        for p in pids:
            _gone(p)


def test_cli_launch_errors(capsys):
    assert main(["launch", "--"]) == UsageError.exit_code
    assert main(["launch", "--", "/nonexistent/prog"]) == UsageError.exit_code
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "not an executable" in err


def _gone(pid: int) -> None:
    """Make sure PID (not our child: remap launched it) has exited; kill it after 2 s."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            if procfs.read_stat(pid).state == "Z":
                return
        except NoSuchProcess:
            return
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
