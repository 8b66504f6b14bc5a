"""The CLI's shared promises: one-line errors, exit codes per class, no tracebacks."""

from __future__ import annotations

import subprocess
import sys


def run_remap(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "remap", *args], capture_output=True, text=True, timeout=60
    )


def test_unknown_command_is_one_line_usage_error():
    r = run_remap("no-such-command")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr


def test_version():
    r = run_remap("--version")
    assert r.returncode == 0
    assert r.stdout.startswith("remap")


def test_targets_build_and_cache(tmp_path, monkeypatch):
    from remap import targets

    monkeypatch.setenv("REMAP_BUILD_DIR", str(tmp_path))
    p = targets.build("echoloop")
    assert p.is_file() and p.stat().st_mode & 0o111
    mtime = p.stat().st_mtime_ns
    assert targets.build("echoloop").stat().st_mtime_ns == mtime  # cached, not rebuilt
    with open(p, "rb") as f:
        assert f.read(4) == b"\x7fELF"


def test_unknown_target_is_a_clear_error():
    import pytest

    from remap import targets
    from remap.errors import ExperimentError

    with pytest.raises(ExperimentError, match="unknown target"):
        targets.build("does-not-exist")
