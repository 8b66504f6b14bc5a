"""Boot a kernel under qemu, run one job inside, and always get qemu back.

Why so defensive: a guest is a process tree remap starts and must never leave behind.  Every
wait here is bounded (boot, job, power-off), every exit path kills and reaps qemu, and qemu gets
PR_SET_PDEATHSIG so that it dies even when remap itself is killed.  What the guest said is kept:
the serial console goes to a log file, and a failure quotes its last lines.

The machine: ``-nodefaults -nic none`` (no network, no stray devices), ``-no-reboot`` (a
kernel panic ends qemu instead of looping), the host's / shared read-only over virtio-9p, a
small writable io folder (see remap.kernels.initramfs for the protocol), and read-only shares
of what the job runs (:func:`shares`: the interpreter's prefix, the folder remap is imported
from, remap's build folder), each mounted at its own path: the guest's fresh tmpfs on /tmp and
/run would hide them there, wherever a venv, a wheel install or a checkout happens to live.
TCG by default; KVM only where a short probe boot succeeds (on PVM-backed /dev/kvm a stock
kernel stalls or qemu aborts), the probe's answer cached per host kernel and qemu version.
$REMAP_QEMU_CPU overrides the CPU model (default: ``max`` under TCG, ``host`` under KVM);
$REMAP_QEMU the binary.

Example::

    >>> from remap.kernels import fetch, guest
    >>> img = fetch.fetch("debian-6.1")
    >>> r = guest.run(img, "uname -r", timeout=60)
    >>> r.stdout.strip(), r.accel
    ('6.1.0-56-amd64', 'tcg')
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .. import targets
from ..errors import KernelError
from ..kconst import PR_SET_PDEATHSIG, SIGKILL
from . import catalog, initramfs
from .fetch import KernelImage, boot_image
from .initramfs import MARK_DONE, MARK_FAIL, MARK_UP

QEMU = os.environ.get("REMAP_QEMU", "qemu-system-x86_64")
MEMORY_MB = 512
BOOT_TIMEOUT_S = 40.0  # from qemu start to /init's first line (TCG on a loaded 2-core host)
POWEROFF_TIMEOUT_S = 10.0  # from the DONE line to qemu's exit
PROBE_TIMEOUT_S = 6.0  # a KVM probe boot that takes longer counts as "KVM unusable" (~1 s if OK)
POLL_S = 0.02
# A throwaway guest: no speculative-execution mitigations (each costs emulated cycles on every
# syscall and fault under TCG; none changes how RSS is counted) and no TSC watchdog (TCG's
# clock is the host's).  $REMAP_GUEST_CMDLINE adds more.
GUEST_CMDLINE = "mitigations=off tsc=reliable no_timer_check"
EXTRA_CMDLINE = f"{GUEST_CMDLINE} {os.environ.get('REMAP_GUEST_CMDLINE', '')}".strip()
ACCELS = ("auto", "tcg", "kvm")


@dataclass
class GuestResult:
    """What a finished guest job left: its exit code, output, and how the guest ran."""

    rc: int
    stdout: str
    stderr: str
    release: str  # uname -r printed by the guest's /init
    accel: str
    boot_s: float  # qemu start -> /init running
    total_s: float  # qemu start -> qemu exited
    serial: str  # the serial console, as captured
    io_dir: Path  # the shared writable folder (job outputs); removed by the caller


def qemu_path() -> str:
    """The qemu binary, or a one-line KernelError saying how to get it."""
    p = shutil.which(QEMU)
    if p is None:
        raise KernelError(f"{QEMU} not found (apt-get install qemu-system-x86)")
    return p


def shares(extra: Iterable[Path] = ()) -> list[Path]:
    """The host folders a guest job needs at their own paths, outermost first.

    The interpreter's prefixes (a venv's and the Python it was made from), the folder remap is
    imported from (a checkout, or site-packages), remap's build folder (targets, the checkout's
    native helper) and EXTRA; folders inside another one are covered by it, / is the root share
    already, and a folder holding the io share's mount point is left out (it would hide it).
    """
    want = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix, targets.ROOT]
    found: list[Path] = []
    for p in sorted({Path(w).resolve() for w in [*want, targets.build_dir(), *extra]}):
        if not p.is_dir() or Path(initramfs.IO_DIR).is_relative_to(p):
            continue
        if "\n" in str(p):
            raise KernelError(f"cannot share {str(p)!r} with the guest: newline in the path")
        if not any(p.is_relative_to(q) for q in found):
            found.append(p)
    return found


def qemu_argv(
    img: KernelImage, initrd: Path, io_dir: Path, accel: str, probe: bool, share: list[Path]
) -> list[str]:
    """The qemu command line for one guest (nothing but what the job needs); SHARE are the
    read-only folders of :func:`shares`, listed for /init in the io folder."""
    mode = "probe" if probe else "run"
    cpu = ["-cpu", os.environ.get("REMAP_QEMU_CPU") or ("max" if accel == "tcg" else "host")]
    argv = [
        qemu_path(),
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-monitor", "none",
        "-machine", "q35",
        "-accel", accel,
        *cpu,
        "-smp", "1",
        "-m", str(MEMORY_MB),
        "-kernel", str(boot_image(img)),
        "-initrd", str(initrd),
        "-append", f"console=ttyS0 quiet loglevel=3 panic=-1 {EXTRA_CMDLINE} remap.mode={mode}",
        "-no-reboot",
        "-nic", "none",
    ]  # fmt: skip
    if not probe:
        argv += [
            "-virtfs",
            f"local,path=/,mount_tag={initramfs.HOST_TAG},security_model=none,readonly=on,"
            "multidevs=remap",
            "-virtfs",
            f"local,path={_opt(io_dir)},mount_tag={initramfs.IO_TAG},security_model=none",
        ]
        lines = []
        for i, p in enumerate(share):
            tag = f"{initramfs.SHARE_TAG}{i}"
            lines.append(f"{tag} {p}\n")
            argv += [
                "-virtfs",
                f"local,path={_opt(p)},mount_tag={tag},security_model=none,readonly=on,"
                "multidevs=remap",
            ]
        (io_dir / initramfs.SHARES_FILE).write_text("".join(lines))
    return argv


def _opt(p: Path) -> str:
    """P as a qemu option value (a comma is written twice)."""
    return str(p).replace(",", ",,")


def _die_with_parent() -> None:
    """preexec_fn for qemu: SIGKILL when remap's thread exits, whatever killed it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)


