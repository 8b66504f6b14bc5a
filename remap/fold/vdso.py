"""``remap launch --no-vdso``: start a program with its vdso hidden and unmapped.

Why: the single-page fold unmaps the vdso, and a libc that had looked up ``clock_gettime`` in it
would later jump into a mapping that is gone.  Hiding it *before the program's first
instruction* makes every libc fall back to real syscalls from the start:

1. the child asks to be traced (PTRACE_TRACEME) and execs; the kernel stops it right after exec,
   before its first instruction, with its auxiliary vector already on the stack;
2. we rewrite the AT_SYSINFO_EHDR entry of that vector into AT_IGNORE (type 1, which every libc
   skips) in target memory (inject.memory: process_vm_writev, else /proc/PID/mem), and update
   the kernel's saved copy (/proc/PID/auxv) with PR_SET_MM_MAP when the target may (root);
3. we inject munmap() of [vdso] and [vvar*] through a `syscall` instruction of the program's own
   text (found in the ELF file on disk), restore the registers exactly, and detach.
"""

from __future__ import annotations

import os
import struct
import subprocess
from typing import Any

from .. import kconst as K
from ..errors import UnsupportedTarget
from ..gadget import find as find_gadget
from ..inject.memory import Memory
from ..inject.ptrace import Ptrace
from ..procfs import read_exe, read_maps

SPECIAL = ("[vdso]", "[vvar]", "[vvar_vclock]")


def _traceme() -> None:  # runs in the child between fork and exec
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.ptrace(K.PTRACE_TRACEME, 0, None, None) != 0:
        os._exit(127)


EXEC_HOPS = 4  # execs followed to reach the program (nsenter execs it in place: one hop)


def launch(argv: list[str], *, program: str | None = None, **popen_kw) -> subprocess.Popen:
    """Popen(argv) with the vdso hidden from the program and unmapped before it runs.

    PROGRAM: the executable ARGV ends up running when ARGV[0] is a launcher that execs it in
    place (nsenter into a network namespace, dropping to a user on the way): the child is
    followed through its execs (at most EXEC_HOPS) and the vdso is hidden
    at the exec of PROGRAM, still before its first instruction.  Popen's own user/group
    switch happens before the child asks to be traced, so an unprivileged target works too
    (only the kernel's saved auxv copy then stays stale: PR_SET_MM_MAP needs a capability).

    Raises UnsupportedTarget when the program cannot be handled so, and the ptrace layer's
    errors (AccessDenied, NoSuchProcess...) when ptrace refuses or the child dies."""
    proc = subprocess.Popen(argv, preexec_fn=_traceme, **popen_kw)  # noqa: PLW1509
    pid = proc.pid
    pt = Ptrace(pid)
    try:
        _stop_at_program(pt, pid, os.path.realpath(program or argv[0]), argv[0])
        saved = pt.getregs(pid)
        mem = Memory(pid, pt.lib, pt.ffi)
        auxv = _hide_auxv_entry(mem, saved.rsp)
        _unmap_special(pt, mem, saved, auxv)
        pt.setregs(pid, saved)
    except BaseException:
        proc.kill()
        pt.detach(pid)
        proc.wait()
        raise
    pt.check(pt.detach(pid), "PTRACE_DETACH")
    return proc


