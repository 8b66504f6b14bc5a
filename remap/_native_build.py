"""How the native helper and the batch stub are built: one recipe for the wheel and the checkout.

Why a file of its own: setuptools compiles the cffi helper at build time (``cffi_modules`` in
setup.py names :func:`ffibuilder`), and a checkout compiles the very same thing on first use
(remap.native).  Both take the declarations from the one ``CDEF`` constant of remap/native.py
and the compile options from :func:`make_ffi`, so a wheel and a checkout never disagree.

cffi executes this file on its own (not as part of the package, whose dependencies a build
environment does not have): it imports nothing from remap, and reads ``CDEF`` from native.py's
source instead of importing it.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
NATIVE_PY = PACKAGE / "native.py"
MODULE = "remap._native"  # the extension a wheel carries


def read_cdef(native_py: Path = NATIVE_PY) -> str:
    """The ``CDEF`` string constant of remap/native.py, read from its source (no import).

    Raises ValueError if the file has no module-level ``CDEF = "..."``.
    """
    tree = ast.parse(native_py.read_text(), str(native_py))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "CDEF" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            if isinstance(value, str):
                return value
    raise ValueError(f"{native_py}: no module-level CDEF string")


def make_ffi(module: str, cdef: str, native_src: Path):
    """A cffi FFI (API mode, out of line) for MODULE from native_src/remap_native.c."""
    from cffi import FFI

    ffi = FFI()
    ffi.cdef(cdef)
    ffi.set_source(
        module,
        '#include "remap_native.c"',
        include_dirs=[str(native_src)],
        depends=[str(native_src / "remap_native.c")],
        extra_compile_args=["-O2", "-Wall"],
    )
    return ffi


def ffibuilder():
    """What setup.py's ``cffi_modules`` builds: remap._native from the source tree's csrc/native."""
    return make_ffi(MODULE, read_cdef(), PACKAGE.parent / "csrc" / "native")


def assemble_stub(src: Path, out: Path) -> None:
    """Assemble the batch stub SRC (x86-64 GNU as) into raw machine code at OUT, atomically.

    Raises RuntimeError (one line) if binutils is missing or the assembler refuses the file.
    """
    if shutil.which("as") is None or shutil.which("objcopy") is None:
        raise RuntimeError("cannot assemble the batch stub: `as`/`objcopy` not found (binutils)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".stub-") as tmp:
        obj, binf = Path(tmp) / "stub.o", Path(tmp) / "stub.bin"
        for argv in (
            ["as", "--64", "-o", str(obj), str(src)],
            ["objcopy", "-O", "binary", "-j", ".text", str(obj), str(binf)],
        ):
            res = subprocess.run(argv, capture_output=True, text=True)
            if res.returncode:
                raise RuntimeError(f"cannot assemble {src}: {res.stderr.strip()}")
        os.replace(binf, out)
