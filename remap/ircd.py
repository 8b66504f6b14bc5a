"""A loopback IRC server that drives a bot -- the demo bot or a real one -- and checks it.

Why our own server: experiments must be reproducible and bounded on a machine with no network,
so the runner plays the IRC network itself -- one client, one channel, answers checked line by
line.  It speaks enough IRC for a real bot (EnergyMech, issue 16) as well as for the demo bot
(csrc/targets/minibot.c):

- registration (NICK/USER -> 001, then the MOTD 375/372/376, or 422 when there is none), JOIN
  echoed with the channel's names (353/366);
- the queries a real bot sends on its own, answered whenever they arrive: WHOIS, WHO, MODE
  (channel, ban list, user), ISON, USERHOST and its own PINGs; QUIT is answered with ERROR and
  the connection is closed (EnergyMech spins until its server hangs up);
- the checks experiments need: pipelined PINGs whose PONGs are checked in order while the bot's
  other lines are answered and skipped, and commands whose PRIVMSG or NOTICE reply is awaited
  past the bot's *send queue* (EnergyMech delays each queued reply by 2 s per line it sent
  before: :attr:`Dialect.send_queue_s`); each reply's latency is recorded in :attr:`replies`.

Every wait has a deadline and every loop a bound, so a hung or dead bot is an
:class:`IrcError`, never a hang.  The listener is 127.0.0.1 only (or a socket the caller made
inside a private network namespace, see remap.netns).

Example::

    >>> with IrcServer() as srv:
    ...     bot = launch([str(minibot), *srv.bot_args()])
    ...     srv.accept_bot()                 # NICK/USER -> 001 -> JOIN
    ...     srv.ping(10_000)                 # every PONG checked
    ...     srv.command("!mem")["VmRSS"]     # kB, as the bot read it from /proc/self/status
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import ExperimentError

MAX_LINE = 512  # RFC 1459: a line, CR LF included, is at most 512 bytes
MAX_QUEUE_WAIT_S = 180.0  # longest send-queue delay a reply wait accepts before refusing
MAX_SKIPPED = 100_000  # lines of the bot's own one wait may answer and skip
SERVER = "remap.local"
MEM_FIELDS = ("VmSize", "VmPeak", "VmRSS", "VmExe", "VmData", "VmLib", "VmStk")
MEM_COMMANDS = ("!mem", "!meminfo")  # the demo bot's and EnergyMech's (src/hostinfo.c)
MEM_REPLY = re.compile(
    r"VM (\d+) kB \(Max (\d+) kB\), RSS (\d+) kB "
    r"\[ Code (\d+) kB, Data (\d+) kB, Libs (\d+) kB, Stack (\d+) kB \]"
)


class IrcError(ExperimentError):
    """The bot did not answer as IRC (or the experiment) requires, or not in time."""


class IrcTimeout(IrcError):
    """No (awaited) line from the bot before the deadline; the connection itself is fine."""


@dataclass(frozen=True)
class Registration:
    """What the bot sent while registering."""

    nick: str
    user: str
    channel: str


@dataclass(frozen=True)
class Dialect:
    """How much IRC a bot needs, and how it paces its replies.

    motd: None sends 001 alone (the demo bot's handshake, unchanged); () sends 422 (no MOTD);
    lines send 375, one 372 each, 376.  names: 353/366 after the JOIN echo.  send_queue_s:
    seconds the bot delays a queued reply per line it sent before (0: replies at once).
    join_timeout: seconds from the end of the MOTD to the bot's JOIN (EnergyMech: 1-5 s).
    """

    motd: tuple[str, ...] | None = None
    names: bool = False
    send_queue_s: float = 0.0
    join_timeout: float = 5.0


MINIBOT = Dialect()
ENERGYMECH = Dialect(
    motd=("remap test network: loopback only, one channel",),
    names=True,
    send_queue_s=2.0,
    join_timeout=10.0,
)


def parse_mem(text: str) -> dict[str, int]:
    """Parse a bot's memory line (the seed's format) into {VmSize, VmPeak, VmRSS, ...}."""
    m = MEM_REPLY.fullmatch(text)
    if not m:
        raise IrcError(f"malformed !mem reply: {text!r}")
    return dict(zip(MEM_FIELDS, (int(g) for g in m.groups()), strict=True))


class IrcServer:
    """One-client IRC server on 127.0.0.1 (ephemeral port); a context manager that closes it.

    ``timeout`` bounds every single wait (seconds); ``nick``/``channel`` are what
    :meth:`bot_args` hands the bot, and what registration must then show.  ``listener``: a
    listening socket made by the caller (e.g. inside a network namespace) instead of a new one.
    """

    def __init__(
        self,
        *,
        nick: str = "minibot",
        channel: str = "#remap",
        timeout: float = 5.0,
        dialect: Dialect = MINIBOT,
        listener: socket.socket | None = None,
        tester: str = "tester",
    ):
        self.nick = nick
        self.channel = channel
        self.timeout = timeout
        self.dialect = dialect
        self.tester = tester  # the user commands come from (tester!tester@127.0.0.1)
        if listener is None:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
        host, self.port = listener.getsockname()[:2]
        if host != "127.0.0.1":
            listener.close()
            raise IrcError(f"the IRC server listens on loopback only, not {host}")
        self._listen = listener
        self._conn: socket.socket | None = None
        self._buf = b""
        self.registration: Registration | None = None
        self.pings = 0  # PONGs checked so far
        self.commands = 0
        self.replies: list[dict] = []  # each command: text, reply, latency_s, queue_s
        self.answered: dict[str, int] = {}  # the bot's own lines answered or skipped, by command
        self.quit: str | None = None  # the bot's QUIT message, once it sent one
        self._queue_free_at = 0.0  # monotonic time the bot's send queue is estimated to drain

    # ------------------------------------------------------------------ lifecycle
    def bot_args(self) -> list[str]:
        """The demo bot's command-line arguments: HOST PORT NICK CHANNEL."""
        return ["127.0.0.1", str(self.port), self.nick, self.channel]

    def accept_bot(self) -> Registration:
        """Accept the bot's connection and complete registration and JOIN (all bounded)."""
        self._listen.settimeout(self.timeout)
        try:
            conn, _ = self._listen.accept()
        except TimeoutError:
            raise IrcError(f"the bot did not connect within {self.timeout:g} s") from None
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._conn = conn
        nick = user = None
        for _ in range(16):  # a handful of lines at most before 001
            cmd, params = _split(self._read_counted())
            if cmd == "NICK" and params:
                nick = params[0]
            elif cmd == "USER" and params:
                user = params[0]
            if nick and user:
                break
        else:
            raise IrcError("the bot did not send NICK and USER")
        self.send_many(self._welcome(nick))
        t = self.dialect.join_timeout
        _, params = self.wait_for(lambda c, p: c == "JOIN" and bool(p), f"JOIN within {t:g} s", t)
        chan = params[0]
        self.registration = Registration(nick, user, chan)
        self.send_many(self._join_echo(chan))
        if nick != self.nick or chan != self.channel:
            raise IrcError(f"bot registered as {nick} in {chan}, not {self.nick} in {self.channel}")
        return self.registration

    def _welcome(self, nick: str) -> list[str]:
        lines = [f":{SERVER} 001 {nick} :Welcome to the remap test network {nick}"]
        motd = self.dialect.motd
        if motd is not None and not motd:
            lines.append(f":{SERVER} 422 {nick} :MOTD File is missing")
        elif motd:
            lines.append(f":{SERVER} 375 {nick} :- {SERVER} Message of the day -")
            lines += [f":{SERVER} 372 {nick} :- {m}" for m in motd]
            lines.append(f":{SERVER} 376 {nick} :End of /MOTD command.")
        return lines

    def close(self) -> None:
        """Close the client connection (the bot sees EOF) and the listener."""
        self._hang_up()
        self._listen.close()

    def _hang_up(self) -> None:
        if self._conn is not None:
            try:
                self._conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._conn.close()
            self._conn = None

    def __enter__(self) -> IrcServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ line I/O
    def send(self, line: str) -> None:
        self.send_many([line])

    def send_many(self, lines: list[str]) -> None:
        conn = self._need_conn()
        data = "".join(f"{ln}\r\n" for ln in lines).encode()
        conn.settimeout(self.timeout)
        try:
            conn.sendall(data)
        except (TimeoutError, OSError) as e:
            raise IrcError(f"cannot send to the bot: {e}") from None

    def readline(self, wait: float | None = None) -> str:
        """One line from the bot (without CR LF), waiting at most ``wait`` (default
        ``timeout``) seconds."""
        conn = self._need_conn()
        wait = self.timeout if wait is None else wait
        deadline = time.monotonic() + wait
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise IrcTimeout(f"no line from the bot within {wait:g} s")
            conn.settimeout(left)
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError as e:
                raise IrcError(f"connection to the bot failed: {e}") from None
            if not chunk:
                raise IrcError("the bot closed the connection")
            self._buf += chunk
            if len(self._buf) > 1 << 20:
                raise IrcError("the bot sent over 1 MiB without a newline")
        line, _, self._buf = self._buf.partition(b"\n")
        if len(line) > MAX_LINE:
            raise IrcError(f"line of {len(line)} bytes from the bot (IRC allows {MAX_LINE})")
        return line.rstrip(b"\r").decode(errors="replace")

    def _read_counted(self, wait: float | None = None) -> str:
        """readline, and account the line in the estimate of the bot's send queue (each line
        it sends pushes its queue ``send_queue_s`` further, from now at the earliest)."""
        line = self.readline(wait)
        q = self.dialect.send_queue_s
        if q:
            self._queue_free_at = max(self._queue_free_at, time.monotonic()) + q
        return line

    def _need_conn(self) -> socket.socket:
        if self._conn is None:
            raise IrcError("no bot connected (call accept_bot first)")
        return self._conn

    # ------------------------------------------------------------------ the bot's own lines
    def wait_for(
        self, want: Callable[[str, list[str]], bool], what: str, wait: float | None = None
    ) -> tuple[str, list[str]]:
        """Read lines until WANT(command, params) holds; answer every other line (queries,
        the bot's PINGs, QUIT) on the way.  At most ``wait`` (default ``timeout``) seconds and
        :data:`MAX_SKIPPED` lines; IrcError naming WHAT otherwise."""
        wait = self.timeout if wait is None else wait
        deadline = time.monotonic() + wait
        for _ in range(MAX_SKIPPED):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                line = self._read_counted(left)
            except IrcError as e:
                raise type(e)(f"waiting for {what}: {e}") from None
            cmd, params = _split(line)
            if want(cmd, params):
                return cmd, params
            self.answer(cmd, params)
        raise IrcTimeout(f"no {what} from the bot within {wait:g} s")

    def answer(self, cmd: str, params: list[str]) -> None:
        """Answer one line the bot sent on its own, as a server would (or just count it)."""
        self.answered[cmd or "(empty)"] = self.answered.get(cmd or "(empty)", 0) + 1
        nick, tester = self.nick, self.tester
        first = params[0] if params else ""
        out: list[str] = []
        if cmd == "PING":
            out = [f":{SERVER} PONG {SERVER} :{params[-1] if params else ''}"]
        elif cmd == "JOIN" and params:
            out = self._join_echo(params[0].split(",")[0])
        elif cmd == "WHOIS":
            who = params[-1] if params else nick
            out = [
                f":{SERVER} 311 {nick} {who} {who} 127.0.0.1 * :{who}",
                f":{SERVER} 312 {nick} {who} {SERVER} :remap test network",
                f":{SERVER} 318 {nick} {who} :End of /WHOIS list.",
            ]
        elif cmd == "WHO":
            out = [
                f":{SERVER} 352 {nick} {first} {u} 127.0.0.1 {SERVER} {u} H :0 {u}"
                for u in (nick, tester)
            ] + [f":{SERVER} 315 {nick} {first} :End of /WHO list."]
        elif cmd == "MODE" and first.startswith("#"):
            if len(params) > 1 and params[1].lstrip("+") == "b":
                out = [f":{SERVER} 368 {nick} {first} :End of Channel Ban List"]
            elif len(params) == 1:
                out = [f":{SERVER} 324 {nick} {first} +nt"]
        elif cmd == "MODE" and len(params) > 1:
            out = [f":{nick} MODE {nick} :{params[1]}"]
        elif cmd == "ISON":
            online = [n for n in " ".join(params).split() if n in (nick, tester)]
            out = [f":{SERVER} 303 {nick} :{' '.join(online)}"]
        elif cmd == "USERHOST":
            out = [
                f":{SERVER} 302 {nick} :"
                + " ".join(f"{n}=+{n}@127.0.0.1" for n in params if n in (nick, tester))
            ]
        elif cmd == "QUIT":
            self.quit = params[0] if params else ""
            out = [f"ERROR :Closing Link: {nick}[127.0.0.1] (Quit: {self.quit})"]
        if out:
            self.send_many(out)
        if cmd == "QUIT":
            self._hang_up()

    def _join_echo(self, chan: str) -> list[str]:
        user = self.registration.user if self.registration else self.nick
        out = [f":{self.nick}!{user}@127.0.0.1 JOIN {chan}"]
        if self.dialect.names:
            out += [
                f":{SERVER} 353 {self.nick} = {chan} :@{self.nick} {self.tester}",
                f":{SERVER} 366 {self.nick} {chan} :End of /NAMES list.",
            ]
        return out

    def serve_for(self, seconds: float) -> int:
        """Answer the bot's own lines for SECONDS (e.g. while it idles); return how many."""
        deadline = time.monotonic() + seconds
        n = 0
        for _ in range(MAX_SKIPPED):
            left = deadline - time.monotonic()
            if left <= 0 or self._conn is None:
                break
            try:
                line = self._read_counted(left)
            except IrcTimeout:
                break  # the bot was quiet until the end: that is idling
            self.answer(*_split(line))
            n += 1
        return n

    def wait_quit(self, wait: float | None = None) -> str:
        """Wait for the bot's QUIT, answer it with ERROR and close; return its message."""
        if self.quit is None:
            _, params = self.wait_for(lambda c, p: c == "QUIT", "QUIT", wait)
            self.answer("QUIT", params)
        return self.quit or ""

    # ------------------------------------------------------------------ what experiments use
    def ping(self, n: int, *, window: int = 256, prefix: str = "token") -> int:
        """Send n ``PING :PREFIX-i`` lines (pipelined ``window`` at a time), check each PONG.

        The bot's other lines in between are answered and skipped; returns n; raises IrcError
        at the first missing, reordered or wrong answer.
        """
        if n < 0 or window < 1:
            raise ValueError("n must be >= 0 and window >= 1")
        done = 0
        while done < n:
            k = min(window, n - done)
            tokens = [f"{prefix}-{done + i}" for i in range(k)]
            self.send_many([f"PING :{t}" for t in tokens])
            for t in tokens:
                _, params = self.wait_for(lambda c, p: c == "PONG", f"PONG :{t}")
                if params[-1:] != [t]:
                    got = " ".join(params)
                    raise IrcError(f"PING {done} of {n}: expected 'PONG :{t}', got 'PONG {got}'")
                done += 1
                self.pings += 1
        return n

    def pong_check(self, n: int, prefix: str = "t") -> int:
        """Send N ``PING :PREFIXi`` one at a time and check each answer, in order: ``PONG :tok``
        (RFC 1459) or ``PONG tok`` (what a plain client such as sic sends).

        Why not :meth:`ping`: a client that is not our bot answers nothing else, so each line
        read must be the PONG itself.  Returns N; IrcError at the first wrong or missing one."""
        for i in range(n):
            tok = f"{prefix}{i}"
            self.send(f"PING :{tok}")
            got = self.readline()
            if got not in (f"PONG :{tok}", f"PONG {tok}"):
                raise IrcError(f"PING {i} of {n}: expected PONG {tok}, got {got!r}")
        return n

    def queue_wait(self) -> float:
        """Seconds the bot's send queue is estimated to hold a reply queued now."""
        return max(0.0, self._queue_free_at - time.monotonic())

    def command(
        self,
        text: str,
        *,
        sender: str | None = None,
        private: bool = False,
        on_sent: Callable[[], None] | None = None,
    ) -> str | dict[str, int]:
        """Say TEXT in the channel (or to the bot, ``private``) and return the bot's reply
        (for a memory command: the parsed dict).  The wait is the estimated send-queue delay
        plus ``timeout``; a delay over :data:`MAX_QUEUE_WAIT_S` is refused up front.
        ON_SENT runs once the line is sent, before the wait (e.g. to read /proc then)."""
        sender = sender or self.tester
        chan = self.channel
        to = self.nick if private else chan
        queued = self.queue_wait()
        if queued > MAX_QUEUE_WAIT_S:
            raise IrcError(
                f"{text}: the bot's send queue holds a reply for ~{queued:.0f} s (over "
                f"{MAX_QUEUE_WAIT_S:g}): send commands before PINGs"
            )
        t0 = time.monotonic()
        self.send(f":{sender}!{sender}@127.0.0.1 PRIVMSG {to} :{text}")
        if on_sent is not None:
            on_sent()

        def is_reply(cmd: str, params: list[str]) -> bool:
            return (
                cmd in ("PRIVMSG", "NOTICE")
                and len(params) == 2
                and params[0] in (chan, sender)
                and bool(params[1])
            )

        try:
            _, params = self.wait_for(
                is_reply, f"reply to {text!r} in {chan}", queued + self.timeout
            )
        except IrcError as e:
            raise IrcError(f"no reply to {text!r}: {e}") from None
        self.commands += 1
        reply = params[1]
        self.replies.append(
            {"text": text, "reply": reply, "latency_s": round(time.monotonic() - t0, 3),
             "queue_s": round(queued, 3)}
        )  # fmt: skip
        return parse_mem(reply) if text in MEM_COMMANDS else reply


def _split(line: str) -> tuple[str, list[str]]:
    """Split an IRC line into (COMMAND, params), dropping the prefix; ':' starts the trailer."""
    if line.startswith(":"):
        line = line.partition(" ")[2]
    head, sep, trailer = line.partition(" :")
    words = head.split()
    if not words:
        return "", []
    params = words[1:] + ([trailer] if sep else [])
    return words[0].upper(), params
