// minibot: a tiny IRC bot, the demo target of remap's experiments (issue 4).
//
//   minibot HOST PORT NICK CHANNEL
//
// Connects over TCP, registers (NICK/USER), waits for 001, JOINs CHANNEL, then serves forever:
// "PING :x" -> "PONG :x"; "!ping" in the channel -> "pong"; "!mem" -> its own memory from
// /proc/self/status in the seed author's format.  EOF from the server: exit 0.
//
// The hot-page contract (remap.fold relies on every point):
//  * hot_main() -- the steady-state loop -- and everything it calls live in .hot.text, its
//    constant strings in .hot.rodata and its state in .hot.data/.hot.bss.  It makes syscalls
//    only through hot_syscall() below (one `syscall` instruction inside the hot page, which
//    the fold can also use as its injection gadget): no musl, no stdio, no errno, no vdso.
//  * /proc/self/status is read in HOT_CHUNK-byte pieces, parsed a byte at a time.
//  * Built with frame pointers, so a walk of the rbp chain finds the cold frames (main,
//    __libc_start_main) the loop never returns to.  The [hotpage-nofp] build has none, but
//    keeps its unwind tables (.eh_frame, outside the hot block): remap.unwind walks those.  gcc still gives frameless leaf functions
//    (hot_syscall, out_str, after_word, skip_spaces) no frame: stopped in read(), rip is in
//    hot_syscall, [rsp] is its return address and rbp is its caller's frame.
//  * Cold code (startup, connect, registration, musl) stays outside the hot block.
// The hotpage link (minibot-hotpage.ld) packs .hot.* plus all writable data and a stack
// reserve into one page-aligned 4 kB RWX block; the default link is an ordinary static binary.
//
// remap-build: musl-gcc -static -no-pie -Os -fno-omit-frame-pointer -fno-stack-protector -fno-asynchronous-unwind-tables -fno-tree-loop-distribute-patterns -fno-jump-tables -malign-data=abi -o {out} {src}
// remap-build[hotpage]: musl-gcc -static -no-pie -Os -fno-omit-frame-pointer -fno-stack-protector -fno-asynchronous-unwind-tables -fno-tree-loop-distribute-patterns -fno-jump-tables -malign-data=abi -Wl,-T,{dir}/minibot-hotpage.ld -Wl,--no-warn-rwx-segments -Wl,--orphan-handling=error -o {out} {src}
// remap-build[hotpage-nofp]: musl-gcc -static -no-pie -Os -fomit-frame-pointer -fno-stack-protector -fasynchronous-unwind-tables -fno-tree-loop-distribute-patterns -fno-jump-tables -malign-data=abi -Wl,-T,{dir}/minibot-hotpage.ld -Wl,--no-warn-rwx-segments -Wl,--orphan-handling=error -o {out} {src}
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#define HOT __attribute__((section(".hot.text"), noinline))
#define HOT_INLINE static inline __attribute__((section(".hot.text"), always_inline))
#define HOT_RO __attribute__((section(".hot.rodata")))
#define HOT_DATA __attribute__((section(".hot.data")))
#define HOT_BSS __attribute__((section(".hot.bss")))

// arch/x86/entry/syscalls/syscall_64.tbl
#define NR_READ 0
#define NR_WRITE 1
#define NR_OPEN 2
#define NR_CLOSE 3
#define NR_EXIT_GROUP 231

#define LINE_MAX_ 512 // IRC's own line limit (RFC 1459), so one buffer holds any line
#define OUT_MAX 176	 // "PRIVMSG " + channel + " :" + the !mem reply, with room to spare
#define CHAN_MAX 48
#define HOT_CHUNK 16 // /proc/self/status is read in pieces this big (no 2 kB buffer)
#define KEY_LEN 6    // status keys are told apart by their first 6 bytes ("VmRSS:", "VmSize")

