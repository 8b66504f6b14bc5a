"""Kernel constants, each with the kernel file it comes from (x86_64 values).

Why one module: a reader checking a MADV_ or PTRACE_ number against the kernel should find them
all in one place, next to the header that defines them.
"""

from __future__ import annotations

PAGE_SIZE = 4096
# x86-64: a general register is 64 bits; -1 in orig_rax ("not in a syscall") is MASK64
MASK64 = (1 << 64) - 1
# x86-64 SysV ABI (psABI 3.2.2): the 128 bytes below rsp a leaf function may use without
# moving rsp; memory below rsp - RED_ZONE is dead for the thread
RED_ZONE = 128
PAGE_SHIFT = 12

# include/uapi/linux/ptrace.h
PTRACE_TRACEME = 0
PTRACE_PEEKDATA = 2
PTRACE_POKEDATA = 5
PTRACE_CONT = 7
PTRACE_KILL = 8
PTRACE_SINGLESTEP = 9
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_GETFPREGS = 14
PTRACE_SETFPREGS = 15
PTRACE_ATTACH = 16
PTRACE_DETACH = 17
PTRACE_SYSCALL = 24
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_GETSIGINFO = 0x4202
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_LISTEN = 0x4208
PTRACE_GETSIGMASK = 0x420A
PTRACE_SETSIGMASK = 0x420B
PTRACE_GET_SYSCALL_INFO = 0x420E
PTRACE_GET_RSEQ_CONFIGURATION = 0x420F  # struct ptrace_rseq_configuration, 5.13+

PTRACE_O_TRACESYSGOOD = 0x01
PTRACE_O_TRACEFORK = 0x02
PTRACE_O_TRACEVFORK = 0x04
PTRACE_O_TRACECLONE = 0x08
PTRACE_O_TRACEEXEC = 0x10
PTRACE_O_TRACEEXIT = 0x40
PTRACE_O_EXITKILL = 0x100000
PTRACE_O_SUSPEND_SECCOMP = 0x200000

PTRACE_EVENT_FORK = 1
PTRACE_EVENT_VFORK = 2
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_EXEC = 4
PTRACE_EVENT_EXIT = 6
PTRACE_EVENT_STOP = 128

NT_PRSTATUS = 1  # include/uapi/linux/elf.h
NT_X86_XSTATE = 0x202

# include/linux/errno.h (kernel-internal restart codes seen by a tracer in rax)
ERESTARTSYS = 512
ERESTARTNOINTR = 513
ERESTARTNOHAND = 514
ERESTART_RESTARTBLOCK = 516
ERESTART_CODES = (ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK)

# include/uapi/asm-generic/mman-common.h
PROT_NONE = 0
PROT_READ = 1
PROT_WRITE = 2
PROT_EXEC = 4
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_FIXED_NOREPLACE = 0x100000
MREMAP_MAYMOVE = 1
MREMAP_FIXED = 2
MREMAP_DONTUNMAP = 4
MADV_NORMAL = 0
MADV_RANDOM = 1  # VM_RAND_READ: no readahead (fold.steps.fence_fault_around splits VMAs with it)
MADV_WILLNEED = 3
MADV_DONTNEED = 4
MADV_COLD = 20
MADV_PAGEOUT = 21
MADV_COLLAPSE = 25

# include/uapi/linux/prctl.h
PR_SET_MM = 35
PR_SET_MM_START_STACK = 5
PR_SET_MM_ARG_START = 8
PR_SET_MM_ARG_END = 9
PR_SET_MM_ENV_START = 10
PR_SET_MM_ENV_END = 11
PR_SET_MM_AUXV = 12
PR_SET_MM_MAP = 14
PR_SET_MM_MAP_SIZE = 15
PR_GET_SECCOMP = 21

# include/uapi/linux/personality.h
ADDR_NO_RANDOMIZE = 0x0040000

# include/uapi/linux/capability.h (bit numbers of CapEff in /proc/PID/status)
CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN = 21
CAP_SYS_NICE = 23

# include/uapi/linux/sched.h, include/uapi/linux/sockios.h, include/uapi/linux/if.h (remap.netns)
CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
IFF_UP = 0x1

