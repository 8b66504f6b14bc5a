// A glibc pthreads target for remap's injection tests.
//   spawn N   N worker threads each counting in a loop (with a short nanosleep), plus a main
//             thread that keeps creating and joining short-lived threads (so threads appear
//             while remap seizes).  Each line on stdin makes it print "counts c1 c2 ...".
//   futex_pi  main takes a PI futex; a second thread blocks in FUTEX_LOCK_PI on it (the kernel
//             returns -ERESTARTNOINTR when that is interrupted); a line on stdin makes main
//             unlock, and the thread prints "locked ret=R ms=T".
// remap-build: gcc -O2 -pthread -o {out} {src}
#define _GNU_SOURCE
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAXW 16
static volatile unsigned long counts[MAXW];
static volatile int pi_word;

static void *worker(void *arg)
{
	long i = (long)arg;
	struct timespec ts = {0, 200000};
	for (;;) {
		counts[i]++;
		nanosleep(&ts, 0);
	}
	return 0;
}

static void *brief(void *arg)
{
	return arg;
}

static void *spawner(void *arg)
{
	(void)arg;
	for (;;) {
		pthread_t t;
		if (pthread_create(&t, 0, brief, 0) == 0)
			pthread_join(t, 0);
	}
	return 0;
}

static long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static void *pi_waiter(void *arg)
{
	(void)arg;
	dprintf(1, "ready %ld\n", (long)syscall(SYS_gettid));
	long t0 = now_ms();
	long r = syscall(SYS_futex, &pi_word, FUTEX_LOCK_PI, 0, 0, 0, 0);
	dprintf(1, "locked ret=%ld ms=%ld\n", r, now_ms() - t0);
	return 0;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "spawn";
	char line[64];
	pthread_t t;
	if (!strcmp(mode, "futex_pi")) {
		pi_word = (int)syscall(SYS_gettid); /* we own it: uncontended PI lock in userspace */
		pthread_create(&t, 0, pi_waiter, 0);
		if (read(0, line, sizeof line) <= 0)
			return 1;
		syscall(SYS_futex, &pi_word, FUTEX_UNLOCK_PI, 0, 0, 0, 0);
		pthread_join(t, 0);
		return 0;
	}
	int n = argc > 2 ? atoi(argv[2]) : 4;
	if (n > MAXW)
		n = MAXW;
	for (long i = 0; i < n; i++)
		pthread_create(&t, 0, worker, (void *)i);
	pthread_create(&t, 0, spawner, 0);
	dprintf(1, "ready %d\n", n);
	while (fgets(line, sizeof line, stdin)) {
		char buf[512];
		int off = snprintf(buf, sizeof buf, "counts");
		for (int i = 0; i < n; i++)
			off += snprintf(buf + off, sizeof buf - off, " %lu", counts[i]);
		dprintf(1, "%s\n", buf);
	}
	return 0;
}