// ---- hot state: the whole working set of the idle loop -------------------------------------
static char linebuf[LINE_MAX_] HOT_BSS;
static unsigned linelen HOT_BSS;
static int discarding HOT_BSS; // inside an over-long line: drop bytes until its newline
static char outbuf[OUT_MAX] HOT_BSS;
static unsigned outlen HOT_BSS;
static char chan[CHAN_MAX] HOT_BSS;
static char chunk[HOT_CHUNK] HOT_BSS;
static unsigned long memval[7] HOT_BSS;
static char key[KEY_LEN] HOT_BSS;
unsigned long hot_lines HOT_DATA = 0; // lines handled: visible progress for a debugger

// ---- hot constants --------------------------------------------------------------------------
static const char s_status[] HOT_RO = "/proc/self/status";
static const char s_ping[] HOT_RO = "PING";
static const char s_privmsg[] HOT_RO = "PRIVMSG";
static const char s_space[] HOT_RO = " ";
static const char s_cmd_ping[] HOT_RO = "!ping";
static const char s_cmd_mem[] HOT_RO = "!mem";
static const char s_colon[] HOT_RO = " :";
static const char s_reply_pong[] HOT_RO = "pong";
// VmSize, VmPeak, VmRSS, VmExe, VmData, VmLib, VmStk by their first KEY_LEN bytes; fixed-width
// rows, so the table holds no pointers.
static const char s_keys[7][KEY_LEN] HOT_RO = {
    {'V', 'm', 'S', 'i', 'z', 'e'}, {'V', 'm', 'P', 'e', 'a', 'k'}, {'V', 'm', 'R', 'S', 'S', ':'},
    {'V', 'm', 'E', 'x', 'e', ':'}, {'V', 'm', 'D', 'a', 't', 'a'}, {'V', 'm', 'L', 'i', 'b', ':'},
    {'V', 'm', 'S', 't', 'k', ':'}};
// The reply is these pieces with memval[i] between piece i and piece i+1.
static const char s_fmt[8][12] HOT_RO = {"VM ",	   " kB (Max ", " kB), RSS ", " kB [ Code ",
					 " kB, Data ", " kB, Libs ", " kB, Stack ", " kB ]"};

// ---- the only way the hot page enters the kernel ---------------------------------------------
// One real function holding one `syscall` instruction: a gadget the fold can find by symbol.
__attribute__((section(".hot.text"), noinline, used)) long hot_syscall(long n, long a, long b,
									long c)
{
	long r;
	__asm__ volatile("syscall"
			 : "=a"(r)
			 : "a"(n), "D"(a), "S"(b), "d"(c)
			 : "rcx", "r11", "memory");
	return r;
}

__attribute__((section(".hot.text"), noinline, noreturn)) static void hot_exit(int code)
{
	for (;;)
		hot_syscall(NR_EXIT_GROUP, code, 0, 0);
}

HOT static void hot_write_all(int fd, const char *p, unsigned long n)
{
	while (n) {
		long w = hot_syscall(NR_WRITE, fd, (long)p, (long)n);
		if (w <= 0)
			hot_exit(1);
		p += w;
		n -= (unsigned long)w;
	}
}

// ---- tiny string helpers (hot, no libc) -------------------------------------------------------
// Append the NUL-terminated s to outbuf (bounded: a too-long reply is cut, never overflows).
HOT static void out_str(const char *s)
{
	while (*s && outlen < OUT_MAX - 2)
		outbuf[outlen++] = *s++;
}

HOT static void out_num(unsigned long v)
{
	char tmp[21];
	char *p = tmp + 20;
	*p = 0;
	do
		*--p = (char)('0' + v % 10);
	while (v /= 10);
	out_str(p);
}

// If p starts with the word s (followed by a space or the end), return what follows it.
HOT static char *after_word(char *p, const char *s)
{
	while (*s)
		if (*p++ != *s++)
			return 0;
	return (*p == ' ' || *p == 0) ? p : 0;
}

HOT static char *skip_spaces(char *p)
{
	while (*p == ' ')
		p++;
	return p;
}

