/* Q8_0 weight layout micro-benchmark: lmpack's two planes against ggml-style interleaved blocks.
 *
 * The same int8 GEMV/GEMM algorithm as csrc/kernels_avx512.c and csrc/kernels_avx2.c (a tile of
 * RM weight rows x RN tokens of accumulators in registers; activations quantized to blocks of 32
 * with f32 scales, as the runtime does) runs over two layouts of the same quants and scales:
 *
 *   planes       int8 quants [rows, cols], then fp16 scales [rows, cols/32] at a 64-byte boundary
 *                (lmpack's q8_0): a block's 32 quants start on a 32-byte boundary and two blocks
 *                are one aligned 64-byte load.
 *   interleaved  rows of 34-byte blocks [fp16 d | 32 int8] (ggml's block_q8_0): a block's quants
 *                sit at 34*k + 2, so they are two unaligned 32-byte loads for two blocks and about
 *                half of them straddle a cache line.
 *
 * Only the weight loads differ; the arithmetic and its order are the same, so both layouts give
 * bit-identical outputs (lq_check proves it, and compares both to a double-precision reference).
 * Built on the fly by benchmarks/bench_q8_layout.py with `-O3 -march=native` and loaded through
 * ctypes; it is not part of the lmpack extension. Requires cols % 64 == 0 (every TinyLlama shape).
 */
#define _GNU_SOURCE
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define QK 32
#define BLK 34 /* bytes of an interleaved block: fp16 d, then 32 int8 */

enum { LAYOUT_PLANES = 0, LAYOUT_INTERLEAVED = 1 };
enum { ISA_AVX512 = 0, ISA_AVX2 = 1 };

#define INLINE static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 16")

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

/* One weight matrix in both layouts, plus quantized activations; `copies` of each matrix so the
 * working set can exceed the last-level cache the way a model's layers do. */
typedef struct {
    int64_t rows, cols, nb;
    int copies, maxtok;
    size_t plane_bytes;  /* align64(rows*cols) + rows*nb*2, rounded to 64 */
    size_t inter_bytes;  /* rows*nb*34, rounded to 64 */
    uint8_t *planes;     /* copies * plane_bytes */
    uint8_t *inter;      /* copies * inter_bytes */
    size_t map_planes, map_inter;
    int8_t *xq;          /* [maxtok, cols] */
    float *xd;           /* [maxtok, nb] */
    float *y;            /* [maxtok, rows] */
} lq_bench;

