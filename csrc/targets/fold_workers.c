// A glibc program with a 4 MiB buffer and four worker threads: the squeeze's hardest ordinary
// customer.  Each line on stdin ("sum") makes the four threads checksum a quarter of the buffer
// each; main prints the combined checksum.  Dropping anything but clean file pages or dead stack
// would change the answer (or crash it).
// remap-build: gcc -O2 -pthread -o {out} {src}
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBUF (4u << 20)
#define NT 4

static uint8_t *buf;
static uint64_t part[NT];
static pthread_barrier_t go, done;

static void *worker(void *arg)
{
	size_t id = (size_t)arg, n = NBUF / NT;
	for (;;) {
		pthread_barrier_wait(&go);
		uint64_t h = 1469598103934665603ull;
		for (size_t i = id * n; i < (id + 1) * n; i++)
			h = (h ^ buf[i]) * 1099511628211ull;
		part[id] = h;
		pthread_barrier_wait(&done);
	}
	return NULL;
}

int main(void)
{
	buf = malloc(NBUF);
	uint64_t x = 88172645463325252ull;
	for (size_t i = 0; i < NBUF; i++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		buf[i] = (uint8_t)x;
	}
	pthread_barrier_init(&go, NULL, NT + 1);
	pthread_barrier_init(&done, NULL, NT + 1);
	pthread_t t[NT];
	for (size_t i = 0; i < NT; i++)
		pthread_create(&t[i], NULL, worker, (void *)i);
	char line[64];
	setvbuf(stdout, NULL, _IOLBF, 0);
	while (fgets(line, sizeof line, stdin)) {
		if (strncmp(line, "sum", 3))
			continue;
		pthread_barrier_wait(&go);
		pthread_barrier_wait(&done);
		uint64_t h = 0;
		for (int i = 0; i < NT; i++)
			h = h * 31 + part[i];
		printf("%016llx\n", (unsigned long long)h);
	}
	return 0;
}
