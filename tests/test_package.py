"""remap as a package: built with `python -m build`, installed outside the checkout, run anywhere.

Real, end to end: the sdist and the wheel (built from that sdist, so the sdist provably builds)
are each pip-installed into a fresh venv under the temporary folder, far from the checkout.
From an empty directory elsewhere, the installed `remap` then looks at and changes live
processes (map, explain, syscall, squeeze), runs a bundled experiment, and runs one inside
Debian's 6.1 kernel under qemu -- whose /tmp is a fresh tmpfs that hides the venv and the cache
unless the guest mounts them (the failure issue 14 reported).  Built targets must land in the
install's own cache ($XDG_CACHE_HOME/remap), nothing in site-packages.

Cost: one build and two installs per session (module-scoped fixtures, ~1 min together); pip
takes the dependencies from its cache or the index.  The kernel package is the checkout's
cached one ($REMAP_KERNEL_CACHE), so the guest test never downloads 70 MB again.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import rollup_kb

from remap import kconst as K
from remap import native, pagemap, targets
from remap.errors import KernelError
from remap.kernels import catalog, fetch, guest

ROOT = Path(__file__).resolve().parents[1]
KERNEL = "debian-6.1"
DOCTOR_ITEMS = {
    "kernel", "ptrace_scope", "CAP_SYS_PTRACE", "native helper", "PAGEMAP_SCAN", "soft-dirty",
    "idle page tracking", "fault_around_bytes", "process_madvise", "musl-gcc", "KVM or TCG",
    "qemu", "busybox-static", "6.1 kernel package",
}  # fmt: skip


def _clean_env() -> dict[str, str]:
    """This environment without anything that would lead an installed remap back to the
    checkout (PYTHONPATH, a venv, REMAP_* build folders)."""
    drop = ("PYTHON", "VIRTUAL_ENV", "REMAP_", "XDG_CACHE_HOME")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def _run(argv: list, timeout: float, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kw
    )
    assert res.returncode == 0, f"{argv[:3]} exited {res.returncode}: {res.stderr[-1500:]}"
    return res


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    """`python -m build` of the checkout: the sdist, and the wheel built from it."""
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", out, ROOT], 300, env=_clean_env())
    found = {"sdist": list(out.glob("remap-*.tar.gz")), "wheel": list(out.glob("remap-*.whl"))}
    assert all(len(v) == 1 for v in found.values()), found
    return {k: v[0] for k, v in found.items()}


@dataclass
class Install:
    """One fresh venv with remap installed from KIND (wheel or sdist), used from CWD."""

    kind: str
    venv: Path
    cache: Path  # its XDG_CACHE_HOME
    cwd: Path  # an empty directory, neither the checkout nor the venv
    env: dict[str, str]

    def remap(self, *args, timeout: float = 60) -> subprocess.CompletedProcess:
        argv = [self.venv / "bin" / "remap", *args]
        return _run(argv, timeout, cwd=self.cwd, env=self.env)

    def python(self, code: str) -> str:
        argv = [self.venv / "bin" / "python", "-c", code]
        return _run(argv, 60, cwd=self.cwd, env=self.env).stdout

    def site(self) -> Path:
        return Path(self.python("import remap, os; print(os.path.dirname(remap.__file__))").strip())


@pytest.fixture(scope="module", params=["wheel", "sdist"])
def inst(request, dist, tmp_path_factory) -> Install:
    base = tmp_path_factory.mktemp(f"installed-{request.param}")
    venv, cache, cwd = base / "venv", base / "cache", base / "elsewhere"
    cwd.mkdir()
    env = _clean_env()
    _run([sys.executable, "-m", "venv", venv], 120, env=env)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run([*pip, dist[request.param]], 400, cwd=cwd, env=env)
    env |= {
        "XDG_CACHE_HOME": str(cache),
        "REMAP_KERNEL_CACHE": str(catalog.cache_dir()),  # the checkout's: fetched once
        "PATH": f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
    }
    return Install(request.param, venv, cache, cwd, env)


def test_built_as_a_platform_wheel_with_its_data(dist, inst):
    assert dist["wheel"].name.endswith("-linux_x86_64.whl"), dist["wheel"].name  # not none-any
    site = inst.site()
    assert site.is_relative_to(inst.venv) and not site.is_relative_to(ROOT)
    where = json.loads(
        inst.python(
            "import json, remap.targets as t, remap._native as n\n"
            "print(json.dumps({'checkout': t.IN_CHECKOUT, 'src': str(t.TARGET_SRC), "
            "'build': str(t.build_dir()), 'native': n.__file__}))"
        )
    )
    assert where["checkout"] is False
    assert where["src"] == str(site / "bundled" / "csrc" / "targets")
    assert where["build"] == str(inst.cache / "remap")
    assert Path(where["native"]).parent == site  # compiled at build time, nothing at run time
    for name in ("minibot.c", "minibot-hotpage.ld", "debian-src.sh", "faulter.c"):
        mine = site / "bundled" / "csrc" / "targets" / name
        assert mine.read_bytes() == (targets.TARGET_SRC / name).read_bytes(), name
    # the stub assembled at build time is the one the checkout assembles on demand
    assert (site / "bundled" / "batch_stub.bin").read_bytes() == native.stub_code()


def test_version_and_doctor(inst):
    want = inst.python("import importlib.metadata as m; print(m.version('remap'))").strip()
    assert inst.remap("--version").stdout.strip() == f"remap {want}"
    doc = json.loads(inst.remap("doctor", "--json").stdout)
    by = {c["name"]: c for c in doc["checks"]}
    assert set(by) == DOCTOR_ITEMS
    assert doc["ok"] == all(c["ok"] for c in doc["checks"])
    assert all(c["fix"] for c in doc["checks"] if not c["ok"]), "every missing item says the fix"
    assert by["native helper"]["ok"] and "built into this install" in by["native helper"]["found"]
    assert by["kernel"]["found"].startswith(f"Linux {os.uname().release}:")
    assert by["qemu"]["ok"] == (shutil.which(guest.QEMU) is not None)
    assert by["musl-gcc"]["ok"] == (shutil.which("musl-gcc") is not None)
    cap = int(Path("/proc/self/status").read_text().split("CapEff:")[1].split()[0], 16)
    assert by["CAP_SYS_PTRACE"]["ok"] == bool(cap >> K.CAP_SYS_PTRACE & 1)
    table = inst.remap("doctor").stdout
    assert all(name in table for name in DOCTOR_ITEMS)


def test_experiments_listed_from_anywhere(inst):
    doc = json.loads(inst.remap("experiments", "--json").stdout)
    shipped = {p.stem: tomllib.loads(p.read_text()) for p in (ROOT / "experiments").glob("*.toml")}
    got = {e["name"]: e for e in doc["experiments"]}
    assert set(got) == set(shipped)
    for name, e in got.items():
        assert e["description"] == shipped[name]["description"]
        assert Path(e["path"]).is_relative_to(inst.site())
    assert "baseline-minibot" in inst.remap("experiments").stdout


def _rollup_rss_kb(pid: int) -> int:
    return rollup_kb(pid)["Rss"]


def _echo(t, data: bytes, timeout: float = 5.0) -> bytes:
    """Write DATA to the echo loop and read as many bytes back (bounded)."""
    t.proc.stdin.write(data)
    t.proc.stdin.flush()
    got, deadline = b"", time.monotonic() + timeout
    while len(got) < len(data) and time.monotonic() < deadline:
        ready, _, _ = select.select([t.proc.stdout], [], [], deadline - time.monotonic())
        if ready:
            got += os.read(t.proc.stdout.fileno(), len(data) - len(got))
    return got


def test_map_explain_syscall_squeeze_on_a_live_process(inst, spawn):
    t = spawn("echoloop")
    assert _echo(t, b"hello\n") == b"hello\n"
    t.wait_blocked()
    rss = _rollup_rss_kb(t.pid)
    doc = json.loads(inst.remap("map", t.pid, "--json").stdout)
    assert doc["pid"] == t.pid and sum(v["rss_kb"] for v in doc["vmas"]) == rss
    assert any(v["path"] == str(t.path) and v["label"] == "code" for v in doc["vmas"])
    doc = json.loads(inst.remap("explain", t.pid, "--json").stdout)
    assert doc["kernel"] == os.uname().release
    assert doc["counters_kb"]["smaps_rollup_rss"] == rss
    assert inst.remap("syscall", t.pid, "getpid").stdout.strip() == str(t.pid)
    doc = json.loads(inst.remap("squeeze", t.pid, "--json").stdout)
    assert doc["before"]["rss_kb"] == rss
    assert doc["after"]["rss_kb"] < rss and doc["after"]["rss_kb"] == _rollup_rss_kb(t.pid)
    assert _echo(t, b"still here\n") == b"still here\n", "the squeezed loop still echoes"


def test_run_bundled_experiment_builds_into_the_cache(inst, tmp_path):
    out = tmp_path / "records"
    doc = json.loads(inst.remap("run", "baseline-minibot", "--repeat", "1", "--out", out,
                                "--json", timeout=120).stdout)  # fmt: skip
    (rec,) = doc["runs"]
    assert rec["target_ok"], rec.get("error")
    assert rec["final_rss_kb"] == rec["steps"][-1]["rss_kb"] > 0
    binary = Path(rec["target"]["path"])
    assert binary == inst.cache / "remap" / "targets" / "minibot"
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()
    assert rec["target"]["sha256"] == digest == targets.sha256_file(targets.build("minibot"))
    assert json.loads((out / "baseline-minibot.jsonl").read_text()) == rec


def test_run_in_the_61_guest_from_a_venv_under_tmp(inst, tmp_path):
    """The guest's /tmp is a fresh tmpfs: the venv and the cache must be mounted into it."""
    if shutil.which(guest.QEMU) is None:
        pytest.skip(f"{guest.QEMU} is not installed (scripts/bootstrap.sh installs it)")
    try:
        fetch.fetch(KERNEL)  # into the checkout's cache, which the installed remap is given
    except KernelError as e:
        pytest.skip(f"cannot fetch {KERNEL}: {e}")
    assert inst.venv.is_relative_to("/tmp") or "TMPDIR" in os.environ, inst.venv
    out = tmp_path / "records"
    res = inst.remap("run", "vmrss-lag", "--kernel", KERNEL, "--repeat", "1", "--out", out,
                     "--json", timeout=200)  # fmt: skip
    doc = json.loads(res.stdout)
    assert doc["experiment"] == "vmrss-lag" and doc["kernel"] == KERNEL
    assert len(doc["runs"]) == 7  # minibot + six faulters, once each
    for r in doc["runs"]:
        assert r["target_ok"] and r["kernel_name"] == KERNEL, r.get("error")
        assert r["kernel"].startswith("6.1.0-") and r["accel"] in ("tcg", "kvm")
        if r["case"] in ("minibot", "faulter-0", "faulter-5", "faulter-20", "faulter-60"):
            assert r["final_vmrss_kb"] == 4 < r["final_rss_kb"], r["case"]  # split RSS counting
        assert r["target"]["path"].startswith(str(inst.cache))
    assert (out / f"vmrss-lag.{KERNEL}.jsonl").is_file()


