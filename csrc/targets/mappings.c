// mappings DIR [HUGE]: one of each kind of mapping a real program may hold, filled with known
// patterns, then re-checked by the program itself on demand.
// Why: squeeze and map must be honest (and harmless) on hugetlb, THP, memfd, MAP_SHARED
// anonymous, shared and private file and deleted-file mappings; only the program's own check of
// every byte proves nothing was lost.  HUGE = number of 2 MiB hugetlb pages to map (0: none).
// Prints one "NAME 0xSTART LEN" line per mapping and "ready"; then per stdin line:
// "check" -> "ok NAME SUM" per mapping (or "BAD NAME at OFFSET") and "done", "quit" -> exit 0.
// remap-build: gcc -O2 -D_GNU_SOURCE -o {out} {src}
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <unistd.h>

#define MIB (1UL << 20)

struct region {
	const char *name;
	unsigned char *p;
	size_t len;
	unsigned seed;
};

static struct region regions[16];
static int nregions;

static unsigned char pattern(unsigned seed, size_t i)
{
	return (unsigned char)((i * 2654435761u + seed) >> 7);
}

static void add(const char *name, void *p, size_t len, unsigned seed, int fill)
{
	if (p == MAP_FAILED || p == NULL) {
		fprintf(stderr, "mappings: %s: mapping failed\n", name);
		exit(1);
	}
	struct region *r = &regions[nregions++];
	*r = (struct region){name, p, len, seed};
	if (fill)
		for (size_t i = 0; i < len; i++)
			r->p[i] = pattern(seed, i);
	printf("%s %#lx %zu\n", name, (unsigned long)p, len);
}

// A file of LEN pattern bytes at PATH (written with write(2), so it is clean page cache).
static int make_file(const char *path, size_t len, unsigned seed)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		return -1;
	unsigned char buf[4096];
	for (size_t off = 0; off < len; off += sizeof buf) {
		for (size_t i = 0; i < sizeof buf; i++)
			buf[i] = pattern(seed, off + i);
		if (write(fd, buf, sizeof buf) != (ssize_t)sizeof buf)
			return -1;
	}
	return fd;
}

static unsigned long check(const struct region *r, long *bad)
{
	unsigned long sum = 0;
	*bad = -1;
	for (size_t i = 0; i < r->len; i++) {
		if (r->p[i] != pattern(r->seed, i) && *bad < 0)
			*bad = (long)i;
		sum = sum * 31 + r->p[i];
	}
	return sum;
}

int main(int argc, char **argv)
{
	if (argc < 2 || argc > 3) {
		fputs("usage: mappings DIR [HUGE]\n", stderr);
		return 2;
	}
	const char *dir = argv[1];
	long huge = argc > 2 ? strtol(argv[2], 0, 10) : 0;
	char path[4096];
	setvbuf(stdout, NULL, _IOLBF, 0);

	if (huge > 0) {
		size_t len = (size_t)huge * 2 * MIB;
		add("hugetlb", mmap(0, len, PROT_READ | PROT_WRITE,
				    MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0), len, 1, 1);
	}
	// THP: a 4 MiB region aligned to 2 MiB, madvise(MADV_HUGEPAGE) before it is written
	unsigned char *raw = mmap(0, 6 * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
				  -1, 0);
	unsigned char *thp = (unsigned char *)(((unsigned long)raw + 2 * MIB - 1) & ~(2 * MIB - 1));
	madvise(thp, 4 * MIB, MADV_HUGEPAGE);
	add("thp", thp, 4 * MIB, 2, 1);

	int mfd = memfd_create("remap-test", 0);
	if (mfd < 0 || ftruncate(mfd, MIB) != 0)
		return 1;
	add("memfd", mmap(0, MIB, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0), MIB, 3, 1);

	add("shared-anon", mmap(0, MIB, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0),
	    MIB, 4, 1);

	int shmid = shmget(IPC_PRIVATE, MIB, IPC_CREAT | 0600);
	void *shm = shmid < 0 ? MAP_FAILED : shmat(shmid, NULL, 0);
	if (shmid >= 0)
		shmctl(shmid, IPC_RMID, NULL); // gone once we detach or exit
	add("sysv", shm == (void *)-1 ? MAP_FAILED : shm, MIB, 5, 1);

	snprintf(path, sizeof path, "%s/shared.bin", dir);
	int sfd = make_file(path, MIB, 6);
	add("shared-file", mmap(0, MIB, PROT_READ | PROT_WRITE, MAP_SHARED, sfd, 0), MIB, 6, 0);
	// written through the mapping: dirty page cache the squeeze must not lose
	for (size_t i = 0; i < MIB; i += 4096)
		regions[nregions - 1].p[i] = pattern(6, i);

	snprintf(path, sizeof path, "%s/priv.bin", dir);
	int pfd = make_file(path, MIB, 7);
	unsigned char *priv = mmap(0, MIB, PROT_READ, MAP_PRIVATE, pfd, 0);
	add("priv-file", priv, MIB, 7, 0);
	for (size_t i = 0; i < MIB; i += 4096)
		(void)*(volatile unsigned char *)(priv + i); // clean, present: squeeze may drop it

	snprintf(path, sizeof path, "%s/deleted.bin", dir);
	int dfd = make_file(path, MIB, 8);
	unsigned char *del = mmap(0, MIB, PROT_READ, MAP_PRIVATE, dfd, 0);
	unlink(path);
	add("deleted-file", del, MIB, 8, 0);
	for (size_t i = 0; i < MIB; i += 4096)
		(void)*(volatile unsigned char *)(del + i);

	puts("ready");
	char line[64];
	while (fgets(line, sizeof line, stdin)) {
		if (strncmp(line, "quit", 4) == 0)
			return 0;
		if (strncmp(line, "check", 5) != 0)
			continue;
		for (int k = 0; k < nregions; k++) {
			long bad;
			unsigned long sum = check(&regions[k], &bad);
			if (bad >= 0)
				printf("BAD %s at %ld\n", regions[k].name, bad);
			else
				printf("ok %s %lx\n", regions[k].name, sum);
		}
		puts("done");
	}
	return 0;
}
