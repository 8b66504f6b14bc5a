"""Run experiments under a catalog kernel: host experiments in, records out.

Why here and not in the runner: the runner knows nothing of qemu; this module turns "run
vmrss-lag on debian-6.1" into one guest boot that runs every named experiment with the very
same remap code (read-only over 9p, wherever it is installed), then copies the records to the
host's output folder.

Records of a guest run go to ``OUT/NAME.KERNEL.jsonl`` (e.g. vmrss-lag.debian-6.1.jsonl), so
that host runs (``OUT/NAME.jsonl``) and guest runs of the same experiment sit side by side for
``remap report``.  Each record carries ``kernel`` (uname -r inside the guest), ``kernel_name``
and ``accel`` (tcg or kvm).
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from .. import targets
from ..errors import KernelError
from ..experiment import load
from ..experiment.runner import ENV_ACCEL, ENV_KERNEL_NAME, build_target, check_steps, plan
from ..sources import THIRD_PARTY_ENV, SourceMissing, third_party_dir
from ..targets import ROOT
from . import fetch, guest
from .initramfs import IO_DIR

BOOT_BUDGET_S = 60.0  # boot + python start under TCG on a busy host, with room
PER_RUN_BUDGET_S = 15.0  # one run of one case under TCG (a bot run takes ~0.5 s)
# Steps that only launch, talk to and measure the target (no ptrace helper needed).
PLAIN_STEPS = {"launch", "register", "ping", "command", "idle", "measure", "screen"}


def _build_native() -> None:
    """Build the ptrace helper and batch stub on the host: the guest's build folder is read-only.

    Only for experiments with steps beyond the plain ones (those inject into the target).
    """
    from .. import native

    native.load()
    native.stub_code()


def records_path(out: Path, experiment: str, kernel: str) -> Path:
    """Where the records of EXPERIMENT run on KERNEL go inside OUT."""
    return out / (f"{experiment}.jsonl" if kernel == "host" else f"{experiment}.{kernel}.jsonl")


def job_script(kernel: str, accel: str) -> str:
    """The sh script the guest runs in its chroot (the host's /, read-only).

    The bring-your-own sources folder is passed resolved ($REMAP_THIRD_PARTY) and shared by
    run_in_guest: a checkout's ``../shared`` may be a symlink in a folder the guest does not
    see (CI clones into /tmp, which the guest has its own of).
    """
    env = {
        THIRD_PARTY_ENV: str(third_party_dir().resolve()),
        ENV_KERNEL_NAME: kernel,
        ENV_ACCEL: accel,
        "REMAP_BUILD_DIR": str(targets.build_dir()),
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": "/tmp",
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    }
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return (
        f"cd {shlex.quote(str(ROOT))} || exit 90\n"
        f"export {exports}\n"
        f"exec {shlex.quote(sys.executable)} -m remap.kernels.inguest {IO_DIR}/job.json\n"
    )


def run_in_guest(
    kernel: str,
    names: list[str],
    *,
    repeat: int | None = None,
    out: Path | None = None,
    accel: str = "auto",
    timeout: float | None = None,
    command: str | None = None,
    progress=None,
) -> dict[str, list[dict[str, Any]]]:
    """Run experiments NAMES inside one guest of KERNEL; return {experiment: records}.

    Every experiment file is checked and every target built on the host first (the guest sees
    the host's build folder read-only).  The kernel is fetched if it is not cached yet.
    TIMEOUT bounds the whole guest (default: a boot budget plus a budget per run).
    """
    exps = [load(n) for n in names]
    runs = 0
    for e in exps:
        check_steps(e)
        for c in e.cases:
            try:
                build_target(c.target)  # the guest sees the host's build folder read-only
            except SourceMissing:
                pass  # the guest's runner reports the experiment skipped, with the path
        runs += len(plan(e, repeat))
    if {s.name for e in exps for c in e.cases for s in c.steps} - PLAIN_STEPS:
        _build_native()
    img = fetch.fetch(kernel, progress=progress)
    acc = guest.choose_accel(img, accel)
    limit = timeout if timeout is not None else BOOT_BUDGET_S + PER_RUN_BUDGET_S * runs
    job = {
        "experiments": [str(e.path.resolve()) for e in exps],
        "repeat": repeat,
        "out": f"{IO_DIR}/out",
        "command": command if command is not None else " ".join(sys.argv),
    }
    script = job_script(kernel, acc)
    log = out / f"serial.{kernel}.log" if out is not None else None
    if progress:
        progress(f"booting {img.release} ({acc}) for {runs} run(s)")
    files = {"job.json": json.dumps(job)}
    dirs = [e.path.resolve().parent for e in exps]  # an experiment file may live anywhere
    if third_party_dir().resolve().is_dir():  # bring-your-own sources, wherever they live
        dirs.append(third_party_dir().resolve())
    res = guest.run(img, script, files=files, timeout=limit, accel=acc, serial_log=log, share=dirs)
    try:
        if res.rc != 0:
            last = (res.stderr.strip().splitlines() or ["(no stderr)"])[-1]
            raise KernelError(f"guest run on {img.release} failed (exit {res.rc}): {last}")
        found: dict[str, list[dict[str, Any]]] = {}
        for e in exps:
            src = res.io_dir / "out" / f"{e.name}.jsonl"
            if not src.is_file():
                raise KernelError(f"guest run on {img.release} wrote no records for {e.name}")
            recs = [json.loads(ln) for ln in src.read_text().splitlines() if ln.strip()]
            for r in recs:  # how long the guest took belongs with the other wall-clock times
                r.setdefault("timing", {}).update(
                    guest_boot_s=res.boot_s, guest_total_s=res.total_s
                )
            found[e.name] = recs
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in recs)
                records_path(out, e.name, kernel).write_text(lines)
        return found
    finally:
        shutil.rmtree(res.io_dir, ignore_errors=True)