# include/uapi/linux/auxvec.h, arch/x86/include/uapi/asm/auxvec.h
AT_NULL = 0
AT_IGNORE = 1
AT_PHDR = 3
AT_PAGESZ = 6
AT_ENTRY = 9
AT_PLATFORM = 15
AT_HWCAP = 16
AT_RANDOM = 25
AT_EXECFN = 31
AT_SYSINFO_EHDR = 33
AT_MINSIGSTKSZ = 51

# Documentation/admin-guide/mm/pagemap.rst
PM_PFN_MASK = (1 << 55) - 1
PM_SOFT_DIRTY = 1 << 55
PM_MMAP_EXCLUSIVE = 1 << 56
PM_UFFD_WP = 1 << 57
PM_GUARD = 1 << 58
PM_FILE = 1 << 61  # "page is file-page or shared-anon"
PM_SWAP = 1 << 62
PM_PRESENT = 1 << 63

# include/uapi/linux/kernel-page-flags.h
KPF_LOCKED = 0
KPF_REFERENCED = 2
KPF_UPTODATE = 3
KPF_DIRTY = 4
KPF_LRU = 5
KPF_ACTIVE = 6
KPF_SLAB = 7
KPF_MMAP = 11
KPF_ANON = 12
KPF_SWAPCACHE = 13
KPF_SWAPBACKED = 14
KPF_COMPOUND_HEAD = 15
KPF_COMPOUND_TAIL = 16
KPF_HUGE = 17
KPF_UNEVICTABLE = 18
KPF_NOPAGE = 20
KPF_KSM = 21
KPF_THP = 22
KPF_ZERO_PAGE = 24
KPF_IDLE = 25

# include/uapi/linux/fs.h (6.7+): PAGEMAP_SCAN ioctl, _IOWR('f', 16, struct pm_scan_arg)
PAGEMAP_SCAN = 0xC0606610
PAGE_IS_WPALLOWED = 1 << 0
PAGE_IS_WRITTEN = 1 << 1
PAGE_IS_FILE = 1 << 2
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_SWAPPED = 1 << 4
PAGE_IS_PFNZERO = 1 << 5
PAGE_IS_HUGE = 1 << 6
PAGE_IS_SOFT_DIRTY = 1 << 7
PAGE_IS_GUARD = 1 << 8

# include/uapi/linux/seccomp.h, Documentation/filesystems/proc.rst (Seccomp: field)
SECCOMP_MODE_DISABLED = 0
SECCOMP_MODE_STRICT = 1
SECCOMP_MODE_FILTER = 2

# arch/x86/include/uapi/asm/signal.h
SIGHUP, SIGINT, SIGQUIT, SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE = 1, 2, 3, 4, 5, 6, 7, 8
SIGKILL, SIGUSR1, SIGSEGV, SIGUSR2, SIGPIPE, SIGALRM, SIGTERM = 9, 10, 11, 12, 13, 14, 15
SIGCHLD, SIGCONT, SIGSTOP = 17, 18, 19
NSIG = 64

# arch/x86/entry/syscalls/syscall_64.tbl (the subset remap injects or recognises)
SYSCALLS = {
    "read": 0,
    "write": 1,
    "open": 2,
    "close": 3,
    "poll": 7,
    "mmap": 9,
    "mprotect": 10,
    "munmap": 11,
    "brk": 12,
    "rt_sigaction": 13,
    "rt_sigprocmask": 14,
    "rt_sigreturn": 15,
    "ioctl": 16,
    "pread64": 17,
    "select": 23,
    "sched_yield": 24,
    "mremap": 25,
    "msync": 26,
    "mincore": 27,
    "madvise": 28,
    "pause": 34,
    "nanosleep": 35,
    "getpid": 39,
    "accept": 43,
    "sendto": 44,
    "recvfrom": 45,
    "recvmsg": 47,
    "clone": 56,
    "exit": 60,
    "wait4": 61,
    "kill": 62,
    "uname": 63,
    "getppid": 110,
    "rt_sigtimedwait": 128,
    "rt_sigsuspend": 130,
    "sigaltstack": 131,
    "personality": 135,
    "prctl": 157,
    "arch_prctl": 158,
    "gettid": 186,
    "tkill": 200,
    "futex": 202,
    "sched_getaffinity": 204,
    "restart_syscall": 219,
    "clock_gettime": 228,
    "clock_nanosleep": 230,
    "exit_group": 231,
    "epoll_wait": 232,
    "tgkill": 234,
    "openat": 257,
    "pselect6": 270,
    "ppoll": 271,
    "epoll_pwait": 281,
    "accept4": 288,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "pidfd_open": 434,
    "process_madvise": 440,
    "epoll_pwait2": 441,
}
SYSCALL_NAMES = {nr: name for name, nr in SYSCALLS.items()}

