/*
 * remap_native.c -- the ptrace fast path of remap.inject, compiled by cffi (remap/native.py).
 *
 * Why C and not python-ptrace for these pieces:
 *   - python-ptrace has no PTRACE_SEIZE / PTRACE_INTERRUPT / PTRACE_{GET,SET}SIGMASK, which
 *     remap needs to stop a process without SIGSTOP side effects (a group stop a job-control
 *     parent would see) and to block signals while it injects (remap.inject's docstring).
 *   - one injected syscall is ~7 ptrace/wait calls; through ctypes each one costs a Python
 *     crossing.  rn_inject() does the whole round trip (set regs -> PTRACE_SYSCALL -> entry stop
 *     -> PTRACE_SYSCALL -> exit stop -> result) in one call, so the Python API stays within a
 *     small factor of a bare C loop (bench/inject.py measures it).
 *   - process_vm_writev, pidfd_open, process_madvise and sched_setaffinity are thin
 *     syscalls; having them here avoids ctypes struct plumbing.  (Reads go through
 *     /proc/PID/mem: process_vm_readv pins, and a read-only pin unshares a page a forked child
 *     still shares -- remap.procfs.MemFile.)
 * python-ptrace keeps what it does well: the syscall name table for names remap.kconst lacks.
 *
 * Every function returns a negative errno on failure (never sets a global), so Python can turn
 * it into the right remap error at one place.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <stdint.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define RN_MAXSIG 8

/* The result of one injected call (or one stub run) plus what happened on the way. */
struct rn_call {
	struct user_regs_struct regs; /* in: registers to run with; out (stub): regs at the trap */
	long long result;             /* out: rax after the syscall */
	int status;                   /* out: wait status if the thread exited / was killed */
	int nsig;                     /* out: signals stopped for (and suppressed) on the way */
	int sigs[RN_MAXSIG];
	int phase;          /* where a call interrupted by -EINTR/-ETIMEDOUT resumes (0: done) */
	int slot;           /* guardian slot + 1 of the injecting thread (0: not guarded) */
	long long deadline; /* CLOCK_MONOTONIC ns by which the call's stops must come */
};

/* Outcomes besides 0 (done) and -errno.  -EINTR: a signal reached the driver while it waited
 * (only when waits are abortable); -ETIMEDOUT: the deadline passed.  Both leave c->phase set:
 * calling the same function again with the same c goes on waiting where it stopped. */
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

/*
 * Deadlines.  Every blocking wait of the tracer is bounded: while a session is open a
 * per-thread POSIX timer (CLOCK_MONOTONIC, delivered to the driver thread as RN_TIMER_SIG,
 * whose handler only notes that it fired) ticks every RN_TICK_NS and interrupts the waitpid;
 * the wait then checks its deadline.  A tick, not a timer armed per wait: arming costs two
 * syscalls a wait, four a call -- a quarter of an injected call's whole cost on this machine.
 * g_timeout_ns = 0: no deadline and no tick (callers that never opened a session).
 * g_abortable: a signal to the driver other than the tick (SIGINT, SIGTERM under
 * remap.inject's handlers) ends the wait with -EINTR, so the Python side can abort the call
 * and cure the target; otherwise the wait goes on.  Other syscalls of the driver may see
 * EINTR from a tick (Python retries them, PEP 475).
 */
#define RN_TIMER_SIG (SIGRTMAX - 2)
#define RN_TICK_NS 20000000LL
static long long g_timeout_ns;
static int g_abortable;
static timer_t g_timer;
static pid_t g_timer_tid; /* the thread the timer interrupts (0: none yet) */
static volatile sig_atomic_t g_timer_fired;

static void on_timer(int sig)
{
	(void)sig;
	g_timer_fired = 1;
}

static long long rn_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int timer_ready(void)
{
	pid_t me = (pid_t)syscall(SYS_gettid);
	if (g_timer_tid == me)
		return 0;
	if (g_timer_tid)
		timer_delete(g_timer);
	g_timer_tid = 0;
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_timer; /* no SA_RESTART: the wait must see EINTR */
	sigemptyset(&sa.sa_mask);
	if (sigaction(RN_TIMER_SIG, &sa, 0))
		return -errno;
	struct sigevent ev;
	memset(&ev, 0, sizeof ev);
	ev.sigev_notify = SIGEV_THREAD_ID;
	ev.sigev_signo = RN_TIMER_SIG;
	ev._sigev_un._tid = me;
	if (timer_create(CLOCK_MONOTONIC, &ev, &g_timer))
		return -errno;
	g_timer_tid = me;
	return 0;
}

