// coroutine_heap MODE: live data sitting *below* a blocked thread's rsp, in the same mapping --
// the programs a "dead stack" drop must never harm (issue 12).  It fills ~400 KB of heap with a
// known pattern (100 malloc'd 4 kB chunks, brk heap), keeps the checksum, then blocks in read(0)
// in one of these places:
//   heap     on a ucontext coroutine whose stack was malloc'd in [heap] above the data
//   thread   the same coroutine, run by a pthread (its fs_base points into its own, proven
//            thread stack; its rsp does not)
//   pthread  a pthread on its own glibc thread stack, after a deep call left dead frames below
//            it (the positive control: those pages may be dropped)
//   mmap     the main thread on a coroutine stack in an mmap'd region with a PROT_NONE guard page
//            below (boost-style), a second, suspended coroutine's live frames below it
//   altstack the main thread inside a SIGUSR1 handler on a sigaltstack at the top of an mmap'd
//            region (guard page below) whose lower part holds checksummed data
//   pthread-altstack  the pthread mode, with the thread's sigaltstack set inside its own dead
//            stack (below rsp): a squeeze must refuse to drop it
//   spin     the main thread blocks on its [stack]; a pthread spins (at most 60 s) so that it
//            is always running: a dry run cannot know its registers
// It prints "ready MODE LO HI" (LO..HI: the mapping range the blocked rsp is expected in; the
// stack or region) and then, for each byte on stdin, re-checks all its data and prints
// "OK sum=..." or "CORRUPT sum=... want=..."; 'q' or EOF exits 0.
// remap-build: gcc -O2 -pthread -o {out} {src}
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#define CHUNKS 100
#define CHUNK 4096
#define CO_STACK (64 * 1024)
#define KEEP 32768

static uint64_t *chunk[CHUNKS];
static uint64_t want;                      // checksum of everything that must survive
static volatile unsigned char *kept;       // mmap mode: the suspended coroutine's live local
static volatile unsigned char *thread_own; // pthread mode: live data on the thread's stack
static volatile unsigned char *region_data; // altstack mode: data below the signal stack
static ucontext_t main_ctx, co_ctx, parked_ctx;
static const char *mode;

static uint64_t mix(uint64_t h, uint64_t v) { return (h ^ v) * 0x100000001b3ull; }

static uint64_t checksum(void) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < CHUNKS; i++)
        for (int j = 0; j < CHUNK / 8; j++) h = mix(h, chunk[i][j]);
    for (int i = 0; kept && i < KEEP; i++) h = mix(h, kept[i]);
    for (int i = 0; thread_own && i < 1024; i++) h = mix(h, thread_own[i]);
    for (int i = 0; region_data && i < 65536; i++) h = mix(h, region_data[i]);
    return h;
}

static void serve(void) {
    char c;
    while (read(0, &c, 1) == 1 && c != 'q') {
        uint64_t got = checksum();
        if (got == want)
            printf("OK sum=%016llx\n", (unsigned long long)got);
        else
            printf("CORRUPT sum=%016llx want=%016llx\n", (unsigned long long)got,
                   (unsigned long long)want);
        fflush(stdout);
    }
    exit(0);
}

static void ready(void *lo, void *hi) {
    printf("ready %s %#lx %#lx\n", mode, (unsigned long)lo, (unsigned long)hi);
    fflush(stdout);
}

static void *stack_lo, *stack_hi;

static void coroutine(void) {
    ready(stack_lo, stack_hi);
    serve();
}

static void parked(void) {  // mmap mode: fills a local, then stays suspended with it live
    unsigned char keep[KEEP];
    for (int i = 0; i < KEEP; i++) keep[i] = (unsigned char)(i * 7 + 1);
    kept = keep;
    swapcontext(&parked_ctx, &main_ctx);
    abort();  // never resumed
}

static void run_on(void *lo, size_t size, ucontext_t *ctx, void (*fn)(void)) {
    getcontext(ctx);
    ctx->uc_stack.ss_sp = lo;
    ctx->uc_stack.ss_size = size;
    ctx->uc_link = NULL;
    makecontext(ctx, fn, 0);
    swapcontext(&main_ctx, ctx);
}

