/*
 * bench_floor.c -- the floor for bench/inject.py: a bare C loop doing exactly the ptrace round
 * trip remap does per injected syscall (SETREGS, PTRACE_SYSCALL, wait entry, PTRACE_SYSCALL,
 * wait exit, GETREGS), with no Python anywhere.  It seizes and interrupts one single-threaded
 * target, pins itself and the target to the target's CPU (unless PIN=0), runs N getpid calls
 * through the `syscall` instruction at GADGET, restores the registers, and detaches.
 *
 * usage: bench_floor PID GADGET_HEX N [PIN]      prints: ns_per_call=<float> result=<getpid>
 * Build: gcc -O2 -o bench_floor bench_floor.c (bench/inject.py does it).
 * It does not restart an interrupted syscall by re-interrupting (remap's cure does): give it a
 * target that is not blocked in a syscall, or accept that the call returns EINTR.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void wait_syscall_stop(int pid)
{
	int st;
	if (waitpid(pid, &st, __WALL) < 0)
		die("waitpid");
	if (!WIFSTOPPED(st) || WSTOPSIG(st) != (SIGTRAP | 0x80)) {
		fprintf(stderr, "unexpected stop %#x\n", st);
		exit(1);
	}
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: %s PID GADGET_HEX N [PIN]\n", argv[0]);
		return 2;
	}
	int pid = atoi(argv[1]);
	unsigned long gadget = strtoul(argv[2], 0, 16);
	long n = atol(argv[3]);
	int pin = argc > 4 ? atoi(argv[4]) : 1;
	struct user_regs_struct saved, regs, after;
	uint64_t mask = ~0ULL, oldmask;
	int st;

	if (ptrace(PTRACE_SEIZE, pid, 0, PTRACE_O_TRACESYSGOOD))
		die("PTRACE_SEIZE");
	if (ptrace(PTRACE_INTERRUPT, pid, 0, 0))
		die("PTRACE_INTERRUPT");
	if (waitpid(pid, &st, __WALL) < 0)
		die("waitpid");
	if (pin) {
		cpu_set_t set;
		FILE *f;
		char path[64];
		int cpu = 0, i;
		snprintf(path, sizeof path, "/proc/%d/stat", pid);
		if ((f = fopen(path, "r"))) {
			/* field 39 (processor); comm has no spaces in our targets */
			for (i = 1; i < 39 && fscanf(f, "%*s") == 0; i++)
				;
			if (fscanf(f, "%d", &cpu) != 1)
				cpu = 0;
			fclose(f);
		}
		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
		sched_setaffinity(0, sizeof set, &set);
		sched_setaffinity(pid, sizeof set, &set);
	}
	ptrace(PTRACE_GETREGS, pid, 0, &saved);
	ptrace(PTRACE_GETSIGMASK, pid, (void *)8, &oldmask);
	ptrace(PTRACE_SETSIGMASK, pid, (void *)8, &mask);
	regs = saved;
	regs.orig_rax = -1;
	regs.rip = gadget;

	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (long i = 0; i < n; i++) {
		regs.rax = 39; /* getpid */
		if (ptrace(PTRACE_SETREGS, pid, 0, &regs))
			die("SETREGS");
		if (ptrace(PTRACE_SYSCALL, pid, 0, 0))
			die("PTRACE_SYSCALL");
		wait_syscall_stop(pid);
		if (ptrace(PTRACE_SYSCALL, pid, 0, 0))
			die("PTRACE_SYSCALL");
		wait_syscall_stop(pid);
		if (ptrace(PTRACE_GETREGS, pid, 0, &after))
			die("GETREGS");
	}
	clock_gettime(CLOCK_MONOTONIC, &b);
	double ns = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / (double)n;
	/* restore: regs back, re-interrupt so a restartable call restarts, mask back, detach */
	ptrace(PTRACE_SETREGS, pid, 0, &saved);
	ptrace(PTRACE_INTERRUPT, pid, 0, 0);
	ptrace(PTRACE_CONT, pid, 0, 0);
	waitpid(pid, &st, __WALL);
	ptrace(PTRACE_SETSIGMASK, pid, (void *)8, &oldmask);
	ptrace(PTRACE_DETACH, pid, 0, 0);
	printf("ns_per_call=%.1f result=%llu\n", ns, (unsigned long long)after.rax);
	return 0;
}
