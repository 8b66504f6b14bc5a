"""Experiment steps for the page budget (issue 17): ``floor`` and ``check-floor``.

``floor`` runs remap.floor on the target before anything reshapes it: a profile of ``seconds``
(default remap.floor.DEFAULT_SECONDS, one tick of EnergyMech's 5 s timer) while, for an IRC
bot, the experiment's own work is driven -- ``command`` (e.g. "!meminfo") then ``pings``
PINGs, then the bot's own lines answered until ``seconds`` have passed -- so the budget covers
what the run later makes the program do.  ``settle`` seconds first answer the bot's own lines
unprofiled: the replies to what it asks once after joining (WHO, MODE: its channel-user
bookkeeping) are one-time work, not its steady state.  It records the floor and every needed
page (with the functions and objects the profile saw on it).

``period`` and ``window`` (seconds) are for work a program keys to the wall clock, which no
bounded profile can be made to contain in every run.  EnergyMech's update() (src/core.c,
``tt = now / 600``; called from doit() in src/main.c whenever the second changes, the loop
waking at least every 5 s) runs its ten-minute bookkeeping on the first wake after each
multiple of 600 s of the epoch, and its hourly one (the session file, the userlist) at each
multiple of 3,600: botnet_relay's code page (called because our server's WHO reply does not
show the bot as a channel operator) and the rodata page of "%s:%i" and "C:%s AC:%i CS:%s"
(0x40f000 and 0x428000 in the static build: the only pages new in a profile across 14:20:00
UTC against one of the same length before it).  Of the 32 static runs recorded at stop 22,
the 5 whose steady state held those two pages beyond the floor were exactly the 5 in which a
multiple of 600 s fell after the floor, 29-101 s into the run.  The
floor cannot cover that path deterministically: the squeeze drops its pages, and a steady
window sees it again only if a boundary falls in it.  So both windows are kept inside one
period: when the next multiple of ``period`` is less than ``window`` seconds away, the step
first answers the bot's lines unprofiled until :data:`PERIOD_MARGIN_S` after it (the
bookkeeping then runs before the floor), waiting at most ``window`` + that margin; and
``check-floor`` fails a run whose window held a boundary after all (``window`` too short).
The floor is then the steady state between two runs of that bookkeeping, which adds its
pages once a period.

``check-floor``, after the squeeze and the idle, walks the page tables and compares: the
present pages must number the floor within ``pages`` (default 1); every page present and not
in the budget, or in the budget and absent, is recorded with its label, section and symbol,
and each present file page in a mapping wider than one page is flagged as one fault-around
could have brought (after the squeeze's fence every private file mapping is one page wide).
Out of tolerance, the run fails with those pages named (its record is kept) -- unless
``fail = false``: then the check is a measurement only (the program's health is checked by
its own steps), for programs whose steady state has timing-dependent paths a short profile
may not see::

    [[steps]] step = "floor"        # before the squeeze
    [[steps]] step = "squeeze"
    [[steps]] step = "idle"  seconds = 60
    [[steps]] step = "check-floor"
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from .. import floor as F
from .. import kconst as K
from ..errors import ExperimentError, UnsafeStep
from ..profile import PROFILED_REPLY_S
from ..residency import snapshot
from .steps import RunContext, StepResult, int_param, step

MAX_FLOOR_S = 120.0
MAX_PERIOD_S = 86_400  # a day: the longest wall-clock period a window is kept clear of
# how long after a period boundary the target has surely run its bookkeeping: EnergyMech's
# main loop wakes at least every 5 s (select's timeout in doit(), src/main.c), plus a second
PERIOD_MARGIN_S = 6.0


@step("floor")
def _floor(ctx: RunContext, params: dict) -> StepResult:
    """The page budget of the target now (remap floor), with the run's work driven meanwhile."""
    s = params.get("seconds", F.DEFAULT_SECONDS)
    if not isinstance(s, int | float) or isinstance(s, bool) or not 0 < s <= MAX_FLOOR_S:
        raise ExperimentError(f"step 'floor': seconds must be 0..{MAX_FLOOR_S:g} (got {s!r})")
    text = params.get("command")
    pings = int_param(params, "pings", 0, 10_000, default=0)
    settle = int_param(params, "settle", 0, 60, default=0)
    clear = _period_params(params)
    if clear is not None:  # the window from here to check-floor holds no period boundary
        period, window = clear
        wait = period_wait(time.time(), period, window)
        srv = ctx.irc
        if wait and srv is not None:
            srv.serve_for(wait)  # the bot's lines answered, unprofiled, meanwhile
        elif wait:
            time.sleep(wait)
        ctx.fields["floor_period"] = {"period_s": period, "window_s": window,
                                      "waited_s": round(wait, 1), "start": time.time()}  # fmt: skip
    if settle:  # unprofiled: the bot's one-time work after it joined (WHO, MODE) is answered
        ctx.fields["floor_settle_lines"] = ctx.need_irc("floor").serve_for(settle)
    ctx.wait_idle()
    work = None
    if text or pings:
        work = _irc_work(ctx, str(text or ""), pings, float(s))
    fl = F.floor(ctx.pid, seconds=None if work else float(s), workload=work)
    ctx.fields["floor"] = {
        "floor_kb": fl.floor_kb,
        "floor_pages": fl.floor_pages,
        "by_class": fl.by_class(),
        "rss_kb": fl.rss_kb,
        "needed": [[p.addr, p.cls, p.what or p.reason] for p in fl.pages if p.needed],
        "stack": asdict(fl.stack) if fl.stack else None,
        "workload": fl.workload,
        "seconds": s,
    }
    return ctx.measure("floor", floor_kb=fl.floor_kb, by_class=fl.by_class(), notes=fl.notes,
                       largest=fl.largest)  # fmt: skip


