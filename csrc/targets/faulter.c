// faulter N: fault in exactly N anonymous pages, then idle until stdin reaches EOF (exit 0).
// Why: vmrss-lag compares the status/statm RSS counters with the page walk after a known number
// of faults; kernels 2.6.34-6.1 fold a thread's cached RSS deltas into the mm counters only
// every 64 faults, so N = 0, 5, 20, 60, 100, 200 straddles that threshold.
// remap-build: musl-gcc -static -Os -o {out} {src}
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	long n = argc > 1 ? strtol(argv[1], 0, 10) : 0;
	if (argc != 2 || n < 0 || n > 65536) {
		write(2, "usage: faulter N (0..65536)\n", 28);
		return 2;
	}
	if (n) {
		volatile char *p = mmap(0, (size_t)n * 4096, PROT_READ | PROT_WRITE,
					MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			return 1;
		for (long i = 0; i < n; i++)
			p[i * 4096] = 1; // one write fault per page
	}
	char c;
	while (read(0, &c, 1) > 0)
		;
	return 0;
}
