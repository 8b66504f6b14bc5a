"""The experiment step of the seed's own screen: the bot's ``!mem`` line, word for word.

Why a step of its own: the built-in ``command`` step parses the !mem reply into numbers; the
seed-screen experiment must keep the very line a user saw ("VM 180 kB (Max 180 kB), RSS 4 kB
[ Code ... ]") beside the page walk taken at the same moment, so that a record shows the
screen and the truth together.  Registered when the runner loads its step providers.
"""

from __future__ import annotations

from ..errors import ExperimentError
from ..experiment import RunContext, StepResult, step
from ..ircd import MEM_REPLY
from ..residency import rss_lag_of, snapshot

SCREEN_COMMANDS = {"energymech": "!meminfo"}  # the bot's own memory command; default !mem


@step("screen")
def screen(ctx: RunContext, params: dict) -> StepResult:
    """Ask the bot for its memory line (!mem; EnergyMech's !meminfo), keep the line as
    ``screen``, its RSS as ``screen_rss_kb``, and the page walk of the same moment beside it.

    The line is taken word for word from the server's reply log; ``rss_lag`` (remap.rsslag)
    records why the two differ: each class's counter against the page walk and every thread's
    fault count.
    """
    irc = ctx.irc
    if irc is None or irc.registration is None:
        raise ExperimentError("step 'screen' needs a registered IRC bot (target.irc, 'register')")
    text = SCREEN_COMMANDS.get(ctx.case.target.bot or "", "!mem")
    irc.command(text)
    line = irc.replies[-1]["reply"]
    m = MEM_REPLY.fullmatch(line)
    if m is None:
        raise ExperimentError(f"malformed {text} reply: {line!r}")
    ctx.fields["screen"] = line
    ctx.fields["screen_rss_kb"] = int(m.group(3))
    res = ctx.measure("screen", screen=line, screen_rss_kb=int(m.group(3)))
    ctx.fields["screen_walk_rss_kb"] = res.rss_kb
    snap = snapshot(ctx.pid)
    ctx.fields["rss_lag"] = rss_lag_of(snap).to_json()
    return res
