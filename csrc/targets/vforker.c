// vfork + exec on demand, as busybox init respawns: for each line on stdin it vforks; the
// child, still in the parent's memory, calls run_child (a frame below the parent's, a buffer
// on the stack) and execs /bin/true; the parent reaps it and prints "reaped STATUS".  The
// target of tests/test_profile.py's vfork test (the profile steps the child up to its exec).
// remap-build: musl-gcc -static -O1 -g -o {out} {src}
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

__attribute__((noinline)) static void run_child(const char *path)
{
	char buf[512];  // below the parent's frames: the child's stack use is the parent's
	strcpy(buf, path);
	char *argv[] = {buf, NULL};
	execv(buf, argv);
	_exit(127);
}

int main(void)
{
	char line[64];
	setvbuf(stdout, NULL, _IONBF, 0);
	printf("ready %d\n", getpid());
	while (fgets(line, sizeof line, stdin)) {
		pid_t pid = vfork();
		if (pid == 0)
			run_child("/bin/true");
		int st = -1;
		if (pid > 0)
			waitpid(pid, &st, 0);
		printf("reaped %d\n", st);
	}
	return 0;
}
