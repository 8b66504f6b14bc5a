"""Experiment steps for the fold: ``squeeze``, ``fold-stack`` and ``fold-single-page``.

Each runs the plan on the experiment's target and records the idle residency afterwards, with
how long the target was stopped and what each step did, so a JSONL record shows the whole fold.
"""

from __future__ import annotations

from typing import Any

from ..errors import UnsafeStep
from ..experiment.steps import RunContext, StepResult, step
from . import fold, squeeze
from .plan import FoldReport


def _record(ctx: RunContext, name: str, report: FoldReport, params: dict) -> StepResult:
    limit = params.get("max_stopped_us")
    if limit is not None and report.stopped_us > float(limit):
        ctx.fields.setdefault("over_budget", []).append(name)
    extra: dict[str, Any] = {
        "stopped_us": round(report.stopped_us, 1),
        "stop_breakdown_us": report.stop_breakdown_us,
        "fold_steps": [s.to_json() for s in report.steps],
        "verified_bytes": report.verified_bytes,
        "rss_kb_before": report.before["rss_kb"],
    }
    if report.notes:
        extra["notes"] = report.notes
    return ctx.measure(name, **extra)


@step("squeeze")
def _squeeze(ctx: RunContext, params: dict) -> StepResult:
    """Drop clean file pages and dead stack, closing the stack gap first where safe (remap
    squeeze); ``move = false`` drops only (remap squeeze --no-move)."""
    ctx.wait_idle()
    return _record(ctx, "squeeze", squeeze(ctx.pid, move=bool(params.get("move", True))), params)


@step("fold-stack")
def _fold_stack(ctx: RunContext, params: dict) -> StepResult:
    """Relocate the live stack against the argument strings, then squeeze (remap fold
    --stack-only)."""
    ctx.wait_idle()
    return _record(ctx, "fold-stack", fold(ctx.pid, single_page=False), params)


@step("fold-single-page")
def _fold_single(ctx: RunContext, params: dict) -> StepResult:
    """Fold a hot-page target into its one page (remap fold --single-page)."""
    ctx.wait_idle()
    report = fold(ctx.pid, single_page=True)
    if not report.steps:
        raise UnsafeStep("single-page fold did nothing")
    return _record(ctx, "fold-single-page", report, params)


@step("check-mem")
def _check_mem(ctx: RunContext, params: dict) -> StepResult:
    """Ask the bot for ``!mem`` and check its own VmRSS (and VmSize) against ``rss_kb``
    (``vm_kb``): the seed's line, printed by the folded process about itself."""
    if ctx.irc is None:
        raise UnsafeStep("check-mem needs an IRC bot target")
    mem = ctx.irc.command("!mem")
    for key, field in (("rss_kb", "VmRSS"), ("vm_kb", "VmSize")):
        if key in params and mem.get(field) != params[key]:
            raise UnsafeStep(f"!mem: {field} {mem.get(field)} kB, expected {params[key]} kB")
    return ctx.measure("check-mem", mem=mem)


@step("ping-watch")
def _ping_watch(ctx: RunContext, params: dict) -> StepResult:
    """Send ``n`` PINGs in windows of ``window`` and walk the page tables between windows:
    records the largest RSS seen while serving (``max_rss_kb``), not only the idle figure."""
    from .. import residency

    if ctx.irc is None:
        raise UnsafeStep("ping-watch needs an IRC bot target")
    n, window = int(params.get("n", 1000)), int(params.get("window", 100))
    seen = []
    for i in range(0, n, window):
        ctx.irc.ping(min(window, n - i), prefix=f"w{i}-")
        seen.append(residency.snapshot(ctx.pid, smaps=False).rss_kb)
    return ctx.measure("ping-watch", pings=n, max_rss_kb=max(seen), samples=len(seen))
