// A static musl echo loop: the smallest "working process" remap measures (README, "What it
// answers": its idle RSS follows exec's random stack gap, experiments/aslr-gap.toml).
// It copies stdin to stdout a byte at a time, blocking in read(2) when idle.
// remap-build: musl-gcc -static -Os -o {out} {src}
#include <unistd.h>

int main(void)
{
	char c;
	while (read(0, &c, 1) == 1)
		if (write(1, &c, 1) != 1)
			return 1;
	return 0;
}
