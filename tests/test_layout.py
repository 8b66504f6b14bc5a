"""remap.layout: a real profile of the demo bot -> linker script -> relink -> fold to 4 kB."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess

import pytest
from helpers import remap_cli

from remap import fold, residency
from remap.errors import UnsafeStep, UsageError
from remap.fold.hotpage import HOT_SYMBOLS
from remap.ircd import IrcServer
from remap.launch import launch
from remap.layout import (
    compile_target,
    elf_symbols,
    estimate_budget,
    link,
    musl_libc,
    plan_layout,
    read_archive,
)
from remap.profile import Profile, irc_workload, profile
from remap.targets import build, build_dir

pytest.importorskip("capstone")


@pytest.fixture(scope="module")
def prof() -> Profile:
    """One real profile of the function-sections bot (PINGs, !ping, !mem), shared by the file."""
    path = build("minibot-auto")
    with IrcServer() as srv:
        bot = launch([str(path), *srv.bot_args()])
        try:
            srv.accept_bot()
            bot.wait_blocked()
            wl = irc_workload(srv, 20)
            return profile(bot.pid, workload=wl, baseline=wl)
        finally:
            bot.stop()


@pytest.fixture(scope="module")
def obj(tmp_path_factory) -> str:
    return compile_target("minibot-auto", build_dir() / "auto")


def test_archive_reader_finds_musl_members():
    members = read_archive(str(musl_libc()))
    assert len(members) > 1000
    by = {m.member: m for m in members}
    sec = by["read.lo"].defines("read")
    assert sec is not None and sec.name == ".text.read"
    assert sec.pattern.endswith("libc.a:read.lo(.text.read)")


def test_link_resolves_archives_that_call_each_other_in_any_order(tmp_path):
    """busybox's Kbuild archives refer back to archives listed before them (libbb/lib.a's
    main -> init_main in init/lib.a): link() groups its inputs, so that order links."""
    units = {
        "main": "int applet(void); int main(void) { return applet(); }",
        "applet": "int helper(void); int applet(void) { return helper() + 1; }",
        "helper": "int helper(void) { return 41; }",
    }
    for name, text in units.items():
        (tmp_path / f"{name}.c").write_text(text + "\n")
        subprocess.run(["musl-gcc", "-c", "-o", str(tmp_path / f"{name}.o"),
                        str(tmp_path / f"{name}.c")], check=True)  # fmt: skip
    archives = []
    for name in ("helper", "applet", "main"):  # each needs one listed before it
        a = tmp_path / f"lib{name}.a"
        subprocess.run(["ar", "rcs", str(a), str(tmp_path / f"{name}.o")], check=True)
        archives.append(a)
    plain = subprocess.run(["musl-gcc", "-static", "-no-pie", "-o", str(tmp_path / "plain"),
                            *map(str, archives)], capture_output=True, text=True)  # fmt: skip
    assert plain.returncode != 0 and "undefined reference" in plain.stderr  # the order matters
    out = link(archives, tmp_path / "grouped")
    assert subprocess.run([out], timeout=10).returncode == 42


def test_layout_packs_the_hot_path_and_is_deterministic(prof, obj):
    lay = plan_layout(prof, [obj, musl_libc()])
    code = [e.section.name for e in lay.code]
    for fn in ("hot_main", "handle_line", "hot_syscall", "read_status"):
        assert f".text.{fn}" in code
    assert ".text.hot_exit" in code  # never ran, but hot_main can jump there on EOF
    assert ".text.startup.main" not in code and ".text.read_line" not in code
    why = {e.section.name: e.why for e in lay.code + lay.rodata}
    assert "not executed" in why[".text.hot_exit"]
    assert "executed" in why[".text.hot_main"]
    assert ".rodata.s_ping" in why and "after_word" in why[".rodata.s_ping"]
    b = lay.budget
    assert b["total"] <= 4096 and b["code"] > 1000 and b["data"] > 1024
    assert b["stack_min"] >= prof.stack.peak_depth
    # byte for byte the same from the same profile, also after a JSON round trip
    again = plan_layout(
        Profile.from_json(json.loads(json.dumps(prof.to_json()))), [obj, musl_libc()]
    )
    assert again.script == lay.script
    assert "/* hot_main: executed" in lay.script
    for sym in HOT_SYMBOLS:
        assert sym in lay.script


@contextlib.contextmanager
def _folded(lay, obj, binary, single_page: bool | None = None):
    """Link OBJ with LAY's script into BINARY, launch it (vdso hidden), register it, serve 20
    PINGs, fold it; yields (server, bot, hot symbols, fold report), the bot stopped after."""
    script = binary.with_suffix(".ld")
    script.write_text(lay.script)
    link([obj], binary, script)
    syms = elf_symbols(binary, HOT_SYMBOLS)
    assert syms["__hot_start"] % 4096 == 0
    assert syms["__hot_stack_hi"] - syms["__hot_stack_lo"] >= lay.stack_min
    with IrcServer() as srv:
        bot = launch([str(binary), *srv.bot_args()], vdso=False)
        try:
            srv.accept_bot()
            srv.ping(20)
            bot.wait_blocked()
            yield srv, bot, syms, fold.fold(bot.pid, single_page=single_page)
        finally:
            bot.stop()


def test_relinked_bot_folds_to_one_page(prof, obj, tmp_path):
    lay = plan_layout(prof, [obj, musl_libc()])
    with _folded(lay, obj, tmp_path / "minibot-1page", True) as (srv, bot, syms, report):
        assert syms["__hot_end"] - syms["__hot_start"] == 4096
        assert [s.name for s in report.steps] == ["single-page"]
        srv.ping(300)
        assert srv.command("!ping") == "pong"
        assert srv.command("!mem")["VmRSS"] == 4
        bot.wait_blocked()
        assert residency.snapshot(bot.pid, smaps=False).rss_kb == 4


def test_layout_refuses_with_the_byte_budget(prof, obj):
    with pytest.raises(UnsafeStep, match=r"code \d+ B \+ rodata \d+ B .* > 4096 B") as e:
        plan_layout(prof, [obj, musl_libc()], margin=3000, max_pages=1)
    msg = str(e.value)  # how far over, and the largest items to change
    assert re.search(r"\(\d+ B over, 2 pages needed\); largest: stack reserve \d+ B", msg)
    assert "writable .bss" in msg or "writable .data" in msg


def test_relinked_bot_folds_into_a_two_page_block(prof, obj, tmp_path):
    """K = 2: a stack reserve too large for one page gives a block of two whole pages, the
    script says what lands in each, and the fold keeps the bot in exactly those 8 kB."""
    lay = plan_layout(prof, [obj, musl_libc()], margin=3000)
    assert lay.budget["pages"] == 2 and lay.budget["block"] == 8192
    assert 4096 < lay.budget["total"] <= 8192
    p0, p1 = lay.pages
    assert "hot_main" in p0["code"] and p1["stack"] > 0
    assert p0["stack"] + p1["stack"] >= lay.stack_min
    assert "HOT_SIZE = 0x2000;" in lay.script
    assert " *   page 0: code " in lay.script and " *   page 1: " in lay.script
    with _folded(lay, obj, tmp_path / "minibot-2page") as (srv, bot, syms, report):
        start = syms["__hot_start"]
        assert 4096 < syms["__hot_end"] - start <= 8192
        (step,) = report.steps  # the block fold, chosen by the block's symbols
        assert step.name == "single-page" and step.detail["hot_pages"] == 2
        srv.ping(300)
        assert srv.command("!ping") == "pong"
        bot.wait_blocked()
        snap = residency.snapshot(bot.pid, smaps=False)
        assert snap.rss_kb == 8
        outside = [v for v in snap.vmas if v.label != "vsyscall"]
        assert all(start <= v.start and v.end <= start + 8192 for v in outside), outside


def test_layout_names_functions_missing_from_the_inputs(prof):
    with pytest.raises(UsageError, match="hot_main"):
        plan_layout(prof, [musl_libc()])


def _layout_cli(prof_json, obj, out, *extra: str, **env: str) -> subprocess.CompletedProcess:
    """`remap layout PROFILE --inputs OBJ --musl -o OUT EXTRA...` in a subprocess."""
    return remap_cli("layout", str(prof_json), "--inputs", str(obj), "--musl", "-o", str(out),
                     *extra, env=env)  # fmt: skip


def test_cli_layout(prof, obj, tmp_path):
    p = tmp_path / "p.json"
    prof.save(p)
    out = tmp_path / "s.ld"
    res = _layout_cli(p, obj, out, "--json")
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["budget"]["total"] <= 4096 and out.read_text().startswith("/* Generated by")
    res = _layout_cli(p, obj, out, "--margin", "3000", "--max-pages", "1", REMAP_DEBUG="")
    assert res.returncode == 6 and res.stderr.count("\n") == 1
    assert "does not fit in one page" in res.stderr


def test_auto_single_page_experiment_one_run():
    """The suite's round trip, once: profile -> script -> relink -> fold -> 4 kB after PINGs."""
    from remap.experiment import runner, spec

    exp = spec.load("auto-single-page-minibot")
    (rec,) = runner.run(exp, repeat=1, command="pytest")
    assert rec["target_ok"], rec["error"]
    assert rec["final_rss_kb"] == 4
    steps = {s["name"]: s for s in rec["steps"]}
    assert steps["ping-watch"]["max_rss_kb"] == 4
    auto = rec["auto_layout"]
    assert auto["results_unchanged"] and auto["budget"]["total"] <= 4096
    assert "hot_main" in auto["functions"] and "main" not in auto["functions"]


def test_estimate_without_inputs_is_close_to_the_executed_only_layout(prof, obj, tmp_path):
    """No link inputs at hand (a Debian build): the budget from the profile alone is the
    executed-only block, alignment aside."""
    est = estimate_budget(prof)
    lay = plan_layout(prof, [obj, musl_libc()], closure=False)
    real = lay.budget
    assert est["estimate"] == 1 and est["pages"] == real["pages"]
    assert real["code"] - 64 <= est["code"] <= real["code"]  # alignment padding aside
    assert abs(est["data"] - real["data"]) <= 64 and est["stack_min"] == real["stack_min"]
    assert 0 < est["rodata"] <= real["rodata"] + 64
    p = tmp_path / "p.json"
    prof.save(p)
    res = remap_cli("layout", str(p), "--estimate", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["budget"] == est
    res = remap_cli("layout", str(p))
    assert res.returncode == 2 and "--estimate" in res.stderr
