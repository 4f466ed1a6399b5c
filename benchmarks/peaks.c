/* Compute ceilings of one core for the roofline and the benchmark's percent-of-peak columns:
 * AVX2 f32 FMA, AVX-512 f32 FMA, AVX-512 VNNI int8 (VPDPBUSD), AVX512-BF16 dot products
 * (VDPBF16PS) and, where the CPU and Linux allow it, AMX int8 and bf16 tile products. Each runs
 * independent chains of one instruction on registers (no memory traffic) and returns operations
 * per second of thread CPU time (a multiply-add counts as two). Built on the fly by
 * benchmarks/readbw.py with -march=native; a ceiling the compiler cannot target returns -1, so the
 * file builds on any x86-64 CPU. */
#define _GNU_SOURCE
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static inline double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* 12 chains: AVX2 has 16 ymm registers, and two FMA pipes of latency 4 need 8 in flight. */
double lmpb_peak_fma256(long n) {
#if defined(__AVX2__) && defined(__FMA__)
    __m256 a[12];
    for (int i = 0; i < 12; i++) a[i] = _mm256_set1_ps(0.001f * (float)i);
    const __m256 b = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(0.0001f);
    double t = now();
    for (long k = 0; k < n; k++) {
        for (int i = 0; i < 12; i++) a[i] = _mm256_fmadd_ps(a[i], b, c);
    }
    t = now() - t;
    float lanes[8], sum = 0;
    for (int i = 0; i < 12; i++) {
        _mm256_storeu_ps(lanes, a[i]);
        for (int j = 0; j < 8; j++) sum += lanes[j];
    }
    volatile float sink = sum;
    (void)sink;
    return (double)n * 12 * 16 / t;
#else
    (void)n;
    return -1.0;
#endif
}

double lmpb_peak_fma(long n) {
#ifdef __AVX512F__
    __m512 a[16];
    for (int i = 0; i < 16; i++) a[i] = _mm512_set1_ps(0.001f * (float)i);
    const __m512 b = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(0.0001f);
    double t = now();
    for (long k = 0; k < n; k++) {
        for (int i = 0; i < 16; i++) a[i] = _mm512_fmadd_ps(a[i], b, c);
    }
    t = now() - t;
    volatile float sink = 0;
    for (int i = 0; i < 16; i++) sink += _mm512_reduce_add_ps(a[i]);
    return (double)n * 16 * 32 / t;
#else
    (void)n;
    return -1.0;
#endif
}

/* Dot-product chains: 12, not 16, so that the accumulators, their copies (GCC's intrinsics for
 * these accumulate into a fresh register) and the two sources fit in 32 registers without spills,
 * and still more than two pipes times a latency of 4-5 keep in flight. */
#define DP_CHAINS 12

double lmpb_peak_vnni(long n) {
#if defined(__AVX512F__) && defined(__AVX512VNNI__)
    __m512i a[DP_CHAINS];
    for (int i = 0; i < DP_CHAINS; i++) a[i] = _mm512_set1_epi32(i);
    const __m512i b = _mm512_set1_epi8(3), c = _mm512_set1_epi8(5);
    double t = now();
    for (long k = 0; k < n; k++) {
        for (int i = 0; i < DP_CHAINS; i++) a[i] = _mm512_dpbusd_epi32(a[i], b, c);
    }
    t = now() - t;
    volatile int sink = 0;
    for (int i = 0; i < DP_CHAINS; i++) sink += _mm512_reduce_add_epi32(a[i]);
    return (double)n * DP_CHAINS * 128 / t;
#else
    (void)n;
    return -1.0;
#endif
}

/* VDPBF16PS: 16 f32 lanes, each adding two bf16 products, 64 operations per instruction. */
double lmpb_peak_bf16dp(long n) {
#if defined(__AVX512F__) && defined(__AVX512BF16__)
    __m512 a[DP_CHAINS];
    for (int i = 0; i < DP_CHAINS; i++) a[i] = _mm512_set1_ps(0.001f * (float)i);
    const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.999f), _mm512_set1_ps(0.998f));
    const __m512bh c = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.0001f), _mm512_set1_ps(0.0002f));
    double t = now();
    for (long k = 0; k < n; k++) {
        for (int i = 0; i < DP_CHAINS; i++) a[i] = _mm512_dpbf16_ps(a[i], b, c);
    }
    t = now() - t;
    volatile float sink = 0;
    for (int i = 0; i < DP_CHAINS; i++) sink += _mm512_reduce_add_ps(a[i]);
    return (double)n * DP_CHAINS * 64 / t;
#else
    (void)n;
    return -1.0;
#endif
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
