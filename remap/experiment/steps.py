"""The step registry, the run context, and the built-in steps every experiment uses.

Why a registry: experiments name their steps in TOML; each subject's steps live in a module of
their own in this package and register themselves with ``@step``: IRC (steps_irc: register,
ping, command, client-join, pong, client-check, screen), fold (steps_fold: squeeze, fold-stack,
fold-single-page, check-mem, ping-watch), layout (steps_layout: auto-layout, profile-layout) and
torture (steps_torture).  The runner imports steps_irc with itself and the heavier ones only
when an experiment names a step not registered yet (runner.STEP_PROVIDERS)::

    from remap.experiment import RunContext, StepResult, step

    @step("squeeze")
    def squeeze(ctx: RunContext, params: dict) -> StepResult | None:
        with remap.attach(ctx.pid) as s: ...
        return ctx.measure("squeeze", dropped_kb=...)   # or None: the runner measures

A step function gets the :class:`RunContext` of the current run and the step's parameters from
the TOML table (minus ``step``).  Returning None means "measure after me"; returning a
:class:`StepResult` (usually from ``ctx.measure``) records that instead.  Raise a RemapError
subclass (UnsafeStep, IrcError...) to fail the run with a one-line reason; a step that needs
an IRC target asks :meth:`RunContext.need_irc`, so that mistake reads the same everywhere.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ExperimentError, NoSuchProcess, RemapError
from ..ircd import IrcServer
from ..launch import Launched, launch
from ..netns import NetNamespace
from ..residency import snapshot
from . import measure as M
from .mech import launch_energymech
from .spec import Case, Experiment

StepFn = Callable[["RunContext", dict], "StepResult | None"]
STEPS: dict[str, StepFn] = {}
MAX_IDLE_S = 60.0


def step(name: str) -> Callable[[StepFn], StepFn]:
    """Decorator: register FN as the experiment step NAME (a second registration is a bug)."""

    def deco(fn: StepFn) -> StepFn:
        if name in STEPS and STEPS[name] is not fn:
            raise ValueError(f"experiment step {name!r} registered twice")
        STEPS[name] = fn
        return fn

    return deco


@dataclass
class StepResult:
    """What one step measured: page walk, counters, and anything the step adds in ``extra``."""

    name: str
    rss_kb: int  # page walk (pagemap present pages that RSS counts)
    vmrss_kb: int  # /proc/PID/status VmRSS
    present_pages: int
    counters: dict[str, int]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "rss_kb": self.rss_kb,
            "vmrss_kb": self.vmrss_kb,
            "present_pages": self.present_pages,
            "counters": dict(self.counters),
            **self.extra,
        }


@dataclass
class RunContext:
    """Everything a step may use during one run of one case.

    Attributes:
      experiment, case, run: which experiment, which case, which repetition (0-based).
      target_path: the built binary (remap.targets.build of case.target).
      launched: the :class:`remap.launch.Launched` process once the "launch" step ran (else
        None); ``pid`` is its PID.
      irc: the :class:`remap.ircd.IrcServer` driving the target when ``target.irc`` is true.
      records: the StepResults of this run so far, in order (the runner appends).
      fields: extra top-level fields for this run's JSON record (e.g. "stack_gap").
      finisher: set by a launch that knows its target better than :func:`finish` (EnergyMech:
        a final PING, then SIGTERM and its QUIT answered); called instead of it.
      handle: what a launch step knows of its target beyond the process (launch-init: the
        :class:`remap.initns.InitRun`), for the later steps of the same subject (respawn).
    Preconditions a step may rely on: steps run in the TOML order, in one thread; the runner
    stops and reaps the target after the last step whatever happened.
    """

    experiment: Experiment
    case: Case
    run: int
    target_path: Path
    launched: Launched | None = None
    irc: IrcServer | None = None
    records: list[StepResult] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)
    finisher: Callable[[RunContext], tuple[bool, str | None]] | None = None  # replaces finish
    handle: Any = None  # the launch step's own handle on its target (remap.initns.InitRun)

    @property
    def pid(self) -> int:
        if self.launched is None:
            raise ExperimentError("no target launched yet (the first step must be 'launch')")
        return self.launched.pid

    def need_irc(self, step: str) -> IrcServer:
        """The IRC server of this run, for the step named STEP.

        Raises ExperimentError when the case has none: the experiment file asked an IRC step
        of a target without ``target.irc`` (one error, one message for every such step)."""
        if self.irc is None:
            raise ExperimentError(f"step {step!r} needs an IRC target (target.irc = true)")
        return self.irc

    def wait_idle(self) -> None:
        """Wait (bounded by measure.idle_timeout) until the target sleeps in a syscall."""
        M.wait_blocked(self.pid, self.case.measure.idle_timeout, self.launched.proc)

    def measure(self, name: str, **extra: Any) -> StepResult:
        """Wait until idle, then snapshot the target; EXTRA goes into the step's record."""
        self.wait_idle()
        res = M.measure(self.pid, pages=self.case.measure.pages)
        if self.case.measure.stack:
            lay = M.stack(self.pid)
            extra.setdefault("stack", lay)
        return StepResult(
            name,
            res.rss_kb,
            res.vmrss_kb,
            res.present_pages,
            res.counters,
            {
                **({"pages": res.pages} if res.pages is not None else {}),
                **extra,
            },
        )