def boot(
    img: KernelImage,
    *,
    accel: str,
    io_dir: Path,
    timeout: float,
    boot_timeout: float = BOOT_TIMEOUT_S,
    probe: bool = False,
    serial_log: Path | None = None,
    share: list[Path] | None = None,
) -> GuestResult:
    """Boot IMG once, wait (bounded) for the job's DONE line and qemu's exit, return the result.

    SHARE: the read-only folders the job sees at their own paths (default :func:`shares`).

    Raises KernelError if qemu cannot start, the kernel does not reach /init within
    BOOT_TIMEOUT, /init reports a failure, the whole run exceeds TIMEOUT, or qemu exits before
    the job finished.  qemu is killed and reaped on every path.
    """
    initrd = initramfs.build(img)
    share = shares() if share is None else share
    argv = qemu_argv(img, initrd, io_dir, accel, probe, share)  # raises before qemu starts
    work = Path(tempfile.mkdtemp(prefix="remap-qemu-"))
    log = serial_log or work / "serial.log"
    qerr = work / "qemu.stderr"
    argv[argv.index("-display") : argv.index("-display")] = ["-serial", f"file:{log}"]
    t0 = time.monotonic()
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_bytes(b"")
        with open(qerr, "wb") as ef:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=ef,
                stderr=ef,
                preexec_fn=_die_with_parent,
                close_fds=True,
            )
    except OSError as e:
        shutil.rmtree(work, ignore_errors=True)
        raise KernelError(f"cannot start the guest ({argv[0]}): {e.strerror}") from None
    kept = f" (serial log {log})" if serial_log is not None else ""
    up_at = done_at = None
    rc = release = None
    try:
        while True:
            now = time.monotonic() - t0
            text = _read(log)
            if up_at is None and (up := _line_after(text, MARK_UP)) is not None:
                up_at = now
                release = up
            if (failed := _line_after(text, MARK_FAIL)) is not None:
                raise KernelError(f"guest /init failed: {failed}{_tail(log)}")
            if done_at is None and (done := _line_after(text, MARK_DONE)) is not None:
                done_at = now
                rc = int(done or -1)
            exited = proc.poll() is not None
            if exited:
                if done_at is None:
                    why = _first_error(qerr) or _panic(text) or "no result line"
                    stage = "before /init ran" if up_at is None else "before the job finished"
                    raise KernelError(
                        f"guest {img.release} ({accel}) exited with status {proc.returncode} "
                        f"{stage}: {why}{_tail(log)}"
                    )
                break
            if up_at is None and now > boot_timeout:
                raise KernelError(
                    f"guest {img.release} ({accel}) did not boot within {boot_timeout:g} s"
                    f"{_tail(log)}"
                )
            if done_at is None and now > timeout:
                raise KernelError(
                    f"guest {img.release} ({accel}) hung: no result within {timeout:g} s"
                    f"{kept}{_tail(log)}"
                )
            if done_at is not None and now - done_at > POWEROFF_TIMEOUT_S:
                break  # the job is done; a guest that does not power off is simply killed
            time.sleep(POLL_S)
    finally:
        _stop(proc)
        serial = _read(log)
        shutil.rmtree(work, ignore_errors=True)  # qemu's stderr, and the log unless kept
    total = time.monotonic() - t0
    out = _read(io_dir / "stdout") if not probe else ""
    err = _read(io_dir / "stderr") if not probe else ""
    return GuestResult(
        rc if rc is not None else -1,
        out,
        err,
        release or "?",
        accel,
        round(up_at or 0.0, 3),
        round(total, 3),
        serial,
        io_dir,
    )


