"""Build the bundled C targets (csrc/targets/) on demand and cache the binaries.

Why on demand: tests, experiments and benchmarks all need the same small programs, built the
same way, on a fresh machine with nothing but gcc and musl-tools.  Each source file says how it
is built in its own header, so adding a target never means editing a shared table::

    // remap-build: musl-gcc -static -Os -o {out} {src}
    // remap-build[hotpage]: musl-gcc -static -Os -Wl,-T,{dir}/minibot-hotpage.ld -o {out} {src}

``{src}``, ``{out}`` and ``{dir}`` (the csrc/targets folder) are substituted; the first word is
the compiler.  A binary is rebuilt when its recipe or any file in csrc/targets/ it names changes.

Where things live: in a checkout, the sources are the checkout's own csrc/ and experiments/ and
everything built goes to build/; in an installed remap (wheel or sdist) the same files are
package data under remap/bundled/ (setup.py copies them there) and everything built goes to the
user's cache ($XDG_CACHE_HOME/remap, ~/.cache/remap), never into site-packages.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from .errors import ExperimentError

PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parent  # the checkout, when remap runs from one (else the site-packages folder)
# A checkout has its pyproject.toml and csrc/ beside the package; an installed remap has neither.
IN_CHECKOUT = (ROOT / "pyproject.toml").is_file() and (ROOT / "csrc" / "targets").is_dir()
DATA = ROOT if IN_CHECKOUT else PACKAGE / "bundled"  # holds csrc/ and experiments/
CSRC = DATA / "csrc"
TARGET_SRC = CSRC / "targets"
EXPERIMENTS_DIR = DATA / "experiments"
_RECIPE = re.compile(r"^\s*//\s*remap-build(?:\[(?P<variant>[\w-]+)\])?:\s*(?P<cmd>.+?)\s*$")


def user_cache_dir() -> Path:
    """$XDG_CACHE_HOME/remap, else ~/.cache/remap (a relative XDG_CACHE_HOME is ignored, as the
    XDG base directory specification says)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path(os.path.expanduser("~")) / ".cache"
    return base / "remap"


def cache_root() -> Path:
    """Where remap keeps what it builds and fetches: build/ in a checkout, else the user's cache."""
    return ROOT / "build" if IN_CHECKOUT else user_cache_dir()


def build_dir() -> Path:
    """Where built binaries live: $REMAP_BUILD_DIR, else :func:`cache_root`."""
    env = os.environ.get("REMAP_BUILD_DIR")
    return Path(env) if env else cache_root()


def recipes(name: str) -> dict[str, str]:
    """Return {variant: command template} declared in csrc/targets/NAME.c."""
    src = TARGET_SRC / f"{name}.c"
    if not src.is_file():
        known = ", ".join(sorted(p.stem for p in TARGET_SRC.glob("*.c"))) or "none"
        raise ExperimentError(f"unknown target {name!r} (no {src}); known targets: {known}")
    found: dict[str, str] = {}
    with src.open() as f:
        for line in f:
            m = _RECIPE.match(line)
            if m:
                found[m.group("variant") or "default"] = m.group("cmd")
    if not found:
        raise ExperimentError(f"{src}: no '// remap-build:' line saying how to build it")
    return found


def build(name: str, variant: str = "default", *, quiet: bool = True) -> Path:
    """Build target NAME (variant VARIANT) if needed and return the binary's path.

    The cache key hashes the command and every file in csrc/targets/ the command mentions, so
    editing a linker script rebuilds exactly the binaries that use it.
    """
    cmds = recipes(name)
    if variant not in cmds:
        raise ExperimentError(
            f"target {name!r} has no build variant {variant!r} (has: {', '.join(sorted(cmds))})"
        )
    src = TARGET_SRC / f"{name}.c"
    template = cmds[variant]
    suffix = "" if variant == "default" else f"-{variant}"
    out = build_dir() / "targets" / f"{name}{suffix}"
    cmd = template.format(src=src, out=out, dir=TARGET_SRC)
    h = hashlib.sha256(cmd.encode())
    for p in sorted(TARGET_SRC.iterdir()):
        if p.is_file() and (p == src or str(p) in cmd or p.suffix == ".h"):
            h.update(p.name.encode() + b"\0" + p.read_bytes())
    stamp = out.with_name(out.name + ".sha256")
    digest = h.hexdigest()
    if out.is_file() and stamp.is_file() and stamp.read_text() == digest:
        return out
    argv = shlex.split(cmd)
    if shutil.which(argv[0]) is None:
        hint = " (apt-get install musl-tools)" if argv[0].startswith("musl") else ""
        raise ExperimentError(f"cannot build target {name!r}: compiler {argv[0]} not found{hint}")
    out.parent.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(argv, capture_output=True, text=True, cwd=TARGET_SRC)
    if res.returncode != 0:
        first = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ExperimentError(f"cannot build target {name!r} from {src}: {first}")
    stamp.write_text(digest)
    return out


def sha256_file(path: Path) -> str:
    """sha256 of a file on disk, read in 1 MiB chunks (binaries and packages recorded by hash)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def all_targets() -> list[tuple[str, str]]:
    """Every (name, variant) pair declared under csrc/targets/."""
    return [(p.stem, v) for p in sorted(TARGET_SRC.glob("*.c")) for v in recipes(p.stem)]
