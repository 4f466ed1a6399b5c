/* The GEMV prefetch profiles (kernels.h lmp_gemv_prefetch, tiling.h gemv_ahead) and the one this
 * CPU's vendor gets.
 *
 * Apart from dispatch.c, which holds the Python surface, so that a kernel table links without
 * Python: tests/c's harness builds a table from its file, the scalar one and this one. The active
 * profile is resolved from cpuid on first use, like the active table, and changed only by the
 * _gemv_prefetch benchmark hook (dispatch.c).
 */
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "cpu_x86.h"
#include "kernels.h"

static const lmp_gemv_prefetch profiles[] = {
    /* measured on an Intel Xeon: a fixed distance, rows shorter than a page only */
    {.name = "intel", .short_row = 4096, .ahead_f = 16384, .ahead_q8 = 8192, .whole_tile = 0},
    /* measured on an AMD EPYC Zen 5: every row, a whole tile (at least 16 KiB) ahead, and float
     * GEMV tiles of 16 lanes (one avx512 row, two avx2 rows) */
    {.name = "amd", .short_row = INT64_MAX, .ahead_f = 16384, .ahead_q8 = 16384, .whole_tile = 1, .narrow_gemv = 1},
    /* the same with 8-row float GEMV tiles (for comparison) */
    {.name = "amd-8rows", .short_row = INT64_MAX, .ahead_f = 16384, .ahead_q8 = 16384, .whole_tile = 1},
    /* the hardware prefetchers alone (for comparison) */
    {.name = "none", .short_row = 0, .ahead_f = 0, .ahead_q8 = 0, .whole_tile = 0},
};
#define NPROFILES ((int)(sizeof(profiles) / sizeof(profiles[0])))

static _Atomic(const lmp_gemv_prefetch *) g_profile;

/* AMD's (and Hygon's, the same cores) by the cpuid vendor string; every other x86 CPU gets the
 * profile measured on Intel; other architectures none (their tables do not prefetch). */
static const lmp_gemv_prefetch *vendor_profile(void) {
#if defined(LMP_X86)
    unsigned r[4];
    lmp_cpuid(0, 0, r);
    char v[12];
    memcpy(v, &r[1], 4); /* EBX, EDX, ECX spell it */
    memcpy(v + 4, &r[3], 4);
    memcpy(v + 8, &r[2], 4);
    if (memcmp(v, "AuthenticAMD", 12) == 0 || memcmp(v, "HygonGenuine", 12) == 0) return &profiles[1];
    return &profiles[0];
#else
    return &profiles[NPROFILES - 1]; /* none */
#endif
}

const lmp_gemv_prefetch *lmp_gemv_prefetch_active(void) {
    const lmp_gemv_prefetch *p = atomic_load_explicit(&g_profile, memory_order_acquire);
    if (!p) {
        /* racing first callers compute the same answer, so whichever store wins is fine */
        const lmp_gemv_prefetch *expected = NULL;
        p = vendor_profile();
        if (!atomic_compare_exchange_strong(&g_profile, &expected, p)) p = expected;
    }
    return p;
}

void lmp_gemv_prefetch_names(char *buf, size_t size) {
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < NPROFILES && used < size; i++) {
        int n = snprintf(buf + used, size - used, "%s%s", i ? ", " : "", profiles[i].name);
        if (n < 0) break;
        used += (size_t)n;
    }
}

int lmp_gemv_prefetch_set(const char *name) {
    for (int i = 0; i < NPROFILES; i++)
        if (strcmp(profiles[i].name, name) == 0) {
            atomic_store_explicit(&g_profile, &profiles[i], memory_order_release);
            return 0;
        }
    return -1;
}
