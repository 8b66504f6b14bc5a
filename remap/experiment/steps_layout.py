"""Experiment steps of the profile -> linker script -> relink round trip (remap.profile,
remap.layout): ``auto-layout`` (experiments/auto-single-page-minibot.toml),
``profile-layout`` (experiments/second-program-sic.toml), ``mech-layout``
(experiments/energymech-layout.toml), ``idle-layout`` (experiments/agetty-layout.toml) and
``init-layout`` (experiments/init-layout.toml).

Why here and not in remap.layout: the layout is a library (a profile and link inputs in, a
script out) that must load without ptrace, IRC or the runner; these steps glue it to a running
experiment.  Loaded by the runner only when an experiment names one of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from itertools import count
from pathlib import Path

from .. import initns
from ..errors import ExperimentError, UnsafeStep, UsageError
from ..kconst import SHF_WRITE
from ..layout import (
    DEFAULT_MARGIN,
    compile_target,
    link,
    musl_libc,
    plan_layout,
    writable_objects,
)
from ..procfs import read_exe
from ..profile import irc_workload, profile
from ..sources import KEPT_DIR, kept_files
from ..targets import build_dir, sha256_file
from .steps import RunContext, StepResult, step
from .steps_getty import init_run

PROFILE_CAP_S = 300.0  # a profile that runs longer than this is cut there


@step("auto-layout")
def _auto_layout(ctx: RunContext, params: dict) -> StepResult:
    """Profile the running bot over a workload (PINGs, !ping, !mem; checked against an
    unprofiled run), write its one-page linker script from the link inputs, relink, and make
    the relinked binary the target of the next ``launch`` step."""
    srv = ctx.need_irc("auto-layout")
    pings = int(params.get("pings", 100))
    name = ctx.case.target.name
    ctx.wait_idle()
    wl = irc_workload(srv, pings)
    prof = profile(ctx.pid, seconds=PROFILE_CAP_S, workload=wl, baseline=wl)
    res = ctx.measure("auto-layout")  # the profiled bot, idle again: must still be alive
    out = build_dir() / "auto"
    obj = compile_target(name, out)
    t0 = time.monotonic()
    margin = int(params.get("margin", DEFAULT_MARGIN))
    lay = plan_layout(prof, [obj, musl_libc()], margin=margin)
    digest = hashlib.sha256(lay.script.encode()).hexdigest()
    script = out / f"{name}-{digest[:12]}.ld"
    script.write_text(lay.script)
    binary = link([obj], out / f"{name}-1page-{digest[:12]}", script)
    layout_s = time.monotonic() - t0
    srv.close()
    ctx.launched.stop()
    ctx.irc = None
    ctx.target_path = binary
    ctx.fields["auto_layout"] = {
        "functions": prof.function_names(),
        "peak_stack_depth": prof.stack.peak_depth,
        "budget": lay.budget,
        "script": str(script),
        "script_sha256": digest,
        "binary": str(binary),
        "binary_sha256": sha256_file(binary),
        "results_unchanged": prof.results.get("unchanged", False),
        "profile_steps": prof.overhead.steps,
        "wall_s": prof.overhead.wall_s,
        "us_per_step": prof.overhead.us_per_step,
        "slowdown": prof.overhead.slowdown,
        "layout_and_link_s": round(layout_s, 3),
    }
    res.extra.update({"profile_steps": prof.overhead.steps, "budget": lay.budget})
    return res


@step("profile-layout")
def _profile_layout(ctx: RunContext, params: dict) -> StepResult:
    """Profile the client over ``pings`` PINGs (checked against an unprofiled run), then try
    the one-page layout with its link inputs (TARGET.o + musl's libc.a): record the budget, or
    the refusal and what stands in the way (largest writable objects, heap)."""
    srv = ctx.need_irc("profile-layout")
    pings = int(params.get("pings", 100))
    ctx.wait_idle()
    rounds = count()

    def wl() -> int:
        return srv.pong_check(pings, prefix=f"p{next(rounds)}-")

    prof = profile(ctx.pid, seconds=PROFILE_CAP_S, workload=wl, baseline=wl)
    ctx.wait_idle()
    exe = Path(read_exe(ctx.pid))  # behind a wrapper: the real program
    obj = exe.with_name(exe.name + ".o")
    try:
        lay = plan_layout(prof, [obj, musl_libc()])
        verdict: dict = {"fits": True, "budget": lay.budget}
    except (UnsafeStep, UsageError) as e:
        verdict = {"fits": False, "refusal": str(e)}
    try:  # the floor: only what ran (no calls the profile did not see)
        plan_layout(prof, [obj, musl_libc()], closure=False)
        verdict["executed_only"] = "fits"
    except (UnsafeStep, UsageError) as e:
        verdict["executed_only"] = str(e)
    ctx.fields["profile"] = {
        "functions": len(prof.functions),
        "function_names": prof.function_names(),
        "data_touched": [[d.name, d.size, d.section] for d in prof.data],
        "peak_stack_depth": prof.stack.peak_depth,
        "root": prof.stack.root,
        "outside_exe_steps": prof.outside,
        "signals_caught": prof.signals.caught,
        "results_unchanged": prof.results.get("unchanged", False),
        "steps": prof.overhead.steps,
        "us_per_step": prof.overhead.us_per_step,
        "slowdown": prof.overhead.slowdown,
        "writable_bytes": sum(v[1] for v in prof.sections.values() if v[2] & SHF_WRITE),
        "largest_writable_objects": writable_objects(exe),
        "layout": verdict,
    }
    return ctx.measure("profile-layout")


MECH_IDLE_S = 7.0  # after the workload: EnergyMech's 5 s select timeout, and a tick after it
SIGNAL_ROOM = 4096 + 2048  # reserve for a signal frame (AT_MINSIGSTKSZ) + its handler
PROFILED_MECH_REPLY_S = 120.0  # a single-stepped EnergyMech answers !meminfo slowly


@step("mech-layout")
def _mech_layout(ctx: RunContext, params: dict) -> StepResult:
    """Profile the running EnergyMech (its layout build: objects kept) over ``!meminfo``,
    ``pings`` PINGs and an idle window covering its timers; write the hot block's linker
    script from its objects + musl's libc.a (``max_pages`` K at most; open: without the call
    closure, the cold code stays mapped), relink, stop the profiled bot and make the relinked
    binary the target of the next ``launch`` step.  A block over ``max_pages`` is recorded
    with its refusal (bytes over, largest items) and the run goes on with the profiled build.
    """
    srv = ctx.need_irc("mech-layout")
    pings = int(params.get("pings", 100))
    exe = ctx.target_path
    objs = kept_files(exe)
    if not objs:
        raise ExperimentError(f"{exe}: no kept link inputs (its recipe variant needs 'keep')")
    ctx.wait_idle()
    was, srv.timeout = srv.timeout, max(srv.timeout, PROFILED_MECH_REPLY_S)

    def wl() -> dict:
        mem = srv.command("!meminfo")  # first: its send queue delays what follows PONGs
        return {"pings": srv.ping(pings), "!meminfo": sorted(mem)}

    try:
        prof = profile(ctx.pid, seconds=PROFILE_CAP_S, workload=wl, idle=MECH_IDLE_S)
    finally:
        srv.timeout = was
    res = ctx.measure("mech-layout")  # the profiled bot, idle again: must still be alive
    margin = int(params.get("margin", DEFAULT_MARGIN + SIGNAL_ROOM))
    return _relink_open(ctx, params, res, prof, objs, "mech_layout", margin)


@step("idle-layout")
def _idle_layout(ctx: RunContext, params: dict) -> StepResult:
    """Profile a program that waits for its input (agetty at its login prompt) for
    ``seconds``, then write its open hot block from the kept link inputs ``inputs`` (paths
    under the build's kept/ folder, link order) + musl's libc.a, relink, stop it (its
    finisher checks it first: agetty accepts a login name) and make the relinked binary the
    target of the next launch step."""
    objs = _kept_inputs(ctx, params, "idle-layout")
    ctx.wait_idle()
    prof = profile(ctx.pid, seconds=float(params.get("seconds", 6.0)))
    res = ctx.measure("idle-layout")
    margin = int(params.get("margin", DEFAULT_MARGIN + SIGNAL_ROOM))
    return _relink_open(ctx, params, res, prof, objs, "idle_layout", margin)


INIT_RESPAWN_TIMEOUT_S = 60.0  # a single-stepped init reaps and vforks slowly


@step("init-layout")
def _init_layout(ctx: RunContext, params: dict) -> StepResult:
    """Profile busybox init (started by launch-init) idle for ``seconds``, across a respawn
    (its child killed: the SIGCHLD, the reap, the vfork of a new child) and ``after`` seconds
    more (init's sleep(1) and its next wait), so that the steady state between respawns and
    the respawn itself are in the profile (issue 18, part 4); then write its open hot block
    from the kept link inputs ``inputs`` (as in idle-layout), relink, check and stop init, and
    make the relinked busybox the target of the next launch-init.  The child init vforks is
    profiled too, up to its exec (remap.profile: it runs in init's memory)."""
    run = init_run(ctx, "init-layout")
    objs = _kept_inputs(ctx, params, "init-layout")
    before, after = float(params.get("seconds", 3.0)), float(params.get("after", 3.0))
    ctx.wait_idle()

    def wl() -> dict:
        time.sleep(before)
        old, new = initns.respawn(run, timeout=INIT_RESPAWN_TIMEOUT_S)
        return {"old": old, "new": new}

    prof = profile(ctx.pid, seconds=PROFILE_CAP_S, workload=wl, idle=after)
    res = ctx.measure("init-layout", respawn=prof.results.get("profiled"))
    margin = int(params.get("margin", DEFAULT_MARGIN + SIGNAL_ROOM))
    return _relink_open(ctx, params, res, prof, objs, "init_layout", margin)


def _link_once(objs: list[Path], binary: Path, script: Path) -> Path:
    """BINARY linked from OBJS with SCRIPT, unless it is there already (ExperimentError when
    the link fails).  Why once: its name is the script's digest (the script names the
    profiled executable's sha256: the same name, the same bytes), and the binary of a run in
    progress -- busybox init execs it again for every child it respawns -- must not be
    replaced under it: a new file at its path makes /proc/PID/exe of what runs it read
    "(deleted)".  Linked beside it and hard-linked into place, so that of two runs linking
    it at once the first one's file stays."""
    if binary.is_file():
        return binary
    tmp = binary.with_name(f".{binary.name}.{os.getpid()}")
    try:
        link(objs, tmp, script)
        tmp.chmod(0o755)  # an unprivileged user may run it
        with contextlib.suppress(FileExistsError):
            os.link(tmp, binary)
    finally:
        tmp.unlink(missing_ok=True)
    return binary


def _kept_inputs(ctx: RunContext, params: dict, name: str) -> list[Path]:
    """The kept link inputs named by the step's ``inputs`` (paths under the build's kept/
    folder, in link order); ExperimentError naming what is malformed or missing."""
    names = params.get("inputs")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ExperimentError(f"step {name!r}: inputs must be a list of kept/ paths")
    kept = {str(p.relative_to(ctx.target_path.parent / KEPT_DIR)): p
            for p in kept_files(ctx.target_path)}  # fmt: skip
    missing = [n for n in names if n not in kept]
    if missing:
        raise ExperimentError(f"{ctx.target_path}: kept link inputs missing: {missing}")
    return [kept[n] for n in names]


def _relink_open(
    ctx: RunContext, params: dict, res: StepResult, prof, objs: list[Path], field: str,
    margin: int,
) -> StepResult:  # fmt: skip
    """The open hot block of PROF from OBJS + libc.a (``max_pages`` K at most), relinked
    beside the build; the profiled target stopped by its finisher (which checks it first);
    the binary the next launch's target.  The record's FIELD says what was done, or the
    refusal (bytes over, largest items), in which case the run goes on with the old build."""
    limit = params.get("max_pages")
    name = ctx.target_path.name
    out = build_dir() / field.replace("_", "-")
    out.mkdir(parents=True, exist_ok=True)
    info: dict = {
        "functions": len(prof.functions),
        "peak_stack_depth": prof.stack.peak_depth,
        "stack_depth_from_start": prof.stack.depth_from_start,
        "profile_steps": prof.overhead.steps,
        "wall_s": prof.overhead.wall_s,
        "results": prof.results.get("profiled"),
        "data_outside_exe": [[d.name, d.size] for d in prof.data if d.section not in prof.sections],
    }
    ctx.fields[field] = info
    try:
        lay = plan_layout(prof, [*objs, musl_libc()], margin=margin, closure=False,
                          max_pages=None if limit is None else int(limit))  # fmt: skip
    except UnsafeStep as e:
        info["refusal"] = str(e)
        res.extra["refusal"] = str(e)
        return res
    digest = hashlib.sha256(lay.script.encode()).hexdigest()
    script = out / f"{name}-{digest[:12]}.ld"
    script.write_text(lay.script)
    binary = _link_once(objs, out / f"{name}-hot-{digest[:12]}", script)
    info.update(budget=lay.budget, pages=lay.pages, script=str(script), script_sha256=digest,
                binary=str(binary), binary_sha256=sha256_file(binary))  # fmt: skip
    ok, why = ctx.finisher(ctx) if ctx.finisher else (True, None)  # checked, then stopped
    if not ok:
        raise ExperimentError(f"the profiled {name} did not stop cleanly: {why}")
    info["profiled_stop"] = ctx.fields.pop("stop", None) or ctx.fields.pop("health", None)
    ctx.irc, ctx.finisher = None, None
    ctx.target_path = binary
    res.extra.update({"budget": lay.budget})
    return res
