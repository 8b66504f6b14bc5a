"""The CLI's shared promises: one-line errors, exit codes per class, no tracebacks."""

from __future__ import annotations

import pytest
from helpers import NOBODY, assert_one_line_error
from helpers import remap_cli as run_remap


def test_unknown_command_is_one_line_usage_error():
    assert_one_line_error(run_remap("no-such-command"), 2)


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


@pytest.mark.parametrize(
    "argv",
    [
        ["map", "123"],
        ["map", "123", "--json"],
        ["map", "--json", "123"],
        ["map", "0123", "--pages"],
        ["map", "--pages", "123", "--json"],
    ],
)
def test_the_fast_map_line_is_what_argparse_makes_of_it(argv):
    """`remap map PID [--json] [--pages]` skips argparse (remap.cli.fast_map_args): the same
    namespace, handler included, as the full parser returns for that line."""
    from remap.cli import build_parser, fast_map_args

    fast = fast_map_args(argv)
    assert fast is not None
    assert vars(fast) == vars(build_parser().parse_args(argv))


@pytest.mark.parametrize(
    "argv",
    [
        [], ["map"], ["map", "0"], ["map", "99999999"], ["map", "+5"], ["map", "-5"],
        ["map", "\u0663"], ["map", " 1"], ["map", "1", "--js"], ["map", "1", "--json", "--json"],
        ["map", "1", "--png", "x.png"], ["map", "1", "2"], ["map", "--", "1"], ["map", "1", "-h"],
        ["explain", "1"], ["map", "1", "--json", "--pages", "--bogus"],
    ],
)  # fmt: skip
def test_every_other_map_line_goes_to_argparse(argv):
    """Anything but the well-formed lines -- bad or out-of-range PIDs, abbreviations, repeats,
    help, other options -- is left to argparse, so its errors and exit codes stay its own."""
    from remap.cli import fast_map_args

    assert fast_map_args(argv) is None


def test_a_refusal_no_lower_layer_named_exits_4_not_70(is_root):
    """`remap report` on a records file only root may read, run as nobody: the PermissionError
    reaches the CLI's top level, which sends it through errors.translate (one line, exit 4;
    it used to print 'internal error: PermissionError' and exit 70)."""
    import os
    import shutil
    import tempfile

    if not is_root:
        pytest.skip("needs root to drop to nobody")
    d = tempfile.mkdtemp(prefix="remap-denied-")
    try:
        os.chmod(d, 0o755)
        with open(os.path.join(d, "x.jsonl"), "w") as f:
            f.write("{}\n")
        os.chmod(os.path.join(d, "x.jsonl"), 0o600)
        r = run_remap("report", d, prefix=NOBODY)
        assert_one_line_error(r, 4)
        assert "permission denied" in r.stderr and "x.jsonl" in r.stderr
    finally:
        shutil.rmtree(d)


@pytest.mark.parametrize(
    "argv",
    [
        ("map", "999999999", "--json"),  # no such process
        ("floor", "1", "--seconds", "0", "--json"),  # a usage error
        ("fold", "999999999", "--single-page", "--json"),  # issue 18: was an empty stdout
        ("explain", "999999999", "--js"),  # argparse's abbreviation of --json
    ],
)
def test_a_refusal_with_json_is_a_json_document(argv):
    """With --json a refusal is still one line on stderr, and stdout holds one JSON document
    naming it, so a script reading the JSON never parses an empty stdout."""
    import json

    r = run_remap(*argv)
    assert_one_line_error(r)
    doc = json.loads(r.stdout)
    err = doc["error"]
    assert err["exit_code"] == r.returncode and err["kind"].endswith(("Error", "Process"))
    assert err["message"] and err["message"] in r.stderr
