"""The ``launch`` of an experiment whose target is EnergyMech (``target.irc = "energymech"``),
and the check that ends its run.

Why apart from remap.energymech: that module starts and stops the real bot for anyone (tests,
the CLI); this one ties it to a run -- the case's [launch] table in, the run's record fields
and its finisher out.  Used by the built-in ``launch`` step (remap.experiment.steps).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..energymech import MechRun, start, stop
from ..errors import RemapError

if TYPE_CHECKING:  # the registry imports this module: only the type is needed here
    from .steps import RunContext


def launch_energymech(ctx: RunContext, params: dict) -> None:
    """The experiment ``launch`` step for ``irc = "energymech"``: start the bot as the case's
    [launch] table says (user, netns, ASLR, environment size) and install :func:`finish_run`
    as the run's finisher."""
    lc = ctx.case.launch
    run = start(
        ctx.target_path,
        timeout=float(params.get("timeout", 10.0)),  # per wait; its send queue adds to replies'
        aslr=lc.aslr,
        env_size=lc.env_size,
        env=dict(lc.env),
        vdso=lc.vdso,
        user=lc.user,
        isolate=lc.netns,
        daemon=lc.daemon,
    )
    ctx.irc, ctx.launched = run.server, run.launched
    ctx.fields["env_size"] = run.launched.env_size
    ctx.fields["isolation"] = {"user": lc.user, "netns": lc.netns}
    ctx.fields["daemon"] = lc.daemon
    ctx.finisher = lambda c: finish_run(c, run)


def finish_run(ctx: RunContext, run: MechRun) -> tuple[bool, str | None]:
    """Still working (one more PING answered), then stopped cleanly: exit status as the
    experiment says, nothing left behind.  Records the stop, every reply and its latency."""
    why = None
    lt, srv = run.launched, run.server
    try:
        if lt.proc.poll() is not None:
            why = f"target exited early with status {lt.proc.returncode}"
        elif srv.registration is not None:
            srv.ping(1, prefix="final")
    except RemapError as e:
        why = str(e)
    result = stop(run)
    ctx.fields.update(stop=result, irc_answered=srv.answered, pings_answered=srv.pings)
    ctx.fields.setdefault("timing", {})["replies"] = srv.replies  # latencies vary run to run
    want = ctx.case.target.exit_status
    if why is None and result["exit_status"] != want:
        why = f"target exited with status {result['exit_status']} (a working one exits {want})"
    if why is None and result["left_behind"]:
        why = f"files left behind: {result['left_behind']}"
    return why is None, why
