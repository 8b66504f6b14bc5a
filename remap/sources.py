"""Bring-your-own targets: programs built from a source tarball or folder outside csrc/.

Why: remap must work on the user's own programs (EnergyMech, issue 16), not only on the demo
targets it ships.  Such a program comes as an upstream tarball or a folder plus a *recipe*: the
configure flags, static or dynamic, which libc, where the built binary lands.  The recipe is a
TOML table, either a file ``csrc/recipes/NAME.toml`` or inline in an experiment
(``[target.recipe]``)::

    source = "energymech-65e04a8.tar.gz"  # tarball or folder; relative: the third-party dir
    sha256 = "abfa..."                     # optional: the tarball must have this hash
    binary = "src/energymech"              # the built program, inside the tree
    libc = "musl"                          # checked: a dynamic binary's interpreter is musl's
    configure = ["--with-libmusl", ...]    # ./configure FLAGS </dev/null (omit: no configure)
    make = ["-j2"]                         # make FLAGS
    env = { CC = "musl-gcc" }              # extra environment for configure and make
    default = "dynamic"                    # the variant used when none is named
    debian = "util-linux"                  # instead of source: Debian's source package (debsrc)
    prepare = [["musl-kernel-headers.sh"]] # csrc/recipes/SCRIPT ARGS, run with sh in the tree
                                           # before configure (their bytes are in the hash)
    keep = ["src/*.o"]                     # (variant) also keep these built files, as
                                           # link inputs (remap.layout): kept_files(binary)
    [variants.static]
    linkage = "static"                     # checked on the result (PT_INTERP absent)
    append = { "src/Makefile" = { LDSCRIPT = "-static" } }  # VAR = ... gets " -static"
    configure = ["--extra"]                # a variant's flags are added to the common ones

Relative sources are looked up in ``$REMAP_THIRD_PARTY``, else ``REPO/../shared/third_party``
(where CI has them).  A missing source is :class:`SourceMissing` naming the path looked at, so a
runner can report the experiment as skipped, never as passed.

The tree is unpacked (or copied) into a scratch folder -- the source is never written to --
built there, and only the binary is kept, under ``BUILD/sources/NAME-VARIANT-HASH/``, where
HASH covers the source's bytes and the recipe: an unchanged pair is never rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ExperimentError
from .targets import CSRC, IN_CHECKOUT, ROOT, build_dir, sha256_file, user_cache_dir

RECIPES_DIR = CSRC / "recipes"
THIRD_PARTY_ENV = "REMAP_THIRD_PARTY"
BUILD_TIMEOUT_S = 600  # configure + make of one tree; a hung build is an error, not a hang
_RECIPE_KEYS = {
    "description", "source", "sha256", "binary", "libc", "configure", "make", "env",
    "default", "variants", "linkage", "append", "debian", "prepare",
}  # fmt: skip
_VARIANT_KEYS = {"linkage", "append", "configure", "make", "env", "keep"}
_SKIP_DIRS = {".git", ".hg", ".svn"}


class SourceMissing(ExperimentError):
    """The tarball or folder a recipe names is not on this machine (``path``: where we looked)."""

    def __init__(self, name: str, path: Path, hint: str | None = None):
        self.path = path
        hint = hint or f"set ${THIRD_PARTY_ENV} to its folder"
        super().__init__(f"source of target {name!r} not found: {path} ({hint})")


@dataclass(frozen=True)
class Recipe:
    """How to build one variant of a bring-your-own target (see the module docstring)."""

    name: str
    variant: str
    source: str
    binary: str
    configure: tuple[str, ...] | None = None
    make: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    append: dict[str, dict[str, str]] = field(default_factory=dict)
    linkage: str | None = None  # "static" / "dynamic": checked on the result
    libc: str | None = None
    sha256: str | None = None
    debian: str | None = None  # Debian's source package instead of ``source`` (remap.debsrc)
    prepare: tuple[tuple[str, ...], ...] = ()  # csrc/recipes scripts run before configure
    keep: tuple[str, ...] = ()  # globs in the tree: built files kept beside the binary

    def to_json(self) -> dict[str, Any]:
        """Every field (records and the cache key hash it: json.dumps sorts the keys); the
        debian/prepare/keep fields only when set, so older recipes keep their cache keys."""
        d = dataclasses.asdict(self)
        for key in ("debian", "prepare", "keep"):
            if not d[key]:
                del d[key]
        return d


def third_party_dir() -> Path:
    """$REMAP_THIRD_PARTY, else REPO/../shared/third_party in a checkout (CI's layout), else
    the user's cache third_party/ folder."""
    env = os.environ.get(THIRD_PARTY_ENV)
    if env:
        return Path(env)
    if IN_CHECKOUT:
        return ROOT.parent / "shared" / "third_party"
    return user_cache_dir() / "third_party"


def available() -> list[str]:
    """Names of the recipe files in csrc/recipes/."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))


def recipe(name: str, variant: str = "default", table: dict | None = None) -> Recipe:
    """The recipe of NAME (csrc/recipes/NAME.toml, or TABLE when given) for VARIANT
    ("default": the recipe's ``default`` variant).  ExperimentError on any mistake in it."""
    if table is None:
        path = RECIPES_DIR / f"{name}.toml"
        if not path.is_file():
            known = ", ".join(available()) or "none"
            raise ExperimentError(f"unknown source target {name!r} (no {path}; known: {known})")
        try:
            table = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ExperimentError(f"{path}: cannot read recipe: {e}") from None
        where = str(path)
    else:
        where = f"recipe of {name!r}"
    return _parse(name, variant, table, where)


def _parse(name: str, variant: str, t: dict, where: str) -> Recipe:
    def bad(msg: str) -> ExperimentError:
        return ExperimentError(f"{where}: {msg}")

    if not isinstance(t, dict):
        raise bad("a recipe must be a table")
    unknown = sorted(set(t) - _RECIPE_KEYS)
    if unknown:
        raise bad(f"unknown key(s) {', '.join(unknown)} (allowed: {sorted(_RECIPE_KEYS)})")
    debian = t.get("debian")
    if debian is not None and (not isinstance(debian, str) or not debian or "source" in t):
        raise bad("'debian' (a source package name) replaces 'source': give one of them")
    for key in ("binary",) if debian else ("source", "binary"):
        if not isinstance(t.get(key), str) or not t[key]:
            raise bad(f"'{key}' (a non-empty string) is required")
    prepare = t.get("prepare", [])
    if not isinstance(prepare, list) or not all(
        isinstance(c, list) and c and all(isinstance(x, str) for x in c) for c in prepare
    ):
        raise bad('prepare must look like [["SCRIPT.sh", "ARG", ...], ...]')
    variants = t.get("variants", {})
    if not isinstance(variants, dict):
        raise bad("'variants' must be a table of tables")
    chosen = t.get("default", "default") if variant == "default" else variant
    if chosen not in variants and not (chosen == "default" and not variants):
        raise bad(f"no variant {chosen!r} (has: {', '.join(sorted(variants)) or 'none'})")
    over = variants.get(chosen, {})
    if not isinstance(over, dict) or set(over) - _VARIANT_KEYS:
        raise bad(f"variants.{chosen} must be a table of {sorted(_VARIANT_KEYS)}")
    conf = _strings(t.get("configure"), "configure", bad)
    extra = _strings(over.get("configure"), f"variants.{chosen}.configure", bad)
    if extra is not None:
        conf = (conf or ()) + extra
    make = (_strings(t.get("make"), "make", bad) or ()) + (
        _strings(over.get("make"), f"variants.{chosen}.make", bad) or ()
    )
    env = _str_table(t.get("env", {}), "env", bad)
    env.update(_str_table(over.get("env", {}), f"variants.{chosen}.env", bad))
    append = over.get("append", t.get("append", {}))
    if not isinstance(append, dict) or not all(
        isinstance(v, dict) and all(isinstance(x, str) for x in v.values()) for v in append.values()
    ):
        raise bad('append must look like { "FILE" = { VAR = "WORDS" } }')
    linkage = over.get("linkage", t.get("linkage"))
    if linkage not in (None, "static", "dynamic"):
        raise bad(f"linkage must be 'static' or 'dynamic', got {linkage!r}")
    libc, digest = t.get("libc"), t.get("sha256")
    if libc is not None and not isinstance(libc, str):
        raise bad("libc must be a string (e.g. 'musl')")
    if digest is not None and not re.fullmatch(r"[0-9a-f]{64}", str(digest)):
        raise bad("sha256 must be 64 lowercase hex digits")
    source = f"debian:{debian}" if debian else t["source"]
    keep = _strings(over.get("keep"), f"variants.{chosen}.keep", bad) or ()
    return Recipe(
        name, chosen, source, t["binary"], conf, make, env, append, linkage, libc, digest,
        debian, tuple(tuple(c) for c in prepare), keep,
    )  # fmt: skip


def _strings(v, key: str, bad) -> tuple[str, ...] | None:
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise bad(f"'{key}' must be an array of strings")
    return tuple(v)


def _str_table(v, key: str, bad) -> dict[str, str]:
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        raise bad(f"'{key}' must be a table of strings")
    return dict(v)


def source_path(r: Recipe) -> Path:
    """Where R's source is (absolute, or under :func:`third_party_dir`; a Debian source
    package: its unpacked tree, fetched once); SourceMissing if absent."""
    if r.debian:
        return _debian_tree(r)
    p = Path(os.path.expanduser(r.source))
    if not p.is_absolute():
        p = third_party_dir() / p
    if not p.exists():
        raise SourceMissing(r.name, p)
    return p


def _debian_tree(r: Recipe) -> Path:
    from . import debsrc

    try:
        return debsrc.unpacked(r.debian, third_party_dir())
    except debsrc.FetchFailed as e:
        where = f"Debian source package {r.debian} (deb-src of /etc/apt, or {r.debian}_*.dsc"
        raise SourceMissing(r.name, Path(f"{where} in {third_party_dir()})"), str(e)) from None


def _prepare_scripts(r: Recipe) -> list[Path]:
    """The csrc/recipes scripts R's prepare commands run (ExperimentError if one is missing)."""
    out = []
    for cmd in r.prepare:
        p = RECIPES_DIR / cmd[0]
        if "/" in cmd[0] or not p.is_file():
            raise ExperimentError(f"recipe of {r.name!r}: prepare script {p} not found")
        out.append(p)
    return out


def source_digest(path: Path) -> str:
    """sha256 of a tarball's bytes, or of a folder's files (relative path + bytes, sorted)."""
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for fn in sorted(filenames):
            f = Path(dirpath) / fn
            if f.is_file() and not f.is_symlink():
                h.update(str(f.relative_to(path)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def build(r: Recipe) -> Path:
    """Build R if its (source, recipe) pair was never built here; return the binary's path.

    Raises SourceMissing (no source), ExperimentError (hash mismatch, failed build, a result
    that is not what the recipe says: wrong linkage or libc).
    """
    src = source_path(r)
    digest = source_digest(src)
    if r.sha256 and src.is_file() and digest != r.sha256:
        raise ExperimentError(f"{src}: sha256 {digest}, the recipe of {r.name!r} wants {r.sha256}")
    keyed: dict[str, Any] = {"recipe": r.to_json(), "source": digest}
    if r.prepare:
        keyed["prepare"] = [sha256_file(p) for p in _prepare_scripts(r)]
    key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]
    out_dir = build_dir() / "sources" / f"{r.name}-{r.variant}-{key}"
    out = out_dir / Path(r.binary).name
    if out.is_file():
        return out
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=out_dir.parent) as tmp:
        tree = _unpack(src, Path(tmp))
        _run_build(r, tree)
        built = tree / r.binary
        if not built.is_file():
            raise ExperimentError(f"building {r.name!r} ({r.variant}) made no {r.binary}")
        _check_result(r, built)
        staged = Path(tmp) / "result"
        shutil.copy2(built, staged)
        os.chmod(staged, 0o755)  # an unprivileged user runs it (remap.launch user=...)
        out_dir.mkdir(mode=0o755, exist_ok=True)
        _keep_files(r, tree, out_dir / KEPT_DIR)
        os.replace(staged, out)  # last: the binary's presence says the build is complete
        (out_dir / "build.json").write_text(
            json.dumps({"recipe": r.to_json(), "source": str(src), "source_sha256": digest},
                       indent=1, sort_keys=True) + "\n"
        )  # fmt: skip
    return out


KEPT_DIR = "kept"  # beside the binary: the files a recipe's ``keep`` globs matched


def kept_files(binary: Path) -> list[Path]:
    """The built files kept beside BINARY (a recipe's ``keep``), sorted by their path in the
    tree (the link order of objects is then the same on every machine)."""
    d = binary.parent / KEPT_DIR
    return sorted(p for p in d.rglob("*") if p.is_file()) if d.is_dir() else []


def _keep_files(r: Recipe, tree: Path, dest: Path) -> None:
    """Copy what R's keep globs match in TREE to DEST, under their paths in the tree;
    ExperimentError when a glob matches nothing (the recipe would promise what is not there)."""
    for pattern in r.keep:
        found = sorted(p for p in tree.glob(pattern) if p.is_file())
        if not found:
            raise ExperimentError(f"building {r.name!r} ({r.variant}): keep {pattern!r} matched "
                                  "no file")  # fmt: skip
        for p in found:
            to = dest / p.relative_to(tree)
            to.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, to)


def describe(r: Recipe) -> dict[str, Any]:
    """What a record says about a built source target: the recipe and the source's path/hash."""
    src = source_path(r)
    return {"recipe": r.to_json(), "source_path": str(src), "source_sha256": source_digest(src)}


def _unpack(src: Path, tmp: Path) -> Path:
    """Extract the tarball (the 'data' filter: no absolute paths, links out, devices) or copy
    the folder into TMP/tree; return the tree's root (a lone top-level folder is entered)."""
    dest = tmp / "tree"
    if src.is_dir():
        shutil.copytree(src, dest, symlinks=True, ignore=shutil.ignore_patterns(*_SKIP_DIRS))
        return dest
    try:
        with tarfile.open(src) as tf:
            tf.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as e:
        raise ExperimentError(f"{src}: cannot unpack: {e}") from None
    entries = list(dest.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else dest


def _run_build(r: Recipe, tree: Path) -> None:
    env = {**os.environ, **r.env}
    for cmd, script in zip(r.prepare, _prepare_scripts(r), strict=True):
        _run(r, ["sh", str(script), *cmd[1:]], tree, env)
    if r.configure is not None:
        _run(r, ["./configure", *r.configure], tree, env)
    for rel, assigns in r.append.items():
        _append_vars(tree / rel, assigns)
    _run(r, ["make", *r.make], tree, env)


def _run(r: Recipe, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
    """Run one build command with stdin from /dev/null (interactive questions get EOF)."""
    try:
        res = subprocess.run(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=BUILD_TIMEOUT_S, errors="replace",
        )  # fmt: skip
    except FileNotFoundError:
        raise ExperimentError(f"cannot build {r.name!r}: {argv[0]} not found") from None
    except subprocess.TimeoutExpired:
        msg = f"building {r.name!r}: {argv[0]} ran over {BUILD_TIMEOUT_S} s"
        raise ExperimentError(msg) from None
    if res.returncode != 0:
        last = ((res.stderr or res.stdout).strip().splitlines() or ["(no output)"])[-1]
        raise ExperimentError(f"building {r.name!r} ({r.variant}): {' '.join(argv)}: {last}")


def _append_vars(path: Path, assigns: dict[str, str]) -> None:
    """Append words to ``VAR = ...`` lines of a Makefile (each VAR must be there)."""
    try:
        lines = path.read_text().splitlines(keepends=True)
    except OSError as e:
        raise ExperimentError(f"recipe append: cannot read {path}: {e}") from None
    for var, words in assigns.items():
        pat = re.compile(rf"^{re.escape(var)}\s*[:+]?=")
        hits = [i for i, ln in enumerate(lines) if pat.match(ln)]
        if not hits:
            raise ExperimentError(f"recipe append: no '{var} =' line in {path}")
        for i in hits:
            lines[i] = lines[i].rstrip("\n") + f" {words}\n"
    path.write_text("".join(lines))


def _check_result(r: Recipe, binary: Path) -> None:
    """The binary is what the recipe promises: static (no PT_INTERP) or dynamic, on R's libc."""
    interp = elf_interpreter(binary)
    if r.linkage == "static" and interp is not None:
        raise ExperimentError(f"{r.name} ({r.variant}): recipe says static, binary wants {interp}")
    if r.linkage == "dynamic" and interp is None:
        raise ExperimentError(f"{r.name} ({r.variant}): recipe says dynamic, binary is static")
    if r.libc and interp is not None and r.libc not in interp:
        raise ExperimentError(f"{r.name} ({r.variant}): interpreter {interp}, not {r.libc}'s")


def elf_interpreter(path: Path) -> str | None:
    """The PT_INTERP path of an ELF file (None: statically linked); raises ExperimentError for
    a file that is not ELF64 and OSError when PATH cannot be read."""
    from . import elftables  # here, not at the top: this change to sources.py stays in one function

    elf = elftables.open_elf(str(path))
    if elf is None:
        raise ExperimentError(f"{path}: not an ELF64 little-endian file")
    return elf.interpreter