/* Set the deadline of every later wait (ns, 0: none, and the tick stops) and whether a
 * foreign signal aborts it. */
int rn_set_wait(long long timeout_ns, int abortable)
{
	struct itimerspec it = {{0, RN_TICK_NS}, {0, RN_TICK_NS}};
	g_timeout_ns = timeout_ns;
	g_abortable = abortable;
	if (!timeout_ns) {
		if (g_timer_tid) {
			memset(&it, 0, sizeof it);
			timer_settime(g_timer, 0, &it, 0);
		}
		return 0;
	}
	int r = timer_ready();
	if (r)
		return r;
	return timer_settime(g_timer, 0, &it, 0) ? -errno : 0;
}

/* waitpid for one thread (__WALL: our tracees are threads, not children), until `deadline`
 * (0: none) -- then -ETIMEDOUT; a foreign signal while abortable: -EINTR. */
static int wait_until(int tid, int *status, int flags, long long deadline)
{
	for (;;) {
		if (deadline && !(flags & WNOHANG) && rn_now_ns() >= deadline)
			return -ETIMEDOUT;
		g_timer_fired = 0;
		int r = waitpid(tid, status, flags | __WALL);
		if (r >= 0)
			return r;
		if (errno != EINTR)
			return -errno;
		if (deadline && rn_now_ns() >= deadline)
			return -ETIMEDOUT;
		if (g_abortable && !g_timer_fired)
			return -EINTR;
	}
}

int rn_wait(int tid, int *status, int flags)
{
	return wait_until(tid, status, flags, g_timeout_ns ? rn_now_ns() + g_timeout_ns : 0);
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
 * The guardian: what a driver killed in the middle of a *blocking* injected call leaves right.
 *
 * The safety chain (remap/inject.py) brings an injecting thread home by itself once its call
 * returns -- but a call that never returns (pause, a read nobody answers) with every signal
 * blocked would keep the thread there forever.  So before the first session the driver starts
 * a guardian: a process sharing the driver's memory (CLONE_VM, so it reads the slots below
 * as they are written, at no cost per call), every signal blocked, no file but a pidfd of the
 * driver.  It sleeps in poll() until the driver is gone.  Then, for each slot still marked
 * active, it seizes that thread (the kernel detached it when its tracer died), interrupts it
 * and looks: a thread still inside the injected call (rip just past the call's `syscall`,
 * rsp where the call put it, rax = -ERESTART*) is made to return -EINTR from it, and the
 * chain takes it home (mask, registers, FP state); a thread injected without a chain (parked)
 * gets its saved registers back, so its own interrupted call restarts.  Anything else is left
 * as it is.  Last, every thread the session pinned to the tracer's CPU gets its own affinity
 * back.  It uses raw syscalls only: it runs on the driver's TLS, and must never touch
 * errno or any libc state.
 */
#define RN_GUARD_SLOTS 1024
struct rn_guard_slot {
	volatile int active; /* 1 while an injected call or stub run may be in flight */
	int tid;
	int parked;                     /* 1: no chain; restore `park` */
	unsigned long long rsp, lo, hi; /* the call's rsp; rip after its syscall in (lo, hi] */
	struct user_regs_struct park;
	volatile int pinned; /* 1 while thread `ptid` runs on the tracer's CPU: `aff` is its own */
	int ptid;
	unsigned char aff[128];
};
static struct rn_guard_slot g_slots[RN_GUARD_SLOTS];
static pid_t g_guard_owner; /* the driver the running guardian watches */
static int g_guard_pid;

static long raw6(long n, long a, long b, long c, long d, long e, long f)
{
	long ret;
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	register long r9 __asm__("r9") = f;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return ret;
}

static struct rn_guard_slot *slot_of(struct rn_call *c)
{
	return c->slot > 0 && c->slot <= RN_GUARD_SLOTS ? &g_slots[c->slot - 1] : 0;
}

static void guard_park(struct rn_call *c, const struct user_regs_struct *park)
{
	struct rn_guard_slot *g = slot_of(c);
	if (g) {
		g->park = *park;
		g->parked = 1;
	}
}

static void guard_begin(int tid, struct rn_call *c, unsigned long long hi, int stub)
{
	struct rn_guard_slot *g = slot_of(c);
	if (!g)
		return;
	g->tid = tid;
	g->rsp = c->regs.rsp;
	g->lo = stub ? c->regs.rip : c->regs.rip + 1;
	g->hi = hi;
	__atomic_store_n(&g->active, 1, __ATOMIC_RELEASE);
}

