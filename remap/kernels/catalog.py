"""Which kernels remap can run experiments on: the host, and Debian's 6.1 packages.

Why Debian's linux-image-6.1: it is the newest kernel that still has SPLIT_RSS_COUNTING (the
mechanism behind the seed's "RSS 4 kB", see remap.residency.mechanism_for), it is one
``apt-get download`` away on this Debian 12 host, and its modules for virtio/9p come in the
same package.  The *unsigned* package holds the same bzImage as the signed one without the EFI
signature (qemu's -kernel does not care), so that is the one fetched.

Names: ``host`` (the running kernel), ``debian-6.1`` (the newest 6.1 already in the cache, else
the newest package apt knows), and ``debian-6.1.0-NN`` for one ABI.

Example::

    >>> from remap.kernels import catalog
    >>> [k.name for k in catalog.list_kernels()][:2]
    ['host', 'debian-6.1']
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import KernelError
from ..targets import cache_root

FLAVOUR = "amd64"
_PKG = re.compile(rf"^linux-image-(?P<abi>6\.1\.0-(?P<n>\d+))-{FLAVOUR}-unsigned$")
_NAME = re.compile(r"^debian-6\.1(?:\.0-(?P<n>\d+))?$")
APT_TIMEOUT_S = 30


@dataclass(frozen=True)
class Kernel:
    """One kernel remap can run on.

    ``state`` is ``host`` (running now), ``cached`` (unpacked under the cache folder, bootable
    without the network) or ``fetchable`` (apt can download it).
    """

    name: str
    release: str  # uname -r inside it, e.g. 6.1.0-56-amd64
    package: str | None  # Debian package, None for the host
    state: str
    path: str | None = None  # cache folder when cached

    def to_json(self) -> dict:
        return asdict(self)


def cache_dir() -> Path:
    """Where fetched kernels live: $REMAP_KERNEL_CACHE, else kernels/ in remap's cache root
    (build/kernels in a checkout, ~/.cache/remap/kernels in an installed remap)."""
    env = os.environ.get("REMAP_KERNEL_CACHE")
    return Path(env) if env else cache_root() / "kernels"


def package_for(abi: str) -> str:
    return f"linux-image-{abi}-{FLAVOUR}-unsigned"


def release_for(abi: str) -> str:
    return f"{abi}-{FLAVOUR}"


def apt_packages() -> list[str]:
    """The linux-image-6.1.0-NN-amd64-unsigned packages apt knows, oldest ABI first.

    An empty list (no apt, no package lists yet) is not an error: cached kernels still run.
    """
    if shutil.which("apt-cache") is None:
        return []
    try:
        res = subprocess.run(
            [
                "apt-cache",
                "search",
                "--names-only",
                rf"^linux-image-6\.1\.0-[0-9]+-{FLAVOUR}-unsigned$",
            ],
            capture_output=True,
            text=True,
            timeout=APT_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return []
    names = [line.split(" ", 1)[0] for line in res.stdout.splitlines()]
    found = [n for n in names if _PKG.match(n)]
    return sorted(found, key=lambda n: int(_PKG.match(n)["n"]))


def cached() -> dict[str, Path]:
    """{release: folder} of the kernels unpacked in the cache (those with a manifest)."""
    out = {}
    d = cache_dir()
    if d.is_dir():
        for m in sorted(d.glob("*/manifest.json")):
            try:
                rel = json.loads(m.read_text())["release"]
            except (OSError, ValueError, KeyError):
                continue  # a half-written fetch: ignored, fetch redoes it
            out[rel] = m.parent
    return out


def _abi_n(release: str) -> int:
    m = re.match(r"6\.1\.0-(\d+)-", release)
    return int(m[1]) if m else -1


def list_kernels() -> list[Kernel]:
    """Host first, then ``debian-6.1`` (the default 6.1), then every 6.1 ABI known or cached."""
    out = [Kernel("host", os.uname().release, None, "host")]
    have = cached()
    abis = {_PKG.match(p)["abi"] for p in apt_packages()}
    abis |= {r.removesuffix(f"-{FLAVOUR}") for r in have}
    ordered = sorted(abis, key=lambda a: int(a.rsplit("-", 1)[1]))
    kernels = []
    for abi in ordered:
        rel = release_for(abi)
        state, path = ("cached", str(have[rel])) if rel in have else ("fetchable", None)
        kernels.append(Kernel(f"debian-{abi}", rel, package_for(abi), state, path))
    if kernels:
        best = _default(kernels)
        out.append(Kernel("debian-6.1", best.release, best.package, best.state, best.path))
    return out + kernels


def _default(kernels: list[Kernel]) -> Kernel:
    """The newest cached ABI, else the newest apt offers.

    Cached first so that a new Debian point release never makes a run download 70 MB
    unasked; ``remap kernels fetch debian-6.1.0-NN`` moves on deliberately.
    """
    have = [k for k in kernels if k.state == "cached"]
    return max(have or kernels, key=lambda k: _abi_n(k.release))


def resolve(name: str) -> Kernel:
    """NAME -> Kernel, or KernelError listing the names that exist."""
    if name == "host":
        return list_kernels()[0]
    m = _NAME.match(name)
    if m is None:
        raise KernelError(f"unknown kernel {name!r} (known: host, debian-6.1, debian-6.1.0-NN)")
    kernels = list_kernels()
    for k in kernels:
        if k.name == name:
            return k
    known = ", ".join(k.name for k in kernels)
    raise KernelError(
        f"kernel {name!r} is neither cached nor known to apt (known: {known}; "
        "run 'apt-get update' if the list is empty)"
    )
