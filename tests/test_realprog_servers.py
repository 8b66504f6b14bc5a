"""Servers nobody here wrote: Debian's Go `webhook`, and busybox httpd inside a PID namespace.

Issue 12: on `webhook` (Go: goroutine stacks live in the Go heap arena) squeeze called the Go
heap "its dead stack" and refused; inside `unshare --pid --fork --mount-proc` squeeze waited in
wait4 forever with the target still traced (the batch stub signalled the thread by its host PID
from inside the target).  Each server is asked over HTTP on 127.0.0.1 after every operation and
must answer as before; every remap run has a deadline, and the target must be detached and
running afterwards whatever remap did.
"""

from __future__ import annotations

import json
import secrets

import pytest
from realprog import (
    assert_released,
    children,
    free_port,
    http_get,
    need,
    nspid,
    run_remap,
    squeeze,
    squeezed,
    squeezed_or_refused,
    started,
    wait_for,
)

from remap import procfs

SQUEEZES = 5


def _hook_answers(port: int) -> bool:
    """The hook runs /bin/echo with a fresh token from the URL and returns its output."""
    token = secrets.token_hex(8)
    return http_get(port, f"/hooks/echo?x={token}") == (200, f"hook-ok {token}\n".encode())


@pytest.mark.timeout(120)
def test_go_webhook_squeezed_5_times_still_runs_its_hook(tmp_path):
    need("webhook")
    hooks = tmp_path / "hooks.json"
    hook = {
        "id": "echo",
        "execute-command": "/bin/echo",
        "include-command-output-in-response": True,
        "pass-arguments-to-command": [
            {"source": "string", "name": "hook-ok"},
            {"source": "url", "name": "x"},
        ],
    }
    hooks.write_text(json.dumps([hook]))
    port = free_port()
    argv = ["webhook", "-hooks", str(hooks), "-ip", "127.0.0.1", "-port", str(port)]
    with started(argv, tmp_path / "webhook.log") as p:
        wait_for("webhook answers", lambda: _hook_answers(port), proc=p)
        assert procfs.read_stat(p.pid).comm == "webhook"
        assert len(procfs.thread_ids(p.pid)) >= 4  # the Go runtime's Ms
        for i in range(SQUEEZES):
            r = squeeze(p.pid)
            squeezed(r)
            assert _hook_answers(port), f"the hook no longer answers after squeeze {i + 1}"


def _pidns_httpds(www, port_init: int, port_other: int) -> list[str]:
    """busybox httpd as PID 1 of a new PID namespace, and a second one (not init) beside it."""
    both = (
        f"busybox httpd -f -p 127.0.0.1:{port_other} -h {www} & "
        f"exec busybox httpd -f -p 127.0.0.1:{port_init} -h {www}"
    )
    return ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "sh", "-c", both]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("which", ["init", "not-init"])
def test_pid_namespace_httpd_squeezed_or_refused_in_bounded_time(tmp_path, which):
    need("unshare", "busybox")
    www = tmp_path / "www"
    www.mkdir()
    page = secrets.token_hex(16).encode()
    (www / "index.html").write_bytes(page)
    ports = {"init": free_port(), "not-init": free_port()}
    with started(_pidns_httpds(www, ports["init"], ports["not-init"]), tmp_path / "ns.log") as p:
        port = ports[which]
        for name, pt in ports.items():
            wait_for(
                f"the {name} httpd answers", lambda pt=pt: http_get(pt, "/")[1] == page, proc=p
            )
        (init,) = children(p.pid)
        # httpd forks a child per request: wait until the probes' handlers have exited
        (other,) = wait_for("one child of init", lambda: len(c := children(init)) == 1 and c)
        pid = init if which == "init" else other
        assert nspid(init) == 1 and nspid(other) > 1 and procfs.read_stat(pid).comm == "busybox"

        _check_getpid(pid, port, page)
        for _ in range(SQUEEZES):  # the hang comes with some layouts only: give it chances
            r = squeeze(pid)
            assert http_get(port, "/") == (200, page), f"httpd no longer serves after {r}"
            if squeezed_or_refused(r) is None:
                break  # refused in one line: nothing more to try
        _check_getpid(pid, port, page)


def _check_getpid(pid: int, port: int, page: bytes) -> None:
    """`remap syscall PID getpid` prints PID's own number in its namespace (1 for the init),
    in bounded time, and leaves it detached and serving."""
    r = run_remap("syscall", str(pid), "getpid")
    assert_released(pid)
    assert http_get(port, "/") == (200, page), f"httpd no longer serves after {r}"
    assert (r.returncode, r.stdout.strip()) == (0, str(nspid(pid))), str(r)
