"""agetty and busybox init as real targets (issue 17, part 4), and their squeeze experiments.

Everything is real: both programs are built from Debian 12's source packages (fetched once
through a private deb-src apt configuration, Debian's patches applied) statically with musl;
agetty runs on a pty pair made here and is driven from the master side; busybox init is PID 1
of a PID namespace made by unshare.  Health is each program's own behaviour: agetty's login
prompt, and a typed login name that makes it exec our login program (its marker line on the
pty); init respawning a killed child under a new PID.  Without the Debian source (no deb-src
reachable) the tests that need it are skipped with what was looked for.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from remap import getty, initns, procfs, sources
from remap.errors import ExperimentError
from remap.experiment import runner, spec
from remap.layout import link
from remap.targets import EXPERIMENTS_DIR

REMAP = [sys.executable, "-m", "remap"]
WAIT_FOR_INPUT = {7, 23, 270, 271}  # poll, select, pselect6, ppoll (x86_64)


def _built(name: str) -> Path:
    return _built_variant(name, "default")


def _built_variant(name: str, variant: str) -> Path:
    try:
        return sources.build(sources.recipe(name, variant))
    except sources.SourceMissing as e:
        pytest.skip(f"Debian source of {name} not available here: {e}")


@pytest.fixture(scope="module")
def agetty() -> Path:
    return _built("agetty")


@pytest.fixture(scope="module")
def busybox() -> Path:
    return _built("busybox")


def _short(tmp_path: Path, name: str, idle_s: int = 1) -> spec.Experiment:
    """The shipped experiment NAME, run once with an idle of IDLE_S seconds instead of 60."""
    text = (EXPERIMENTS_DIR / f"{name}.toml").read_text()
    assert "seconds = 60" in text and "repeat = 5" in text
    path = tmp_path / f"{name}.toml"
    path.write_text(
        text.replace("seconds = 60", f"seconds = {idle_s}").replace("repeat = 5", "repeat = 1")
    )
    return spec.load(str(path))


# ---------------------------------------------------------------------------- the builds
@pytest.mark.parametrize("name", ["agetty", "busybox"])
def test_debian_source_builds_static_musl_and_is_cached(name):
    binary = _built(name)
    assert sources.elf_interpreter(binary) is None  # static: no PT_INTERP
    info = json.loads((binary.parent / "build.json").read_text())
    pkg = {"agetty": "util-linux", "busybox": "busybox"}[name]
    assert info["recipe"]["debian"] == pkg
    assert (Path(info["source"]) / "debian" / "changelog").read_text().startswith(pkg + " ")
    mtime = binary.stat().st_mtime_ns
    t0 = time.monotonic()
    assert sources.build(sources.recipe(name)) == binary  # same source + recipe: not rebuilt
    assert binary.stat().st_mtime_ns == mtime and time.monotonic() - t0 < 10


def test_busybox_has_only_the_applets_asked_for(busybox):
    ok = subprocess.run([busybox, "sleep", "0"], capture_output=True, timeout=10)
    assert ok.returncode == 0
    for applet in ("sh", "ash", "getty"):  # no shell: allnoconfig's ash choice is undone
        res = subprocess.run([busybox, applet, "-c", "exit 3"], capture_output=True, timeout=10)
        assert res.returncode == 127 and b"applet not found" in res.stderr, applet


def test_recipe_names_either_a_debian_package_or_a_source():
    table = {"debian": "util-linux", "source": "x.tar.gz", "binary": "agetty"}
    with pytest.raises(ExperimentError, match="replaces 'source'"):
        sources.recipe("both", table=table)
    with pytest.raises(ExperimentError, match="prepare must look like"):
        sources.recipe("p", table={"debian": "busybox", "binary": "b", "prepare": ["x.sh"]})


def test_prepare_scripts_run_in_the_tree_and_their_bytes_key_the_cache(tmp_path, monkeypatch):
    """A recipe's prepare step is a csrc/recipes script run with sh in the build tree before
    make; editing the script (not the recipe) makes a new build."""
    monkeypatch.setenv("REMAP_BUILD_DIR", str(tmp_path / "build"))
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    monkeypatch.setattr(sources, "RECIPES_DIR", recipes)
    tree = tmp_path / "src"
    tree.mkdir()
    (tree / "hello.c").write_text(
        '#include <stdio.h>\n#include "word.h"\nint main(void){puts(WORD);return 0;}\n'
    )
    (tree / "Makefile").write_text("hello: hello.c\n\tmusl-gcc -static -o $@ $<\n")
    script = recipes / "word.sh"
    table = {"source": str(tree), "binary": "hello", "make": [], "linkage": "static",
             "prepare": [["word.sh", "one"]]}  # fmt: skip

    def built_word() -> tuple[Path, str]:
        b = sources.build(sources.recipe("hello", table=table))
        return b, subprocess.run([b], capture_output=True, text=True, timeout=10).stdout

    script.write_text('printf \'#define WORD "%s"\\n\' "$1" > word.h\n')
    first, out = built_word()
    assert out == "one\n" and not (tree / "word.h").exists()  # ran in the scratch copy
    assert built_word() == (first, "one\n")  # cached
    script.write_text('printf \'#define WORD "%s-%s"\\n\' "$1" "$1" > word.h\n')
    second, out = built_word()
    assert second != first and out == "one-one\n"
    table["prepare"] = [["missing.sh"]]
    with pytest.raises(ExperimentError, match="prepare script .*missing.sh not found"):
        sources.build(sources.recipe("hello", table=table))


def test_unknown_debian_package_is_reported_skipped_with_what_was_looked_for(tmp_path):
    """A Debian source package that cannot be had is a skip naming it, never a pass."""
    exp = tmp_path / "nosuch.toml"
    exp.write_text(
        '[target]\nsource = "nosuch"\n'
        '[target.recipe]\ndebian = "remap-no-such-package"\nbinary = "x"\n'
        '[[steps]]\nstep = "launch-agetty"\n'
    )
    env = {**os.environ, "REMAP_BUILD_DIR": str(tmp_path / "build"),
           "REMAP_THIRD_PARTY": str(tmp_path / "tp")}  # fmt: skip
    out = tmp_path / "out"
    res = subprocess.run(
        [*REMAP, "run", str(exp), "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert "SKIPPED" in res.stderr and "remap-no-such-package" in res.stderr, res.stderr
    note = json.loads((out / "nosuch.skipped.json").read_text())
    assert "Debian source package remap-no-such-package" in note["looked_for"]
    assert not (out / "nosuch.jsonl").exists()


# ---------------------------------------------------------------------------- agetty on a pty
def _short_hostname() -> str:
    """What agetty prints before "login: " (without --long-hostname): up to the first dot."""
    return os.uname().nodename.split(".")[0]


def test_agetty_prompts_on_its_pty_only_and_accepts_a_login_name(agetty):
    run = getty.start(agetty)
    try:
        pid = run.launched.pid
        assert run.prompt.endswith("login: ") and run.prompt == f"{_short_hostname()} login: "
        fds = {os.readlink(f"/proc/{pid}/fd/{n}") for n in (0, 1, 2)}
        assert fds == {f"/dev/{run.tty}"}  # its terminal is our pty slave, nothing else
        run.launched.wait_blocked(5.0)  # the prompt is out a moment before it sleeps
        assert procfs.read_syscall(pid).nr in WAIT_FOR_INPUT  # waiting for a name on the tty
        assert getty.login(run, "alice") == f"{getty.LOGIN_MARKER} -- alice"
        assert run.launched.proc.returncode == 0
        assert "alice\r" in run.screen.decode()  # agetty echoed what was typed
    finally:
        getty.stop(run)
    assert run.master == -1 and not run.workdir.exists()


def test_agetty_without_its_master_reader_gives_no_login(agetty):
    """The check can fail: a killed agetty gives no marker, and login() says so."""
    run = getty.start(agetty)
    try:
        os.kill(run.launched.pid, signal.SIGKILL)
        run.launched.proc.wait(timeout=5)
        with pytest.raises(ExperimentError, match="before a login name was typed"):
            getty.login(run, "bob")
    finally:
        getty.stop(run)


# ---------------------------------------------------------------------------- init in a PID ns
def test_busybox_init_is_pid_1_of_its_namespace_and_respawns_a_killed_child(busybox):
    run = initns.start(busybox)
    try:
        pid = run.launched.pid
        assert str(procfs.read_status(pid)["NSpid"]).split() == [str(pid), "1"]
        assert procfs.read_exe(pid) == str(busybox) and pid != run.launched.proc.pid
        old = initns.child(run)
        assert old is not None
        assert procfs.read_cmdline(old) == [str(busybox), "sleep", "86400"]
        assert procfs.read_cmdline(pid) == [str(busybox), "init"]
        was, new = initns.respawn(run)
        assert was == old and new != old and initns.child(run) == new
        assert not os.path.exists(f"/proc/{old}")  # the old one is gone, reaped by init
        host = Path("/etc/inittab")  # our inittab is bound over /etc in init's namespace only
        assert not host.exists() or host.read_text() != initns.inittab(busybox)
    finally:
        initns.stop(run)
    assert run.launched.proc.returncode is not None and not os.path.exists(f"/proc/{pid}")


def test_busybox_relinked_from_its_kept_inputs_runs_init_and_respawns(tmp_path):
    """The layout build keeps busybox's own link inputs; remap.layout.link (no script) makes a
    working busybox of them, in init-layout's order (scripts/trylink's), + musl's libc.a."""
    binary = _built_variant("busybox", "layout")
    exp = tomllib.loads((EXPERIMENTS_DIR / "init-layout.toml").read_text())
    (names,) = [s["inputs"] for s in exp["steps"] if s["step"] == "init-layout"]
    assert names[0] == "applets/built-in.o" and "init/lib.a" in names and "libbb/lib.a" in names
    out = link([binary.parent / sources.KEPT_DIR / n for n in names], tmp_path / "busybox")
    assert out.read_bytes() != binary.read_bytes()  # relinked: no --gc-sections, other layout
    run = initns.start(out)
    try:
        assert procfs.read_exe(run.launched.pid) == str(out)
        old, new = initns.respawn(run)
        assert new != old and procfs.read_cmdline(new) == [str(out), "sleep", "86400"]
    finally:
        initns.stop(run)


