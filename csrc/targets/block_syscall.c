// A target that blocks in one chosen syscall, so remap's tests can check that injecting into it
// lets the blocked call continue exactly (each mode exercises one kernel ERESTART* code):
//   read            read(0)                        -ERESTARTSYS (512)
//   accept          accept on 127.0.0.1:PORT       -ERESTARTSYS
//   futex           FUTEX_WAIT, no timeout         -ERESTARTSYS (SIGUSR1 handler wakes it)
//   pause           pause()                        -ERESTARTNOHAND (514) (SIGUSR1 ends it)
//   poll            poll(stdin, infinite)          -ERESTARTNOHAND
//   nanosleep MS    nanosleep                      -ERESTART_RESTARTBLOCK (516)
//   clock_nanosleep MS                             -ERESTART_RESTARTBLOCK
//   futex_timeout MS FUTEX_WAIT with a timeout     -ERESTART_RESTARTBLOCK
// A third argument "igntrap" makes it ignore SIGTRAP first (remap must then avoid int3).
// It prints "ready" when about to block and one line with the outcome when the call returns,
// including how long it took (ms, CLOCK_MONOTONIC), then exits 0.
// remap-build: musl-gcc -static -O2 -o {out} {src}
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#define FUTEX_WAIT 0 /* include/uapi/linux/futex.h: musl ships no kernel headers */
#define FUTEX_WAKE 1
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile int word;
static volatile int usr1;

static void on_usr1(int sig)
{
	(void)sig;
	usr1++;
	word = 1;
	syscall(SYS_futex, &word, FUTEX_WAKE, 1, 0, 0, 0);
}

static long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "read";
	long ms = argc > 2 ? atol(argv[2]) : 1000;
	struct timespec req = {ms / 1000, (ms % 1000) * 1000000L};
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_usr1;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGUSR1, &sa, 0);
	if (argc > 3 && !strcmp(argv[3], "igntrap"))
		signal(SIGTRAP, SIG_IGN);

	int lfd = -1;
	if (!strcmp(mode, "accept")) {
		struct sockaddr_in a = {.sin_family = AF_INET};
		socklen_t len = sizeof a;
		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		lfd = socket(AF_INET, SOCK_STREAM, 0);
		if (lfd < 0 || bind(lfd, (void *)&a, sizeof a) || listen(lfd, 1) ||
		    getsockname(lfd, (void *)&a, &len))
			return 2;
		dprintf(1, "port %d\n", ntohs(a.sin_port));
	}
	dprintf(1, "ready %d\n", getpid());
	long t0 = now_ms();
	long r;
	char c = 0;
	if (!strcmp(mode, "read")) {
		r = read(0, &c, 1);
	} else if (!strcmp(mode, "accept")) {
		r = accept(lfd, 0, 0);
	} else if (!strcmp(mode, "futex")) {
		r = 0;
		while (!word && r == 0)
			r = syscall(SYS_futex, &word, FUTEX_WAIT, 0, 0, 0, 0);
		if (r < 0 && errno == EAGAIN)
			r = 0;
	} else if (!strcmp(mode, "pause")) {
		r = pause();
	} else if (!strcmp(mode, "poll")) {
		struct pollfd p = {0, POLLIN, 0};
		r = poll(&p, 1, -1);
	} else if (!strcmp(mode, "nanosleep")) {
		r = syscall(SYS_nanosleep, &req, 0);
	} else if (!strcmp(mode, "clock_nanosleep")) {
		r = syscall(SYS_clock_nanosleep, CLOCK_MONOTONIC, 0, &req, 0);
	} else if (!strcmp(mode, "futex_timeout")) {
		r = syscall(SYS_futex, &word, FUTEX_WAIT, 0, &req, 0, 0);
	} else {
		return 2;
	}
	int e = r < 0 ? errno : 0;
	dprintf(1, "%s ret=%ld errno=%d ms=%ld usr1=%d byte=%d\n", mode, r, e, now_ms() - t0,
		usr1, c);
	return 0;
}
