"""Experiments end to end: real targets, real records, reproducible fields, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from remap import experiment as X
from remap.cli import main
from remap.errors import ExperimentError
from remap.experiment.runner import comparable


def _same_but_run(recs: list[dict]) -> list[dict]:
    return [{k: v for k, v in comparable(r).items() if k != "run"} for r in recs]


def test_baseline_minibot_without_aslr_repeats_exactly(tmp_path):
    exp = X.load("baseline-minibot")
    recs = X.run(exp, repeat=3, out=tmp_path, command="test")
    assert [r["run"] for r in recs] == [0, 1, 2]
    assert all(r["target_ok"] and r["error"] is None for r in recs)
    a, b, c = _same_but_run(recs)
    assert a == b == c  # every page, counter and stack address, run after run
    r = recs[0]
    assert r["aslr"] is False and r["kernel"] and r["toolkit"].startswith("remap ")
    assert len(r["target"]["sha256"]) == 64 and Path(r["target"]["path"]).is_file()
    assert r["env_size"] == 512
    names = [s["name"] for s in r["steps"]]
    assert names == ["launch", "register", "ping", "command !ping", "idle"]
    for s in r["steps"]:
        assert s["rss_kb"] == 4 * s["present_pages"] and s["rss_kb"] > 0
        assert s["counters"]["pagemap_present"] == s["rss_kb"]
        assert s["pages"] and s["stack"]["gap"] < 16
    assert r["final_rss_kb"] == r["steps"][-1]["rss_kb"]
    lines = (tmp_path / "baseline-minibot.jsonl").read_text().splitlines()
    assert [json.loads(ln) for ln in lines] == recs
    summ = X.summarize(recs)["default"]
    assert summ["all_agree"] and summ["ok"] == 3


def test_aslr_gap_spreads_with_aslr_only():
    recs = X.run(X.load("aslr-gap"), repeat=6, command="test")
    by = {c: [r for r in recs if r["case"] == c] for c in ("aslr", "no-aslr")}
    assert all(r["target_ok"] for r in recs) and len(by["aslr"]) == len(by["no-aslr"]) == 6
    gaps = [r["stack_gap"] for r in by["aslr"]]
    assert len(set(gaps)) > 1 and all(0 <= g < 8192 + 16 for g in gaps)
    assert len({r["stack_gap"] for r in by["no-aslr"]}) == 1
    assert len({r["final_rss_kb"] for r in by["no-aslr"]}) == 1
    # the idle RSS follows the stack: page walk = stack pages + the rest, which is fixed
    rest = {r["final_rss_kb"] - 4 * r["stack_present_pages"] for r in recs}
    assert len(rest) == 1


def test_vmrss_lag_counts_each_fault(tmp_path):
    recs = X.run(X.load("vmrss-lag"), repeat=1, command="test")
    rss = {r["case"]: r["final_rss_kb"] for r in recs}
    assert all(r["target_ok"] for r in recs)
    for n in (5, 20, 60, 100, 200):
        assert rss[f"faulter-{n}"] - rss["faulter-0"] == 4 * n
    mem = next(s for s in recs[0]["steps"] if s["name"] == "command !mem")["reply"]
    assert set(mem) >= {"VmRSS", "VmSize"}


BAD_FILES = {
    "not toml": ("repeat = = 3", "not valid TOML"),
    "unknown key": (
        'colour = "red"\n[target]\nname = "echoloop"\n[[steps]]\nstep = "launch"',
        "unknown key(s) colour",
    ),
    "no target": ('[[steps]]\nstep = "launch"', "target.name"),
    "bad repeat": (
        'repeat = 0\n[target]\nname = "echoloop"\n[[steps]]\nstep = "launch"',
        "'repeat'",
    ),
    "bad exit status": (
        '[target]\nname = "echoloop"\nexit_status = 300\n[[steps]]\nstep = "launch"',
        "target.exit_status",
    ),
    "bad env": (
        '[target]\nname = "echoloop"\n[launch]\nenv = { TZ = 0 }\n[[steps]]\nstep = "launch"',
        "launch.env",
    ),
    "no launch first": (
        '[target]\nname = "echoloop"\n[[steps]]\nstep = "idle"',
        "first step must be",
    ),
}


@pytest.mark.parametrize("label", sorted(BAD_FILES))
def test_malformed_experiment_is_one_line_naming_the_file(tmp_path, label, capsys):
    text, want = BAD_FILES[label]
    f = tmp_path / "broken.toml"
    f.write_text(text)
    with pytest.raises(ExperimentError, match="broken.toml") as ei:
        X.load(str(f))
    assert want in str(ei.value) and "\n" not in str(ei.value)
    assert main(["run", str(f)]) == ExperimentError.exit_code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "broken.toml" in err


def test_unknown_experiment_and_step_and_unbuildable_target(tmp_path, capsys):
    assert main(["run", "no-such-experiment"]) == ExperimentError.exit_code
    err = capsys.readouterr().err
    assert "unknown experiment 'no-such-experiment'" in err and "aslr-gap" in err
    f = tmp_path / "step.toml"
    f.write_text('[target]\nname = "echoloop"\n[[steps]]\nstep = "launch"\n[[steps]]\nstep = "x"')
    assert main(["run", str(f)]) == ExperimentError.exit_code
    assert "unknown step 'x'" in capsys.readouterr().err
    f = tmp_path / "target.toml"
    f.write_text('[target]\nname = "no-such-target"\n[[steps]]\nstep = "launch"')
    assert main(["run", str(f)]) == ExperimentError.exit_code
    err = capsys.readouterr().err
    assert "target.toml" in err and "unknown target 'no-such-target'" in err


def test_registered_step_runs_with_context(tmp_path):
    seen = []

    @X.step("test-probe")
    def probe(ctx: X.RunContext, params: dict) -> X.StepResult:
        seen.append((ctx.pid, ctx.case.name, params))
        return ctx.measure("probe", marker=params["marker"])

    try:
        f = tmp_path / "probe.toml"
        f.write_text(
            '[target]\nname = "echoloop"\n[[steps]]\nstep = "launch"\n'
            '[[steps]]\nstep = "test-probe"\nmarker = 7\n'
        )
        (rec,) = X.run(X.load(str(f)), command="test")
        assert rec["target_ok"] and seen and seen[0][2] == {"marker": 7}
        assert rec["steps"][-1]["name"] == "probe" and rec["steps"][-1]["marker"] == 7
    finally:
        X.STEPS.pop("test-probe")


def test_failing_step_is_recorded_and_target_reaped(tmp_path):
    f = tmp_path / "fail.toml"
    f.write_text(
        '[target]\nname = "echoloop"\n[[steps]]\nstep = "launch"\n[[steps]]\nstep = "ping"\nn = 3\n'
    )
    (rec,) = X.run(X.load(str(f)), command="test")
    assert not rec["target_ok"] and "target.irc" in rec["error"]
    assert [s["name"] for s in rec["steps"]] == ["launch"]


def test_cli_run_json_and_report(tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["run", "aslr-gap", "--repeat", "2", "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["experiment"] == "aslr-gap" and len(doc["runs"]) == 4
    assert set(doc["summary"]) == {"aslr", "no-aslr"}
    assert doc["summary"]["no-aslr"]["figures"]["stack_gap"]["agree"]
    assert main(["report", str(out), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert Path(rep["png"]).stat().st_size > 1000
    md = Path(rep["markdown"]).read_text()
    assert "| aslr-gap | no-aslr | 2/2 | yes |" in md
    assert main(["report", str(tmp_path / "empty")]) == ExperimentError.exit_code


def test_launch_env_reaches_the_target(tmp_path):
    """[launch] env adds variables to the fixed environment: the started target has them."""
    seen = {}

    @X.step("test-environ")
    def environ(ctx: X.RunContext, params: dict) -> X.StepResult:
        with open(f"/proc/{ctx.pid}/environ", "rb") as f:
            seen.update(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
        return ctx.measure("environ")

    try:
        f = tmp_path / "env.toml"
        f.write_text(
            '[target]\nname = "echoloop"\n[launch]\nenv = { TZ = "UTC0", REMAP_X = "1" }\n'
            '[[steps]]\nstep = "launch"\n[[steps]]\nstep = "test-environ"\n'
        )
        exp = X.load(str(f))
        assert exp.cases[0].launch.env == (("REMAP_X", "1"), ("TZ", "UTC0"))
        (rec,) = X.run(exp, command="test")
        assert rec["target_ok"], rec.get("error")
    finally:
        X.STEPS.pop("test-environ", None)
    assert seen[b"TZ"] == b"UTC0" and seen[b"REMAP_X"] == b"1" and seen[b"LC_ALL"] == b"C"
