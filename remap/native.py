"""The cffi-compiled ptrace fast path (csrc/native/remap_native.c) and the batch stub bytes.

Why cffi API mode: the C helper needs the real ``struct user_regs_struct`` layout and the
PTRACE_* request numbers from the system headers, and one injected syscall must cost a single
Python->C crossing (see the C file's header for what lives in C and what stays in python-ptrace).

Where it comes from: an installed remap (wheel or sdist) carries both, made at build time
(setup.py: the extension ``remap._native`` through cffi_modules, the stub as
remap/bundled/batch_stub.bin).  A checkout compiles them on first use into ``build/native/``
under a name keyed by a hash of the C source and the declarations below, so editing the C file
rebuilds it and concurrent test processes never load a half-written library (atomic rename).
Both use remap/_native_build.py's recipe and this module's ``CDEF``.

Usage::

    from remap import native
    lib, ffi = native.load()
    lib.rn_ptrace(kconst.PTRACE_SEIZE, tid, 0, options)
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from functools import cache
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

from .errors import InternalError
from .targets import CSRC, DATA, IN_CHECKOUT, build_dir

NATIVE_SRC = CSRC / "native"
C_FILE = NATIVE_SRC / "remap_native.c"
STUB_FILE = NATIVE_SRC / "batch_stub.S"
STUB_BIN = DATA / "batch_stub.bin"  # an installed remap's stub, assembled at build time

CDEF = """
struct user_regs_struct {
    unsigned long long r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi,
                       rdi, orig_rax, rip, cs, eflags, rsp, ss, fs_base, gs_base, ds, es,
                       fs, gs;
};
struct user_fpregs_struct { ...; };
struct rn_call {
    struct user_regs_struct regs;
    long long result;
    int status;
    int nsig;
    int sigs[8];
    int phase;
    int slot;
    long long deadline;
};
#define RN_EXITED 1
#define RN_LOST 2
long rn_ptrace(long req, int tid, unsigned long addr, unsigned long data);
int rn_getregs(int tid, struct user_regs_struct *regs);
int rn_setregs(int tid, const struct user_regs_struct *regs);
int rn_getfpregs(int tid, struct user_fpregs_struct *fp);
int rn_setfpregs(int tid, const struct user_fpregs_struct *fp);
int rn_getsigmask(int tid, uint64_t *mask);
int rn_setsigmask(int tid, uint64_t mask);
int rn_wait(int tid, int *status, int flags);
int rn_inject(int tid, struct rn_call *c);
int rn_inject_parked(int tid, struct rn_call *c, const struct user_regs_struct *park);
int rn_run_stub(int tid, struct rn_call *c, int sig, const struct user_regs_struct *park);
int rn_abort(int tid, struct rn_call *c, struct user_regs_struct *out);
int rn_set_wait(long long timeout_ns, int abortable);
int rn_guard_start(void);
int rn_pin_thread(int slot, int tid, int cpu);
int rn_unpin_thread(int slot);
void rn_guard_clear(int slot);
long rn_getxstate(int tid, void *buf, unsigned long size);
int rn_reinterrupt(int tid, const struct user_regs_struct *regs, struct rn_call *c);
long rn_vm_write(int pid, const void *local, unsigned long remote, unsigned long n);
int rn_pidfd_open(int pid);
long rn_process_madvise(int pidfd, unsigned long addr, unsigned long len, int advice);
int rn_getaffinity(int pid, unsigned long size, unsigned char *mask);
int rn_setaffinity(int pid, unsigned long size, const unsigned char *mask);
int rn_tgkill(int tgid, int tid, int sig);
"""

# the helper's own results beside 0 and -errno (CDEF's #defines, for code without a lib)
RN_EXITED = 1  # the thread exited (or was killed) during the request
RN_LOST = 2  # endless unexpected stops: gave up

# Entry points and header of the assembled stub (csrc/native/batch_stub.S `.org`s)
STUB_CLEANUP = 0x100
STUB_EVICT = 0x180
STUB_SYSCALL_RET = 0x1C0  # `syscall; ret` of the scratch chain
STUB_RESTORER = 0x1C8  # `mov $15, %eax; syscall`
STUB_HEADER = 0x200

REGS = (
    "r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags rsp ss "
    "fs_base gs_base ds es fs gs"
).split()


def _out_dir() -> Path:
    return build_dir() / "native"


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p + b"\0")
    return h.hexdigest()[:16]


@cache
def load() -> tuple[Any, Any]:
    """Return (lib, ffi) of the helper: the installed extension, or (in a checkout) the one
    built from csrc/native, compiled first if its source changed.

    Raises InternalError if an installed remap lacks its extension or a checkout cannot build it.
    """
    if not IN_CHECKOUT:
        try:
            from . import _native  # type: ignore[attr-defined]
        except ImportError as e:
            raise InternalError(
                f"native helper missing from this install ({e}): reinstall remap from its "
                "wheel or sdist (a C compiler and libffi-dev are needed to build one)"
            ) from None
        return _native.lib, _native.ffi
    src = C_FILE.read_bytes()
    name = f"_remap_native_{_digest(src, CDEF.encode())}"
    out = _out_dir()
    # the extension suffix names the ABI (cpython-311-x86_64-linux-gnu): one build per ABI
    found = [out / (name + sfx) for sfx in EXTENSION_SUFFIXES if (out / (name + sfx)).is_file()]
    if not found:
        found = [_compile(name, out)]
    spec = importlib.util.spec_from_file_location(name, found[0])
    if spec is None or spec.loader is None:
        raise InternalError(f"cannot load native helper {found[0]}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.lib, mod.ffi


def _compile(name: str, out: Path) -> Path:
    """Compile into a private temp dir, then rename into place (safe against parallel builds)."""
    from ._native_build import make_ffi

    out.mkdir(parents=True, exist_ok=True)
    ffi = make_ffi(name, CDEF, NATIVE_SRC)
    with tempfile.TemporaryDirectory(dir=out, prefix=".build-") as tmp:
        try:
            built = Path(ffi.compile(tmpdir=tmp, verbose=False))
        except Exception as e:  # compiler missing or C error: one line, not a traceback
            raise InternalError(f"cannot build native helper from {C_FILE}: {e}") from None
        final = out / built.name
        os.replace(built, final)
    return final


@cache
def stub_code() -> bytes:
    """The batch stub's machine code: the installed one, or (in a checkout) assembled from
    csrc/native/batch_stub.S and cached.  Raises InternalError if there is none to be had."""
    if not IN_CHECKOUT:
        try:
            return STUB_BIN.read_bytes()
        except OSError as e:
            raise InternalError(f"batch stub missing from this install: {e}") from None
    src = STUB_FILE.read_bytes()
    out = _out_dir() / f"batch_stub-{_digest(src)}.bin"
    if not out.is_file():
        from ._native_build import assemble_stub

        try:
            assemble_stub(STUB_FILE, out)
        except RuntimeError as e:
            raise InternalError(str(e)) from None
    return out.read_bytes()
