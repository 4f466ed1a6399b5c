/* Memory read bandwidth, for the benchmarks' roofline: T threads each stream one contiguous part
 * of a buffer much larger than the last-level cache and fold it into a checksum (so the loads
 * cannot be dropped). Built on the fly by benchmarks/readbw.py with the native compiler flags and
 * loaded through ctypes; it is not part of the lmpack extension.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

typedef struct {
    const uint64_t *p;
    size_t n; /* uint64 words */
    uint64_t sum;
    atomic_int *go;
} part;

static void *reader(void *arg) {
    part *a = arg;
    while (!atomic_load_explicit(a->go, memory_order_acquire)) {
    }
    /* eight independent chains: the compiler vectorizes this into wide loads */
    uint64_t s[8] = {0};
    size_t i = 0;
    for (; i + 8 <= a->n; i += 8)
        for (int j = 0; j < 8; j++) s[j] ^= a->p[i + j];
    for (; i < a->n; i++) s[0] ^= a->p[i];
    a->sum = s[0] ^ s[1] ^ s[2] ^ s[3] ^ s[4] ^ s[5] ^ s[6] ^ s[7];
    return NULL;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* An anonymous buffer of `bytes`, filled (so every page is backed); huge != 0 asks for
 * transparent huge pages. NULL on failure. */
void *lmpb_alloc(size_t bytes, int huge) {
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
#ifdef MADV_HUGEPAGE
    madvise(p, bytes, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
#endif
    memset(p, 0x5a, bytes);
    return p;
}

void lmpb_free(void *p, size_t bytes) { munmap(p, bytes); }

/* Seconds for `threads` threads to read `bytes` of buf once (-1 if a thread cannot start).
 * The threads wait on a flag, so the clock starts when all of them exist. */
double lmpb_read(const void *buf, size_t bytes, int threads) {
    if (threads < 1 || threads > 256) return -1.0;
    pthread_t th[256];
    part parts[256];
    atomic_int go;
    atomic_init(&go, 0);
    size_t words = bytes / 8, per = words / (size_t)threads;
    int started = 0;
    for (int t = 0; t < threads; t++) {
        parts[t].p = (const uint64_t *)buf + per * (size_t)t;
        parts[t].n = t == threads - 1 ? words - per * (size_t)t : per;
        parts[t].go = &go;
        if (pthread_create(&th[t], NULL, reader, &parts[t]) != 0) break;
        started++;
    }
    double t0 = now();
    atomic_store_explicit(&go, 1, memory_order_release);
    for (int t = 0; t < started; t++) pthread_join(th[t], NULL);
    double dt = now() - t0;
    volatile uint64_t sink = 0;
    for (int t = 0; t < started; t++) sink ^= parts[t].sum;
    (void)sink;
    return started == threads ? dt : -1.0;
}
