"""Hostile input: every CLI command and the experiment file parser fed with what hypothesis
makes up, plus the refusals a user meets for real (no such process, kernel thread, zombie,
permission, unwritable results folder, a binary replaced on disk).  The contract: never a
traceback, one line on stderr, and the exit code of the refusal's class (remap.errors)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import assert_one_line_error, state, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remap import inject, targets
from remap.cli import build_parser, main
from remap.errors import EXIT_CODES, ExperimentError
from remap.experiment import spec

ROOT = Path(__file__).resolve().parents[1]
REFUSALS = set(EXIT_CODES.values()) - {EXIT_CODES["internal"]}
NO_PID = 4_000_000  # within pid_arg's range, above this kernel's pid_max
KTHREADD = 2
SAFE_COMMANDS = [
    "map",
    "explain",
    "watch",
    "syscall",
    "run",
    "report",
    "squeeze",
    "fold",
    "profile",
    "layout",
    "floor",
]  # fmt: skip  (launch runs programs and `kernels fetch` downloads: tested on their own below)


@pytest.fixture(scope="module")
def zombie() -> int:
    """A child that has exited and is not reaped: a zombie for the whole module."""
    p = subprocess.Popen(["/bin/true"])
    wait_until("a zombie", lambda: state(p.pid) == "Z", 5)
    yield p.pid
    p.wait()


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def assert_refusal(rc: int, err: str, argv: list[str]) -> None:
    assert "Traceback" not in err, (argv, err)
    assert rc in REFUSALS | {0}, (argv, rc, err)  # never 70: an internal error is a bug
    if rc:
        assert_one_line_error(subprocess.CompletedProcess(argv, rc, "", err))


def _options() -> dict[str, list[str]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {
        name: [o for a in sp._actions for o in a.option_strings if o not in ("-h", "--help")]
        for name, sp in sub.choices.items()
    }


OPTIONS = _options()
_RESERVED = set(spec.available()) | {"fetch", "host", "debian-6.1"}


def _harmless(tok: str) -> bool:
    """No real PID (a fuzzed `squeeze 1` would act on init), no experiment or kernel name."""
    if tok in _RESERVED:
        return False
    with contextlib.suppress(ValueError):
        n = int(tok, 10)
        return not 0 < n <= 1 << 22 or n in (NO_PID, KTHREADD)
    return True


def tokens(cmd: str, pool: list[str]) -> st.SearchStrategy[list[str]]:
    text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12).filter(_harmless)
    numbers = st.sampled_from(["-1", "0", "-0", "1e9", "0x10", "nan", "inf", "99999999999999999"])
    paths = st.sampled_from(["/etc/passwd/x", "/proc/nonexistent/x", "", "a\x00b", "/"])
    return st.lists(
        st.one_of(st.sampled_from(OPTIONS[cmd] or ["--json"]), st.sampled_from(pool), text,
                  numbers, paths),
        max_size=6,
    )  # fmt: skip


@pytest.mark.parametrize("cmd", SAFE_COMMANDS)
def test_cli_arguments_never_make_a_traceback(cmd, zombie, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written by accident lands here
    pool = [str(NO_PID), str(KTHREADD), str(zombie), "getpid", "nosuchcall"]

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(tokens(cmd, pool))
    def check(args: list[str]) -> None:
        argv = [cmd, *args]
        rc, _out, err = run_cli(argv)
        assert_refusal(rc, err, argv)

    check()


@given(st.lists(st.text(max_size=10), max_size=4))
@settings(max_examples=60, deadline=None)
def test_top_level_garbage(argv):
    argv = [a for a in argv if _harmless(a) and a not in OPTIONS]
    if not argv:
        return  # no command at all: the usage text (exit 2), on purpose
    rc, _out, err = run_cli(argv)
    assert_refusal(rc, err, argv)


# ----------------------------------------------------------------------------- experiment files
toml_scalars = st.one_of(
    st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=8)
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(["name", "step", "args", "aslr", "env_size", "pages", "x", "irc"]),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=12,
)
KEYS = ["description", "repeat", "target", "launch", "measure", "steps", "cases", "bogus"]


@given(st.dictionaries(st.sampled_from(KEYS), toml_values, max_size=6))
@settings(max_examples=300, deadline=None)
def test_experiment_parser_refuses_any_shape_in_one_line(data):
    try:
        exp = spec.parse(data, Path("fuzz.toml"))
    except ExperimentError as e:
        assert "\n" not in str(e) and str(e).startswith("fuzz.toml: ")
    else:
        assert exp.cases and all(c.steps[0].name == "launch" for c in exp.cases)


@given(st.text(max_size=200))
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_experiment_file_text_never_crashes_the_loader(text):
    d = Path(os.environ.get("TMPDIR", "/tmp")) / f"remap-fuzz-{os.getpid()}"
    d.mkdir(exist_ok=True)
    f = d / "fuzz.toml"
    try:
        f.write_text(text, errors="surrogatepass")
    except UnicodeEncodeError:
        return
    try:
        spec.load(str(f))
    except ExperimentError as e:
        assert "\n" not in str(e).strip()


@pytest.mark.parametrize("name", ["a\x00b", "../../etc/passwd", "", " ", "x" * 5000, "/"])
def test_experiment_names_that_are_not_files(name):
    rc, _out, err = run_cli(["run", name])
    assert rc == EXIT_CODES["experiment"] or rc == EXIT_CODES["usage"], err
    assert_refusal(rc, err, ["run", name])


# ----------------------------------------------------------------------------- refusal classes
def test_each_refusal_class_has_its_own_exit_code(zombie):
    codes = {
        "no such process": run_cli(["squeeze", str(NO_PID)]),
        "zombie": run_cli(["squeeze", str(zombie)]),
        "kernel thread": run_cli(["syscall", str(KTHREADD), "getpid"]),
        "usage": run_cli(["syscall", "notapid", "getpid"]),
    }
    assert codes["no such process"][0] == EXIT_CODES["no such process"]
    assert codes["zombie"][0] == EXIT_CODES["no such process"]
    assert "zombie" in codes["zombie"][2]
    assert codes["kernel thread"][0] == EXIT_CODES["unsupported target"]
    assert "kernel thread" in codes["kernel thread"][2]
    assert codes["usage"][0] == EXIT_CODES["usage"]
    assert len(set(EXIT_CODES.values())) == len(EXIT_CODES)  # one code per class


def test_unprivileged_user_on_a_root_process():
    """`nobody` pointing remap at a root process: permission, exit 4, one line.  The driver is
    a fork of this process that drops to uid/gid 65534 (no exec: the checkout need not be
    readable by nobody)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to nobody")
    target = subprocess.Popen(["sleep", "30"])
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        code = 99
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            rc, _out, err = run_cli(["syscall", str(target.pid), "getpid"])
            os.write(w, f"{rc}\n{err}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    try:
        _, status = os.waitpid(child, 0)
        with os.fdopen(r) as f:
            rc_text, err = f.read().split("\n", 1)
        assert os.waitstatus_to_exitcode(status) == 0
        assert int(rc_text) == EXIT_CODES["permission"], err
        assert_refusal(int(rc_text), err, ["syscall", "root process"])
    finally:
        target.kill()
        target.wait()


@pytest.mark.parametrize("out", ["/etc/passwd/results", "/proc/self/results"])
def test_results_folder_not_writable(out):
    rc, _o, err = run_cli(["run", "baseline-minibot", "--repeat", "1", "--out", out])
    assert_refusal(rc, err, ["run", "--out", out])
    assert rc != 0


def test_launch_of_a_program_that_does_not_exist(tmp_path):
    rc, _o, err = run_cli(["launch", "--", str(tmp_path / "no-such-program")])
    assert_refusal(rc, err, ["launch"])
    assert rc != 0


def test_target_binary_replaced_on_disk_after_launch(tmp_path):
    """The gadget search reads code from /proc/PID/map_files (the mapped inode), never from a
    path that now names another file: injection still works and the target is untouched."""
    exe = tmp_path / "worker"
    shutil.copy(targets.build("inject_idle"), exe)
    p = subprocess.Popen([str(exe)], stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline().startswith(b"ready")
        new = tmp_path / "new"
        new.write_bytes(b"\x7fELF" + b"\x00" * 4096)  # garbage with the same name after rename
        os.replace(new, exe)
        with inject.attach(p.pid) as s:
            assert s.syscall("getpid") == p.pid
            assert s.syscalls([("getpid",)] * 2) == [p.pid] * 2
        rc, _o, err = run_cli(["explain", str(p.pid)])
        assert rc == 0, err
        assert p.poll() is None
    finally:
        p.kill()
        p.wait()
        p.stdout.close()
