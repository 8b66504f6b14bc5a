"""What this machine allows, and what each remap feature needs: ``remap doctor``.

Why one place: a fresh install fails in a dozen machine-specific ways (Yama forbids ptrace, a
container dropped CAP_SYS_PTRACE, the kernel predates PAGEMAP_SCAN, qemu or musl-gcc missing,
apt knows no 6.1 kernel...).  Each check here asks the machine itself -- a probe on remap's own
process, a file under /proc or /sys, a binary on PATH -- never a guess from the kernel version,
and says which feature needs it and the exact command that fixes it.  Nothing here changes the
machine or needs the network.

Usage::

    >>> from remap import doctor
    >>> doctor.checks()[0].name, doctor.checks()[0].ok
    ('kernel', True)
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from . import kconst as K
from . import pagemap, procfs, targets

YAMA = "kernel/yama/ptrace_scope"  # under /proc/sys (security/yama/yama_lsm.c)
FAULT_AROUND = procfs.FAULT_AROUND_BYTES
KVM = Path("/dev/kvm")


@dataclass(frozen=True)
class Check:
    """One line of the doctor's table: FOUND on this machine, what NEEDS it, how to FIX it."""

    name: str
    ok: bool
    found: str
    needed_for: str
    fix: str | None = None  # the exact command or step, when not ok

    def to_json(self) -> dict:
        return asdict(self)


def checks() -> list[Check]:
    """Every check, in the order of the table (kernel facts, then tools, then the guest)."""
    return [
        kernel(),
        ptrace_scope(),
        cap_sys_ptrace(),
        native_helper(),
        pagemap_scan(),
        soft_dirty(),
        idle_page_tracking(),
        fault_around_bytes(),
        process_madvise(),
        musl_gcc(),
        accelerator(),
        qemu(),
        busybox_static(),
        kernel_61(),
    ]


def kernel() -> Check:
    from .residency import mechanism_for

    rel = procfs.kernel_release()
    return Check("kernel", True, mechanism_for(rel), "explain (which counter is exact)")


def _has_cap(cap: int) -> bool:
    eff = procfs.read_status(os.getpid()).get("CapEff", 0)  # parsed from hex
    return isinstance(eff, int) and bool(eff >> cap & 1)


def ptrace_scope() -> Check:
    need = "syscall, squeeze, fold, profile (attaching to a process)"
    try:
        scope = int(procfs.read_sysctl(YAMA) or "")
    except ValueError:
        return Check("ptrace_scope", True, "no Yama LSM (classic ptrace rules)", need)
    cap = _has_cap(K.CAP_SYS_PTRACE)
    meaning = {
        0: "any process of the same user",
        1: "descendants only, unless CAP_SYS_PTRACE",
        2: "CAP_SYS_PTRACE only",
        3: "no attaching at all",
    }.get(scope, "unknown value")
    ok = scope == 0 or (scope in (1, 2) and cap)
    if scope >= 3:
        fix = "reboot (3 cannot be lowered at run time), then sysctl -w kernel.yama.ptrace_scope=1"
    else:
        fix = "run remap as root (sudo remap ...), or sysctl -w kernel.yama.ptrace_scope=0"
    return Check("ptrace_scope", ok, f"{scope} ({meaning})", need, None if ok else fix)


def cap_sys_ptrace() -> Check:
    ok = _has_cap(K.CAP_SYS_PTRACE)
    found = "in the effective set" if ok else f"missing (uid {os.geteuid()})"
    fix = "run remap as root (sudo remap ...); in a container: docker run --cap-add=SYS_PTRACE"
    return Check(
        "CAP_SYS_PTRACE", ok, found, "attaching to other users' processes", None if ok else fix
    )


def native_helper() -> Check:
    """The cffi ptrace helper: built into an installed remap, compiled at first use otherwise."""
    need = "syscall, squeeze, fold, profile (one C call per injected syscall)"
    if not targets.IN_CHECKOUT:
        try:
            from . import _native  # type: ignore[attr-defined]  # noqa: F401
        except ImportError as e:
            fix = "pip install --force-reinstall remap (its wheel; its sdist needs gcc, libffi-dev)"
            return Check("native helper", False, f"not importable: {e}", need, fix)
        return Check("native helper", True, "built into this install (remap._native)", need)
    missing = [t for t in ("gcc", "as", "objcopy") if shutil.which(t) is None]
    if missing:
        fix = "apt-get install gcc binutils python3-dev libffi-dev"
        return Check("native helper", False, f"cannot build: no {', '.join(missing)}", need, fix)
    return Check("native helper", True, "checkout: built from csrc/native on first use", need)


def pagemap_scan() -> Check:
    from .pagemap import scan_supported

    ok = scan_supported()
    found = "ioctl available" if ok else "not in this kernel (seek-and-read walk used instead)"
    fix = "boot Linux 6.7 or later (remap works without it, walking pagemap more slowly)"
    return Check("PAGEMAP_SCAN", ok, found, "fast map/snapshot page walks", None if ok else fix)


def soft_dirty() -> Check:
    ok = pagemap.soft_dirty_supported()  # what `watch` asks (a written page shows bit 55)
    found = "pagemap bit 55 set on a written page" if ok else "not kept by this kernel"
    fix = "boot a kernel built with CONFIG_MEM_SOFT_DIRTY=y (watch then reports written pages)"
    return Check("soft-dirty", ok, found, "watch: which pages were written", None if ok else fix)


