"""EnergyMech, the user's own IRC bot, run the way issue 16 measured it: isolated and clean.

Why a module of its own: the real bot needs more than the demo bot's four arguments.  It
refuses root ("Do NOT run EnergyMech as root!"), reads a config file remap writes, daemonizes
unless started as ``env MECHRESET= ./energymech -f FILE``, and reads ``mech.session`` instead
of its config whenever one exists (written on SIGTERM and hourly).  So every run gets:

- a fresh scratch folder owned by the unprivileged user, holding the config and userfile
  (mode 0600: the bot refuses files others can read), removed at the end with whatever the bot
  wrote there (mech.pid, mech.session): no session file survives a run;
- a private network namespace holding only loopback (remap.netns), the IRC server's listening
  socket inside it, so nothing the bot does can reach an address outside the machine;
- a stop that matches the bot: SIGTERM, its QUIT answered with ERROR and a close (it spins at
  100 % CPU until its server hangs up), SIGKILL only if that fails within the deadline.

Example::

    >>> run = start(sources.build(sources.recipe("energymech", "static")))
    >>> run.server.accept_bot(); run.server.command("!meminfo")["VmRSS"]
    244
    >>> stop(run)["exit_status"]
    0
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .adopt import adopt_daemon
from .errors import UsageError
from .ircd import ENERGYMECH, Dialect, IrcError, IrcServer
from .launch import DEFAULT_ENV, Launched, launch
from .netns import NetNamespace

UNPRIVILEGED = "nobody"
CONFIG, USERFILE = "mech.conf", "mech.users"
SESSION = "mech.session"
PIDFILE = "mech.pid"  # where the daemonized bot writes its PID (src/main.c)
STOP_TIMEOUT_S = 10.0


@dataclass
class MechRun:
    """A started bot: its server, process, scratch folder and namespace (see :func:`stop`)."""

    server: IrcServer
    launched: Launched
    workdir: Path
    netns: NetNamespace | None
    config: str = field(repr=False, default="")


def config_text(port: int, nick: str, channel: str) -> str:
    """The bot's config: one server on loopback, its nick, userfile, ``!`` commands, one
    channel with public commands on, and uptime reports off (``set upport 0``)."""
    return (
        f"nick 1 {nick}\n"
        f"server 127.0.0.1 {port}\n"
        f"set userfile {USERFILE}\n"  # a bare name: the bot refuses paths ("unsafe")
        "set cmdchar !\n"
        f"join {channel}\n"
        "set pub 1\n"
        "set upport 0\n"
    )


def userfile_text(tester: str) -> str:
    """One global user at level 100 (MEMINFO needs it) matching tester!tester@127.0.0.1."""
    return f"user {tester}\nmask *!*{tester}@127.0.0.1\nchan *\nopt p0u100\n"


def start(
    binary: Path,
    *,
    nick: str = "mech",
    channel: str = "#remap",
    timeout: float = 5.0,
    aslr: bool = True,
    env_size: int | None = None,
    user: str | None = UNPRIVILEGED,
    isolate: bool = True,
    dialect: Dialect = ENERGYMECH,
    daemon: bool = False,
    env: dict[str, str] | None = None,
    vdso: bool = True,
) -> MechRun:
    """Write a config, start the bot as USER (inside a fresh network namespace when ISOLATE)
    in the foreground, and return it; the caller then calls ``run.server.accept_bot()``.

    DAEMON: start it the way its users do, without MECHRESET: it forks, the parent exits and
    the child (named in mech.pid) is the bot; remap adopts it (remap.adopt), so
    ``run.launched`` is the child and is waited for like a Popen.  ENV: variables added to the
    fixed environment (e.g. TZ); VDSO=False: hidden at the bot's exec (remap.fold.vdso).

    Raises UsageError (no such user; or no user while remap runs as root: the bot refuses
    root), AccessDenied/UnsupportedTarget (no namespace), IrcError.
    """
    if user is None and os.geteuid() == 0:
        raise UsageError(
            'EnergyMech refuses to run as root: give it a user ([launch] user = "nobody")'
        )
    ns = NetNamespace() if isolate else None
    workdir = Path(tempfile.mkdtemp(prefix="remap-mech-"))
    try:
        listener = ns.listen() if ns else None
        srv = IrcServer(
            nick=nick, channel=channel, timeout=timeout, dialect=dialect, listener=listener
        )
        conf = config_text(srv.port, nick, channel)
        _write(workdir, CONFIG, conf, user)
        _write(workdir, USERFILE, userfile_text(srv.tester), user)
        if user is not None:
            pw = pwd.getpwnam(user)
            os.chown(workdir, pw.pw_uid, pw.pw_gid)
        # MECHRESET set (even empty): the bot stays in the foreground; unset, it daemonizes
        full = {**DEFAULT_ENV, **(env or {})}
        if not daemon:
            full["MECHRESET"] = ""
        quiet = dict.fromkeys(("stdin", "stdout", "stderr"), subprocess.DEVNULL)
        argv = [str(binary), "-f", CONFIG]
        kw = dict(aslr=aslr, env=full, env_size=env_size, cwd=workdir, user=user, netns=ns,
                  vdso=vdso)  # fmt: skip
        if daemon:
            started: list[Launched] = []

            def parent() -> subprocess.Popen:
                started.append(launch(argv, **kw, **quiet, daemonizes=True))
                return started[0].proc

            _, child = adopt_daemon(parent, workdir / PIDFILE)
            lt = dataclasses.replace(started[0], proc=child, pid=child.pid)
        else:
            lt = launch(argv, **kw, **quiet)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        if ns:
            ns.close()
        raise
    return MechRun(srv, lt, workdir, ns, conf)


def _write(d: Path, name: str, text: str, user: str | None) -> None:
    p = d / name
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    if user is not None:
        pw = pwd.getpwnam(user)
        os.chown(p, pw.pw_uid, pw.pw_gid)


def stop(run: MechRun) -> dict:
    """SIGTERM the bot, answer its QUIT (ERROR, close), reap it, remove its folder.

    Returns {exit_status, quit, killed, session_written, left_behind}: ``left_behind`` lists
    files still in the folder after it was removed (always empty unless removal failed).
    """
    lt, srv = run.launched, run.server
    quit_msg, killed = None, False
    try:
        if lt.proc.poll() is None:
            lt.proc.send_signal(signal.SIGTERM)
            if srv.registration is not None:
                try:
                    quit_msg = srv.wait_quit(STOP_TIMEOUT_S)
                except IrcError:
                    quit_msg = None
        srv.close()
        try:
            lt.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            killed = True
        rc = lt.stop()
    finally:
        srv.close()
        session = (run.workdir / SESSION).exists()
        shutil.rmtree(run.workdir, ignore_errors=True)
        if run.netns:
            run.netns.close()
    left = sorted(os.listdir(run.workdir)) if run.workdir.exists() else []
    return {
        "exit_status": rc,
        "quit": quit_msg,
        "killed": killed,
        "session_written": session,
        "left_behind": left,
    }