def _period_params(params: dict) -> tuple[int, int] | None:
    """(period, window) from the floor step's parameters, or None when neither is given.
    ExperimentError when only one is, or the window (plus the margin) does not fit a period."""
    if "period" not in params and "window" not in params:
        return None
    period = int_param(params, "period", 60, MAX_PERIOD_S)
    window = int_param(params, "window", 1, MAX_PERIOD_S)
    if window + PERIOD_MARGIN_S >= period:
        raise ExperimentError(
            f"step 'floor': window {window} s and the {PERIOD_MARGIN_S:g} s margin do not fit "
            f"a period of {period} s"
        )
    return period, window


def period_wait(now: float, period: int, window: int) -> float:
    """Seconds to wait at wall-clock time NOW (epoch seconds) so that the next WINDOW seconds
    hold no multiple of PERIOD: 0 when the next one is WINDOW or more away, else until
    :data:`PERIOD_MARGIN_S` past it (the target's bookkeeping for it has run by then)."""
    nxt = (now // period + 1) * period
    return 0.0 if nxt - now >= window else nxt + PERIOD_MARGIN_S - now


def periods_crossed(start: float, end: float, period: int) -> int:
    """How many multiples of PERIOD lie in (START, END] (epoch seconds)."""
    return int(end // period) - int(start // period)


def _irc_work(ctx: RunContext, text: str, pings: int, seconds: float):
    """The profiled workload: TEXT said in the channel, PINGS pings, then the bot's own lines
    answered until SECONDS have passed since the start (its timers run meanwhile)."""
    srv = ctx.need_irc("floor")

    def run() -> dict[str, Any]:
        t0 = time.monotonic()
        was, srv.timeout = srv.timeout, max(srv.timeout, PROFILED_REPLY_S)
        out: dict[str, Any] = {}
        try:
            if text:
                r = srv.command(text)
                out[text] = sorted(r) if isinstance(r, dict) else r
            if pings:
                out["pings"] = srv.ping(pings, prefix="floor")
            left = seconds - (time.monotonic() - t0)
            if left > 0:
                out["lines_answered"] = srv.serve_for(left)
        finally:
            srv.timeout = was
        return out

    return run


@step("check-floor")
def _check_floor(ctx: RunContext, params: dict) -> StepResult:
    """Steady state against the floor recorded by the 'floor' step (see the module docstring)."""
    fl = ctx.fields.get("floor")
    if fl is None:
        raise ExperimentError("step 'check-floor' needs a 'floor' step before it")
    tol = int_param(params, "pages", 0, 64, default=1)
    fail = params.get("fail", True)
    if not isinstance(fail, bool):
        raise ExperimentError(f"step 'check-floor': fail must be true or false (got {fail!r})")
    ctx.wait_idle()
    snap = snapshot(ctx.pid)
    present = {p.addr: (v, p) for v in snap.vmas if not v.pfnmap and not v.hugetlb
               for p in v.pages}  # fmt: skip
    need = {a: c for a, c, *_ in fl["needed"]}

    def describe(a: int) -> dict[str, Any]:
        d: dict[str, Any] = {"addr": f"{a:#x}", "class": need.get(a)}
        if a in present:
            v, p = present[a]
            d.update(label=p.label, backing=p.backing, section=p.section, symbol=p.symbol,
                     mapping=v.path or "anon")  # fmt: skip
            if p.backing == "file" and v.is_file and v.end - v.start > K.PAGE_SIZE:
                d["fault_around_possible"] = True
        return d

    extra = [describe(a) for a in sorted(set(present) - set(need))]
    missing = [describe(a) for a in sorted(set(need) - set(present))]
    wide = sum(1 for d in extra if d.get("fault_around_possible"))
    diff = len(present) - fl["floor_pages"]
    per = ctx.fields.get("floor_period")
    crossed = periods_crossed(per["start"], time.time(), per["period_s"]) if per else 0
    check = {
        "ok": abs(diff) <= tol and not crossed,
        "floor_pages": fl["floor_pages"],
        "present_pages": len(present),
        "diff_pages": diff,
        "tolerance_pages": tol,
        "extra": extra,
        "missing": missing,
        "fault_around_possible": wide,
        "periods_crossed": crossed,  # wall-clock period boundaries since the floor (0)
    }
    ctx.fields["floor_check"] = check
    res = ctx.measure("check-floor", floor_check=check)
    if not check["ok"] and fail:
        ctx.records.append(res)  # kept in the record: the run fails with the pages named
        what = ", ".join(f"{d['addr']} {d.get('label', d['class'])}" for d in (extra + missing)[:6])
        if crossed:
            raise UnsafeStep(
                f"a {per['period_s']} s wall-clock period boundary fell between the floor and "
                f"check-floor (window {per['window_s']} s too short): {len(present)} pages "
                f"against the floor {fl['floor_pages']} ({what or 'none differ'})"
            )
        raise UnsafeStep(
            f"steady state {len(present)} pages is not the floor {fl['floor_pages']} "
            f"(±{tol}): {len(extra)} extra, {len(missing)} missing ({what})"
        )
    return res
