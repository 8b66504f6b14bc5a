"""Download a Debian kernel package and unpack the parts a guest needs into the cache.

Why ``apt-get download`` + ``dpkg-deb``: the package is fetched as a file and unpacked into a
folder of our own; nothing is installed, so the host's kernel, /boot and /lib/modules are never
touched.  Only /boot (the bzImage, config, System.map) and the modules a guest needs for
virtio-9p are kept (about 15 MB instead of 400 MB); the .deb is deleted afterwards.

Layout of one cached kernel (``cache_dir()/RELEASE/``)::

    boot/vmlinuz-RELEASE  boot/config-RELEASE
    lib/modules/RELEASE/kernel/{drivers/virtio,net/9p,fs/9p,fs/netfs,fs/fscache}/*.ko
    manifest.json   {"release", "package", "version", "sha256"}  -- written last

Example::

    >>> from remap.kernels import fetch
    >>> img = fetch.fetch("debian-6.1")          # downloads once, then returns the cache
    >>> img.vmlinuz.name
    'vmlinuz-6.1.0-56-amd64'
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import KernelError
from ..targets import sha256_file
from . import catalog

# The folders of lib/modules/RELEASE/kernel/ whose modules a guest may load (virtio-9p).
MODULE_DIRS = ("drivers/virtio", "net/9p", "fs/9p", "fs/netfs", "fs/fscache")
DOWNLOAD_TIMEOUT_S = 300
UNPACK_TIMEOUT_S = 120


@dataclass(frozen=True)
class KernelImage:
    """A kernel unpacked in the cache, ready for qemu -kernel."""

    name: str
    release: str
    root: Path

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def vmlinux(self) -> Path:
        return self.root / "boot" / f"vmlinux-{self.release}"

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.release / "kernel"

    def manifest(self) -> dict:
        return json.loads((self.root / "manifest.json").read_text())


def image(name: str) -> KernelImage:
    """The cached image of kernel NAME; KernelError if it is not fetched yet."""
    k = catalog.resolve(name)
    if k.state == "host":
        raise KernelError("the host kernel is not booted in a guest: run without --kernel")
    if k.state != "cached":
        raise KernelError(f"kernel {name} is not fetched yet: run 'remap kernels fetch {name}'")
    return KernelImage(name, k.release, Path(k.path))


def fetch(name: str, *, progress=None) -> KernelImage:
    """Download and unpack kernel NAME unless it is cached; return its image."""
    k = catalog.resolve(name)
    if k.state == "host":
        raise KernelError("'host' is the running kernel: there is nothing to fetch")
    if k.state == "cached":
        return KernelImage(name, k.release, Path(k.path))
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise KernelError(f"cannot fetch {name}: {tool} not found (a Debian host is needed)")
    dest = catalog.cache_dir() / k.release
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmp:
        t = Path(tmp)
        if progress:
            progress(f"apt-get download {k.package}")
        _run(
            ["apt-get", "download", "-q", k.package], t, DOWNLOAD_TIMEOUT_S, f"download {k.package}"
        )
        debs = list(t.glob("*.deb"))
        if len(debs) != 1:
            raise KernelError(f"apt-get download {k.package} left {len(debs)} .deb files")
        deb = debs[0]
        version = deb.name.split("_")[1] if deb.name.count("_") >= 2 else "?"
        sha = sha256_file(deb)
        if progress:
            progress(f"unpacking {deb.name}")
        unpack = t / "root"
        unpack.mkdir()
        _unpack(deb, unpack, k.release)
        deb.unlink()
        kernel_dir = unpack / "lib" / "modules" / k.release / "kernel"
        vmlinuz = unpack / "boot" / f"vmlinuz-{k.release}"
        if not vmlinuz.is_file() or not kernel_dir.is_dir():
            raise KernelError(f"{deb.name} has no boot/vmlinuz-{k.release} or no modules")
        manifest = {"release": k.release, "package": k.package, "version": version, "sha256": sha}
        (unpack / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        if (dest / "manifest.json").is_file():
            pass  # a concurrent fetch finished first: keep its copy, drop ours
        else:
            if dest.exists():
                shutil.rmtree(dest)  # a half-written earlier fetch (no manifest)
            try:
                unpack.rename(dest)
            except OSError as e:
                if not (dest / "manifest.json").is_file():
                    raise KernelError(f"cannot move the kernel into {dest}: {e.strerror}") from None
    img = KernelImage(name, k.release, dest)
    boot_image(img)
    return img


def boot_image(img: KernelImage) -> Path:
    """The file to give qemu's -kernel: the uncompressed ELF vmlinux when the kernel can boot
    it (CONFIG_PVH), else the bzImage.

    Why: under TCG the bzImage's own xz decompressor runs emulated and costs ~6 s of every
    boot; decompressing once on the host (Python's lzma, ~1.5 s) and booting the ELF through
    its PVH entry point cuts a guest boot from ~11 s to ~4 s.
    """
    if img.vmlinux.is_file():
        return img.vmlinux
    config = img.root / "boot" / f"config-{img.release}"
    if not config.is_file() or "\nCONFIG_PVH=y\n" not in config.read_text():
        return img.vmlinuz
    elf = _decompress_bzimage(img.vmlinuz.read_bytes())
    if elf is None:
        return img.vmlinuz
    tmp = img.vmlinux.with_suffix(f".{os.getpid()}.tmp")  # concurrent runs never share a file
    tmp.write_bytes(elf)
    tmp.rename(img.vmlinux)
    return img.vmlinux


def _decompress_bzimage(data: bytes) -> bytes | None:
    """The vmlinux ELF inside a bzImage (xz or gzip payload), or None if not found."""
    import gzip
    import lzma
    import zlib

    for magic, codec in ((b"\xfd7zXZ\x00", "xz"), (b"\x1f\x8b\x08\x00", "gzip")):
        at = data.find(magic)
        while at >= 0:
            try:
                if codec == "xz":
                    out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[at:])
                else:
                    out = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[at:])
            except (lzma.LZMAError, zlib.error, gzip.BadGzipFile):
                out = b""
            if out[:4] == b"\x7fELF":
                return out
            at = data.find(magic, at + 1)
    return None


def _unpack(deb: Path, into: Path, release: str) -> None:
    """dpkg-deb --fsys-tarfile | tar -x of /boot and the virtio-9p modules only."""
    members = ["./boot"] + [f"./lib/modules/{release}/kernel/{d}" for d in MODULE_DIRS]
    tar = ["tar", "-x", "-C", str(into), *members]
    try:
        dpkg = subprocess.Popen(
            ["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            res = subprocess.run(
                tar, stdin=dpkg.stdout, capture_output=True, text=True, timeout=UNPACK_TIMEOUT_S
            )
        finally:
            dpkg.stdout.close()
            try:
                dpkg.wait(timeout=UNPACK_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                dpkg.kill()
                dpkg.wait()
    except subprocess.TimeoutExpired:
        raise KernelError(f"unpacking {deb.name} took over {UNPACK_TIMEOUT_S} s") from None
    if dpkg.returncode != 0 or res.returncode != 0:
        why = (res.stderr.strip().splitlines() or [dpkg.stderr.read().decode().strip()])[-1:]
        raise KernelError(f"cannot unpack {deb.name}: {' '.join(why) or 'tar failed'}")


def _run(argv: list[str], cwd: Path, timeout: float, what: str) -> None:
    try:
        res = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise KernelError(f"{what}: no result within {timeout:g} s") from None
    if res.returncode != 0:
        lines = [ln for ln in res.stderr.splitlines() if not ln.startswith("W:")]
        raise KernelError(f"{what} failed: {(lines or ['exit status ' + str(res.returncode)])[-1]}")
