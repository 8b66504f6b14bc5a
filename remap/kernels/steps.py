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

REPLY_LINES = 8  # the reply is the next channel message; a few other lines may come first


@step("screen")
def screen(ctx: RunContext, params: dict) -> StepResult:
    """Say !mem, keep the bot's reply line as ``screen`` and its RSS as ``screen_rss_kb``."""
    irc = ctx.irc
    if irc is None or irc.registration is None:
        raise ExperimentError("step 'screen' needs a registered IRC bot (target.irc, 'register')")
    irc.send(f":tester!tester@127.0.0.1 PRIVMSG {irc.channel} :!mem")
    for _ in range(REPLY_LINES):
        line = irc.readline()
        if line.startswith(":"):  # a prefix, if the bot ever sends one
            line = line.partition(" ")[2]
        head, sep, text = line.partition(" :")
        if sep and head.split() == ["PRIVMSG", irc.channel]:
            break
    else:
        raise ExperimentError(f"no !mem reply in {irc.channel}")
    m = MEM_REPLY.fullmatch(text)
    if m is None:
        raise ExperimentError(f"malformed !mem reply: {text!r}")
    irc.commands += 1
    ctx.fields["screen"] = text
    ctx.fields["screen_rss_kb"] = int(m.group(3))
    res = ctx.measure("screen", screen=text, screen_rss_kb=int(m.group(3)))
    ctx.fields["screen_walk_rss_kb"] = res.rss_kb
    return res