// ---- !mem: /proc/self/status in small pieces --------------------------------------------------
HOT static void read_status(void)
{
	unsigned col = 0; // column in the current line
	int field = -1;	  // which memval the current line fills, -1 none
	for (int i = 0; i < 7; i++)
		memval[i] = 0;
	long fd = hot_syscall(NR_OPEN, (long)s_status, 0, 0);
	if (fd < 0)
		return;
	long got;
	while ((got = hot_syscall(NR_READ, fd, (long)chunk, HOT_CHUNK)) > 0) {
		for (long i = 0; i < got; i++) {
			char c = chunk[i];
			if (c == '\n') {
				col = 0;
				field = -1;
				continue;
			}
			if (col < KEY_LEN)
				key[col] = c;
			if (++col == KEY_LEN)
				for (int f = 0; f < 7; f++) {
					int k = 0;
					while (k < KEY_LEN && key[k] == s_keys[f][k])
						k++;
					if (k == KEY_LEN)
						field = f;
				}
			if (field >= 0 && c >= '0' && c <= '9')
				memval[field] = memval[field] * 10 + (unsigned long)(c - '0');
			else if (field >= 0 && memval[field] && col > KEY_LEN)
				field = -1; // first non-digit after the number (" kB")
		}
	}
	hot_syscall(NR_CLOSE, fd, 0, 0);
}

// ---- one IRC line (NUL-terminated, CR LF stripped) -----------------------------------------------
HOT static void handle_line(int fd, char *p)
{
	if (*p == ':') // skip the ":prefix "
		while (*p && *p != ' ')
			p++;
	p = skip_spaces(p);
	char *q;
	if (after_word(p, s_ping)) {
		p[1] = 'O'; // PING -> PONG, in place (a token past OUT_MAX is cut)
		out_str(p);
	} else {
		if (!(q = after_word(p, s_privmsg)))
			return;
		if (!(q = after_word(skip_spaces(q), chan)))
			return;
		q = skip_spaces(q);
		if (*q == ':')
			q++;
		int mem = after_word(q, s_cmd_mem) != 0;
		if (!mem && !after_word(q, s_cmd_ping))
			return;
		out_str(s_privmsg);
		out_str(s_space);
		out_str(chan);
		out_str(s_colon);
		if (mem) {
			read_status();
			for (int i = 0; i < 7; i++) {
				out_str(s_fmt[i]);
				out_num(memval[i]);
			}
			out_str(s_fmt[7]);
		} else {
			out_str(s_reply_pong);
		}
	}
	outbuf[outlen++] = '\r'; // out_str leaves these two bytes free
	outbuf[outlen++] = '\n';
	hot_write_all(fd, outbuf, outlen);
	outlen = 0;
}

// ---- the steady-state loop ---------------------------------------------------------------------
// noreturn: its caller's frame (cold main) is never returned to, which is what lets the fold
// unmap the cold code once the stack has moved into the hot page.
__attribute__((section(".hot.text"), noinline, noreturn, used)) void hot_main(int fd)
{
	for (;;) {
		long got = hot_syscall(NR_READ, fd, (long)(linebuf + linelen), LINE_MAX_ - linelen);
		if (got <= 0)
			hot_exit(got < 0);
		unsigned end = linelen + (unsigned)got;
		unsigned start = 0;
		for (unsigned i = linelen; i < end; i++) {
			if (linebuf[i] != '\n')
				continue;
			linebuf[i] = 0;
			if (i > start && linebuf[i - 1] == '\r')
				linebuf[i - 1] = 0;
			if (!discarding)
				handle_line(fd, linebuf + start);
			discarding = 0;
			hot_lines++;
			start = i + 1;
		}
		// keep the unfinished tail at the front of the buffer
		unsigned rest = end - start;
		for (unsigned i = 0; i < rest; i++)
			linebuf[i] = linebuf[start + i];
		linelen = rest;
		if (linelen == LINE_MAX_) { // a line longer than IRC allows: drop it
			linelen = 0;
			discarding = 1;
		}
	}
}

