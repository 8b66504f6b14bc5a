// A tiny 32-bit (i386) program with no libc, for checking that remap refuses foreign-arch
// targets: it loops in pause() (i386 syscall 29) through int $0x80.
// remap-build: gcc -m32 -nostdlib -static -fno-pie -no-pie -Os -o {out} {src}
void _start(void)
{
	for (;;)
		__asm__ volatile("int $0x80" : : "a"(29) : "memory");
}
