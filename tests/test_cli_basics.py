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


def test_command_map_names_the_module_that_registers_each_command():
    """remap.cli.COMMANDS (used to import one module per run) is what the modules register."""
    import importlib

    from remap.cli import COMMAND_MODULES, COMMANDS, build_parser

    full = build_parser()
    sub = next(a for a in full._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)
    for name in COMMAND_MODULES:
        parser = build_parser(next(c for c, m in COMMANDS.items() if m == name))
        mine = next(a for a in parser._actions if a.dest == "command")
        assert {c for c, m in COMMANDS.items() if m == name} == set(mine.choices)
        assert importlib.import_module(f"remap.cli.{name}")  # the module exists


def test_one_command_parses_like_the_full_parser():
    from remap.cli import build_parser

    argv = ["map", "123", "--pages", "--json"]
    assert vars(build_parser("map").parse_args(argv)) == vars(build_parser().parse_args(argv))