# ---------------------------------------------------------------------------- built-in steps
@step("launch")
def _launch(ctx: RunContext, params: dict) -> StepResult:
    """Start the target as the case says (ASLR, environment, vdso); with irc, start ircd first."""
    t, lc = ctx.case.target, ctx.case.launch
    if t.bot == "energymech":
        launch_energymech(ctx, params)
        return ctx.measure("launch")
    argv = [str(ctx.target_path), *t.args]
    if t.irc:
        ctx.irc = IrcServer(timeout=float(params.get("timeout", 5.0)))
        argv += ctx.irc.bot_args()
    ctx.launched = launch(
        argv,
        aslr=lc.aslr,
        env=lc.environment(),
        env_size=lc.env_size,
        vdso=lc.vdso,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        user=lc.user,
        netns=_netns(ctx) if lc.netns else None,
    )
    ctx.fields["env_size"] = ctx.launched.env_size
    return ctx.measure("launch")


def _netns(ctx: RunContext):
    """A private network namespace for this run (closed by the runner's finish)."""
    ns = NetNamespace()
    ctx.fields.setdefault("_close", []).append(ns.close)
    return ns


@step("idle")
def _idle(ctx: RunContext, params: dict) -> StepResult:
    """Let the target sit for ``seconds``, then measure (the idle working set)."""
    s = params.get("seconds", 0.2)
    if not isinstance(s, int | float) or isinstance(s, bool) or not 0 <= s <= MAX_IDLE_S:
        raise ExperimentError(f"step 'idle': seconds must be 0..{MAX_IDLE_S:g} (got {s!r})")
    if ctx.case.target.bot == "energymech" and ctx.irc is not None:
        answered = ctx.irc.serve_for(s)  # a real bot's timers talk to its server meanwhile
        return ctx.measure("idle", seconds=s, lines_answered=answered)
    time.sleep(s)
    return ctx.measure("idle", seconds=s)


@step("explain")
def _explain(ctx: RunContext, params: dict) -> StepResult:
    """Measure, and record what ``remap map`` and ``remap explain`` show: each mapping's
    label and resident kB, the seed-style summary, every counter and the notes."""
    ctx.wait_idle()
    snap = snapshot(ctx.pid)
    maps = [
        {"label": v.label, "kb": (v.end - v.start) // 1024, "rss_kb": len(v.pages) * 4}
        for v in snap.vmas
    ]
    exp = snap.explain_json()
    return ctx.measure(
        str(params.get("label", "explain")),
        mappings=len(maps),
        map=maps,
        summary=exp["summary"],
        notes=exp["notes"],
        rss_lag=exp["rss_lag"],
    )


@step("measure")
def _measure(ctx: RunContext, params: dict) -> StepResult:
    """Measure now (after waiting for the target to block)."""
    return ctx.measure(str(params.get("label", "measure")))


def int_param(params: dict, key: str, lo: int, hi: int, default: int | None = None) -> int:
    """PARAMS[KEY] (or DEFAULT), an integer LO..HI: ExperimentError naming it otherwise."""
    v = params.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ExperimentError(f"step parameter {key} must be an integer {lo}..{hi} (got {v!r})")
    return v


def finish(ctx: RunContext) -> tuple[bool, str | None]:
    """Check the target still works, then stop it; return (target_ok, why_not).

    An IRC bot must answer !ping and exit with target.exit_status (0 unless the experiment says
    otherwise) when the server hangs up; any other target must still be running and exit so when
    its stdin is closed.  Always reaps the process.
    """
    try:
        if ctx.finisher is not None:
            return ctx.finisher(ctx)
        return _finish(ctx)
    finally:
        for close in ctx.fields.pop("_close", []):
            close()


def _finish(ctx: RunContext) -> tuple[bool, str | None]:
    lt = ctx.launched
    if lt is None:
        return False, "never launched"
    why = None
    try:
        want = ctx.case.target.exit_status
        if lt.proc.poll() is not None and (want == 0 or lt.proc.returncode != want):
            # a target declared to end with a non-zero status (a client such as sic, which
            # quits once its server hangs up) may have ended that way already
            why = f"target exited early with status {lt.proc.returncode}"
        elif ctx.irc is not None and ctx.irc.registration is not None:
            reply = ctx.irc.command("!ping")
            if reply != "pong":
                why = f"!ping answered {reply!r}"
    except (RemapError, NoSuchProcess) as e:
        why = str(e)
    try:
        if ctx.irc is not None:
            ctx.irc.close()
        if lt.proc.stdin:
            lt.proc.stdin.close()
        rc = lt.proc.wait(timeout=5)
        if why is None and rc != want:
            why = f"target exited with status {rc} at the end (a working one exits {want})"
    except subprocess.TimeoutExpired:
        why = why or "target did not exit within 5 s of EOF"
    finally:
        lt.stop()
    return why is None, why