/* End of a call (r = its outcome): the slot stays active while the call may still run. */
static int guard_end(struct rn_call *c, int r)
{
	struct rn_guard_slot *g = slot_of(c);
	if (g && c->phase == 0) {
		__atomic_store_n(&g->active, 0, __ATOMIC_RELEASE);
		g->parked = 0;
	}
	return r;
}

/* A slot whose call was aborted (the thread is stopped again, the cure owns it). */
void rn_guard_clear(int slot)
{
	if (slot > 0 && slot <= RN_GUARD_SLOTS) {
		__atomic_store_n(&g_slots[slot - 1].active, 0, __ATOMIC_RELEASE);
		g_slots[slot - 1].parked = 0;
	}
}

/*
 * Keep an injecting thread on the tracer's CPU for the session (a ptrace round trip between
 * CPUs costs several times one on the same CPU), its own affinity saved in its slot: the cure
 * puts it back (rn_unpin_thread), and so does the guardian if the driver dies first.
 */
int rn_pin_thread(int slot, int tid, int cpu)
{
	struct rn_guard_slot *g = slot > 0 && slot <= RN_GUARD_SLOTS ? &g_slots[slot - 1] : 0;
	unsigned char one[128];
	if (!g || cpu < 0 || cpu >= 1024)
		return -EINVAL;
	if (sched_getaffinity(tid, sizeof g->aff, (cpu_set_t *)g->aff))
		return -errno;
	memset(one, 0, sizeof one);
	one[cpu / 8] = (unsigned char)(1 << (cpu % 8));
	g->ptid = tid;
	__atomic_store_n(&g->pinned, 1, __ATOMIC_RELEASE);
	if (sched_setaffinity(tid, sizeof one, (cpu_set_t *)one)) {
		int e = errno;
		__atomic_store_n(&g->pinned, 0, __ATOMIC_RELEASE);
		return -e;
	}
	return 0;
}

int rn_unpin_thread(int slot)
{
	struct rn_guard_slot *g = slot > 0 && slot <= RN_GUARD_SLOTS ? &g_slots[slot - 1] : 0;
	if (!g || !__atomic_load_n(&g->pinned, __ATOMIC_ACQUIRE))
		return 0;
	int r = sched_setaffinity(g->ptid, sizeof g->aff, (cpu_set_t *)g->aff) ? -errno : 0;
	__atomic_store_n(&g->pinned, 0, __ATOMIC_RELEASE);
	return r;
}

static void guard_nap(void)
{
	struct timespec ts = {0, 1000000};
	raw6(SYS_nanosleep, (long)&ts, 0, 0, 0, 0, 0);
}

static int is_restart(unsigned long long rax)
{
	long long v = (long long)rax;
	return v == -512 || v == -513 || v == -514 || v == -516;
}

static void guard_fix(struct rn_guard_slot *g)
{
	int tid = g->tid, st = 0, sig = 0;
	long r = -1;
	for (int i = 0; i < 2000; i++) { /* EPERM while the dead tracer still holds it */
		r = raw6(SYS_ptrace, PTRACE_SEIZE, tid, 0, 0, 0, 0);
		if (r == 0 || r == -ESRCH)
			break;
		guard_nap();
	}
	if (r)
		return;
	raw6(SYS_ptrace, PTRACE_INTERRUPT, tid, 0, 0, 0, 0);
	for (int i = 0; i < 5000; i++) {
		r = raw6(SYS_wait4, tid, (long)&st, WNOHANG | __WALL, 0, 0, 0);
		if (r == tid)
			break;
		if (r < 0)
			return;
		guard_nap();
	}
	if (r != tid || !WIFSTOPPED(st))
		return;
	if ((st >> 16) == 0)
		sig = WSTOPSIG(st); /* a signal-delivery stop: hand the signal back at detach */
	struct user_regs_struct regs;
	if (raw6(SYS_ptrace, PTRACE_GETREGS, tid, 0, (long)&regs, 0, 0) == 0 &&
	    regs.rip > g->lo && regs.rip <= g->hi && regs.rsp == g->rsp) {
		if (g->parked) {
			raw6(SYS_ptrace, PTRACE_SETREGS, tid, 0, (long)&g->park, 0, 0);
		} else if (is_restart(regs.rax)) {
			regs.rax = (unsigned long long)-EINTR;
			regs.orig_rax = (unsigned long long)-1;
			raw6(SYS_ptrace, PTRACE_SETREGS, tid, 0, (long)&regs, 0, 0);
		}
	}
	raw6(SYS_ptrace, PTRACE_DETACH, tid, 0, sig, 0, 0);
}