static void *map(size_t bytes, int huge) {
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
#ifdef MADV_HUGEPAGE
    /* 4 KiB pages by default: the runtime reads weights through a file mapping. */
    madvise(p, bytes, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
#endif
    return p;
}

static uint64_t next(uint64_t *s) { /* xorshift64* */
    *s ^= *s >> 12, *s ^= *s << 25, *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

static uint16_t f32_to_f16(float f) { return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }

void lq_free(lq_bench *b) {
    if (!b) return;
    if (b->planes) munmap(b->planes, b->map_planes);
    if (b->inter) munmap(b->inter, b->map_inter);
    free(b->xq), free(b->xd), free(b->y), free(b);
}

/* Random quants in [-127, 127] and positive fp16 scales, written to both layouts identically;
 * activations quantized ggml-style from random normals-ish values. NULL on bad sizes or no memory. */
lq_bench *lq_make(int64_t rows, int64_t cols, int copies, int maxtok, int huge, uint64_t seed) {
    if (rows < 4 || rows % 4 || cols < 64 || cols % 64 || copies < 1 || maxtok < 1) return NULL;
    lq_bench *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->rows = rows, b->cols = cols, b->nb = cols / QK, b->copies = copies, b->maxtok = maxtok;
    b->plane_bytes = align64(align64((size_t)(rows * cols)) + (size_t)(rows * b->nb) * 2);
    b->inter_bytes = align64((size_t)(rows * b->nb) * BLK);
    b->map_planes = b->plane_bytes * (size_t)copies;
    b->map_inter = b->inter_bytes * (size_t)copies;
    b->planes = map(b->map_planes, huge);
    b->inter = map(b->map_inter, huge);
    b->xq = aligned_alloc(64, align64((size_t)(maxtok * cols)));
    b->xd = aligned_alloc(64, align64((size_t)(maxtok * b->nb) * 4));
    b->y = aligned_alloc(64, align64((size_t)(maxtok * rows) * 4));
    if (!b->planes || !b->inter || !b->xq || !b->xd || !b->y) {
        lq_free(b);
        return NULL;
    }
    uint64_t s = seed | 1;
    for (int c = 0; c < copies; c++) {
        int8_t *q = (int8_t *)(b->planes + b->plane_bytes * (size_t)c);
        uint16_t *d = (uint16_t *)((uint8_t *)q + align64((size_t)(rows * cols)));
        uint8_t *blk = b->inter + b->inter_bytes * (size_t)c;
        for (int64_t k = 0; k < rows * b->nb; k++, blk += BLK) {
            uint16_t h = f32_to_f16(1e-3f * (float)(1 + next(&s) % 1000));
            d[k] = h;
            memcpy(blk, &h, 2);
            for (int j = 0; j < QK; j++) {
                int8_t v = (int8_t)((int)(next(&s) % 255) - 127);
                q[k * QK + j] = v;
                blk[2 + j] = (uint8_t)v;
            }
        }
        /* touch the padding too, so every page of both maps is backed before timing */
        memset((uint8_t *)d + rows * b->nb * 2, 0,
               b->plane_bytes - align64((size_t)(rows * cols)) - (size_t)(rows * b->nb) * 2);
        memset(b->inter + b->inter_bytes * (size_t)c + rows * b->nb * BLK, 0,
               b->inter_bytes - (size_t)(rows * b->nb) * BLK);
    }
    for (int64_t k = 0; k < maxtok * b->nb; k++) {
        b->xd[k] = 1e-2f * (float)(1 + next(&s) % 100);
        for (int j = 0; j < QK; j++) b->xq[k * QK + j] = (int8_t)((int)(next(&s) % 255) - 127);
    }
    memset(b->y, 0, (size_t)(maxtok * rows) * 4);
    return b;
}

size_t lq_weight_bytes(const lq_bench *b, int layout) {
    return layout == LAYOUT_PLANES ? b->plane_bytes : b->inter_bytes;
}

/* ---- weight access, the only thing that differs between layouts -------------------------- */

/* Row r of copy c: planes give (quants row, scales row); interleaved gives the row's blocks. */
typedef struct {
    const uint8_t *base; /* planes: quants plane; interleaved: blocks */
    const uint16_t *scales;
    int64_t cols, nb;
} wview;

static wview view(const lq_bench *b, int layout, int c) {
    wview v = {0};
    v.cols = b->cols, v.nb = b->nb;
    if (layout == LAYOUT_PLANES) {
        v.base = b->planes + b->plane_bytes * (size_t)c;
        v.scales = (const uint16_t *)(v.base + align64((size_t)(b->rows * b->cols)));
    } else {
        v.base = b->inter + b->inter_bytes * (size_t)c;
    }
    return v;
}

INLINE uint16_t ld16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define HAVE_AVX512 1

/* Two blocks (b, b+1) of row r: 64 quant bytes and the two fp16 scales packed in 32 bits. */
INLINE __m512i w64(const wview *w, int layout, int64_t r, int64_t b, uint32_t *bits) {
    if (layout == LAYOUT_PLANES) {
        const uint16_t *s = w->scales + r * w->nb + b;
        *bits = (uint32_t)s[0] | (uint32_t)s[1] << 16;
        return _mm512_load_si512(w->base + r * w->cols + b * QK); /* aligned: one line */
    }
    const uint8_t *p = w->base + (r * w->nb + b) * BLK;
    *bits = (uint32_t)ld16(p) | (uint32_t)ld16(p + BLK) << 16;
    __m256i lo = _mm256_loadu_si256((const __m256i *)(p + 2));
    __m256i hi = _mm256_loadu_si256((const __m256i *)(p + BLK + 2));
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

INLINE __m512 expand2(__m128 two) { /* [a, b, ...] -> [a x8, b x8] */
    const __m512i idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(two));
}

INLINE float hsum16(__m512 v) {
    __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 c = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    c = _mm_add_ps(c, _mm_movehl_ps(c, c));
    c = _mm_add_ss(c, _mm_movehdup_ps(c));
    return _mm_cvtss_f32(c);
}

/* vpdpbusd takes unsigned x signed bytes: activations go in as x+128 and the row's 128*sum(w)
 * seeds the accumulator negated, exactly as in kernels_avx512.c. */
INLINE void tile512(const wview *w, int layout, int64_t r0, const int8_t *xq, const float *xd,
                    int rm, int rn, float *y, int64_t ldy) {
    const int64_t cols = w->cols, nb = w->nb;
    const __m512i k128 = _mm512_set1_epi8((char)0x80);
    const __m512i zero = _mm512_setzero_si512();
    __m512 acc[4][3];
    UNROLL for (int i = 0; i < rm; i++) UNROLL for (int j = 0; j < rn; j++) acc[i][j] =
        _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b += 2) {
        __m512i wv[4], nc[4];
        __m512 dw[4];
        UNROLL for (int i = 0; i < rm; i++) {
            uint32_t bits;
            wv[i] = w64(w, layout, r0 + i, b, &bits);
            nc[i] = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, k128, wv[i]));
            dw[i] = expand2(_mm_cvtph_ps(_mm_cvtsi32_si128((int)bits)));
        }
        UNROLL for (int j = 0; j < rn; j++) {
            __m512i xu = _mm512_xor_si512(_mm512_load_si512(xq + j * cols + b * QK), k128);
            __m512 dx = expand2(_mm_castpd_ps(_mm_load_sd((const double *)(xd + j * nb + b))));
            UNROLL for (int i = 0; i < rm; i++) {
                __m512 f = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(nc[i], xu, wv[i]));
                acc[i][j] = _mm512_fmadd_ps(f, _mm512_mul_ps(dw[i], dx), acc[i][j]);
            }
        }
    }
    UNROLL for (int i = 0; i < rm; i++) UNROLL for (int j = 0; j < rn; j++)
        y[j * ldy + i] = hsum16(acc[i][j]);
}

