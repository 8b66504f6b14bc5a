"""Run an experiment: every case, ``repeat`` times, one JSON record per run, then a summary.

Why records look the way they do: anyone must be able to re-run an experiment and compare.  A
record holds the settings (kernel, toolkit version, command line, ASLR, environment size, the
target's path and sha256), what each step measured, and whether the target still worked at the
end.  Everything that legitimately changes between identical runs (wall-clock times) lives under
``timing`` so that two records compare equal without it (see :func:`comparable`).
"""

from __future__ import annotations

import importlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .. import __version__, sources, targets
from ..errors import ExperimentError, RemapError
from . import steps_irc  # noqa: F401  (registers the IRC steps)
from .spec import Case, Experiment, Target
from .steps import STEPS, RunContext, StepResult, finish

# Modules of this package that register the heavier steps on import (the fold, the layout round
# trip, the torture storm, agetty and init): imported only when an experiment names a step
# nobody has registered yet, so `import remap.experiment` and plain experiments load no ptrace.
STEP_PROVIDERS = (
    "remap.experiment.steps_fold",
    "remap.experiment.steps_layout",
    "remap.experiment.steps_torture",
    "remap.experiment.steps_getty",
    "remap.experiment.steps_floor",
)
SUMMARY_FIGURES = (
    "final_rss_kb",
    "final_vmrss_kb",
    "final_present_pages",
    "stack_gap",
    "stack_live_pages",
    "stack_present_pages",
)


def load_step_providers() -> None:
    """Import the modules that register the heavier steps (each registers once)."""
    for mod in STEP_PROVIDERS:
        importlib.import_module(mod)


def check_steps(exp: Experiment) -> None:
    """Every step named in EXP must be registered (ExperimentError naming the file otherwise)."""
    wanted = {s.name for c in exp.cases for s in c.steps}
    if wanted - set(STEPS):
        load_step_providers()
    for case in exp.cases:
        for s in case.steps:
            if s.name not in STEPS:
                raise ExperimentError(
                    f"{exp.path}: case {case.name!r}: unknown step {s.name!r} "
                    f"(known: {', '.join(sorted(STEPS))})"
                )


def plan(exp: Experiment, repeat: int | None = None) -> list[tuple[Case, int]]:
    """The runs, in order: each case ``repeat`` times (cases interleave run by run)."""
    n = exp.repeat if repeat is None else repeat
    return [(c, r) for r in range(n) for c in exp.cases]


def build_target(t: Target) -> Path:
    """The binary of T: a csrc/targets program, or a bring-your-own one (remap.sources) --
    SourceMissing when that one's source is not on this machine."""
    if t.source is not None:
        return sources.build(sources.recipe(t.source, t.variant, t.recipe))
    return targets.build(t.name, t.variant)


def _target_record(t: Target, path: Path) -> dict[str, Any]:
    rec = {
        "name": t.name,
        "variant": t.variant,
        "args": list(t.args),
        "path": str(path),
        "sha256": targets.sha256_file(path),
    }
    if t.source is not None:
        rec["source"] = sources.describe(sources.recipe(t.source, t.variant, t.recipe))
    return rec


def check_sources(exp: Experiment) -> None:
    """Build every case's target once, up front: SourceMissing (the experiment is skipped,
    with the path looked at) or ExperimentError before any run starts."""
    for case in exp.cases:
        try:
            build_target(case.target)
        except sources.SourceMissing:
            raise
        except ExperimentError as e:
            raise ExperimentError(f"{exp.path}: case {case.name!r}: {e}") from None


def run_one(exp: Experiment, case: Case, run: int, command: str) -> dict[str, Any]:
    """Run one case once and return its record (a failing step is recorded, not raised)."""
    try:
        path = build_target(case.target)
    except ExperimentError as e:
        raise ExperimentError(f"{exp.path}: case {case.name!r}: {e}") from None
    ctx = RunContext(exp, case, run, path)
    started = time.time()
    t0 = time.monotonic()
    error = None
    try:
        for s in case.steps:
            res = STEPS[s.name](ctx, dict(s.params))
            if res is None:
                res = ctx.measure(s.name)
            elif not isinstance(res, StepResult):
                raise ExperimentError(f"step {s.name!r} returned {type(res).__name__}")
            ctx.records.append(res)
    except RemapError as e:
        error = f"{type(e).__name__}: {e}"
    finally:
        ok, why = finish(ctx)
    steps = [r.to_json() for r in ctx.records]
    last = ctx.records[-1] if ctx.records else None
    stack = next((r.extra["stack"] for r in reversed(ctx.records) if "stack" in r.extra), None)
    rec: dict[str, Any] = {
        "experiment": exp.name,
        "case": case.name,
        "run": run,
        "kernel": _kernel(),
        **guest_fields(),
        "toolkit": f"remap {__version__}",
        "command": command,
        "aslr": case.launch.aslr,
        "vdso": case.launch.vdso,
        "env_size": ctx.fields.get("env_size"),
        "target": _target_record(case.target, path),
        "steps": steps,
        "final_rss_kb": last.rss_kb if last else None,
        "final_vmrss_kb": last.vmrss_kb if last else None,
        "final_present_pages": last.present_pages if last else None,
        "stack_gap": stack["gap"] if stack else None,
        "stack_live_pages": stack["live_pages"] if stack else None,
        "stack_present_pages": stack["present_pages"] if stack else None,
        "target_ok": ok and error is None,
        "error": error or (None if ok else why),
        **{k: v for k, v in ctx.fields.items() if k not in ("env_size", "timing")},
        "timing": {
            "started": started,
            "duration_s": round(time.monotonic() - t0, 4),
            **ctx.fields.get("timing", {}),  # what steps measured in seconds (reply latency...)
        },
    }
    return rec


