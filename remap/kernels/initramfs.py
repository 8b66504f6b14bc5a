"""A minimal initramfs for a guest kernel: busybox, the kernel's own virtio-9p modules, /init.

Why this shape: the guest must run *the very same remap code and targets* as the host, so it
mounts the host's / read-only over virtio-9p and chroots into it; nothing of remap is copied in.
The initramfs only carries what is needed to get there: busybox-static (Debian package), the
9p/virtio modules of the very kernel being booted (loaded with insmod in dependency order, read
from each module's .modinfo ``depends=`` because the unpacked package has no modules.dep), and
an /init that mounts, runs the job and powers off whatever happens.

The archive is written here in the cpio "newc" format (uncompressed: the kernel unpacks it
fastest that way), so no root, no cpio tool and no device nodes on the host are needed.

Guest protocol (lines on the serial console, read by remap.kernels.guest):
    REMAP-GUEST-UP <release>      /init started (the kernel booted)
    REMAP-GUEST-FAIL <why>        a mount or insmod failed (then it powers off)
    REMAP-GUEST-DONE <rc>         the job exited with rc; stdout/stderr/rc are in the io share
The io share (tag ``remapio``) is mounted at /run/remap-io inside the chroot; the job is
/run/remap-io/job.sh.  ``remap.mode=probe`` on the kernel command line stops right after UP.
The io share's ``shares`` file names the extra read-only shares (``TAG PATH`` a line); each is
mounted at PATH, so a venv, a package or a cache under the host's /tmp is seen where it is.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

from ..errors import KernelError
from .fetch import KernelImage

BUSYBOX = Path(os.environ.get("REMAP_BUSYBOX", "/bin/busybox"))
# The modules a guest needs; their dependencies are added from .modinfo.
WANTED_MODULES = ("virtio_pci", "9pnet_virtio", "9p")
HOST_TAG = "hostroot"
IO_TAG = "remapio"
# Extra read-only shares (the interpreter, remap, its build folder...: remap.kernels.guest),
# one "TAG PATH" line each in this file of the io share; TAG is SHARE_TAG followed by a number.
SHARE_TAG = "remapshare"
SHARES_FILE = "shares"
IO_DIR = "/run/remap-io"  # where the io share appears inside the chroot (the host's /)
MARK_UP, MARK_FAIL, MARK_DONE = "REMAP-GUEST-UP", "REMAP-GUEST-FAIL", "REMAP-GUEST-DONE"

INIT = f"""#!/bin/busybox sh
# remap guest /init: mount the host / read-only over virtio-9p, run the job, power off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "{MARK_UP} $(uname -r)"
fail() {{ echo "{MARK_FAIL} $*"; sync; poweroff -f; sleep 5; exit 1; }}
case " $(cat /proc/cmdline) " in *" remap.mode=probe "*) echo "{MARK_DONE} 0"; poweroff -f;; esac
for m in $(cat /modules.order); do insmod /modules/$m.ko || fail "insmod $m"; done
ifconfig lo 127.0.0.1 up || fail "loopback"
o=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o $o,ro,cache=loose {HOST_TAG} /host || fail "mount 9p {HOST_TAG}"
mount -t tmpfs -o mode=1777 tmp /host/tmp || fail "tmpfs /tmp"
mount -t tmpfs run /host/run || fail "tmpfs /run"
mkdir -p /host{IO_DIR}
mount -t 9p -o $o {IO_TAG} /host{IO_DIR} || fail "mount 9p {IO_TAG}"
# the host folders the job needs, each at its own path (the tmpfs above hides any under /tmp)
if [ -f /host{IO_DIR}/{SHARES_FILE} ]; then
  while read -r tag path; do
    mkdir -p "/host$path" 2>/dev/null
    mount -t 9p -o $o,ro,cache=loose "$tag" "/host$path" || fail "mount 9p $tag at $path"
  done < /host{IO_DIR}/{SHARES_FILE}
