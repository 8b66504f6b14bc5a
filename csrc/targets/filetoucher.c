// filetoucher FILE: map FILE privately read-only, read every page once, then for each line "N"
// on stdin read page N and answer "N SUM" (the sum of that page's bytes), EOF exits 0.
// Why: the squeeze drops the clean file pages and fences fault-around (fold.steps
// fence_fault_around); touching one page afterwards must bring back that page alone, and the
// answer (the file's own bytes) must be right.  Page presence is read from outside (pagemap).
// remap-build: musl-gcc -static -Os -o {out} {src}
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	struct stat st;
	int fd = argc == 2 ? open(argv[1], O_RDONLY) : -1;
	if (fd < 0 || fstat(fd, &st) < 0 || st.st_size < 4096) {
		fputs("usage: filetoucher FILE (at least one page)\n", stderr);
		return 2;
	}
	long pages = st.st_size / 4096;
	volatile unsigned char *p = mmap(0, pages * 4096, PROT_READ, MAP_PRIVATE, fd, 0);
	if (p == MAP_FAILED)
		return 1;
	unsigned long sink = 0;
	for (long i = 0; i < pages; i++)
		sink += p[i * 4096];
	printf("ready %ld %p %lu\n", pages, (void *)p, sink & 1);
	fflush(stdout);
	char line[64];
	while (fgets(line, sizeof line, stdin)) {
		long n = strtol(line, 0, 10);
		unsigned long sum = 0;
		if (n >= 0 && n < pages)
			for (int j = 0; j < 4096; j++)
				sum += p[n * 4096 + j];
		printf("%ld %lu\n", n, sum);
		fflush(stdout);
	}
	return 0;
}