def run(
    img: KernelImage,
    script: str,
    *,
    timeout: float,
    files: dict[str, str] | None = None,
    accel: str = "auto",
    serial_log: Path | None = None,
    boot_timeout: float = BOOT_TIMEOUT_S,
    share: Iterable[Path] = (),
) -> GuestResult:
    """Run SCRIPT (sh, inside a chroot into the host's read-only /) in a guest of IMG.

    FILES ({name: text}) are put beside the script in the io folder first.  SHARE: host folders
    the job needs besides :func:`shares` (e.g. an experiment file's folder), also read-only.
    The io folder is mounted at remap.kernels.initramfs.IO_DIR inside; the caller reads what
    the job wrote there from ``result.io_dir`` and removes it.
    """
    acc = choose_accel(img, accel)
    io_dir = Path(tempfile.mkdtemp(prefix="remap-guest-io-"))
    for name, text in (files or {}).items():
        (io_dir / name).write_text(text)
    (io_dir / "job.sh").write_text(script if script.endswith("\n") else script + "\n")
    try:
        return boot(
            img,
            accel=acc,
            io_dir=io_dir,
            timeout=timeout,
            boot_timeout=boot_timeout,
            serial_log=serial_log,
            share=shares(share),
        )
    except BaseException:
        shutil.rmtree(io_dir, ignore_errors=True)
        raise


def choose_accel(img: KernelImage, accel: str = "auto") -> str:
    """``tcg`` or ``kvm``: as asked, or for ``auto`` ($REMAP_ACCEL, else the cached KVM probe)."""
    if accel == "auto":
        accel = os.environ.get("REMAP_ACCEL", "auto")
    if accel not in ACCELS:
        raise KernelError(f"unknown accelerator {accel!r} (use one of {', '.join(ACCELS)})")
    if accel != "auto":
        if accel == "kvm" and not _kvm_device():
            raise KernelError("accel kvm asked for, but /dev/kvm is not usable here")
        return accel
    return "kvm" if kvm_works(img) else "tcg"


def _kvm_device() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def kvm_works(img: KernelImage) -> bool:
    """Probe once (a bounded boot to /init under KVM) whether KVM runs this kernel; cached."""
    if not _kvm_device():
        return False
    key = f"{os.uname().release}|{_qemu_version()}|{img.release}"
    cache = catalog.cache_dir() / "kvm-probe.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return bool(known[key]["kvm"])
    io_dir = Path(tempfile.mkdtemp(prefix="remap-probe-"))
    t0 = time.monotonic()
    try:
        boot(img, accel="kvm", io_dir=io_dir, timeout=PROBE_TIMEOUT_S,
             boot_timeout=PROBE_TIMEOUT_S, probe=True)  # fmt: skip
        ok, why = True, "booted"
    except KernelError as e:
        ok, why = False, str(e).splitlines()[0][:300]
    finally:
        shutil.rmtree(io_dir, ignore_errors=True)
    known[key] = {"kvm": ok, "why": why, "probe_s": round(time.monotonic() - t0, 2)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(known, indent=1) + "\n")
    return ok


def _qemu_version() -> str:
    try:
        res = subprocess.run([qemu_path(), "--version"], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return "?"
    return (res.stdout.splitlines() or ["?"])[0]


def _stop(proc: subprocess.Popen) -> None:
    """Kill qemu if it still runs and reap it (bounded: SIGKILL cannot be refused)."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired as e:  # only a process stuck in D state could get here
        raise KernelError(f"qemu {proc.pid} did not die within 10 s of SIGKILL") from e


def _read(p: Path) -> str:
    try:
        return p.read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return ""


def _line_after(text: str, mark: str) -> str | None:
    """The rest of MARK's line in TEXT once the guest has written all of it (None before): the
    serial log is read while the guest writes it, and "REMAP-GUEST-UP 6" read half-way through
    "6.1.0-57-amd64" once gave the guest's release as "6"."""
    i = text.find(mark)
    if i < 0:
        return None
    rest = text[i + len(mark) :]
    end = rest.find("\n")
    return None if end < 0 else rest[:end].strip()


def _tail(log: Path, n: int = 3) -> str:
    lines = [ln.strip() for ln in _read(log).splitlines() if ln.strip()]
    return f" [serial: {' | '.join(lines[-n:])}]" if lines else " [serial console empty]"


def _first_error(qerr: Path) -> str:
    lines = [ln for ln in _read(qerr).splitlines() if ln.strip() and "warning" not in ln]
    return lines[0].strip() if lines else ""


def _panic(text: str) -> str:
    for ln in text.splitlines():
        if "Kernel panic" in ln:
            return ln.split("]", 1)[-1].strip()
    return ""