def test_nothing_written_into_site_packages(inst):
    """After every command above, site-packages/remap holds exactly what pip installed."""
    site = inst.site()
    record = next(site.parent.glob("remap-*.dist-info")) / "RECORD"
    listed = {line.split(",")[0] for line in record.read_text().splitlines()}
    found = {
        str(p.relative_to(site.parent))
        for p in site.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert found - listed == set()


def test_guest_shares_cover_the_interpreter_remap_and_its_cache(tmp_path, monkeypatch):
    """What the guest mounts: outermost folders only, the io mount point never hidden."""
    cache = tmp_path / "cache"
    (cache / "targets").mkdir(parents=True)
    monkeypatch.setenv("REMAP_BUILD_DIR", str(cache))
    nested = tmp_path / "exps" / "more"
    nested.mkdir(parents=True)
    got = guest.shares([tmp_path / "exps", nested, cache / "targets", Path("/run"), Path("/")])
    for need in (Path(sys.prefix), Path(sys.base_prefix), targets.ROOT):
        assert any(need.resolve().is_relative_to(p) for p in got), need
    assert cache in got and tmp_path / "exps" in got
    assert nested not in got and cache / "targets" not in got  # covered by their parents
    assert Path("/run") not in got and Path("/") not in got  # they hold the io share's mount
    assert all(not a.is_relative_to(b) for a in got for b in got if a != b)


def test_doctor_in_the_checkout_builds_nothing():
    res = _run([sys.executable, "-m", "remap", "doctor", "--json"], 60, cwd=ROOT)
    by = {c["name"]: c for c in json.loads(res.stdout)["checks"]}
    assert set(by) == DOCTOR_ITEMS
    assert by["native helper"]["found"].startswith("checkout: built from csrc/native")
    assert by["PAGEMAP_SCAN"]["ok"] == pagemap.scan_supported()
