"""Experiment steps for the fold: ``squeeze``, ``fold-stack``, ``fold-single-page``, and the
two checks of a folded bot, ``check-mem`` and ``ping-watch``.

Each fold step runs the plan (remap.fold) on the experiment's target and records the idle
residency afterwards, with how long the target was stopped and what each step did, so a JSONL
record shows the whole fold.  Loaded by the runner only when an experiment names one of them
(runner.STEP_PROVIDERS): remap.fold is not needed to run the plain experiments.
"""

from __future__ import annotations

from typing import Any

from .. import residency
from ..errors import UnsafeStep
from ..fold import FoldReport, fold, squeeze
from .steps import RunContext, StepResult, step


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
    """Fold a hot-page target into its one page (remap fold --single-page).  ``retries``: how
    many more times to try when the fold refused, changing nothing, because the target was
    not waiting in its hot code at that instant (a bot whose send queue wakes it every second
    can be caught between two selects)."""
    retries = int(params.get("retries", 0))
    while True:
        ctx.wait_idle()
        try:
            report = fold(ctx.pid, single_page=True)
            break
        except UnsafeStep as e:
            if retries <= 0 or "try again when it is idle" not in str(e):
                raise
            retries -= 1
            ctx.fields.setdefault("fold_retries", []).append(str(e))
    if not report.steps:
        raise UnsafeStep("single-page fold did nothing")
    return _record(ctx, "fold-single-page", report, params)


@step("check-mem")
def _check_mem(ctx: RunContext, params: dict) -> StepResult:
    """Ask the bot for ``!mem`` and check its own VmRSS (and VmSize) against ``rss_kb``
    (``vm_kb``): the seed's line, printed by the folded process about itself."""
    mem = ctx.need_irc("check-mem").command("!mem")
    for key, field in (("rss_kb", "VmRSS"), ("vm_kb", "VmSize")):
        if key in params and mem.get(field) != params[key]:
            raise UnsafeStep(f"!mem: {field} {mem.get(field)} kB, expected {params[key]} kB")
    return ctx.measure("check-mem", mem=mem)


@step("ping-watch")
def _ping_watch(ctx: RunContext, params: dict) -> StepResult:
    """Send ``n`` PINGs in windows of ``window`` and walk the page tables between windows:
    records the largest RSS seen while serving (``max_rss_kb``), not only the idle figure."""
    srv = ctx.need_irc("ping-watch")
    n, window = int(params.get("n", 1000)), int(params.get("window", 100))
    seen = []
    for i in range(0, n, window):
        srv.ping(min(window, n - i), prefix=f"w{i}-")
        seen.append(residency.snapshot(ctx.pid, smaps=False).rss_kb)
    return ctx.measure("ping-watch", pings=n, max_rss_kb=max(seen), samples=len(seen))
