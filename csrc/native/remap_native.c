/*
 * remap_native.c -- the ptrace fast path of remap.inject, compiled by cffi (remap/native.py).
 *
 * Why C and not python-ptrace for these pieces:
 *   - python-ptrace has no PTRACE_SEIZE / PTRACE_INTERRUPT / PTRACE_{GET,SET}SIGMASK, which
 *     remap needs to stop a process without SIGSTOP side effects (DESIGN 5.1, 5.5).
 *   - one injected syscall is ~7 ptrace/wait calls; through ctypes each one costs a Python
 *     crossing.  rn_inject() does the whole round trip (set regs -> PTRACE_SYSCALL -> entry stop
 *     -> PTRACE_SYSCALL -> exit stop -> result) in one call, so the Python API stays within a
 *     small factor of a bare C loop (bench/inject.py measures it).
 *   - process_vm_readv/writev, pidfd_open, process_madvise and sched_setaffinity are thin
 *     syscalls; having them here avoids ctypes struct plumbing.
 * python-ptrace keeps what it does well: the syscall name table for names remap.kconst lacks.
 *
 * Every function returns a negative errno on failure (never sets a global), so Python can turn
 * it into the right remap error at one place.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#define RN_MAXSIG 8

/* The result of one injected call (or one stub run) plus what happened on the way. */
struct rn_call {
	struct user_regs_struct regs; /* in: registers to run with; out (stub): regs at the trap */
	long long result;             /* out: rax after the syscall */
	int status;                   /* out: wait status if the thread exited / was killed */
	int nsig;                     /* out: signals stopped for (and suppressed) on the way */
	int sigs[RN_MAXSIG];
};

/* Outcomes besides 0 (done) and -errno. */
#define RN_EXITED 1 /* the thread exited or was killed; status holds the wait status */
#define RN_LOST 2   /* too many unexpected stops: something else is driving the thread */

long rn_ptrace(long req, int tid, unsigned long addr, unsigned long data)
{
	errno = 0;
	long r = ptrace((enum __ptrace_request)req, tid, (void *)addr, (void *)data);
	if (r == -1 && errno)
		return -errno;
	return r;
}

int rn_getregs(int tid, struct user_regs_struct *regs)
{
	return ptrace(PTRACE_GETREGS, tid, 0, regs) ? -errno : 0;
}

int rn_setregs(int tid, const struct user_regs_struct *regs)
{
	return ptrace(PTRACE_SETREGS, tid, 0, regs) ? -errno : 0;
}

int rn_getfpregs(int tid, struct user_fpregs_struct *fp)
{
	return ptrace(PTRACE_GETFPREGS, tid, 0, fp) ? -errno : 0;
}

int rn_setfpregs(int tid, const struct user_fpregs_struct *fp)
{
	return ptrace(PTRACE_SETFPREGS, tid, 0, fp) ? -errno : 0;
}

/* The kernel's sigset is 8 bytes on x86_64; data = sizeof(sigset) is mandatory. */
int rn_getsigmask(int tid, uint64_t *mask)
{
	return ptrace(PTRACE_GETSIGMASK, tid, (void *)8, mask) ? -errno : 0;
}

int rn_setsigmask(int tid, uint64_t mask)
{
	return ptrace(PTRACE_SETSIGMASK, tid, (void *)8, &mask) ? -errno : 0;
}

/* waitpid for one thread (__WALL: our tracees are threads, not children). */
int rn_wait(int tid, int *status, int flags)
{
	for (;;) {
		int r = waitpid(tid, status, flags | __WALL);
		if (r >= 0)
			return r;
		if (errno != EINTR)
			return -errno;
	}
}

static int is_syscall_stop(int st)
{
	return WIFSTOPPED(st) && WSTOPSIG(st) == (SIGTRAP | 0x80);
}

static void note_sig(struct rn_call *c, int sig)
{
	if (c->nsig < RN_MAXSIG)
		c->sigs[c->nsig++] = sig;
}

/*
 * Resume with `req` and wait until `want(status)`; other stops are stepped over: a
 * signal-delivery stop's signal is recorded (and suppressed, the caller re-queues it later),
 * event stops (a group-stop reported as PTRACE_EVENT_STOP) are continued.
 */
static int resume_until(int tid, long req, int (*want)(int), struct rn_call *c)
{
	int st;
	if (ptrace((enum __ptrace_request)req, tid, 0, 0))
		return -errno;
	for (int guard = 0; guard < 64; guard++) {
		int r = rn_wait(tid, &st, 0);
		if (r < 0)
			return r;
		if (WIFEXITED(st) || WIFSIGNALED(st)) {
			c->status = st;
			return RN_EXITED;
		}
		if (want(st))
			return 0;
		if ((st >> 16) == 0 && !is_syscall_stop(st))
			note_sig(c, WSTOPSIG(st));
		if (ptrace((enum __ptrace_request)req, tid, 0, 0))
			return -errno;
	}
	return RN_LOST;
}

/*
 * One injected syscall, in one Python->C crossing.  Precondition: `tid` is in a ptrace stop
 * with every catchable signal blocked (PTRACE_SETSIGMASK), and c->regs has rip at an existing
 * `syscall` instruction, orig_rax = -1 (so the kernel does not restart an interrupted call),
 * rax = number, rdi/rsi/rdx/r10/r8/r9 = args.  Leaves the thread in its syscall-exit stop.
 */