# include/linux/sched.h (per-task flags, field 9 of /proc/PID/stat)
PF_KTHREAD = 0x00200000

# include/uapi/linux/fs.h (6.7+): struct pm_scan_arg.flags and sizes
PM_SCAN_WP_MATCHING = 1 << 0
PM_SCAN_CHECK_WPASYNC = 1 << 1
PM_SCAN_ARG_SIZE = 96  # sizeof(struct pm_scan_arg): twelve __u64

# include/uapi/linux/elf.h, include/uapi/linux/elf-em.h (remap.elfmap, the ELF header checks
# of remap.inject)
ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
EM_386 = 3
EM_X86_64 = 62
ET_EXEC, ET_DYN = 2, 3  # e_type
PT_LOAD, PT_INTERP = 1, 3  # p_type
PF_X, PF_W, PF_R = 0x1, 0x2, 0x4  # p_flags
SHT_SYMTAB, SHT_RELA, SHT_NOBITS, SHT_DYNSYM = 2, 4, 8, 11  # sh_type
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR, SHF_TLS = 0x1, 0x2, 0x4, 0x400  # sh_flags
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_TLS = 0, 1, 2, 6  # ELF64_ST_TYPE(st_info)
STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2  # ELF64_ST_BIND(st_info)
SHN_UNDEF, SHN_ABS, SHN_COMMON = 0, 0xFFF1, 0xFFF2  # st_shndx
# .eh_frame_hdr's pointer encodings (LSB, "Exception Frames": DW_EH_PE_*): the value formats
# (low nibble) and applications (high nibble) remap.elftables reads; DW_EH_PE_omit: absent
DW_EH_PE_absptr, DW_EH_PE_udata4, DW_EH_PE_udata8 = 0x00, 0x03, 0x04
DW_EH_PE_sdata4, DW_EH_PE_sdata8, DW_EH_PE_datarel, DW_EH_PE_omit = 0x0B, 0x0C, 0x30, 0xFF

# remap's own hot-page contract (not the kernel's): remap.fold.singlepage.single_page keeps
# this many bytes free below the frames it moves into the page's stack reserve, so
# remap.layout reserves them when it sizes that reserve.  One number for both sides.
FOLD_MARGIN = 512

# include/uapi/linux/prctl.h: the child (qemu) gets SIGKILL when its parent thread dies
PR_SET_PDEATHSIG = 1

# arch/x86/include/uapi/asm/signal.h: signals whose default action is to ignore them
SIGURG, SIGWINCH = 23, 28
# arch/x86/include/uapi/asm/ucontext.h
UC_FP_XSTATE, UC_SIGCONTEXT_SS, UC_STRICT_RESTORE_SS = 0x1, 0x2, 0x4
# arch/x86/include/uapi/asm/sigcontext.h (struct _fpx_sw_bytes)
FP_XSTATE_MAGIC1, FP_XSTATE_MAGIC2 = 0x46505853, 0x46505845
FPX_SW_BYTES_OFFSET = 464  # sw_reserved inside struct fxregs_state
# arch/x86/entry/syscalls/syscall_64.tbl
NR_RT_SIGRETURN, NR_GETPID, NR_TGKILL = 15, 39, 234
NR_MMAP, NR_MPROTECT, NR_MUNMAP, NR_MREMAP, NR_MADVISE = 9, 10, 11, 25, 28
