// A target whose SIGALRM handler fires every millisecond (setitimer), for checking that
// injection does not break a busy signal handler.  The main loop sleeps in short nanosleeps
// (so it is interrupted often, mostly in the kernel); each line on stdin makes it print
// "ticks T loops L" (handler runs, main loop iterations).
// remap-build: musl-gcc -static -O2 -o {out} {src}
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <poll.h>

static volatile unsigned long ticks;

static void on_alarm(int sig)
{
	(void)sig;
	ticks++;
}

int main(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_alarm;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGALRM, &sa, 0);
	struct itimerval it = {{0, 1000}, {0, 1000}};
	setitimer(ITIMER_REAL, &it, 0);
	dprintf(1, "ready\n");
	unsigned long loops = 0;
	char line[64];
	struct pollfd p = {0, POLLIN, 0};
	for (;;) {
		loops++;
		if (poll(&p, 1, 2) > 0) {
			if (read(0, line, sizeof line) <= 0)
				return 0;
			dprintf(1, "ticks %lu loops %lu\n", ticks, loops);
		}
	}
}
