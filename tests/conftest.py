"""Shared fixtures: real target processes built from csrc/targets, killed after each test."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import helpers
import pytest

from remap import targets


class Target:
    """A running target process started by a test (a thin, honest wrapper over Popen)."""

    def __init__(self, proc: subprocess.Popen, path: Path):
        self.proc = proc
        self.pid = proc.pid
        self.path = path

    def state(self) -> str:
        """The one-letter state from /proc/PID/stat (R, S, T, t, Z...)."""
        return helpers.state(self.pid)

    def wait_blocked(self, timeout: float = 5.0) -> None:
        """Wait until the target sleeps in the kernel (state S), i.e. it reached its idle loop;
        AssertionError if it exits first or does not block within TIMEOUT."""
        helpers.wait_blocked(self.pid, timeout, self.proc)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)


@pytest.fixture
def spawn() -> Iterator:
    """spawn(name, variant="default", *args, **popen_kw) -> Target, killed at teardown."""
    started: list[Target] = []

    def _spawn(name: str, variant: str = "default", *args: str, **kw) -> Target:
        path = targets.build(name, variant)
        kw.setdefault("stdin", subprocess.PIPE)
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        t = Target(subprocess.Popen([str(path), *args], **kw), path)
        started.append(t)
        return t

    yield _spawn
    for t in started:
        t.kill()
        for f in (t.proc.stdin, t.proc.stdout, t.proc.stderr):
            if f:
                f.close()


@pytest.fixture(scope="session")
def is_root() -> bool:
    return os.geteuid() == 0
