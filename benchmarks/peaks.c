/* Compute ceilings of one core for the roofline: AVX-512 f32 FMA, AVX-512 VNNI int8 and, where
 * the CPU and Linux allow it, AMX int8 and bf16 tile products. Each runs independent chains of
 * one instruction on registers (no memory traffic) and returns operations per second (a
 * multiply-add counts as two). Built on the fly by benchmarks/readbw.py with -march=native. */
#define _GNU_SOURCE
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

double lmpb_peak_fma(long n) {
    __m512 a[16];
    for (int i = 0; i < 16; i++) a[i] = _mm512_set1_ps(0.001f * (float)i);
    const __m512 b = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(0.0001f);
    double t = now();
    for (long k = 0; k < n; k++) {
        for (int i = 0; i < 16; i++) a[i] = _mm512_fmadd_ps(a[i], b, c);
        __asm__ volatile("" : "+v"(a[0]), "+v"(a[1]));
    }
    t = now() - t;
    volatile float sink = 0;
    for (int i = 0; i < 16; i++) sink += _mm512_reduce_add_ps(a[i]);
    return (double)n * 16 * 32 / t;
}

double lmpb_peak_vnni(long n) {
    __m512i a[16];
    for (int i = 0; i < 16; i++) a[i] = _mm512_set1_epi32(i);
    const __m512i b = _mm512_set1_epi8(3), c = _mm512_set1_epi8(5);
    double t = now();
    for (long k = 0; k < n; k++) {
        for (int i = 0; i < 16; i++) a[i] = _mm512_dpbusd_epi32(a[i], b, c);
        __asm__ volatile("" : "+v"(a[0]), "+v"(a[1]));
    }
    t = now() - t;
    volatile int sink = 0;
    for (int i = 0; i < 16; i++) sink += _mm512_reduce_add_epi32(a[i]);
    return (double)n * 16 * 128 / t;
}

#if defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__AMX_BF16__)
typedef struct {
    uint8_t palette, start;
    uint8_t res[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} cfg_t;

/* bf16 != 0: TDPBF16PS, else TDPBSSD. -1 when Linux refuses the tile state. */
double lmpb_peak_amx(long n, int bf16) {
    if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) return -1.0;
    cfg_t c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int i = 0; i < 8; i++) c.rows[i] = 16, c.colsb[i] = 64;
    _tile_loadconfig(&c);
    static int8_t buf[1024];
    memset(buf, 1, sizeof buf);
    _tile_loadd(4, buf, 64);
    _tile_loadd(5, buf, 64);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    double t = now();
    if (bf16) {
        for (long k = 0; k < n; k++) {
            _tile_dpbf16ps(0, 4, 5);
            _tile_dpbf16ps(1, 4, 5);
            _tile_dpbf16ps(2, 4, 5);
            _tile_dpbf16ps(3, 4, 5);
        }
    } else {
        for (long k = 0; k < n; k++) {
            _tile_dpbssd(0, 4, 5);
            _tile_dpbssd(1, 4, 5);
            _tile_dpbssd(2, 4, 5);
            _tile_dpbssd(3, 4, 5);
        }
    }
    t = now() - t;
    _tile_release();
    return (double)n * 4 * 16 * 16 * (bf16 ? 32 : 64) * 2 / t;
}
#else
double lmpb_peak_amx(long n, int bf16) {
    (void)n;
    (void)bf16;
    return -1.0;
}
#endif