int rn_inject(int tid, struct rn_call *c)
{
	struct user_regs_struct after;
	int r;
	c->nsig = 0;
	c->status = 0;
	if (ptrace(PTRACE_SETREGS, tid, 0, &c->regs))
		return -errno;
	r = resume_until(tid, PTRACE_SYSCALL, is_syscall_stop, c); /* entry */
	if (r)
		return r;
	r = resume_until(tid, PTRACE_SYSCALL, is_syscall_stop, c); /* exit */
	if (r)
		return r;
	if (ptrace(PTRACE_GETREGS, tid, 0, &after))
		return -errno;
	c->result = (long long)after.rax;
	return 0;
}

/*
 * rn_inject, then straight back to `park` (the registers the thread resumes with), with
 * PTRACE_INTERRUPT first so that TIF_SIGPENDING makes the kernel restart an interrupted call
 * if the driver dies now.  For injecting without a safety chain: a killed driver can then
 * only hurt the thread while the injected call itself runs (entry stop to exit stop).
 */
int rn_inject_parked(int tid, struct rn_call *c, const struct user_regs_struct *park)
{
	int r = rn_inject(tid, c);
	if (r)
		return r;
	if (ptrace(PTRACE_INTERRUPT, tid, 0, 0))
		return -errno;
	return ptrace(PTRACE_SETREGS, tid, 0, park) ? -errno : 0;
}

static int marker_sig;

static int is_marker_delivery(int st)
{
	return WIFSTOPPED(st) && (st >> 16) == 0 && WSTOPSIG(st) == marker_sig;
}

/*
 * Run the batch stub: set regs (rip = stub, r12 = table, r13 = count, r14/r15 = tgid/tid,
 * rbx = sig), PTRACE_CONT, wait for the signal-delivery stop of `sig`, which the stub's final
 * tgkill raises.  The marker is never delivered (the next resume passes signal 0); sig is one
 * the target ignores, so if the driver dies at that stop the kernel drops it.  c->regs receives
 * the registers at the stop.
 */
int rn_run_stub(int tid, struct rn_call *c, int sig)
{
	int r;
	c->nsig = 0;
	c->status = 0;
	marker_sig = sig;
	if (ptrace(PTRACE_SETREGS, tid, 0, &c->regs))
		return -errno;
	r = resume_until(tid, PTRACE_CONT, is_marker_delivery, c);
	if (r)
		return r;
	return ptrace(PTRACE_GETREGS, tid, 0, &c->regs) ? -errno : 0;
}

static int is_event_stop(int st)
{
	return WIFSTOPPED(st) && (st >> 16) == PTRACE_EVENT_STOP;
}

/*
 * Bring a thread that we ran (it sits in a syscall-exit or stub marker stop) back to a fresh
 * PTRACE_EVENT_STOP with `regs` in place: PTRACE_INTERRUPT, SETREGS, PTRACE_CONT.  The thread
 * re-enters get_signal() and stops there, so detaching from THAT stop lets the kernel restart
 * an interrupted syscall (ERESTART*) exactly as if it had never been interrupted.
 * INTERRUPT comes first so that TIF_SIGPENDING is set before the registers say -ERESTART*:
 * if the driver dies between the two, the thread still passes through the kernel's restart
 * logic instead of returning -512 to user space.
 */
int rn_reinterrupt(int tid, const struct user_regs_struct *regs, struct rn_call *c)
{
	c->nsig = 0;
	c->status = 0;
	if (ptrace(PTRACE_INTERRUPT, tid, 0, 0))
		return -errno;
	if (ptrace(PTRACE_SETREGS, tid, 0, regs))
		return -errno;
	return resume_until(tid, PTRACE_CONT, is_event_stop, c);
}

/* The thread's full XSAVE area (standard format, as a signal frame holds it); returns its
 * length.  NT_X86_XSTATE from <elf.h>; the kernel fills sw_reserved with its xstate sizes. */
long rn_getxstate(int tid, void *buf, unsigned long size)
{
	struct iovec v = {buf, size};
	if (ptrace(PTRACE_GETREGSET, tid, (void *)0x202, &v))
		return -errno;
	return (long)v.iov_len;
}

long rn_vm_read(int pid, void *local, unsigned long remote, unsigned long n)
{
	struct iovec l = {local, n}, r = {(void *)remote, n};
	ssize_t got = process_vm_readv(pid, &l, 1, &r, 1, 0);
	return got < 0 ? -errno : got;
}

long rn_vm_write(int pid, const void *local, unsigned long remote, unsigned long n)
{
	struct iovec l = {(void *)local, n}, r = {(void *)remote, n};
	ssize_t got = process_vm_writev(pid, &l, 1, &r, 1, 0);
	return got < 0 ? -errno : got;
}

int rn_pidfd_open(int pid)
{
	long r = syscall(SYS_pidfd_open, pid, 0);
	return r < 0 ? -errno : (int)r;
}

long rn_process_madvise(int pidfd, unsigned long addr, unsigned long len, int advice)
{
	struct iovec v = {(void *)addr, len};
	long r = syscall(SYS_process_madvise, pidfd, &v, 1, advice, 0);
	return r < 0 ? -errno : r;
}

/* Affinity as a raw CPU bitmask of `size` bytes (cpu_set_t layout). */
int rn_getaffinity(int pid, unsigned long size, unsigned char *mask)
{
	return sched_getaffinity(pid, size, (cpu_set_t *)mask) ? -errno : 0;
}

int rn_setaffinity(int pid, unsigned long size, const unsigned char *mask)
{
	return sched_setaffinity(pid, size, (const cpu_set_t *)mask) ? -errno : 0;
}

int rn_tgkill(int tgid, int tid, int sig)
{
	return syscall(SYS_tgkill, tgid, tid, sig) ? -errno : 0;
}
