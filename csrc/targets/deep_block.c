// deep_block: blocks in a libc syscall wrapper several calls deep, for remap's unwinder tests.
//
//   deep_block MODE     MODE: read (read(0) in musl's read, no CFI), select (select(2) on
//                       stdin, as EnergyMech idles), own (an inline `syscall` in a function of
//                       this file, which has CFI), aligned (read from a frame that realigns
//                       its stack to 64 bytes: an `and` on rsp, CFA from rbp), signal (read
//                       inside a SIGUSR1 handler: a signal frame between it and main),
//                       switch (read from one case of a switch compiled to a jump table)
//
// main -> outer -> middle -> inner -> (read | select | own syscall), each frame with locals
// kept live across the call (noinline, so every frame exists; the checksum uses them after
// the call returns, so the compiler cannot drop them).  Built with -fomit-frame-pointer (rbp is
// an ordinary register here) and unwind tables; the [fp] variant keeps frame pointers, the
// [nocfi] variant drops .eh_frame too.  Prints "ready" before it blocks; when the call returns
// (stdin closed) it prints the checksum of its frames' locals: "sum N" (N = 2 * 90 + 12 = 192
// plus the bytes read), then exits 0.
// remap-build: musl-gcc -static -no-pie -O2 -fomit-frame-pointer -fasynchronous-unwind-tables -o {out} {src}
// remap-build[fp]: musl-gcc -static -no-pie -O2 -fno-omit-frame-pointer -fasynchronous-unwind-tables -o {out} {src}
// remap-build[nocfi]: musl-gcc -static -no-pie -O2 -fomit-frame-pointer -fno-asynchronous-unwind-tables -fno-unwind-tables -o {out} {src}
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/select.h>
#include <sys/syscall.h>
#include <unistd.h>

static const char *mode;

__attribute__((noinline)) static long own_read(int fd, char *buf, long n)
{
	long ret;
	__asm__ volatile("syscall" : "=a"(ret) : "a"(SYS_read), "D"(fd), "S"(buf), "d"(n)
			 : "rcx", "r11", "memory");
	return ret;
}

__attribute__((noinline)) static long aligned(volatile char *loc)
{
	char buf[64] __attribute__((aligned(64)));
	memset(buf, 0, sizeof buf);
	__asm__ volatile("" : : "r"(buf) : "memory");
	return read(0, buf, sizeof buf) + loc[0] + 11;
}

__attribute__((noinline)) static long dispatch(int k, volatile char *loc)
{
	char buf[32];
	switch (k) {
	case 0: return loc[0] * 3;
	case 1: return loc[1] + 7;
	case 2: return read(0, buf, sizeof buf) + loc[0] + 11;
	case 3: return loc[2] - 1;
	case 4: return loc[3] ^ 5;
	case 5: return loc[4] * 9;
	case 6: return loc[5] + 2;
	case 7: return loc[6] - 3;
	}
	return 0;
}

static volatile long in_handler;

static void on_usr1(int sig)
{
	char buf[16];
	puts("ready");
	fflush(stdout);
	in_handler = read(0, buf, sizeof buf) + sig - SIGUSR1;
}

__attribute__((noinline)) static long inner(volatile char *loc)
{
	char buf[64];
	loc[0] = 1;
	if (!strcmp(mode, "select")) {
		fd_set r;
		FD_ZERO(&r);
		FD_SET(0, &r);
		if (select(1, &r, 0, 0, 0) < 0)
			return -1;
		return read(0, buf, sizeof buf) + loc[0] + 11;
	}
	if (!strcmp(mode, "aligned"))
		return aligned(loc);
	if (!strcmp(mode, "switch"))
		return dispatch(strlen(mode) - 4, loc);
	if (!strcmp(mode, "signal")) {
		signal(SIGUSR1, on_usr1);
		raise(SIGUSR1);
		return in_handler + loc[0] + 11;
	}
	if (!strcmp(mode, "own"))
		return own_read(0, buf, sizeof buf) + loc[0] + 11;
	return read(0, buf, sizeof buf) + loc[0] + 11;
}

__attribute__((noinline)) static long middle(int k)
{
	volatile char loc[40];
	memset((char *)loc, k, sizeof loc);
	long r = inner(loc);
	return r + loc[1] + loc[39];
}

__attribute__((noinline)) static long outer(int k)
{
	volatile long a[6] = {k, k, k, k, k, k};
	long r = middle(k);
	return r + a[0] + a[5] - 2 * k;
}

int main(int argc, char **argv)
{
	mode = argc > 1 ? argv[1] : "read";
	if (strcmp(mode, "signal")) {
		puts("ready");
		fflush(stdout);
	}
	long s = outer(90);
	printf("sum %ld\n", s);
	return 0;
}
