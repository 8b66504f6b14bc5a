"""The experiment step ``torture`` (`remap run torture`, experiments/torture.toml): a storm of
killed, interrupted or disturbed drivers against a real worker (remap.torture), its figures
recorded and any failure failing the run.  Loaded by the runner only when an experiment names
it."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time

from ..errors import ExperimentError
from ..launch import Launched
from ..torture import start_worker, storm
from .steps import RunContext, StepResult, step


@step("torture")
def torture_step(ctx: RunContext, params: dict) -> StepResult:
    """Start the case's worker (target args = its modes), run a storm, record the figures.

    Parameters: signal ("KILL", "INT", "TERM"), kills, max_delay_ms, stop_target, fold,
    blocking (sessions end in a blocking injected call).
    The figures go into the step and into the run's top-level "torture" field; any failure
    fails the run (target_ok false) with the first failure as its error."""
    name = str(params.get("signal", "KILL")).upper().removeprefix("SIG")
    if name not in ("KILL", "INT", "TERM"):
        raise ExperimentError(f"torture: signal must be KILL, INT or TERM, not {name!r}")
    try:
        kills = int(params.get("kills", 100))
        delay = float(params.get("max_delay_ms", 30)) / 1000
    except (TypeError, ValueError) as e:
        raise ExperimentError(f"torture: bad kills/max_delay_ms: {e}") from None
    if not 1 <= kills <= 100_000 or not 0 < delay <= 10:
        raise ExperimentError("torture: kills must be 1..100000, max_delay_ms 0..10000")
    modes = list(ctx.case.target.args)
    if ctx.launched is not None:  # the runner's own launch (stdin /dev/null): done with it
        with contextlib.suppress(subprocess.TimeoutExpired):
            ctx.launched.proc.wait(timeout=5)
    w = start_worker(ctx.target_path, modes)
    ctx.launched = Launched(w.proc, w.pid, [str(ctx.target_path), *modes], True, True, {}, 0)
    t0 = time.monotonic()
    fig = storm(
        w,
        kills,
        getattr(signal, f"SIG{name}"),
        max_delay_s=delay,
        seed=ctx.run,
        stop_target=bool(params.get("stop_target", False)),
        fold=bool(params.get("fold", False)),
        blocking=bool(params.get("blocking", False)),
    )
    fig["duration_s"] = round(time.monotonic() - t0, 2)
    fig["modes"] = modes
    ctx.fields["torture"] = fig
    if not fig["sessions"]:  # every kill landed before a session ended: nothing was proven
        fig["failures"].append(f"no session completed in {kills} rounds: raise max_delay_ms")
    if fig["failures"]:
        ctx.records.append(ctx.measure("torture", **fig))
        raise ExperimentError(f"{len(fig['failures'])} failures, first: {fig['failures'][0]}")
    return ctx.measure("torture", **fig)
