"""A tiny loopback IRC server that drives the demo bot (csrc/targets/minibot.c) and checks it.

Why our own server: experiments must be reproducible and bounded on a machine with no network,
so the runner plays the IRC network itself -- one client, one channel, answers checked line by
line.  It speaks just enough IRC for the bot: registration (NICK/USER -> 001), JOIN, PING/PONG
and channel PRIVMSG.  Every wait has a deadline and every loop a bound, so a hung or dead bot is
an :class:`IrcError`, never a hang.

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
from dataclasses import dataclass

from .errors import ExperimentError

MAX_LINE = 512  # RFC 1459: a line, CR LF included, is at most 512 bytes
MEM_FIELDS = ("VmSize", "VmPeak", "VmRSS", "VmExe", "VmData", "VmLib", "VmStk")
MEM_REPLY = re.compile(
    r"VM (\d+) kB \(Max (\d+) kB\), RSS (\d+) kB "
    r"\[ Code (\d+) kB, Data (\d+) kB, Libs (\d+) kB, Stack (\d+) kB \]"
)


class IrcError(ExperimentError):
    """The bot did not answer as IRC (or the experiment) requires, or not in time."""


@dataclass(frozen=True)
class Registration:
    """What the bot sent while registering."""

    nick: str
    user: str
    channel: str


def parse_mem(text: str) -> dict[str, int]:
    """Parse the bot's !mem reply into {VmSize, VmPeak, VmRSS, VmExe, VmData, VmLib, VmStk}."""
    m = MEM_REPLY.fullmatch(text)
    if not m:
        raise IrcError(f"malformed !mem reply: {text!r}")
    return dict(zip(MEM_FIELDS, (int(g) for g in m.groups()), strict=True))


class IrcServer:
    """One-client IRC server on 127.0.0.1 (ephemeral port); a context manager that closes it.

    ``timeout`` bounds every single wait (seconds); ``nick``/``channel`` are what
    :meth:`bot_args` hands the bot, and what registration must then show.
    """

    def __init__(self, *, nick: str = "minibot", channel: str = "#remap", timeout: float = 5.0):
        self.nick = nick
        self.channel = channel
        self.timeout = timeout
        self._listen = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listen.bind(("127.0.0.1", 0))
        self._listen.listen(1)
        self.port: int = self._listen.getsockname()[1]
        self._conn: socket.socket | None = None
        self._buf = b""
        self.registration: Registration | None = None
        self.pings = 0  # PONGs checked so far
        self.commands = 0

    # ------------------------------------------------------------------ lifecycle
    def bot_args(self) -> list[str]:
        """The bot's command-line arguments: HOST PORT NICK CHANNEL."""
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
            cmd, params = _split(self.readline())
            if cmd == "NICK" and params:
                nick = params[0]
            elif cmd == "USER" and params:
                user = params[0]
            if nick and user:
                break
        else:
            raise IrcError("the bot did not send NICK and USER")
        self.send(f":remap.local 001 {nick} :Welcome to the remap test network {nick}")
        cmd, params = _split(self.readline())
        if cmd != "JOIN" or not params:
            raise IrcError(f"expected JOIN after 001, got {cmd} {params}")
        self.send(f":{nick}!{user}@127.0.0.1 JOIN {params[0]}")
        self.registration = Registration(nick, user, params[0])
        if nick != self.nick or params[0] != self.channel:
            raise IrcError(
                f"bot registered as {nick} in {params[0]}, not {self.nick} in {self.channel}"
            )
        return self.registration

    def close(self) -> None:
        """Close the client connection (the bot sees EOF and exits 0) and the listener."""
        if self._conn is not None:
            try:
                self._conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._conn.close()
            self._conn = None
        self._listen.close()

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

    def readline(self) -> str:
        """One line from the bot (without CR LF), waiting at most ``timeout`` seconds."""
        conn = self._need_conn()
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise IrcError(f"no line from the bot within {self.timeout:g} s")
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

    def _need_conn(self) -> socket.socket:
        if self._conn is None:
            raise IrcError("no bot connected (call accept_bot first)")
        return self._conn

    # ------------------------------------------------------------------ what experiments use
    def ping(self, n: int, *, window: int = 256, prefix: str = "token") -> int:
        """Send n ``PING :PREFIX-i`` lines (pipelined ``window`` at a time), check each PONG.

        Returns n; raises IrcError at the first missing, reordered or wrong answer.
        """
        if n < 0 or window < 1:
            raise ValueError("n must be >= 0 and window >= 1")
        done = 0
        while done < n:
            k = min(window, n - done)
            tokens = [f"{prefix}-{done + i}" for i in range(k)]
            self.send_many([f"PING :{t}" for t in tokens])
            for t in tokens:
                got = self.readline()
                if got != f"PONG :{t}":
                    raise IrcError(f"PING {done} of {n}: expected 'PONG :{t}', got {got!r}")
                done += 1
                self.pings += 1
        return n

    def command(self, text: str, *, sender: str = "tester") -> str | dict[str, int]:
        """Say TEXT in the channel and return the bot's reply (for !mem: the parsed dict)."""
        chan = self.channel
        self.send(f":{sender}!{sender}@127.0.0.1 PRIVMSG {chan} :{text}")
        for _ in range(8):  # bounded: the reply is the next channel message from the bot
            cmd, params = _split(self.readline())
            if cmd == "PRIVMSG" and len(params) == 2 and params[0] == chan:
                self.commands += 1
                reply = params[1]
                return parse_mem(reply) if text == "!mem" else reply
        raise IrcError(f"no reply to {text!r} in {chan}")


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