// ---- cold code: arguments, connect, registration ----------------------------------------------
static void die(const char *msg)
{
	unsigned n = 0;
	while (msg[n])
		n++;
	write(2, "minibot: ", 9);
	write(2, msg, n);
	write(2, "\n", 1);
	_exit(2);
}

static void send_str(int fd, const char *s)
{
	unsigned n = 0;
	while (s[n])
		n++;
	hot_write_all(fd, s, n);
}

// Read one line (without CR LF) into linebuf, a byte at a time so nothing after it is consumed
// before hot_main takes over the socket.
static unsigned read_line(int fd)
{
	unsigned n = 0;
	for (;;) {
		char c;
		long got = read(fd, &c, 1);
		if (got <= 0)
			die("server closed the connection during registration");
		if (c == '\n')
			break;
		if (n < LINE_MAX_ - 1)
			linebuf[n++] = c;
	}
	if (n && linebuf[n - 1] == '\r')
		n--;
	linebuf[n] = 0;
	return n;
}

static void copy_arg(char *dst, unsigned cap, const char *src, const char *what)
{
	unsigned n = 0;
	while (src[n]) {
		if (n + 1 >= cap || src[n] == ' ' || src[n] == '\r' || src[n] == '\n')
			die(what);
		dst[n] = src[n];
		n++;
	}
	if (n == 0)
		die(what);
	dst[n] = 0;
}

int main(int argc, char **argv)
{
	if (argc != 5)
		die("usage: minibot HOST PORT NICK CHANNEL");
	struct sockaddr_in sa = {.sin_family = AF_INET};
	if (inet_pton(AF_INET, argv[1], &sa.sin_addr) != 1)
		die("HOST must be a numeric IPv4 address");
	unsigned long port = 0;
	for (const char *p = argv[2]; *p; p++) {
		if (*p < '0' || *p > '9' || port > 65535)
			die("bad PORT");
		port = port * 10 + (unsigned long)(*p - '0');
	}
	if (port == 0 || port > 65535)
		die("bad PORT");
	sa.sin_port = htons((unsigned short)port);
	char nick[32];
	copy_arg(nick, sizeof nick, argv[3], "bad NICK");
	copy_arg(chan, sizeof chan, argv[4], "bad CHANNEL");
	// A vanished server is an error exit, not a SIGPIPE death.  A raw rt_sigaction, not
	// signal(): musl's sigaction state would cost bytes of the hot page's writable data.
	struct {
		void (*handler)(int);
		unsigned long flags;
		void (*restorer)(void);
		unsigned long mask;
	} ign = {SIG_IGN, 0, 0, 0};
	syscall(SYS_rt_sigaction, SIGPIPE, &ign, 0, sizeof ign.mask);

	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
		die("cannot connect");
	// One write per reply: without NODELAY, Nagle holds each small reply back until the
	// server's delayed ACK (40 ms), which turns pipelined PINGs into a crawl.
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	send_str(fd, "NICK ");
	send_str(fd, nick);
	send_str(fd, "\r\nUSER ");
	send_str(fd, nick);
	send_str(fd, " 0 * :remap minibot\r\n");
	for (;;) { // wait for 001 (RPL_WELCOME), answering PINGs meanwhile
		unsigned n = read_line(fd);
		char *p = linebuf;
		if (n && p[0] == ':') {
			while (*p && *p != ' ')
				p++;
			while (*p == ' ')
				p++;
		}
		if (p[0] == '0' && p[1] == '0' && p[2] == '1' && (p[3] == ' ' || !p[3]))
			break;
		if (p[0] == 'P' && p[1] == 'I' && p[2] == 'N' && p[3] == 'G') {
			p[1] = 'O';
			send_str(fd, p);
			send_str(fd, "\r\n");
		}
	}
	send_str(fd, "JOIN ");
	send_str(fd, chan);
	send_str(fd, "\r\n");
	hot_main(fd);
}