static int guardian(void *arg)
{
	int pidfd = (int)(long)arg;
	unsigned long long all = ~0ULL;
	raw6(SYS_rt_sigprocmask, SIG_SETMASK, (long)&all, 0, 8, 0, 0);
	raw6(SYS_close_range, 0, pidfd - 1, 0, 0, 0, 0);
	raw6(SYS_close_range, pidfd + 1, ~0U, 0, 0, 0, 0);
	raw6(SYS_prctl, PR_SET_NAME, (long)"remap-guardian", 0, 0, 0, 0);
	raw6(SYS_setsid, 0, 0, 0, 0, 0, 0); /* a kill of the driver's process group spares it */
	for (;;) {
		struct pollfd p = {pidfd, POLLIN, 0};
		if (raw6(SYS_poll, (long)&p, 1, -1, 0, 0, 0) > 0)
			break;
	}
	for (int i = 0; i < RN_GUARD_SLOTS; i++)
		if (__atomic_load_n(&g_slots[i].active, __ATOMIC_ACQUIRE))
			guard_fix(&g_slots[i]);
	for (int i = 0; i < RN_GUARD_SLOTS; i++) /* then each pinned thread gets its CPUs back */
		if (__atomic_load_n(&g_slots[i].pinned, __ATOMIC_ACQUIRE))
			raw6(SYS_sched_setaffinity, g_slots[i].ptid, sizeof g_slots[i].aff,
			     (long)g_slots[i].aff, 0, 0, 0);
	raw6(SYS_exit, 0, 0, 0, 0, 0, 0);
	return 0;
}