# ---------------------------------------------------------------------------- the experiments
def _check_squeezed(rec: dict, launch_prompt: bool) -> None:
    assert rec["target_ok"], rec["error"]
    names = [s["name"] for s in rec["steps"]]
    assert names == ["launch", "floor", "squeeze", "idle", "check-floor"]
    launch, floor, squeezed, idle, checked = rec["steps"]
    assert squeezed["rss_kb"] < launch["rss_kb"]  # the squeeze dropped something
    assert idle["seconds"] == 1
    assert all(len(s["pages"]) == s["present_pages"] for s in rec["steps"])
    # remap floor agrees with what the squeeze reaches, and with the idle after it (issue 17:
    # +-1 page; the one page today is the squeeze's own safety frame below the live stack)
    chk = rec["floor_check"]
    assert chk["ok"] and chk["fault_around_possible"] == 0, chk
    assert floor["floor_kb"] == rec["floor"]["floor_kb"] > 0
    for s in (squeezed, checked):
        assert abs(s["present_pages"] - rec["floor"]["floor_pages"]) <= 1, (s["name"], chk)
    if launch_prompt:
        assert launch["prompt"].endswith("login: ")


def test_agetty_squeeze_experiment_keeps_agetty_accepting_logins(agetty, tmp_path):
    (rec,) = runner.run(_short(tmp_path, "agetty-squeeze"), out=tmp_path / "out")
    _check_squeezed(rec, launch_prompt=True)
    assert rec["health"] == {"login": f"{getty.LOGIN_MARKER} -- remap"}
    assert rec["target"]["source"]["recipe"]["debian"] == "util-linux"


