"""Debian source packages as the source of a bring-your-own target (recipe key ``debian``).

Why: agetty (util-linux) and busybox are programs nobody here wrote, and the honest source for
them is the one Debian 12 ships and patches.  ``apt-get source`` needs deb-src entries, which
this machine's apt does not have, so -- as csrc/targets/debian-src.sh does for sic -- the
deb-src twin of the system's own ``*.sources`` (same mirrors, same suites) is written into a
private apt configuration under the build directory and the package is downloaded there; no
system file is changed.  ``dpkg-source -x`` then checks every file against the .dsc's sums and
applies Debian's patches.  The unpacked tree is kept (it is the "source" sources.build copies
into a scratch folder and hashes), so a second build needs neither apt nor the network.

Offline: a ``PACKAGE_*.dsc`` (with its tarballs) in the third-party folder
(sources.third_party_dir) is used instead of downloading.

Example::

    >>> unpacked("util-linux", "agetty")
    PosixPath('.../build/debian-src/util-linux/tree')
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .targets import build_dir

APT_TIMEOUT_S = 300  # apt-get update + source of one package; a hung mirror is an error
SYSTEM_SOURCES = Path("/etc/apt/sources.list.d")
SYSTEM_LIST = Path("/etc/apt/sources.list")


class FetchFailed(Exception):
    """The source package could not be had (``why``: the one-line reason)."""


def cache_dir(package: str) -> Path:
    """Where PACKAGE's private apt state, download and unpacked tree live."""
    return build_dir() / "debian-src" / package


def unpacked(package: str, third_party: Path | None = None) -> Path:
    """The unpacked, patched tree of Debian's source package PACKAGE (fetched once).

    Raises FetchFailed (no deb-src reachable, no such package, a tarball that fails its .dsc
    checksum, dpkg-source missing).
    """
    root = cache_dir(package)
    tree = root / "tree"
    if (tree / "debian" / "changelog").is_file():
        return tree
    dsc = _local_dsc(package, third_party) or _download(package, root / "dl")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".unpack-", dir=root) as tmp:
        staged = Path(tmp) / "tree"
        _run(["dpkg-source", "--no-copy", "-x", str(dsc), str(staged)], Path(tmp), package)
        os.replace(staged, tree)
    return tree


def _local_dsc(package: str, third_party: Path | None) -> Path | None:
    if third_party is None or not third_party.is_dir():
        return None
    found = sorted(third_party.glob(f"{package}_*.dsc"))
    return found[-1] if found else None


def _download(package: str, dl: Path) -> Path:
    """apt-get source --download-only PACKAGE into DL through a private apt configuration."""
    found = sorted(dl.glob(f"{package}_*.dsc"))
    if found:
        return found[-1]
    opts = _private_apt(dl / "apt")
    _run(["apt-get", *opts, "-qq", "update"], dl, package)
    _run(["apt-get", *opts, "-qq", "source", "--download-only", package], dl, package)
    found = sorted(dl.glob(f"{package}_*.dsc"))
    if not found:
        raise FetchFailed(f"apt-get source {package} left no {package}_*.dsc in {dl}")
    return found[-1]


def _private_apt(apt: Path) -> list[str]:
    """Write deb-src twins of the system's apt sources under APT; return apt-get's -o options."""
    for sub in ("lists/partial", "cache/archives/partial", "parts"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    lines = []
    if SYSTEM_LIST.is_file():
        text = SYSTEM_LIST.read_text()
        lines = ["deb-src " + ln[4:] for ln in text.splitlines() if ln.startswith("deb ")]
    (apt / "sources.list").write_text("".join(ln + "\n" for ln in lines))
    for f in sorted(SYSTEM_SOURCES.glob("*.sources")):
        text = "\n".join(
            "Types: deb-src" if ln.startswith("Types:") else ln for ln in f.read_text().splitlines()
        )
        (apt / "parts" / f.name).write_text(text + "\n")
    return [
        "-o", f"Dir::Etc::SourceList={apt / 'sources.list'}",
        "-o", f"Dir::Etc::SourceParts={apt / 'parts'}",
        "-o", f"Dir::State::Lists={apt / 'lists'}",
        "-o", f"Dir::Cache={apt / 'cache'}",
        "-o", "APT::Sandbox::User=root",
    ]  # fmt: skip


def _run(argv: list[str], cwd: Path, package: str) -> None:
    cwd.mkdir(parents=True, exist_ok=True)
    if shutil.which(argv[0]) is None:
        raise FetchFailed(f"{argv[0]} not found (apt-get install dpkg-dev)")
    try:
        res = subprocess.run(
            argv, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=APT_TIMEOUT_S, errors="replace",
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise FetchFailed(f"{argv[0]} for {package} ran over {APT_TIMEOUT_S} s") from None
    if res.returncode != 0:
        last = ((res.stderr or res.stdout).strip().splitlines() or ["(no output)"])[-1]
        raise FetchFailed(f"{' '.join(argv[:1] + argv[-2:])}: {last}")
