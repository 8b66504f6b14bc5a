"""The kernel matrix: Debian's 6.1 booted under qemu runs the same experiment as the host.

Real, end to end: the kernel package is fetched with apt (once, then cached under build/), the
guest boots it under TCG (or KVM where the probe boots), mounts the host's / read-only over
virtio-9p and runs remap inside; the records come back and are compared with the host's.
Skipped only where qemu is missing or the package cannot be fetched (reason given).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from remap import targets
from remap.cli import main
from remap.errors import KernelError
from remap.kernels import catalog, fetch, guest, initramfs

KERNEL = "debian-6.1"


def _our_qemus() -> list[str]:
    """qemu processes (running or unreaped) whose parent is this test process.

    Only our own children: other engineers' test runs may boot guests at the same time.
    A qemu remap forgot stays our child (zombie or alive) until the test process exits.
    """
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(ppid) == os.getpid() and comm.startswith("qemu-system"):
            found.append(f"{d.name} {comm} state {state}")
    return found


@pytest.fixture(autouse=True)
def no_leftovers(tmp_path, monkeypatch):
    """Every test here must leave no qemu and no temporary folder behind, whatever it did."""
    scratch = tmp_path / "tempdir"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    yield
    assert _our_qemus() == []
    assert sorted(p.name for p in scratch.iterdir()) == []


@pytest.fixture(scope="module")
def image() -> fetch.KernelImage:
    if shutil.which(guest.QEMU) is None:
        pytest.skip(f"{guest.QEMU} is not installed (scripts/bootstrap.sh installs it)")
    try:
        return fetch.fetch(KERNEL)
    except KernelError as e:
        pytest.skip(f"cannot fetch {KERNEL}: {e}")


def test_catalog_lists_host_and_a_61_kernel(image, capsys):
    ks = {k.name: k for k in catalog.list_kernels()}
    assert ks["host"].release == os.uname().release and ks["host"].state == "host"
    assert ks[KERNEL].release == image.release and ks[KERNEL].state == "cached"
    assert ks[KERNEL].release.startswith("6.1.0-")
    assert main(["kernels", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    by = {k["name"]: k for k in doc["kernels"]}
    assert "split RSS counting" in by[KERNEL]["mechanism"]
    assert main(["kernels", "fetch", "no-such-kernel"]) == KernelError.exit_code
    assert "unknown kernel" in capsys.readouterr().err


def test_second_fetch_uses_the_cache(image):
    before = image.manifest()
    t0 = time.monotonic()
    again = fetch.fetch(KERNEL)
    assert time.monotonic() - t0 < 2.0, "a cached kernel must not be downloaded again"
    assert again.root == image.root and again.manifest() == before
    assert fetch.boot_image(again).is_file()
    assert not list(image.root.glob("*.deb")), "the .deb is not kept"


def test_initramfs_loads_modules_after_their_dependencies(image):
    order = [p.name.removesuffix(".ko") for p in initramfs.module_order(image.modules)]
    for mod in order:
        deps = initramfs.depends(image.modules.rglob(f"{mod}.ko").__next__())
        assert all(order.index(d) < order.index(mod) for d in deps), (mod, deps, order)
    assert order[-1] == "9p" and "9pnet_virtio" in order and "virtio_pci" in order
    cpio = initramfs.build(image)
    names = subprocess.run(
        [str(initramfs.BUSYBOX), "cpio", "-t"],
        stdin=open(cpio, "rb"),  # noqa: SIM115
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.split()
    assert {"init", "bin/busybox", "dev/console", "modules/9p.ko"} <= set(names)


def test_seed_screen_on_61_and_host(image, tmp_path, capsys):
    """The seed's screen: 'RSS 4 kB' on 6.1 while the page walk says more; equal on the host."""
    out = tmp_path / "res"
    t0 = time.monotonic()
    exps = ["seed-screen", "vmrss-lag"]
    args = ["run", *exps, "--kernel", "host", "--kernel", KERNEL, "--repeat", "2"]
    assert main([*args, "--out", str(out), "--json"]) == 0
    took = time.monotonic() - t0
    doc = json.loads(capsys.readouterr().out)
    by = {(d["experiment"], d["kernel"]): d["runs"] for d in doc}
    assert set(by) == {(e, k) for e in exps for k in ("host", KERNEL)}
    _vmrss_lags_only_on_61(by[("vmrss-lag", KERNEL)], by[("vmrss-lag", "host")])
    by = {k: by[("seed-screen", k)] for k in ("host", KERNEL)}
    assert len(by[KERNEL]) == 2
    for r in by[KERNEL]:
        assert r["kernel"] == image.release and r["kernel_name"] == KERNEL
        assert r["accel"] in ("tcg", "kvm") and r["target_ok"], r.get("error")
        assert "RSS 4 kB" in r["screen"] and r["screen_rss_kb"] == 4
        assert r["screen_walk_rss_kb"] > 4 * 4, "the page walk sees the bot's real pages"
    for r in by["host"]:
        assert r["kernel_name"] == "host" and r["accel"] is None
        assert r["screen_rss_kb"] == r["screen_walk_rss_kb"]
    assert took < 60, f"guest run took {took:.1f} s"
    # the records came back beside the host's, and the report puts the kernels side by side
    assert (out / "seed-screen.jsonl").is_file()
    assert (out / f"seed-screen.{KERNEL}.jsonl").is_file()
    assert main(["report", str(out), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    cells = next(r for r in rep["matrix"]["rows"] if r["experiment"] == "seed-screen")["cells"]
    assert cells[KERNEL]["vmrss_kb"] == 4 and cells[KERNEL]["lag_runs"] == 2
    assert cells["host"]["vmrss_kb"] == cells["host"]["rss_kb"] and cells["host"]["lag_runs"] == 0
    assert f"seed-screen @ {KERNEL}" in rep["summary"]
    assert "## Kernels" in Path(rep["markdown"]).read_text()


def _vmrss_lags_only_on_61(guest_runs: list[dict], host_runs: list[dict]) -> None:
    """Fewer than 64 faults after exec: VmRSS stays 4 kB on 6.1; the host's counters are exact."""
    for r in guest_runs:
        assert r["target_ok"] and r["kernel_name"] == KERNEL, r.get("error")
        if r["case"] in ("minibot", "faulter-0", "faulter-5", "faulter-20", "faulter-60"):
            assert r["final_vmrss_kb"] == 4 < r["final_rss_kb"], r["case"]
        assert r["final_vmrss_kb"] <= r["final_rss_kb"]
    for r in host_runs:
        assert r["target_ok"] and r["final_vmrss_kb"] == r["final_rss_kb"], r["case"]


def test_explain_inside_the_guest_names_split_rss_counting(image):
    """`remap explain` in the 6.1 guest reads that kernel's version and names its mechanism."""
    faulter = targets.build("faulter")
    py = sys.executable
    script = (
        f"cd {targets.ROOT}\nexport PYTHONDONTWRITEBYTECODE=1\n"
        f"{faulter} 5 </dev/zero >/dev/null 2>&1 &\nsleep 0.3\n"
        f"{py} -m remap explain $! --json\nrc=$?\nkill $!\nexit $rc\n"
    )
    res = guest.run(image, script, timeout=90)
    try:
        assert res.rc == 0, res.stderr[-400:]
        doc = json.loads(res.stdout)
        assert doc["kernel"] == image.release == res.release
        assert doc["counters_kb"]["status_vmrss"] == 4
        assert doc["counters_kb"]["pagemap_present"] > 4 * 5
        assert any("SPLIT_RSS_COUNTING" in n for n in doc["notes"])
    finally:
        shutil.rmtree(res.io_dir, ignore_errors=True)


def test_hung_guest_is_killed_with_a_clear_error(image):
    t0 = time.monotonic()
    with pytest.raises(KernelError, match=r"hung: no result within 8 s"):
        guest.run(image, "sleep 600", timeout=8, accel="tcg")
    assert time.monotonic() - t0 < 8 + 12


def test_kernel_that_fails_to_boot(image, tmp_path):
    """A truncated bzImage: qemu stops before /init ever runs; the error says so at once."""
    bad = fetch.KernelImage("broken", image.release, tmp_path)
    (tmp_path / "boot").mkdir()
    bad.vmlinuz.write_bytes(image.vmlinuz.read_bytes()[: 1 << 20])
    bad.modules.parent.mkdir(parents=True)
    bad.modules.symlink_to(image.modules)
    t0 = time.monotonic()
    with pytest.raises(KernelError, match=r"(exited with status .* before /init ran|did not boot)"):
        guest.run(bad, "true", timeout=20, accel="tcg", boot_timeout=10)
    assert time.monotonic() - t0 < 20


def test_kernel_that_hangs_at_boot_times_out(image, tmp_path):
    """A bzImage with a corrupted payload: its decompressor halts; the boot wait gives up."""
    bad = fetch.KernelImage("corrupt", image.release, tmp_path)
    (tmp_path / "boot").mkdir()
    data = bytearray(image.vmlinuz.read_bytes())
    for i in range(len(data) // 4, len(data) // 4 + 65536):
        data[i] ^= 0x55
    bad.vmlinuz.write_bytes(bytes(data))
    bad.modules.parent.mkdir(parents=True)
    bad.modules.symlink_to(image.modules)
    t0 = time.monotonic()
    with pytest.raises(KernelError, match=r"did not boot within 3 s"):
        guest.run(bad, "true", timeout=20, accel="tcg", boot_timeout=3)
    assert time.monotonic() - t0 < 3 + 12


def test_missing_qemu_is_one_line(image, monkeypatch, capsys):
    monkeypatch.setattr(guest, "QEMU", "qemu-system-x86_64-not-installed")
    assert main(["run", "vmrss-lag", "--kernel", KERNEL, "--accel", "tcg"]) == 8
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "remap: qemu-system-x86_64-not-installed not found (apt-get install qemu-system-x86)"
    )


def test_energymech_screen_reads_4kb_on_61(image, tmp_path, capsys):
    """The user's bot prints the user's figure: EnergyMech's own MEMINFO says ``RSS 4 kB`` on
    6.1 while the page walk holds its real pages; its thread never folded its RSS cache
    (remap.rsslag).  The squeeze's madvise, made by the bot's own thread, folds it: status is
    exact after it.  On the host line and walk agree."""
    from remap import sources
    from remap.sources import SourceMissing

    try:
        sources.source_path(sources.recipe("energymech"))
    except SourceMissing as e:
        pytest.skip(f"EnergyMech source not found: {e.path}")
    args = ["run", "energymech-seed-screen", "--kernel", "host", "--kernel", KERNEL]
    assert main([*args, "--repeat", "1", "--out", str(tmp_path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    by = {d["kernel"]: d["runs"] for d in doc}
    for r in by[KERNEL]:
        assert r["target_ok"], r.get("error")
        assert r["screen_walk_rss_kb"] >= 100, "the page walk sees the bot's real pages"
        lag = r["rss_lag"]
        squeezed = next(s for s in r["steps"] if s["name"] == "squeezed")
        assert squeezed["vmrss_kb"] == squeezed["rss_kb"], "its own madvise folded the cache"
        if r["case"].endswith("daemon"):  # fork's copy is counted into the child's mm directly
            assert lag["counted_kb"]["anon"] == lag["walked_kb"]["anon"] > 4
            assert 4 < r["screen_rss_kb"] < r["screen_walk_rss_kb"] - 96, r["screen"]
            continue
        assert "RSS 4 kB" in r["screen"] and r["screen_rss_kb"] == 4, r["screen"]
        assert lag["split"] and lag["counted_kb"]["file"] == 0 and lag["lag_kb"] >= 96
    for r in by["host"]:
        assert r["target_ok"], r.get("error")
        assert abs(r["screen_rss_kb"] - r["screen_walk_rss_kb"]) <= 4
        assert not r["rss_lag"]["split"]
    assert {r["case"] for r in by[KERNEL]} == {"static", "dynamic", "static-daemon"}