/* Rows [r0, r1) (multiples of 4) x ntok tokens, 4x3 tiles as in lmpack's AVX-512 path. */
#define DEFINE_MM512(NAME, LAYOUT)                                                             \
    static void NAME(const wview *w, int64_t r0, int64_t r1, const int8_t *xq, const float *xd, \
                     int64_t ntok, float *y, int64_t ldy) {                                    \
        for (int64_t r = r0; r < r1; r += 4)                                                   \
            for (int64_t t = 0; t < ntok; t += 3) {                                            \
                const int8_t *q = xq + t * w->cols;                                            \
                const float *d = xd + t * w->nb;                                               \
                float *o = y + t * ldy + r;                                                    \
                switch (ntok - t < 3 ? (int)(ntok - t) : 3) {                                  \
                case 1: tile512(w, LAYOUT, r, q, d, 4, 1, o, ldy); break;                      \
                case 2: tile512(w, LAYOUT, r, q, d, 4, 2, o, ldy); break;                      \
                default: tile512(w, LAYOUT, r, q, d, 4, 3, o, ldy); break;                     \
                }                                                                              \
            }                                                                                  \
    }
DEFINE_MM512(mm512_planes, LAYOUT_PLANES)
DEFINE_MM512(mm512_inter, LAYOUT_INTERLEAVED)
#endif

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define HAVE_AVX2 1

/* One block b of row r: 32 quant bytes and its scale as f32. */
INLINE __m256i w32(const wview *w, int layout, int64_t r, int64_t b, float *d) {
    if (layout == LAYOUT_PLANES) {
        *d = _cvtsh_ss(w->scales[r * w->nb + b]);
        return _mm256_load_si256((const __m256i *)(w->base + r * w->cols + b * QK));
    }
    const uint8_t *p = w->base + (r * w->nb + b) * BLK;
    *d = _cvtsh_ss(ld16(p));
    return _mm256_loadu_si256((const __m256i *)(p + 2));
}

INLINE float hsum8(__m256 v) {
    __m128 c = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    c = _mm_add_ps(c, _mm_movehl_ps(c, c));
    c = _mm_add_ss(c, _mm_movehdup_ps(c));
    return _mm_cvtss_f32(c);
}

