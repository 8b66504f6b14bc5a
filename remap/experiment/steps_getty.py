"""Experiment steps for agetty and busybox init (issue 17): ``launch-agetty``, ``launch-init``.

Each starts its target the way remap.getty / remap.initns do and measures it there (agetty at
its login prompt, init with its child running).  The run's end is the target's health check,
done with its own behaviour, in the finisher the runner calls instead of the default one:

- agetty: a login name typed on the pty master is accepted: the login program's marker line
  appears (``health.login``), and it exits 0;
- init: its child, killed, is respawned with a new PID (``health.respawn``: old and new).

The other steps (squeeze, idle, measure) are the ordinary ones, so an experiment reads::

    [target]  source = "agetty"
    [[steps]] step = "launch-agetty"
    [[steps]] step = "squeeze"
    [[steps]] step = "idle"  seconds = 60
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import getty, initns
from ..errors import RemapError
from .steps import RunContext, StepResult, step

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
    ctx.launched = run.launched
    ctx.finisher = _finisher(
        lambda: {"respawn": dict(zip(("old", "new"), initns.respawn(run), strict=True))},
        lambda: initns.stop(run),
    )
    return ctx.measure("launch", child=initns.child(run))


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