static void *thread_coroutine(void *arg) {
    (void)arg;
    run_on(stack_lo, CO_STACK, &co_ctx, coroutine);
    return NULL;
}

static __attribute__((noinline)) void deep(void) {  // leaves ~64 kB of dead frames below
    volatile unsigned char junk[64 * 1024];
    for (size_t i = 0; i < sizeof junk; i += 64) junk[i] = (unsigned char)i;
}

static void *thread_plain(void *arg) {
    volatile unsigned char own[1024];
    for (int i = 0; i < 1024; i++) own[i] = (unsigned char)(i ^ 0x5a);
    deep();
    if (arg) {  // pthread-altstack: 16 kB of the dead frames, 32 kB below here
        stack_t ss = {.ss_sp = (char *)own - 48 * 1024, .ss_size = 16 * 1024};
        sigaltstack(&ss, NULL);
    }
    thread_own = own;
    want = checksum();
    pthread_attr_t a;
    pthread_getattr_np(pthread_self(), &a);
    size_t size;
    pthread_attr_getstack(&a, &stack_lo, &size);
    stack_hi = (char *)stack_lo + size;
    ready(stack_lo, stack_hi);
    serve();
    return NULL;
}

static void on_usr1(int sig) {  // altstack mode: block in read() on the signal stack
    (void)sig;
    ready(stack_lo, stack_hi);
    serve();
}

static void *spinner(void *arg) {  // spin mode: always running, for at most 60 s
    (void)arg;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do clock_gettime(CLOCK_MONOTONIC, &t);
    while (t.tv_sec - t0.tv_sec < 60);
    return NULL;
}

static void altstack(void) {
    size_t size = 256 * 1024, guard = 4096;
    char *region = mmap(NULL, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (region == MAP_FAILED || mprotect(region + guard, size - guard, PROT_READ | PROT_WRITE))
        exit(1);
    unsigned char *d = (unsigned char *)region + guard;
    for (int i = 0; i < 65536; i++) d[i] = (unsigned char)(i * 13 + 3);
    region_data = d;
    want = checksum();
    stack_lo = region;
    stack_hi = region + size;
    stack_t ss = {.ss_sp = region + size - 64 * 1024, .ss_size = 64 * 1024};
    struct sigaction sa = {.sa_handler = on_usr1, .sa_flags = SA_ONSTACK};
    sigaltstack(&ss, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    raise(SIGUSR1);
}

int main(int argc, char **argv) {
    mode = argc > 1 ? argv[1] : "heap";
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < CHUNKS; i++) {
        chunk[i] = malloc(CHUNK);
        for (int j = 0; j < CHUNK / 8; j++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            chunk[i][j] = x;
        }
    }
    want = checksum();
    pthread_t t;
    if (!strcmp(mode, "heap") || !strcmp(mode, "thread")) {
        stack_lo = malloc(CO_STACK);  // above the data: brk grows up
        stack_hi = (char *)stack_lo + CO_STACK;
        if (!strcmp(mode, "heap")) run_on(stack_lo, CO_STACK, &co_ctx, coroutine);
        pthread_create(&t, NULL, thread_coroutine, NULL);
        pthread_join(t, NULL);
    } else if (!strcmp(mode, "pthread") || !strcmp(mode, "pthread-altstack")) {
        pthread_create(&t, NULL, thread_plain, strcmp(mode, "pthread") ? &t : NULL);
        pthread_join(t, NULL);
    } else if (!strcmp(mode, "altstack")) {
        altstack();
    } else if (!strcmp(mode, "spin")) {
        pthread_create(&t, NULL, spinner, NULL);
        char here;
        ready(&here, &here + 1);
        serve();
    } else if (!strcmp(mode, "mmap")) {
        size_t size = 256 * 1024, guard = 4096;
        char *region = mmap(NULL, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (region == MAP_FAILED || mprotect(region + guard, size - guard, PROT_READ | PROT_WRITE))
            return 1;
        run_on(region + guard, 96 * 1024, &parked_ctx, parked);  // the lower stack: parked
        want = checksum();
        stack_lo = region;
        stack_hi = region + size;
        run_on(region + 128 * 1024, 128 * 1024, &co_ctx, coroutine);  // the upper one: blocks
    }
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}
