"""Build-time steps a pure pyproject.toml cannot say (all metadata lives in pyproject.toml).

* the cffi ptrace helper, compiled into the extension ``remap._native`` (out-of-line API mode
  through cffi's ``cffi_modules``; this makes the wheel a platform wheel);
* the ``remap`` command itself, bin/remap (``scripts``; not a console-script entry point, whose
  generated wrapper imports re before remap runs);
* the package data an installed remap runs from, put under remap/bundled/ in the build: the
  target sources (csrc/targets: C files, linker scripts, debian-src.sh), the experiment files
  (experiments/*.toml) and the batch stub, assembled here from csrc/native/batch_stub.S.

An editable install (scripts/bootstrap.sh) gets the command but skips the helper and the data:
a checkout runs from its own csrc/ and experiments/ and compiles the helper on first use
(remap/native.py), exactly as before.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
EDITABLE = any(cmd in sys.argv for cmd in ("editable_wheel", "develop"))


def _load_native_build():
    """remap/_native_build.py as a module of its own (importing remap needs its dependencies)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "_remap_native_build", HERE / "remap" / "_native_build.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class BuildPyWithData(build_py):
    """build_py, then the bundled data and the assembled stub under remap/bundled/."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        bundled = Path(self.build_lib) / "remap" / "bundled"
        for folder in ("csrc/targets", "csrc/recipes", "experiments"):
            dest = bundled / folder
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(
                HERE / folder, dest, ignore=shutil.ignore_patterns("*.pyc", "__pycache__")
            )
        _load_native_build().assemble_stub(
            HERE / "csrc" / "native" / "batch_stub.S", bundled / "batch_stub.bin"
        )


setup(
    cmdclass={"build_py": BuildPyWithData},
    # the `remap` command: a plain script (it says why), for the wheel and the editable install
    scripts=["bin/remap"],
    cffi_modules=[] if EDITABLE else ["remap/_native_build.py:ffibuilder"],
)