def _stop_at_program(pt: Ptrace, pid: int, want: str, first: str) -> None:
    """Wait (each wait bounded by the ptrace layer's deadline) for the exec stop of WANT.

    Without PTRACE_O_TRACEEXEC every exec of a traced child ends in a SIGTRAP sent to it once
    the new image is complete (the classic ptrace exec stop; the event stop the option gives
    comes earlier, inside execve, where an injected call would be taken for execve's own
    return).  Each such stop that is not WANT is continued with the SIGTRAP suppressed; any
    other signal is passed on.  Raises UnsupportedTarget when the child exits, or has not
    exec'd WANT after EXEC_HOPS execs."""
    status = pt.ffi.new("int *")
    hops = signals = 0
    while hops <= EXEC_HOPS and signals <= EXEC_HOPS:
        r = pt.wait(pid, status, 0)
        st = status[0]
        if r != pid or not os.WIFSTOPPED(st):
            raise UnsupportedTarget(f"--no-vdso: {first} did not stop at exec (status {st:#x})")
        sig = os.WSTOPSIG(st)
        if sig != K.SIGTRAP:
            signals += 1
            pt.cont_checked(pid, sig)
            continue
        if not hops:
            pt.setoptions(pid, K.PTRACE_O_TRACESYSGOOD)
        if read_exe(pid) == want:
            return
        hops += 1
        pt.cont_checked(pid)
    raise UnsupportedTarget(f"--no-vdso: {first} did not exec {want} within {EXEC_HOPS} execs")


def _hide_auxv_entry(mem: Memory, sp: int) -> tuple[int, int]:
    """Turn AT_SYSINFO_EHDR into AT_IGNORE in the vector exec left at SP (argc, argv, envp,
    auxv: fs/binfmt_elf.c create_elf_tables).  Returns (address, size) of the vector."""

    def word(at: int) -> int:
        return struct.unpack("<Q", mem.read(at, 8))[0]

    p = sp + 8 * (word(sp) + 2)  # skip argc, argv[], NULL
    while word(p) != 0:  # envp[] up to its NULL
        p += 8
    start = p = p + 8  # auxv right after it
    while True:
        t = word(p)
        if t == K.AT_NULL:
            return start, p + 16 - start
        if t == K.AT_SYSINFO_EHDR:
            mem.write(p, struct.pack("<Q", K.AT_IGNORE))
        p += 16


def _unmap_special(pt: Ptrace, mem: Memory, saved: Any, auxv: tuple[int, int]) -> None:
    """munmap each special mapping, then PR_SET_MM_AUXV so /proc/PID/auxv agrees (a refusal,
    e.g. without CAP_SYS_RESOURCE, only leaves the kernel's saved copy stale)."""
    pid = pt.pid
    maps = [m for m in read_maps(pid) if m.path in SPECIAL]
    if not maps:
        return
    g = find_gadget(pid)
    if g is None or g.path == "[vdso]":
        raise UnsupportedTarget("--no-vdso: no `syscall` instruction in the program's own text")

    def inject(nr: int, *args: int) -> int:
        return pt.call_at(pid, saved, g.addr, nr, *args)

    for m in maps:
        r = inject(K.SYSCALLS["munmap"], m.start, m.end - m.start)
        if r < 0:
            raise UnsupportedTarget(f"--no-vdso: munmap {m.path}: {os.strerror(-r)}")
    _update_saved_auxv(mem, saved.rsp, auxv, inject)


def _update_saved_auxv(mem: Memory, sp: int, auxv: tuple[int, int], inject) -> None:
    """PR_SET_MM_MAP with the patched vector, so /proc/PID/auxv agrees with the stack.

    PR_SET_MM_MAP (not PR_SET_MM_AUXV) because it needs CAP_CHECKPOINT_RESTORE in the target's
    own user namespace, where PR_SET_MM_AUXV needs CAP_SYS_RESOURCE in the initial one.  The
    struct is borrowed below the initial stack pointer and put back byte for byte."""
    from .mmview import MM_MAP_SIZE, read_mm_map

    brk = inject(K.SYSCALLS["brk"], 0)
    blob = read_mm_map(mem.pid, brk).pack(auxv[0], auxv[1])
    at = (sp - 1024) & ~15
    old = mem.read(at, MM_MAP_SIZE)
    mem.write(at, blob)
    try:
        inject(K.SYSCALLS["prctl"], K.PR_SET_MM, K.PR_SET_MM_MAP, at, MM_MAP_SIZE)
    finally:
        mem.write(at, old)