fi
mount -t proc proc /host/proc || fail "proc"
mount -t sysfs sys /host/sys || fail "sysfs"
mount -t devtmpfs dev /host/dev || fail "devtmpfs"
chroot /host /bin/sh {IO_DIR}/job.sh </dev/null >/host{IO_DIR}/stdout 2>/host{IO_DIR}/stderr
rc=$?
echo $rc >/host{IO_DIR}/rc
sync
umount /host{IO_DIR}
echo "{MARK_DONE} $rc"
poweroff -f
"""


def module_order(kernel_dir: Path, wanted: tuple[str, ...] = WANTED_MODULES) -> list[Path]:
    """The .ko files to insmod for WANTED, each after its dependencies."""
    index = {_modname(p): p for p in kernel_dir.rglob("*.ko")}
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in seen:
            return
        if name in chain:
            raise KernelError(f"module dependency cycle: {' -> '.join((*chain, name))}")
        if name not in index:
            raise KernelError(f"module {name} is not in {kernel_dir} (needed by {chain or 'init'})")
        for dep in depends(index[name]):
            visit(dep, (*chain, name))
        seen.add(name)
        order.append(index[name])

    for w in wanted:
        visit(w, ())
    return order


def depends(ko: Path) -> list[str]:
    """The ``depends=`` list of a module's .modinfo (names with '-' read as '_')."""
    m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", ko.read_bytes())
    if not m or not m.group(1):
        return []
    return [d.replace("-", "_") for d in m.group(1).decode().split(",") if d]


def _modname(p: Path) -> str:
    return p.name.removesuffix(".ko").replace("-", "_")


def build(img: KernelImage) -> Path:
    """Write (or reuse) the initramfs for IMG under its cache folder; return its path."""
    if not BUSYBOX.is_file():
        raise KernelError(f"{BUSYBOX} not found (apt-get install busybox-static)")
    if dynamically_linked(BUSYBOX):
        raise KernelError(f"{BUSYBOX} is dynamically linked (apt-get install busybox-static)")
    mods = module_order(img.modules)
    h = hashlib.sha256(INIT.encode())
    h.update(BUSYBOX.read_bytes())
    for m in mods:
        h.update(m.name.encode() + m.read_bytes())
    out = img.root / f"initramfs-{h.hexdigest()[:16]}.cpio"
    if out.is_file():
        return out
    w = _Newc()
    for d in ("bin", "dev", "proc", "sys", "host", "modules", "tmp", "run"):
        w.dir(d)
    w.chardev("dev/console", 5, 1)
    w.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    w.file("init", INIT.encode(), 0o755)
    names = []
    for m in mods:
        w.file(f"modules/{_modname(m)}.ko", m.read_bytes(), 0o644)
        names.append(_modname(m))
    w.file("modules.order", ("\n".join(names) + "\n").encode(), 0o644)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")  # concurrent builders never share a file
    tmp.write_bytes(w.finish())
    tmp.rename(out)
    for old in img.root.glob("initramfs-*.cpio"):
        if old != out:
            old.unlink(missing_ok=True)
    return out


def dynamically_linked(p: Path) -> bool:
    """True if ELF file P has a PT_INTERP program header (dynamically linked)."""
    with open(p, "rb") as f:
        hdr = f.read(64)
        if hdr[:4] != b"\x7fELF" or hdr[4] != 2:
            return False
        phoff = int.from_bytes(hdr[32:40], "little")
        phentsize = int.from_bytes(hdr[54:56], "little")
        phnum = int.from_bytes(hdr[56:58], "little")
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return any(
        int.from_bytes(table[i * phentsize : i * phentsize + 4], "little") == 3
        for i in range(phnum)
    )


class _Newc:
    """A tiny writer for the cpio newc format the kernel's initramfs unpacker reads."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)):
        nb = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(nb), 0]
        self.ino += 1
        hdr = b"070701" + b"".join(b"%08X" % v for v in fields)
        self.parts.append(_pad(hdr + nb))
        self.parts.append(_pad(data))

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, perm: int) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return b"".join(self.parts)


def _pad(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)