/* maddubs takes unsigned x signed: |w| against x carrying w's sign, as in kernels_avx2.c. */
INLINE void tile256(const wview *w, int layout, int64_t r0, const int8_t *xq, const float *xd,
                    int rm, int rn, float *y, int64_t ldy) {
    const int64_t cols = w->cols, nb = w->nb;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[4][2];
    UNROLL for (int i = 0; i < rm; i++) UNROLL for (int j = 0; j < rn; j++) acc[i][j] =
        _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i wv[4], aw[4];
        __m256 dw[4];
        UNROLL for (int i = 0; i < rm; i++) {
            float d;
            wv[i] = w32(w, layout, r0 + i, b, &d);
            aw[i] = _mm256_sign_epi8(wv[i], wv[i]);
            dw[i] = _mm256_set1_ps(d);
        }
        UNROLL for (int j = 0; j < rn; j++) {
            __m256i xv = _mm256_load_si256((const __m256i *)(xq + j * cols + b * QK));
            __m256 dx = _mm256_broadcast_ss(xd + j * nb + b);
            UNROLL for (int i = 0; i < rm; i++) {
                __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw[i], _mm256_sign_epi8(xv, wv[i])),
                                              ones);
                acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(dw[i], dx), acc[i][j]);
            }
        }
    }
    UNROLL for (int i = 0; i < rm; i++) UNROLL for (int j = 0; j < rn; j++)
        y[j * ldy + i] = hsum8(acc[i][j]);
}

/* 4x1 tiles for generation, 2x2 for prompts, as in lmpack's AVX2 path. */
#define DEFINE_MM256(NAME, LAYOUT)                                                             \
    static void NAME(const wview *w, int64_t r0, int64_t r1, const int8_t *xq, const float *xd, \
                     int64_t ntok, float *y, int64_t ldy) {                                    \
        if (ntok == 1) {                                                                       \
            for (int64_t r = r0; r < r1; r += 4) tile256(w, LAYOUT, r, xq, xd, 4, 1, y + r, ldy); \
            return;                                                                            \
        }                                                                                      \
        for (int64_t r = r0; r < r1; r += 2)                                                   \
            for (int64_t t = 0; t < ntok; t += 2) {                                            \
                const int8_t *q = xq + t * w->cols;                                            \
                const float *d = xd + t * w->nb;                                               \
                float *o = y + t * ldy + r;                                                    \
                if (ntok - t >= 2) tile256(w, LAYOUT, r, q, d, 2, 2, o, ldy);                  \
                else tile256(w, LAYOUT, r, q, d, 2, 1, o, ldy);                                \
            }                                                                                  \
    }
DEFINE_MM256(mm256_planes, LAYOUT_PLANES)
DEFINE_MM256(mm256_inter, LAYOUT_INTERLEAVED)
#endif

typedef void (*mm_fn)(const wview *, int64_t, int64_t, const int8_t *, const float *, int64_t,
                      float *, int64_t);

static mm_fn pick(int isa, int layout) {
#ifdef HAVE_AVX512
    if (isa == ISA_AVX512) return layout == LAYOUT_PLANES ? mm512_planes : mm512_inter;
#endif
#ifdef HAVE_AVX2
    if (isa == ISA_AVX2) return layout == LAYOUT_PLANES ? mm256_planes : mm256_inter;
#endif
    (void)isa, (void)layout;
    return NULL;
}

/* 1 if this build (the native target) has the kernels of `isa`. */
int lq_isa_supported(int isa) { return pick(isa, LAYOUT_PLANES) != NULL; }

/* ---- threads and timing ------------------------------------------------------------------ */

typedef struct {
    const lq_bench *b;
    mm_fn fn;
    int layout, copies, passes;
    int64_t r0, r1, ntok;
    atomic_int *go;
    double cpu; /* this thread's CPU seconds */
} job;

