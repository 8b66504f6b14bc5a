"""The IRC experiment steps: drive a bot (or a plain IRC client) through the loopback server.

Why a module of their own: they are the steps that talk to the target over IRC
(remap.ircd.IrcServer) rather than reshape it; each asks :meth:`RunContext.need_irc` for the
server, so an experiment that names one without ``target.irc = true`` fails with one message.
Imported by the runner (these steps are cheap: ircd is loaded with the registry anyway).

- register, ping, command: the demo bot and EnergyMech (NICK/USER -> 001 -> JOIN, pipelined
  PINGs, a command's reply, ``check_proc`` against /proc/PID/status);
- client-join, pong, client-check: a client that is not our bot (Debian's sic,
  experiments/second-program-sic.toml);
- screen: the seed's own ``!mem`` line kept word for word (the kernel matrix, seed-screen).
"""

from __future__ import annotations

from typing import Any

from .. import procfs
from ..errors import ExperimentError
from ..ircd import MEM_REPLY
from ..residency import rss_lag_of, snapshot
from . import measure as M
from .steps import RunContext, StepResult, int_param, step

MAX_PINGS = 1_000_000
SCREEN_COMMANDS = {"energymech": "!meminfo"}  # screen: the bot's memory command (default !mem)


@step("register")
def _register(ctx: RunContext, params: dict) -> None:
    """IRC registration: accept the bot, NICK/USER -> 001 -> JOIN."""
    ctx.need_irc("register").accept_bot()


@step("ping")
def _ping(ctx: RunContext, params: dict) -> StepResult:
    """Send N PINGs (pipelined in windows) and check every PONG."""
    n = int_param(params, "n", 1, MAX_PINGS)
    window = int_param(params, "window", 1, 4096, default=256)
    ctx.need_irc("ping").ping(n, window=window)
    return ctx.measure("ping", pings=n)


@step("command")
def _command(ctx: RunContext, params: dict) -> StepResult:
    """Say ``text`` in the channel and record the bot's reply (``expect`` checks it)."""
    text = params.get("text")
    if not isinstance(text, str) or not text:
        raise ExperimentError(f"step 'command' needs text = \"...\" (got {text!r})")
    srv = ctx.need_irc("command")
    seen: dict[str, Any] = {}
    check = params.get("check_proc", False)
    if check:  # the moment the bot reads its own /proc/PID/status: right after it read TEXT
        seen["before"] = procfs.read_status(ctx.pid)  # with the one after, they enclose it
        before = M.switches(ctx.pid)
        seen["at"] = lambda: seen.update(status=M.after_wakeup(ctx.pid, before, ctx))
    reply = srv.command(text, on_sent=seen.get("at"))
    if "expect" in params and reply != params["expect"]:
        raise ExperimentError(f"{text}: expected {params['expect']!r}, got {reply!r}")
    extra: dict[str, Any] = {"reply": reply}  # its latency: the record's timing.replies
    if check:
        extra["proc"] = M.compare_mem(text, reply, seen["status"], seen["before"])
    return ctx.measure(f"command {text}", **extra)


@step("client-join")
def _client_join(ctx: RunContext, params: dict) -> StepResult:
    """Register an IRC *client* that is not our bot (Debian's sic): write the ``stdin`` line
    (a template over {channel} {nick}; sic joins a channel when ":j #chan" arrives on its
    stdin), then complete NICK/USER -> 001 -> JOIN like the "register" step."""
    srv = ctx.need_irc("client-join")
    line = str(params.get("stdin", ":j {channel}")).format(channel=srv.channel, nick=srv.nick)
    ctx.launched.proc.stdin.write(line.encode() + b"\n")
    ctx.launched.proc.stdin.flush()
    srv.accept_bot()
    return ctx.measure("client-join")


@step("pong")
def _pong(ctx: RunContext, params: dict) -> StepResult:
    """N server PINGs, each answer checked (``PONG :tok`` or sic's ``PONG tok``)."""
    n = int(params.get("n", 100))
    ctx.need_irc("pong").pong_check(n, prefix=str(params.get("prefix", "t")))
    return ctx.measure("pong", pings=n)


@step("client-check")
def _client_check(ctx: RunContext, params: dict) -> StepResult:
    """The client still answers a PING.  Last step: the runner's own final check asks a *bot*
    for "!ping", which a plain client ignores, so the server is closed here."""
    srv = ctx.need_irc("client-check")
    srv.pong_check(1, prefix="final-")
    ctx.fields["client_ok"] = True
    res = ctx.measure("client-check")
    srv.close()
    ctx.irc = None
    return res


@step("screen")
def _screen(ctx: RunContext, params: dict) -> StepResult:
    """Ask the bot for its memory line (!mem; EnergyMech's !meminfo), keep the line as
    ``screen``, its RSS as ``screen_rss_kb``, and the page walk of the same moment beside it.

    Why a step of its own: the ``command`` step parses the reply into numbers; the
    seed-screen experiments must keep the very line a user saw ("VM 180 kB (Max 180 kB), RSS
    4 kB [ Code ... ]") beside the page walk, so that a record shows the screen and the truth
    together.  ``rss_lag`` (remap.rsslag) records why the two differ: each class's counter
    against the page walk and every thread's fault count."""
    irc = ctx.need_irc("screen")
    if irc.registration is None:
        raise ExperimentError("step 'screen' needs a registered bot (a 'register' step first)")
    text = SCREEN_COMMANDS.get(ctx.case.target.bot or "", "!mem")
    irc.command(text)
    line = irc.replies[-1]["reply"]  # word for word, as the bot sent it
    m = MEM_REPLY.fullmatch(line)
    if m is None:
        raise ExperimentError(f"malformed {text} reply: {line!r}")
    ctx.fields["screen"] = line
    ctx.fields["screen_rss_kb"] = int(m.group(3))
    res = ctx.measure("screen", screen=line, screen_rss_kb=int(m.group(3)))
    ctx.fields["screen_walk_rss_kb"] = res.rss_kb
    ctx.fields["rss_lag"] = rss_lag_of(snapshot(ctx.pid)).to_json()
    return res
