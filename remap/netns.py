"""A private network namespace holding only loopback, for targets that must reach nothing.

Why: a real program under test (EnergyMech, issue 16) may try to resolve names or contact an
uptime server; inside a namespace of its own with only ``lo`` up there is no route anywhere
else, whatever it does.  Its IRC server must live in the same namespace: remap creates the
listening socket from a thread that has entered the namespace (a socket keeps the namespace it
was made in), and the target is started through ``nsenter --net`` -- which execs in place, so the
target's host PID is the one Popen returned and remap attaches to it from outside as usual.

The namespace lives as long as :class:`NetNamespace` holds its file descriptor (and any process
or socket in it); ``close()`` drops remap's reference.

Example::

    >>> with NetNamespace() as ns:
    ...     srv = ns.listen(("127.0.0.1", 0))           # a socket inside the namespace
    ...     argv = ns.enter_argv(["./bot"], uid=65534, gid=65534)
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import TypeVar

from . import procfs
from .errors import AccessDenied, UnsupportedTarget, translate
from .kconst import CLONE_NEWNET, IFF_UP, SIOCGIFFLAGS, SIOCSIFFLAGS

T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)
IFREQ = "16sH14x"  # struct ifreq: the name, then ifr_flags (a short) in the union


class NetNamespace:
    """A new network namespace (only ``lo``, brought up); a context manager that releases it.

    Raises AccessDenied (not allowed to create namespaces: needs CAP_SYS_ADMIN) or
    UnsupportedTarget (a kernel without network namespaces).
    """

    def __init__(self) -> None:
        self.fd: int = self._in_thread(self._create)

    # Each call below runs in a fresh thread: setns/unshare change only the calling thread's
    # namespace, so remap's own threads never leave the host's network.
    @staticmethod
    def _in_thread(fn: Callable[[], T]) -> T:
        box: dict[str, object] = {}

        def body() -> None:
            try:
                box["value"] = fn()
            except BaseException as e:  # handed to the caller's thread
                box["error"] = e

        t = threading.Thread(target=body, name="remap-netns", daemon=True)
        t.start()
        t.join(timeout=10)
        if t.is_alive():
            raise UnsupportedTarget("network namespace set-up did not finish within 10 s")
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["value"]  # type: ignore[return-value]

    @staticmethod
    def _create() -> int:
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            e = translate(OSError(err, os.strerror(err)), what="unshare(CLONE_NEWNET)")
            if isinstance(e, AccessDenied):
                raise e
            raise UnsupportedTarget(f"cannot create a network namespace: {os.strerror(err)}")
        fd = procfs.open_thread_ns(threading.get_native_id(), "net")
        _loopback_up()
        return fd

    def _enter(self) -> None:
        if _libc.setns(self.fd, CLONE_NEWNET) != 0:
            raise AccessDenied(f"setns(network): {os.strerror(ctypes.get_errno())}")

    def run(self, fn: Callable[[], T]) -> T:
        """Call FN in a thread inside the namespace and return what it returned."""

        def inside() -> T:
            self._enter()
            return fn()

        return self._in_thread(inside)

    def listen(self, addr: tuple[str, int] = ("127.0.0.1", 0), backlog: int = 1) -> socket.socket:
        """A listening TCP socket inside the namespace (usable from any thread afterwards)."""

        def make() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)
            s.listen(backlog)
            return s

        return self.run(make)

    def path(self) -> str:
        """A path naming the namespace for a child that inherits :attr:`fd` (pass_fds)."""
        return procfs.self_fd_path(self.fd)

    def enter_argv(self, argv: list[str], *, uid: int | None = None, gid: int | None = None):
        """ARGV prefixed with nsenter into the namespace (and -S/-G: the user it runs as, with
        no supplementary groups).  The child must inherit :attr:`fd` (Popen pass_fds)."""
        pre = ["nsenter", f"--net={self.path()}"]
        if gid is not None:
            pre += ["-G", str(gid)]
        if uid is not None:
            pre += ["-S", str(uid)]
        return [*pre, "--", *argv]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> NetNamespace:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _loopback_up() -> None:
    """Bring ``lo`` up in the calling thread's namespace (SIOCGIFFLAGS, then SIOCSIFFLAGS)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack(IFREQ, b"lo", 0)
        flags = struct.unpack(IFREQ, fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack(IFREQ, b"lo", flags | IFF_UP))