def test_init_squeeze_experiment_keeps_init_respawning(busybox, tmp_path):
    (rec,) = runner.run(_short(tmp_path, "init-squeeze"), out=tmp_path / "out")
    _check_squeezed(rec, launch_prompt=False)
    respawn = rec["health"]["respawn"]
    assert respawn["old"] == rec["steps"][0]["child"] and respawn["new"] != respawn["old"]


def _layout_run(tmp_path: Path, name: str) -> dict:
    """The record of one run of the shipped layout experiment NAME with a 2 s idle instead of
    60 s; it must have kept its target working."""
    text = (EXPERIMENTS_DIR / f"{name}.toml").read_text()
    assert "seconds = 60" in text
    path = tmp_path / f"{name}.toml"
    path.write_text(text.replace("seconds = 60", "seconds = 2"))
    (rec,) = runner.run(spec.load(str(path)), out=tmp_path / "out")
    assert rec["target_ok"], rec["error"]
    return rec


def test_agetty_layout_experiment_folds_into_its_block_and_accepts_a_login(agetty, tmp_path):
    """Issue 18: agetty profiled at its prompt, relinked from its kept objects into an open
    hot block, folded (every live frame moved: its read returns into cold get_logname once a
    name is typed), idle, then a typed name is still accepted.  Recorded 32 kB here after 60 s
    (goal 20 kB; squeezed 40 kB)."""
    rec = _layout_run(tmp_path, "agetty-layout")
    assert rec["health"] == {"login": f"{getty.LOGIN_MARKER} -- remap"}
    lay = rec["idle_layout"]
    assert lay["profiled_stop"] == {"login": f"{getty.LOGIN_MARKER} -- remap"}
    assert lay["budget"]["pages"] == len(lay["pages"]) > 1
    assert lay["budget"]["stack_min"] > lay["stack_depth_from_start"] > lay["peak_stack_depth"]
    steps = {s["name"]: s for s in rec["steps"]}
    fold_step, fence = steps["fold-single-page"]["fold_steps"]  # the open block is fenced
    assert fold_step["name"] == "single-page" and fence["name"] == "fence-fault-around"
    assert fold_step["environment_moved"] and fold_step["moved_bytes"] > 4096
    assert steps["fold-single-page"]["rss_kb"] <= 40 < rec["steps"][0]["rss_kb"]
    assert rec["final_rss_kb"] <= 40


