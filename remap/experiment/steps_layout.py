"""Experiment steps of the profile -> linker script -> relink round trip (remap.profile,
remap.layout): ``auto-layout`` (experiments/auto-single-page-minibot.toml) and
``profile-layout`` (experiments/second-program-sic.toml).

Why here and not in remap.layout: the layout is a library (a profile and link inputs in, a
script out) that must load without ptrace, IRC or the runner; these steps glue it to a running
experiment.  Loaded by the runner only when an experiment names one of them.
"""

from __future__ import annotations

import hashlib
import time
from itertools import count
from pathlib import Path

from ..errors import UnsafeStep, UsageError
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
from ..targets import build_dir, sha256_file
from .steps import RunContext, StepResult, step

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