/* Start this driver's guardian, once per driver process; returns its pid or -errno. */
int rn_guard_start(void)
{
	pid_t me = getpid();
	int st;
	if (g_guard_owner == me && g_guard_pid > 0 &&
	    waitpid(g_guard_pid, &st, WNOHANG | __WALL) == 0)
		return g_guard_pid; /* still running (a guardian killed by hand is reaped here) */
	int pidfd = (int)syscall(SYS_pidfd_open, me, 0);
	if (pidfd < 0)
		return -errno;
	size_t size = 64 * 1024;
	void *stack = mmap(0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (stack == MAP_FAILED) {
		int e = errno;
		close(pidfd);
		return -e;
	}
	/* exit signal 0: nobody is told when it ends; the driver's exit reparents it to init */
	int pid = clone(guardian, (char *)stack + size, CLONE_VM | CLONE_UNTRACED, (void *)(long)pidfd);
	int e = errno;
	close(pidfd);
	if (pid < 0)
		return -e;
	g_guard_owner = me;
	g_guard_pid = pid;
	return pid;
}

/*
 * Wait until `want(status)`, stepping over other stops with `req`: a signal-delivery stop's
 * signal is recorded (and suppressed, the caller re-queues it later), event stops (a
 * group-stop reported as PTRACE_EVENT_STOP) are continued.  The caller has already resumed
 * the thread with `req`.
 */
static int await_stop(int tid, long req, int (*want)(int), struct rn_call *c)
{
	int st;
	for (int guard = 0; guard < 64; guard++) {
		int r = wait_until(tid, &st, 0, c->deadline);
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

/* The start of a call: clear its outputs, set its deadline. */
static void begin(struct rn_call *c)
{
	c->nsig = 0;
	c->status = 0;
	c->deadline = g_timeout_ns ? rn_now_ns() + g_timeout_ns : 0;
}

/* r from a wait: an interrupted or timed-out wait keeps c's phase (the caller may go on
 * waiting); anything else ends the call. */
static int pause_or_end(struct rn_call *c, int r)
{
	if (r == -EINTR || r == -ETIMEDOUT)
		return r;
	c->phase = 0;
	return r;
}

/* Phase 0 of a call: outputs cleared, deadline set, the guardian told (the syscall's return
 * lands in (rip, hi]), registers in place, the thread resumed with `req`. */
static int start_call(int tid, struct rn_call *c, long req, unsigned long long hi, int stub)
{
	begin(c);
	guard_begin(tid, c, hi, stub);
	if (ptrace(PTRACE_SETREGS, tid, 0, &c->regs))
		return guard_end(c, -errno);
	if (ptrace((enum __ptrace_request)req, tid, 0, 0))
		return guard_end(c, -errno);
	c->phase = 1;
	return 0;
}

/*
 * One injected syscall, in one Python->C crossing.  Precondition: `tid` is in a ptrace stop
 * with every catchable signal blocked (PTRACE_SETSIGMASK), and c->regs has rip at an existing
 * `syscall` instruction, orig_rax = -1 (so the kernel does not restart an interrupted call),
 * rax = number, rdi/rsi/rdx/r10/r8/r9 = args.  Leaves the thread in its syscall-exit stop.
 * While the call runs, the guardian's slot says so (see rn_guard_start).
 */
int rn_inject(int tid, struct rn_call *c)
{
	struct user_regs_struct after;
	int r;
	switch (c->phase) {
	case 0:
		r = start_call(tid, c, PTRACE_SYSCALL, c->regs.rip + 2, 0);
		if (r)
			return r;
		/* fall through */
	case 1:
		r = await_stop(tid, PTRACE_SYSCALL, is_syscall_stop, c); /* entry */
		if (r)
			return guard_end(c, pause_or_end(c, r));
		if (ptrace(PTRACE_SYSCALL, tid, 0, 0))
			return guard_end(c, pause_or_end(c, -errno));
		c->phase = 2;
		/* fall through */
	default:
		r = await_stop(tid, PTRACE_SYSCALL, is_syscall_stop, c); /* exit */
		if (r)
			return guard_end(c, pause_or_end(c, r));
	}
	c->phase = 0;
	if (ptrace(PTRACE_GETREGS, tid, 0, &after))
		return guard_end(c, -errno);
	c->result = (long long)after.rax;
	return guard_end(c, 0);
}

/*
 * rn_inject, then straight back to `park` (the registers the thread resumes with), with
 * PTRACE_INTERRUPT first so that TIF_SIGPENDING makes the kernel restart an interrupted call
 * if the driver dies now.  For injecting without a safety chain: a killed driver can then
 * only hurt the thread while the injected call itself runs (entry stop to exit stop).
 */
int rn_inject_parked(int tid, struct rn_call *c, const struct user_regs_struct *park)
{
	if (c->phase == 0)
		guard_park(c, park);
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
 * Run the batch stub: set regs (rip = stub, r12 = table, r13 = count, rbx = sig), PTRACE_CONT,
 * wait for the signal-delivery stop of `sig`, which the stub's final tgkill raises.  The marker is never delivered (the next resume passes signal 0); sig is one
 * the target ignores, so if the driver dies at that stop the kernel drops it.  c->regs receives
 * the registers at the stop.
 */
int rn_run_stub(int tid, struct rn_call *c, int sig, const struct user_regs_struct *park)
{
	int r;
	marker_sig = sig;
	if (c->phase == 0) {
		if (park)
			guard_park(c, park);
		r = start_call(tid, c, PTRACE_CONT, c->regs.rip + 4096, 1);
		if (r)
			return r;
	}
	r = await_stop(tid, PTRACE_CONT, is_marker_delivery, c);
	if (r)
		return guard_end(c, pause_or_end(c, r));
	c->phase = 0;
	return guard_end(c, ptrace(PTRACE_GETREGS, tid, 0, &c->regs) ? -errno : 0);
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
	if (c->phase == 0) {
		begin(c);
		if (ptrace(PTRACE_INTERRUPT, tid, 0, 0))
			return -errno;
		if (ptrace(PTRACE_SETREGS, tid, 0, regs))
			return -errno;
		if (ptrace(PTRACE_CONT, tid, 0, 0))
			return -errno;
		c->phase = 1;
	}
	return pause_or_end(c, await_stop(tid, PTRACE_CONT, is_event_stop, c));
}

/*
 * Abort a call whose wait was interrupted or timed out: the thread is running (inside the
 * injected syscall, or in the stub).  PTRACE_INTERRUPT it and wait, bounded, for any stop --
 * from there the ordinary cure (rn_reinterrupt with the saved registers) puts it back.  A
 * signal it stopped for on the way is recorded for re-queueing; `out` gets the registers at
 * the stop (they tell whether the call had already completed).
 */
int rn_abort(int tid, struct rn_call *c, struct user_regs_struct *out)
{
	int st;
	c->phase = 0;
	c->deadline = rn_now_ns() + 2000000000LL;
	if (ptrace(PTRACE_INTERRUPT, tid, 0, 0))
		return -errno;
	for (;;) {
		int r = wait_until(tid, &st, 0, c->deadline);
		if (r == -EINTR)
			continue; /* already aborting: a second Ctrl-C changes nothing */
		if (r < 0)
			return r;
		if (WIFEXITED(st) || WIFSIGNALED(st)) {
			c->status = st;
			return RN_EXITED;
		}
		if ((st >> 16) == 0 && !is_syscall_stop(st))
			note_sig(c, WSTOPSIG(st));
		return ptrace(PTRACE_GETREGS, tid, 0, out) ? -errno : 0;
	}
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
