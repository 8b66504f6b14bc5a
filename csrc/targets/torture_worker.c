// The torture suite's target (remap/torture.py): a worker whose answers depend on its memory,
// its registers' FP state and its signal state, so that any damage a killed driver leaves shows.
//   torture_worker [alarm] [threads] [seccomp] [catchall]
// It fills a 1 MiB anonymous buffer with a fixed pattern, sets the FP rounding mode to
// downward (MXCSR and the x87 control word: wiped FP state changes the answers), prints
//   ready PID BUFADDR BUFLEN
// then answers each line "N" read from stdin with "N SUM Q TICKS": SUM over the buffer + N,
// Q = a rounding-sensitive division, TICKS = SIGALRMs handled so far.
//   alarm    an SA_RESTART SIGALRM handler fires every millisecond (setitimer)
//   threads  a helper creates and joins short-lived threads all the time
//   seccomp  a filter that allows everything except getppid (which kills the process)
//   catchall handlers on SIGURG, SIGWINCH and SIGCHLD (no ignorable marker: batches go one by one)
// remap-build: gcc -O2 -pthread -o {out} {src} -lm
// remap-build[bare]: musl-gcc -static -O2 -DBARE -o {out} {src}
// (bare: static musl with no signal handling, threads or seccomp at all, so its code holds no
// rt_sigreturn restorer: remap must build its safety chain in the scratch area)
#define _GNU_SOURCE
#include <errno.h>
#include <fenv.h>
#ifndef BARE
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#endif
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

#define BUF_LEN (1 << 20)

static volatile long ticks;
#ifndef BARE

static void on_alarm(int sig)
{
	(void)sig;
	ticks++;
}

static void on_other(int sig)
{
	(void)sig;
}

#include <ucontext.h>
static void on_segv(int sig, siginfo_t *si, void *uc_)
{
	ucontext_t *uc = uc_;
	unsigned long *sp = (unsigned long *)uc->uc_mcontext.gregs[REG_RSP];
	fprintf(stderr, "SEGV addr=%p rip=%llx rsp=%p rax=%llx [sp-16..]=%lx %lx %lx %lx\n", si->si_addr,
		uc->uc_mcontext.gregs[REG_RIP], (void *)sp, uc->uc_mcontext.gregs[REG_RAX], sp[-2], sp[-1], sp[0], sp[1]);
	_exit(99);
	(void)sig;
}

static void *nothing(void *arg)
{
	return arg;
}

static void *spawner(void *arg)
{
	(void)arg;
	for (;;) {
		pthread_t t;
		if (pthread_create(&t, NULL, nothing, NULL) == 0)
			pthread_join(t, NULL);
		usleep(200);
	}
	return NULL;
}

static void filter(void)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getppid, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = {sizeof(f) / sizeof(f[0]), f};
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog))
		_exit(3);
}

#endif

int main(int argc, char **argv)
{
	int alarm = 0, threads = 0, secc = 0, catchall = 0;
	for (int i = 1; i < argc; i++) {
		alarm |= !strcmp(argv[i], "alarm");
		threads |= !strcmp(argv[i], "threads");
		secc |= !strcmp(argv[i], "seccomp");
		catchall |= !strcmp(argv[i], "catchall");
	}
	uint64_t *buf = mmap(NULL, BUF_LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED)
		return 2;
	for (size_t i = 0; i < BUF_LEN / 8; i++)
		buf[i] = i * 0x9e3779b97f4a7c15ULL;
	fesetround(FE_DOWNWARD);
#ifndef BARE
	if (getenv("TORTURE_SEGV")) {
		struct sigaction sa = {0};
		static char alt[65536];
		stack_t ss = {alt, 0, sizeof alt};
		sigaltstack(&ss, NULL);
		sa.sa_sigaction = on_segv;
		sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
		sigaction(SIGSEGV, &sa, NULL);
	}
	if (alarm) {
		struct sigaction sa = {0};
		sa.sa_handler = on_alarm;
		sa.sa_flags = SA_RESTART;
		sigaction(SIGALRM, &sa, NULL);
		struct itimerval it = {{0, 1000}, {0, 1000}};
		setitimer(ITIMER_REAL, &it, NULL);
	}
	if (catchall) {
		struct sigaction sa = {0};
		sa.sa_handler = on_other;
		sa.sa_flags = SA_RESTART;
		sigaction(SIGURG, &sa, NULL);
		sigaction(SIGWINCH, &sa, NULL);
		sigaction(SIGCHLD, &sa, NULL);
	}
	if (threads) {
		pthread_t t;
		pthread_create(&t, NULL, spawner, NULL);
	}
	if (secc)
		filter();
#else
	(void)alarm, (void)threads, (void)secc, (void)catchall;
#endif
	printf("ready %d %p %d\n", getpid(), (void *)buf, BUF_LEN);
	fflush(stdout);
	char line[64];
	while (fgets(line, sizeof line, stdin)) {
		long n = atol(line);
		uint64_t sum = (uint64_t)n;
		for (size_t i = 0; i < BUF_LEN / 8; i++)
			sum += buf[i];
		volatile double a = (double)n + 1.0, b = 3.0;
		double q = a / b;
		printf("%ld %llu %.17g %ld\n", n, (unsigned long long)sum, q, ticks);
		fflush(stdout);
	}
	if (ferror(stdin)) { /* a read that failed is damage, not the end of the input */
		perror("torture_worker: read");
		return 4;
	}
	return 0;
}
