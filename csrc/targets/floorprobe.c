// floorprobe N K: a program whose page budget is known in advance (remap floor, issue 17).
// It maps N anonymous pages and writes each once (its "heap"), then loops: every 200 ms
// (poll with a timeout: a wake-up a short profile sees) it calls hot functions 0..K-1, each
// alone in a 4 kB-aligned page of its own, and adds one to the first word of every heap page.
// Function cold() has a page of its own too and is never called: its page is present only
// when the kernel's fault-around mapped it.  It prints "ready HEAP_LO HEAP_HI HOT0 ... COLD"
// (addresses in hex) and exits 0 at EOF on stdin, after checking every heap page holds the
// count of its loops (a corrupted page exits 3).
// remap-build: musl-gcc -static -O1 -o {out} {src}
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define HOT(n) \
	__attribute__((noinline, aligned(4096))) static long hot##n(long x) \
	{ __asm__ volatile("" : "+r"(x)); return x * 3 + n; }
HOT(0) HOT(1) HOT(2) HOT(3) HOT(4) HOT(5) HOT(6) HOT(7)
__attribute__((noinline, aligned(4096))) static long cold(long x) { return x ^ 0x55; }
// the code after cold starts a page further (cold's page holds nothing else)
__attribute__((used, noinline, aligned(4096))) void floorprobe_fence(void) {}

static long (*const hot[])(long) = {hot0, hot1, hot2, hot3, hot4, hot5, hot6, hot7};

int main(int argc, char **argv)
{
	long n = argc > 2 ? strtol(argv[1], 0, 10) : -1, k = argc > 2 ? strtol(argv[2], 0, 10) : -1;
	if (argc != 3 || n < 1 || n > 4096 || k < 0 || k > 8) {
		fputs("usage: floorprobe N K (N 1..4096 heap pages, K 0..8 hot code pages)\n", stderr);
		return 2;
	}
	volatile long *heap = mmap(0, n * 4096, PROT_READ | PROT_WRITE,
				   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (heap == MAP_FAILED)
		return 1;
	for (long i = 0; i < n; i++)
		heap[i * 512] = 0;
	printf("ready %lx %lx", (unsigned long)heap, (unsigned long)heap + n * 4096);
	for (int i = 0; i < 8; i++)
		printf(" %lx", (unsigned long)hot[i]);
	printf(" %lx\n", (unsigned long)&cold);
	fflush(stdout);
	long loops = 0, sum = 0;
	char c;
	for (;;) {
		struct pollfd p = {0, POLLIN, 0};
		int r = poll(&p, 1, 200);
		if (r > 0) {
			if (read(0, &c, 1) <= 0)
				break;
			continue;
		}
		for (long i = 0; i < k; i++)
			sum += hot[i](loops);
		for (long i = 0; i < n; i++)
			heap[i * 512] += 1;
		loops++;
	}
	for (long i = 0; i < n; i++)
		if (heap[i * 512] != loops)
			return 3;
	return sum == -1; // keeps the calls
}