def test_init_layout_experiment_folds_init_into_its_block_and_it_still_respawns(tmp_path):
    """Issue 18: busybox init profiled idle and across a respawn (its vforked child stepped to
    its exec), relinked from busybox's own link inputs (its Kbuild archives, grouped) into an
    open hot block, folded (caught in musl's sigtimedwait, which the stop ends with EINTR),
    idle, then a killed child is still respawned, twice.  Recorded here: 36 kB after the fold,
    the idle and a respawn, in an 8-page block (goal 12 kB)."""
    _built_variant("busybox", "layout")
    rec = _layout_run(tmp_path, "init-layout")
    lay = rec["init_layout"]
    profiled = lay["results"]  # the child killed while init was single-stepped
    assert profiled["new"] != profiled["old"]
    assert lay["profiled_stop"]["respawn"]["new"] != lay["profiled_stop"]["respawn"]["old"]
    b = lay["budget"]  # the record names the budget, by class, and what lands in each page
    assert all(b[k] > 0 for k in ("code", "rodata", "data", "stack_min", "pages", "block"))
    assert b["pages"] == len(lay["pages"]) and b["block"] == 4096 * b["pages"] >= b["total"]
    assert b["stack_min"] > lay["stack_depth_from_start"] >= lay["peak_stack_depth"]
    steps = {s["name"]: s for s in rec["steps"]}
    fold_step, fence = steps["fold-single-page"]["fold_steps"]
    assert fold_step["name"] == "single-page" and fence["name"] == "fence-fault-around"
    assert fold_step["hot_pages"] == b["pages"]
    lo = fold_step["hot_page"]
    hi = lo + b["block"]
    kept = [(a, z) for a, z in fold_step["kept"] if not lo <= a < hi]  # what the fold kept

    def outside(step: dict) -> list[dict]:
        return [p for p in step["pages"] if not lo <= int(p["addr"], 16) < hi]

    for name in ("fold-single-page", "idle"):  # the steady state: the block + kept anon
        out = outside(steps[name])
        assert all(p["backing"] == "anon" and p["label"] in ("heap", "anon") for p in out), out
        assert all(any(a <= int(p["addr"], 16) < z for a, z in kept) for p in out), out
        assert steps[name]["rss_kb"] * 1024 <= b["block"] + len(out) * 4096
    assert steps["idle"]["rss_kb"] < rec["steps"][0]["rss_kb"]
    # the profile stepped the vforked child too, up to its exec (it runs in init's memory):
    # its code is in the block, so after the fold a respawn maps nothing back
    script = Path(lay["script"]).read_text()
    assert "init_exec: executed" in script and "execve: executed" in script
    resp = steps["respawn"]
    assert resp["respawn"]["new"] != resp["respawn"]["old"]
    assert not [p for p in outside(resp) if p["backing"] == "file"], outside(resp)
    assert resp["present_pages"] == steps["idle"]["present_pages"]
    assert rec["health"]["respawn"]["new"] != resp["respawn"]["new"]


def test_the_view_after_agettys_stack_move_is_the_process_as_it_is(agetty):
    """The squeeze's stack move re-walks only the stack (FoldContext.rewalked) when every page
    it rewrote a pointer in was anonymous already -- not when every page it *scanned* was:
    agetty's clean .data pages hold no such pointer.  A planner run right after the move
    compares the context's view with a fresh page walk inside the same stop."""
    from remap.fold import plan, stackmove, steps

    seen: list[tuple] = []

    def view(vmas, session) -> list[tuple]:
        return [(v.start, v.end, [(p.addr, p.backing) for p in v.pages]) for v in vmas
                if not plan.in_scratch(session, v.start, v.end)]  # fmt: skip

    def compare(ctx):
        seen.append((view(ctx.snap.vmas, ctx.session),
                     view(plan.stopped_snapshot(ctx.pid).vmas, ctx.session)))  # fmt: skip

    for _ in range(12):  # exec's random gap frees a stack page in most launches, not all
        run = getty.start(agetty)
        try:
            planners = [steps.use_own_syscall, stackmove.squeeze_stack_gap, compare]
            r = plan.run_plan(run.launched.pid, "squeeze", planners)
            if any(s.name == "relocate-stack" and s.applied for s in r.steps):
                assert getty.login(run, "remap").startswith(getty.LOGIN_MARKER)
                break
        finally:
            getty.stop(run)
    else:
        pytest.skip("no launch of 12 left a stack gap worth closing")
    ((ours, fresh),) = seen[-1:]
    assert ours == fresh
