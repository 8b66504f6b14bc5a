// A plain dynamic glibc process that idles in pause(): the bench target (bench/inject.py),
// dynamic so that gdb finds getpid() in libc for its `call` comparison.
// remap-build: gcc -O2 -g -o {out} {src}
#include <stdio.h>
#include <unistd.h>

int main(void)
{
	printf("ready %d\n", getpid());
	fflush(stdout);
	for (;;)
		pause();
}
