// A dynamic glibc program for residency tests: heap, written .data, a thread, then it blocks.
// It mallocs and touches a buffer (heap or anon mmap), writes a global (a CoW .data page),
// optionally starts N threads that block in pause(), prints "ready" and blocks in read(2).
// remap-build: gcc -O2 -pthread -o {out} {src}
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int counter = 1;		/* .data: written below, so its page becomes anonymous (CoW) */
static char zeroes[64 * 1024];	/* .bss */

static void *idle(void *arg)
{
	(void)arg;
	for (;;)
		pause();
	return NULL;
}

int main(int argc, char **argv)
{
	size_t kb = argc > 1 ? strtoul(argv[1], NULL, 10) : 256;
	int threads = argc > 2 ? atoi(argv[2]) : 0;
	char *buf = malloc(kb * 1024);
	char c;

	if (!buf)
		return 1;
	memset(buf, 0x5a, kb * 1024);
	counter += buf[0];
	zeroes[0] = (char)counter;
	for (int i = 0; i < threads; i++) {
		pthread_t t;
		if (pthread_create(&t, NULL, idle, NULL) != 0)
			return 2;
	}
	printf("ready %d\n", counter);
	fflush(stdout);
	while (read(0, &c, 1) == 1)
		;
	return 0;
}