def run(
    exp: Experiment,
    *,
    repeat: int | None = None,
    out: Path | None = None,
    progress: Callable[[int, int, dict], None] | None = None,
    command: str | None = None,
) -> list[dict[str, Any]]:
    """Run every case of EXP; append each record to OUT/NAME.jsonl as it completes.

    Raises SourceMissing before anything runs when a bring-your-own target's source is absent
    (then OUT/NAME.jsonl is removed, so no old record passes for this one, and
    OUT/NAME.skipped.json says why).
    """
    check_steps(exp)
    try:
        check_sources(exp)
    except sources.SourceMissing as e:
        if out is not None:
            write_skipped(out, exp, e)
        raise
    cmd = command if command is not None else " ".join(sys.argv)
    runs = plan(exp, repeat)
    records = []
    fh = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{exp.name}.skipped.json").unlink(missing_ok=True)
        fh = open(out / f"{exp.name}.jsonl", "w")
    try:
        for i, (case, r) in enumerate(runs):
            rec = run_one(exp, case, r, cmd)
            records.append(rec)
            if fh:
                fh.write(json.dumps(rec, sort_keys=True) + "\n")
                fh.flush()
            if progress:
                progress(i + 1, len(runs), rec)
    finally:
        if fh:
            fh.close()
    return records


def write_skipped(out: Path, exp: Experiment, e: sources.SourceMissing) -> None:
    """OUT/NAME.skipped.json: the experiment did not run, and the path it looked for."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{exp.name}.jsonl").unlink(missing_ok=True)
    note = {"experiment": exp.name, "skipped": str(e), "looked_for": str(e.path)}
    (out / f"{exp.name}.skipped.json").write_text(json.dumps(note, sort_keys=True) + "\n")


def comparable(rec: dict[str, Any]) -> dict[str, Any]:
    """REC without what may differ between identical runs (timing)."""
    return {k: v for k, v in rec.items() if k != "timing"}


def figures(rec: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(figure name, value) pairs a summary is made of: top-level figures, then per step."""
    for f in SUMMARY_FIGURES:
        if rec.get(f) is not None:
            yield f, rec[f]
    for i, s in enumerate(rec.get("steps", [])):
        for k in ("rss_kb", "vmrss_kb"):
            yield f"step{i}:{s['name']}:{k}", s[k]


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per case: runs, runs ok, and min/median/max/distribution of each figure; agreement."""
    by_case: dict[str, list[dict]] = {}
    for r in records:
        by_case.setdefault(r["case"], []).append(r)
    out: dict[str, Any] = {}
    for case, recs in by_case.items():
        figs: dict[str, list] = {}
        for r in recs:
            for k, v in figures(r):
                figs.setdefault(k, []).append(v)
        base = [json.dumps(_deterministic(comparable(r)), sort_keys=True) for r in recs]
        out[case] = {
            "runs": len(recs),
            "ok": sum(1 for r in recs if r["target_ok"]),
            "aslr": recs[0]["aslr"],
            "all_agree": len(set(base)) == 1,
            "figures": {k: _stats(v) for k, v in figs.items()},
            "errors": sorted({r["error"] for r in recs if r.get("error")}),
        }
    return out


def _deterministic(rec: dict[str, Any]) -> dict[str, Any]:
    """The part of a record that must repeat exactly: everything but timing and the run index."""
    return {k: v for k, v in rec.items() if k != "run"}


def _stats(vals: list) -> dict[str, Any]:
    nums = [v for v in vals if isinstance(v, int | float) and not isinstance(v, bool)]
    if not nums:
        return {"n": len(vals)}
    dist: dict[str, int] = {}
    for v in nums:
        dist[str(v)] = dist.get(str(v), 0) + 1
    return {
        "n": len(nums),
        "min": min(nums),
        "median": statistics.median(nums),
        "max": max(nums),
        "agree": len(set(nums)) == 1,
        "distribution": dict(sorted(dist.items(), key=lambda kv: float(kv[0]))),
    }


# Set by remap.kernels for a run inside a qemu guest: which catalog kernel and accelerator.
ENV_KERNEL_NAME = "REMAP_GUEST_KERNEL"
ENV_ACCEL = "REMAP_GUEST_ACCEL"


def guest_fields() -> dict[str, str | None]:
    """``kernel_name`` (host, debian-6.1, ...) and ``accel`` (None on the host, tcg/kvm)."""
    import os

    return {
        "kernel_name": os.environ.get(ENV_KERNEL_NAME, "host"),
        "accel": os.environ.get(ENV_ACCEL),
    }


def _kernel() -> str:
    import os

    return os.uname().release