static double clock_s(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A thread's share: rows [r0, r1) of every copy, `passes` times; copies in order, like layers. */
static void *worker(void *arg) {
    job *j = arg;
    while (!atomic_load_explicit(j->go, memory_order_acquire)) {
    }
    double c0 = clock_s(CLOCK_THREAD_CPUTIME_ID);
    for (int p = 0; p < j->passes; p++)
        for (int c = 0; c < j->copies; c++) {
            wview w = view(j->b, j->layout, c);
            j->fn(&w, j->r0, j->r1, j->b->xq, j->b->xd, j->ntok, j->b->y, j->b->rows);
        }
    j->cpu = clock_s(CLOCK_THREAD_CPUTIME_ID) - c0;
    return NULL;
}

/* Runs `passes` sweeps over the first `copies` copies with `threads` threads splitting the rows
 * (in multiples of 4). Returns wall seconds, and the largest per-thread CPU seconds in *cpu; -1 on
 * bad arguments. */
double lq_run(lq_bench *b, int layout, int isa, int ntok, int threads, int copies, int passes,
              double *cpu) {
    mm_fn fn = pick(isa, layout);
    if (!b || !fn || ntok < 1 || ntok > b->maxtok || threads < 1 || threads > 64 || passes < 1 ||
        copies < 1 || copies > b->copies)
        return -1.0;
    pthread_t th[64];
    job jobs[64];
    atomic_int go;
    atomic_init(&go, 0);
    int64_t quads = b->rows / 4;
    int started = 0;
    for (int t = 0; t < threads; t++) {
        jobs[t] = (job){.b = b, .fn = fn, .layout = layout, .copies = copies, .passes = passes, .ntok = ntok,
                        .r0 = 4 * (quads * t / threads), .r1 = 4 * (quads * (t + 1) / threads),
                        .go = &go};
        if (t == 0) continue; /* the calling thread is worker 0 */
        if (pthread_create(&th[t], NULL, worker, &jobs[t]) != 0) break;
        started++;
    }
    if (started != threads - 1) {
        atomic_store_explicit(&go, 1, memory_order_release);
        for (int t = 1; t <= started; t++) pthread_join(th[t], NULL);
        return -1.0;
    }
    double t0 = clock_s(CLOCK_MONOTONIC);
    atomic_store_explicit(&go, 1, memory_order_release);
    worker(&jobs[0]);
    for (int t = 1; t < threads; t++) pthread_join(th[t], NULL);
    double dt = clock_s(CLOCK_MONOTONIC) - t0;
    double mx = 0;
    for (int t = 0; t < threads; t++) mx = jobs[t].cpu > mx ? jobs[t].cpu : mx;
    if (cpu) *cpu = mx;
    return dt;
}

/* Both layouts on `isa` for ntok tokens of copy 0, against each other (must be bit-identical)
 * and against a double-precision reference. Returns the largest relative error against the
 * reference, or -1 on bad arguments / no memory, or -2 if the layouts disagree. */
double lq_check(lq_bench *b, int isa, int ntok) {
    mm_fn fp = pick(isa, LAYOUT_PLANES), fi = pick(isa, LAYOUT_INTERLEAVED);
    if (!b || !fp || ntok < 1 || ntok > b->maxtok) return -1.0;
    size_t n = (size_t)(ntok * b->rows);
    float *yp = malloc(n * 4), *yi = malloc(n * 4);
    if (!yp || !yi) {
        free(yp), free(yi);
        return -1.0;
    }
    wview wp = view(b, LAYOUT_PLANES, 0), wi = view(b, LAYOUT_INTERLEAVED, 0);
    fp(&wp, 0, b->rows, b->xq, b->xd, ntok, yp, b->rows);
    fi(&wi, 0, b->rows, b->xq, b->xd, ntok, yi, b->rows);
    double worst = memcmp(yp, yi, n * 4) ? -2.0 : 0.0;
    const int8_t *q = (const int8_t *)wp.base;
    for (int64_t t = 0; t < ntok && worst >= 0; t++)
        for (int64_t r = 0; r < b->rows; r++) {
            double ref = 0, mag = 0;
            for (int64_t k = 0; k < b->nb; k++) {
                int32_t s = 0;
                for (int j = 0; j < QK; j++)
                    s += q[r * b->cols + k * QK + j] * b->xq[t * b->cols + k * QK + j];
                double d = (double)_cvtsh_ss(wp.scales[r * b->nb + k]) * b->xd[t * b->nb + k];
                ref += d * s;
                mag += fabs(d * s);
            }
            double err = fabs(yp[t * b->rows + r] - ref) / (mag > 0 ? mag : 1.0);
            if (err > worst) worst = err;
        }
    free(yp), free(yi);
    return worst;
}