def idle_page_tracking() -> Check:
    need = "watch: pages touched while watching (else clear_refs/Referenced)"
    bitmap, access = pagemap.IDLE_BITMAP, pagemap.idle_bitmap_access()
    if access == "missing":
        fix = "boot a kernel built with CONFIG_IDLE_PAGE_TRACKING=y"
        return Check("idle page tracking", False, f"no {bitmap}", need, fix)
    if access == "denied":
        return Check("idle page tracking", False, f"{bitmap}: no access", need, "run remap as root")
    return Check("idle page tracking", True, bitmap, need)


def fault_around_bytes() -> Check:
    need = "explain/squeeze notes: how many pages one fault maps back (default 65536)"
    value = procfs.read_fault_around_bytes()
    if value is None:
        fix = "mount -t debugfs debugfs /sys/kernel/debug (remap assumes the default 65536)"
        return Check("fault_around_bytes", False, f"unreadable ({FAULT_AROUND})", need, fix)
    return Check("fault_around_bytes", True, f"{value} ({value // K.PAGE_SIZE} pages)", need)


def process_madvise() -> Check:
    """Probe the syscall itself on our own pidfd: vlen 0 is a no-op where it exists."""
    need = "squeeze --no-stop (MADV_PAGEOUT without stopping the target)"
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(K.SYSCALLS["pidfd_open"], os.getpid(), 0)
    err = ctypes.get_errno() if fd < 0 else 0
    if fd >= 0:
        r = libc.syscall(K.SYSCALLS["process_madvise"], fd, None, 0, K.MADV_COLD, 0)
        err = ctypes.get_errno() if r < 0 else 0
        os.close(fd)
    if err == 0:
        return Check("process_madvise", True, "available", need)
    fix = "boot Linux 5.10 or later (plain squeeze, which stops the target, needs no such call)"
    return Check("process_madvise", False, errno.errorcode.get(err, str(err)), need, fix)


def _tool(name: str, binary: str, need: str, package: str) -> Check:
    path = shutil.which(binary)
    if path:
        return Check(name, True, path, need)
    return Check(name, False, f"{binary} not on PATH", need, f"apt-get install {package}")


def musl_gcc() -> Check:
    return _tool("musl-gcc", "musl-gcc", "building the bundled targets (minibot...)", "musl-tools")


def qemu() -> Check:
    from .kernels.guest import QEMU

    return _tool("qemu", QEMU, "run --kernel debian-6.1 (the kernel matrix)", "qemu-system-x86")


def accelerator() -> Check:
    """KVM where /dev/kvm is usable (and, once probed, boots a guest), else TCG."""
    from .kernels import catalog

    need = "run --kernel: KVM boots a guest in ~1 s, TCG (always possible) is several times slower"
    if not os.access(KVM, os.R_OK | os.W_OK):
        why = "no /dev/kvm" if not KVM.exists() else "/dev/kvm not accessible"
        fix = "modprobe kvm_intel (or kvm_amd); in a container: docker run --device /dev/kvm"
        return Check("KVM or TCG", False, f"TCG ({why})", need, fix)
    try:
        probes = json.loads((catalog.cache_dir() / "kvm-probe.json").read_text())
    except (OSError, ValueError):
        probes = {}
    mine = [v for k, v in probes.items() if k.startswith(f"{os.uname().release}|")]
    if mine and not any(v.get("kvm") for v in mine):
        why = str(mine[-1].get("why", "?"))[:120]
        return Check(
            "KVM or TCG", True, f"TCG (/dev/kvm present, its probe boot failed: {why})", need
        )
    state = "probe booted" if mine else "probed at the first guest run"
    return Check("KVM or TCG", True, f"KVM (/dev/kvm usable, {state})", need)


def busybox_static() -> Check:
    from .kernels.initramfs import BUSYBOX, dynamically_linked

    need = "run --kernel (the guest's initramfs)"
    fix = "apt-get install busybox-static"
    if not BUSYBOX.is_file():
        return Check("busybox-static", False, f"no {BUSYBOX}", need, fix)
    if dynamically_linked(BUSYBOX):
        return Check("busybox-static", False, f"{BUSYBOX} is dynamically linked", need, fix)
    return Check("busybox-static", True, str(BUSYBOX), need)


def kernel_61() -> Check:
    """Debian's 6.1 kernel package: cached (bootable offline), fetchable, or unknown to apt."""
    from .kernels import catalog

    need = "run --kernel debian-6.1 (split RSS counters, the seed's 'RSS 4 kB')"
    k = next((k for k in catalog.list_kernels() if k.name == "debian-6.1"), None)
    if k is None:
        fix = "apt-get update (with Debian 12 'bookworm' in the apt sources)"
        return Check("6.1 kernel package", False, "unknown to apt", need, fix)
    if k.state == "cached":
        return Check("6.1 kernel package", True, f"{k.release} cached in {k.path}", need)
    fix = "remap kernels fetch debian-6.1 (else the first --kernel run fetches it, ~70 MB)"
    return Check("6.1 kernel package", False, f"{k.package} fetchable, not cached", need, fix)
