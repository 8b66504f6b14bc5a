"""Experiment steps for agetty and busybox init (issue 17): ``launch-agetty``, ``launch-init``,
``respawn``.

Each starts its target the way remap.getty / remap.initns do and measures it there (agetty at
its login prompt, init with its child running).  The run's end is the target's health check,
done with its own behaviour, in the finisher the runner calls instead of the default one:

- agetty: a login name typed on the pty master is accepted: the login program's marker line
  appears (``health.login``), and it exits 0;
- init: its child, killed, is respawned with a new PID (``health.respawn``: old and new).

``respawn`` does init's health check in the middle of a run and measures init right after it
(what a respawn brings back into a folded init).  The other steps (squeeze, idle, measure) are
the ordinary ones, so an experiment reads::

    [target]  source = "agetty"
    [[steps]] step = "launch-agetty"
    [[steps]] step = "squeeze"
    [[steps]] step = "idle"  seconds = 60
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .. import getty, initns
from ..errors import ExperimentError, RemapError
from .steps import MAX_IDLE_S, RunContext, StepResult, step

LOGIN_NAME = "remap"


@step("launch-agetty")
def _launch_agetty(ctx: RunContext, params: dict) -> StepResult:
    """agetty on a new pty, measured at its login prompt (the prompt text goes in the record)."""
    lc = ctx.case.launch
    run = getty.start(ctx.target_path, aslr=lc.aslr, vdso=lc.vdso)
    ctx.launched = run.launched
    ctx.finisher = _finisher(
        lambda: {"login": getty.login(run, LOGIN_NAME)}, lambda: getty.stop(run)
    )
    return ctx.measure("launch", prompt=run.prompt)


@step("launch-init")
def _launch_init(ctx: RunContext, params: dict) -> StepResult:
    """busybox init as PID 1 of a new PID namespace, measured with its child running."""
    run = initns.start(ctx.target_path, aslr=ctx.case.launch.aslr)
    ctx.launched, ctx.handle = run.launched, run
    ctx.finisher = _finisher(
        lambda: {"respawn": dict(zip(("old", "new"), initns.respawn(run), strict=True))},
        lambda: initns.stop(run),
    )
    return ctx.measure("launch", child=initns.child(run))


RESPAWN_SETTLE_S = 2.0  # after the new child runs: init's sleep(1), then its next wait


@step("respawn")
def _respawn(ctx: RunContext, params: dict) -> StepResult:
    """Kill init's child, wait for init to start a new one, let init settle for ``seconds``
    (default RESPAWN_SETTLE_S) and measure it: init's pages right after a respawn.  The
    record's ``respawn`` holds the old and new PID; ExperimentError when none came."""
    run = init_run(ctx, "respawn")
    s = params.get("seconds", RESPAWN_SETTLE_S)
    if not isinstance(s, int | float) or isinstance(s, bool) or not 0 <= s <= MAX_IDLE_S:
        raise ExperimentError(f"step 'respawn': seconds must be 0..{MAX_IDLE_S:g} (got {s!r})")
    old, new = initns.respawn(run)
    time.sleep(s)
    return ctx.measure("respawn", seconds=s, respawn={"old": old, "new": new})


def init_run(ctx: RunContext, step: str) -> initns.InitRun:
    """The InitRun of this run's launch-init (ExperimentError naming STEP when there is none)."""
    if not isinstance(ctx.handle, initns.InitRun) or ctx.launched is not ctx.handle.launched:
        raise ExperimentError(f"step {step!r} needs busybox init started by 'launch-init'")
    return ctx.handle


def _finisher(
    check: Callable[[], dict[str, Any]], stop: Callable[[], None]
) -> Callable[[RunContext], tuple[bool, str | None]]:
    """A finisher: run CHECK (its result is the record's ``health``), then STOP, always."""

    def finish(ctx: RunContext) -> tuple[bool, str | None]:
        try:
            ctx.fields["health"] = check()
            return True, None
        except (RemapError, OSError) as e:
            return False, f"health check: {e}"
        finally:
            stop()

    return finish
