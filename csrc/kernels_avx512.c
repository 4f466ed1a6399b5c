/* The AVX-512 kernel table (F/BW/VL/DQ + VNNI, with AVX2/FMA/F16C): the fast path on recent Xeons.
 *
 * Compiled with a raised target for this file only; dispatch.c hands it out only after cpuid and
 * xgetbv said the CPU and the OS support every instruction used here.
 *
 * Matmuls compute dot products of weight rows with activation rows (both contiguous along cols).
 * A tile of RM rows x RN tokens keeps RM*RN vector accumulators in registers, so each weight
 * vector loaded is used RN times (prompts) and each activation vector RM times; generation
 * (ntok == 1) uses the same tile code with RN = 1, streaming each weight row once.
 *
 * Determinism: an output's value depends only on (row, token, cols). Every tile shape runs the
 * same per-output chain (lane l of one accumulator takes columns l, l+16, ... in order, the tail
 * through masked loads) and the same final reduction, so a row computed inside a 6x4 tile equals
 * the same row computed alone, whatever the thread split or the batch size.
 */
#include "kernels.h"
#include "tiling.h"

#if defined(__x86_64__) || defined(_M_X64)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")
#endif

#include <float.h>
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "half.h"

#if defined(__GNUC__)
#define INLINE static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 16")
#else
#define INLINE static inline
#define UNROLL
#endif

#include "q8_scales.h"

/* Fixed-order horizontal sum: halves, then quarters, then pairs. */
INLINE float hsum16(__m512 v) {
    __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    b = _mm_add_ps(b, _mm_movehl_ps(b, b));
    b = _mm_add_ss(b, _mm_movehdup_ps(b));
    return _mm_cvtss_f32(b);
}

/* ---- f32 / f16 / bf16 weights ---------------------------------------------------------- */

INLINE __m512 ld_f32(const void *p, int64_t c) { return _mm512_loadu_ps((const float *)p + c); }
INLINE __m512 ldm_f32(const void *p, int64_t c, __mmask16 m) {
    return _mm512_maskz_loadu_ps(m, (const float *)p + c);
}
INLINE __m512 ld_f16(const void *p, int64_t c) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)p + c)));
}
INLINE __m512 ldm_f16(const void *p, int64_t c, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)p + c));
}
INLINE __m512 bf16_widen(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
INLINE __m512 ld_bf16(const void *p, int64_t c) {
    return bf16_widen(_mm256_loadu_si256((const __m256i *)((const uint16_t *)p + c)));
}
INLINE __m512 ldm_bf16(const void *p, int64_t c, __mmask16 m) {
    return bf16_widen(_mm256_maskz_loadu_epi16(m, (const uint16_t *)p + c));
}

/* Tile rows x tokens: 24 accumulators + 4 activations + 1 weight = 29 zmm. More rows per tile
 * means fewer activation loads (f32, from L2 for long rows) per FMA: one thread on a Zen 5 core,
 * 64 tokens (`bench_kernels.py --paths avx512`), bf16 weights ran 150-160 -> 175-200 GFLOP/s
 * against a 4x6 tile, f32 and f16 gained likewise, and 5x5 sat between the two. */
#define FRM 6
#define FRN 4

/* One RM x RN tile for weights of ESIZE bytes loaded by LD/LDM. w: row r0 of the tile,
 * x: token t0, y: &Y[t0*ldy + r0]. */
#define DEFINE_FTILE(NAME, ESIZE, LD, LDM)                                                       \
    INLINE void NAME(const char *w, const float *x, int64_t cols, int rm, int rn, float *y,     \
                     int64_t ldy) {                                                             \
        __m512 acc[8][FRN]; /* rows: FRM, or 8 for the GEMV */                            \
        UNROLL for (int i = 0; i < rm; i++) UNROLL for (int j = 0; j < rn; j++) acc[i][j] =    \
            _mm512_setzero_ps();                                                                \
        const int64_t ahead = rn == 1 ? gemv_ahead(cols * ESIZE, rm, 0) : 0;                   \
        int64_t c = 0;                                                                          \
        for (; c + 16 <= cols; c += 16) {                                                       \
            if (ahead) /* see gemv_ahead */                                                     \
                GEMV_PREFETCH(w, ahead + c * rm * ESIZE, rm * 16 * ESIZE);                     \
            __m512 xv[FRN];                                                                     \
            UNROLL for (int j = 0; j < rn; j++) xv[j] = _mm512_loadu_ps(x + j * cols + c);     \
            UNROLL for (int i = 0; i < rm; i++) {                                               \
                __m512 wv = LD(w + i * cols * ESIZE, c);                                        \
                UNROLL for (int j = 0; j < rn; j++) acc[i][j] =                                 \
                    _mm512_fmadd_ps(wv, xv[j], acc[i][j]);                                      \
            }                                                                                   \
        }                                                                                       \
        if (c < cols) {                                                                         \
            __mmask16 m = (__mmask16)((1u << (cols - c)) - 1);                                  \
            __m512 xv[FRN];                                                                     \
            UNROLL for (int j = 0; j < rn; j++) xv[j] = _mm512_maskz_loadu_ps(m, x + j * cols + c); \
            UNROLL for (int i = 0; i < rm; i++) {                                               \
                __m512 wv = LDM(w + i * cols * ESIZE, c, m);                                    \
                UNROLL for (int j = 0; j < rn; j++) acc[i][j] =                                 \
                    _mm512_fmadd_ps(wv, xv[j], acc[i][j]);                                      \
            }                                                                                   \
        }                                                                                       \
        UNROLL for (int i = 0; i < rm; i++) UNROLL for (int j = 0; j < rn; j++)                \
            y[j * ldy + i] = hsum16(acc[i][j]);                                                 \
    }

DEFINE_FTILE(ftile_f32, 4, ld_f32, ldm_f32)
DEFINE_FTILE(ftile_f16, 2, ld_f16, ldm_f16)
DEFINE_FTILE(ftile_bf16, 2, ld_bf16, ldm_bf16)

/* Instantiates the tile for constant shapes so the accumulators live in registers. */
#define FCASES_RM(T, RM) FCASE(T, RM, 1) FCASE(T, RM, 2) FCASE(T, RM, 3) FCASE(T, RM, 4)
#undef FCASES_ROWS /* tiling.h's default stops at 4 rows */
#define FCASES_ROWS(T) FCASES_RM(T, 1) FCASES_RM(T, 2) FCASES_RM(T, 3) FCASES_RM(T, 4) FCASES_RM(T, 5) \
    FCASES_RM(T, 6)

/* Generation on the AMD profile streams float rows one at a time: one 16-lane chain per row still
 * moves 32 bf16 bytes per FMA latency, and a thread's rows are then one sequential stream instead
 * of 8 interleaved ones (same chains, same bits). On a Zen 5 (2 threads, `bench_gen.py --prefetch
 * amd,amd-8rows`, 16-20 rounds, three runs) TinyLlama bf16 steps ran 15-18% faster at the median
 * (stories110M 14%); 2 or 4 rows sat between; one row without the software prefetch was 8% slower
 * than 8 rows with it. The avx2 table's 8-lane chains move half as much per latency: it takes two
 * rows (kernels_avx2.c). */
#undef GEMV_TILE_ROWS
#define GEMV_TILE_ROWS (lmp_gemv_prefetch_active()->narrow_gemv ? 1 : 8)
/* Prompts walk blocks of rows x tokens (tiling.h) whose weights and f32 activations share a 1 MiB
 * L2: otherwise each 6-row tile streams all of X, from L3 once X outgrows L2 (128 tokens of
 * 5632 columns are 2.8 MiB), and two cores share that L3. One thread on a Zen 5 core
 * (`bench_kernels.py --paths avx512 --dtypes bf16`, two sweeps): 2048x5632 at 128 tokens went
 * from 161-176 to 194-200 GFLOP/s, every TinyLlama shape at 512 tokens from 163-177 to 191-207;
 * 192/384, 384/192, 512/128 and 768/256 KiB blocks sat within the noise of these. Whole
 * TinyLlama bf16 prompts (2 threads): pp128 +4-12%, pp512 +7-8%; stories110M unchanged. */
#undef FBLOCK_W_BYTES
#undef FBLOCK_X_BYTES
#define FBLOCK_W_BYTES (512 * 1024) /* weight rows of a block */
#define FBLOCK_X_BYTES (256 * 1024) /* activation rows of a block */
DEFINE_FMATMUL(matmul_f32, ftile_f32, 4)
DEFINE_FMATMUL(matmul_f16, ftile_f16, 2)
DEFINE_FMATMUL(matmul_bf16, ftile_bf16, 2)

/* ---- bf16 weights x bf16 activations (opt-in mode, AVX512-BF16) -------------------------- */

/* VDPBF16PS adds two bf16 products per f32 lane, twice the f32 FMA's work per instruction. The
 * chain is the scalar table's matmul_bf16_act: lane l of one accumulator takes the column pairs
 * (32s+2l, 32s+2l+1) in order of s, the tail through zero-filling masked loads, then hsum16; so
 * every tile shape, the GEMV included, gives each output the same bits. These functions carry
 * the avx512bf16 target on their own: dispatch.c hands them out only if cpuid reports it. */
#if defined(__GNUC__) || defined(__clang__) /* the file's features, plus BF16 (merged or replacing) */
#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,avx512bf16")))
#else
#define BF16_TARGET
#endif
/* Tile rows x tokens: 24 accumulators + 4 activations + 1 weight = 29 zmm. On a Zen 5 core (one
 * thread, 64 tokens, `bench_kernels.py --dtypes bf16_act`) 6x4, 5x5 and 8x3 tiles ran at ~300
 * GFLOP/s against ~275 for 4x6 (more weight rows per activation load; the activations come
 * from L2), and 3x8 spilled. Blocking the columns so a panel's weight rows stay in L1 did not
 * measurably help there, so a tile runs its whole row. */
#define BRM 6
#define BRN 4

INLINE __m512bh ld_bh(const uint16_t *p) { return (__m512bh)_mm512_loadu_si512(p); }
INLINE __m512bh ldm_bh(const uint16_t *p, __mmask32 m) { return (__m512bh)_mm512_maskz_loadu_epi16(m, p); }

/* One RM x RN tile: w row r0 of the tile, x token t0, y &Y[t0*ldy + r0]. */
BF16_TARGET INLINE void btile(const uint16_t *w, const uint16_t *x, int64_t cols, const int rm, const int rn,
                              float *y, int64_t ldy) {
    __m512 acc[8][BRN]; /* rows: BRM, or 8 for the GEMV */
    UNROLL for (int i = 0; i < rm; i++) UNROLL for (int j = 0; j < rn; j++) acc[i][j] = _mm512_setzero_ps();
    const int64_t ahead = rn == 1 ? gemv_ahead(cols * 2, rm, 0) : 0;
    int64_t c = 0;
    for (; c + 32 <= cols; c += 32) {
        if (ahead) /* see gemv_ahead */
            GEMV_PREFETCH(w, ahead + c * rm * 2, rm * 64);
        __m512bh xv[BRN];
        UNROLL for (int j = 0; j < rn; j++) xv[j] = ld_bh(x + j * cols + c);
        UNROLL for (int i = 0; i < rm; i++) {
            __m512bh wv = ld_bh(w + i * cols + c);
            UNROLL for (int j = 0; j < rn; j++) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], wv, xv[j]);
        }
    }
    if (c < cols) {
        const __mmask32 m = (__mmask32)((1ull << (cols - c)) - 1);
        __m512bh xv[BRN];
        UNROLL for (int j = 0; j < rn; j++) xv[j] = ldm_bh(x + j * cols + c, m);
        UNROLL for (int i = 0; i < rm; i++) {
            __m512bh wv = ldm_bh(w + i * cols + c, m);
            UNROLL for (int j = 0; j < rn; j++) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], wv, xv[j]);
        }
    }
    UNROLL for (int i = 0; i < rm; i++) UNROLL for (int j = 0; j < rn; j++) y[j * ldy + i] = hsum16(acc[i][j]);
}

#define BCASE(RM, RN) case (RM) * 16 + (RN): btile(w, x, cols, RM, RN, y, ldy); break;
#define BCASES_RM(RM) BCASE(RM, 1) BCASE(RM, 2) BCASE(RM, 3) BCASE(RM, 4)

BF16_TARGET static void btile_any(const uint16_t *w, const uint16_t *x, int64_t cols, int rm, int rn, float *y,
                                  int64_t ldy) {
    switch (rm * 16 + rn) {
        BCASES_RM(1) BCASES_RM(2) BCASES_RM(3) BCASES_RM(4) BCASES_RM(5) BCASES_RM(6) BCASE(8, 1)
    default: break;
    }
}

/* Generation streams GEMV_TILE_ROWS rows at a time (as the f32-activation GEMV); prompts walk
 * BRM x BRN tiles. */
BF16_TARGET static void matmul_bf16_act(const lmp_weight *w, int64_t r0, int64_t r1, const void *xv, int64_t ntok,
                                        float *y, int64_t ldy) {
    const uint16_t *wd = w->data, *x = xv;
    const int64_t cols = w->cols;
    if (ntok == 1) {
        const int gr = GEMV_TILE_ROWS;
        gemv_prologue(wd + r0 * cols, NULL, (r1 - r0) * cols * 2, gemv_ahead(cols * 2, gr, 0));
        int64_t r = r0;
        for (; r + gr <= r1; r += gr) btile_any(wd + r * cols, x, cols, gr, 1, y + r, ldy);
        for (; r < r1; r += BRM) {
            int rm = r1 - r < BRM ? (int)(r1 - r) : BRM;
            btile_any(wd + r * cols, x, cols, rm, 1, y + r, ldy);
        }
        return;
    }
    for (int64_t r = r0; r < r1; r += BRM) {
        int rm = r1 - r < BRM ? (int)(r1 - r) : BRM;
        for (int64_t t = 0; t < ntok; t += BRN) {
            int rn = ntok - t < BRN ? (int)(ntok - t) : BRN;
            btile_any(wd + r * cols, x + t * cols, cols, rm, rn, y + t * ldy + r, ldy);
        }
    }
}

/* ---- q8_0 weights x q8 activations -------------------------------------------------------- */

/* Every output follows the scalar reference's chain exactly: per 32-block the exact int32 dot,
 * then acc = acc + float(isum) * (d_w * d_x), blocks in order, each operation rounded on its own
 * (-ffp-contract=off). So q8_0 results are bit-identical to the scalar table's, whatever the tile,
 * the batch size or the thread split.
 *
 * To get one exact int32 per (row, block) without horizontal sums, lanes are rows: a "panel"
 * vector holds the same 4 columns of 16 rows (a 16x16 dword transpose of 16 row vectors), and
 * VPDPBUSD against the activation's 4 bytes broadcast adds those 4 products into each row's
 * lane; 8 such steps are one block. VPDPBUSD multiplies unsigned by signed bytes, so the
 * weights are offset to w+128 (xor 0x80) and the accumulator is seeded with -128*sum(x) of the
 * block, computed once per token: exact, every partial sum fits in int32.
 *
 * Prompts (ntok > 1) copy each panel of 32 rows x QKB blocks into a buffer once and reuse it for
 * every tile of QRN tokens (the transpose costs 64 shuffles per KiB, the tiles 8*QRN VPDPBUSD).
 * Generation (ntok == 1) streams the rows in their row-major layout and folds lanes instead
 * (q8_gemv8). */

#define QRN 6   /* tokens of a prompt tile: 12 int32 + 12 f32 accumulators for 32 rows */
#define QKB 32  /* blocks of a packed panel: 32 rows x 1024 bytes, stays in L1 */

/* r[i] = 16 dwords of row i -> r[k] lane i = dword k of row i. */
INLINE void transpose16(__m512i r[16]) {
    __m512i t[16], u[16];
    UNROLL for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    UNROLL for (int q = 0; q < 4; q++) { /* u[4q+m]: rows 4q..4q+3, dword 4L+m in 128-bit lane L */
        u[4 * q + 0] = _mm512_unpacklo_epi64(t[4 * q], t[4 * q + 2]);
        u[4 * q + 1] = _mm512_unpackhi_epi64(t[4 * q], t[4 * q + 2]);
        u[4 * q + 2] = _mm512_unpacklo_epi64(t[4 * q + 1], t[4 * q + 3]);
        u[4 * q + 3] = _mm512_unpackhi_epi64(t[4 * q + 1], t[4 * q + 3]);
    }
    UNROLL for (int m = 0; m < 4; m++) { /* 4x4 transpose of 128-bit lanes */
        __m512i v0 = _mm512_shuffle_i32x4(u[m], u[4 + m], 0x44), v1 = _mm512_shuffle_i32x4(u[m], u[4 + m], 0xee);
        __m512i v2 = _mm512_shuffle_i32x4(u[8 + m], u[12 + m], 0x44), v3 = _mm512_shuffle_i32x4(u[8 + m], u[12 + m], 0xee);
        r[m] = _mm512_shuffle_i32x4(v0, v2, 0x88);
        r[4 + m] = _mm512_shuffle_i32x4(v0, v2, 0xdd);
        r[8 + m] = _mm512_shuffle_i32x4(v1, v3, 0x88);
        r[12 + m] = _mm512_shuffle_i32x4(v1, v3, 0xdd);
    }
}

/* Loads 2 blocks (or 1 if one) of nr <= 16 rows at wq (row stride cols), offset by 128, as 16
 * panel vectors: p[k] = dword k (k < 8: first block, else second). Missing rows read as 0. */
INLINE void load_panel(const int8_t *wq, int64_t cols, int nr, int one, __m512i p[16]) {
    const __m512i k128 = _mm512_set1_epi8((char)0x80);
    const __mmask64 m = one ? (__mmask64)0xffffffffu : ~(__mmask64)0;
    UNROLL for (int i = 0; i < 16; i++)
        p[i] = i < nr ? _mm512_maskz_loadu_epi8(m, wq + i * cols) : _mm512_setzero_si512();
    transpose16(p);
    UNROLL for (int k = 0; k < 16; k++) p[k] = _mm512_xor_si512(p[k], k128);
}

/* f32 scales of block b of nr <= 16 rows (row stride nb), missing rows 0. */
INLINE __m512 load_scales(const uint16_t *ws, int64_t nb, int64_t b, int nr) {
    uint16_t s[16];
    UNROLL for (int i = 0; i < 16; i++) s[i] = i < nr ? ws[i * nb + b] : 0;
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)s));
}

/* Three levels of unpacks and adds: 8 vectors of 16 dword partial sums -> one vector whose lane
 * holds the sum of a 4-lane group of one input (which group and input sits where is the callers'
 * business: each puts its lanes in order with one permute). */
INLINE __m512i fold8_epi32(const __m512i r[8]) {
    __m512i t[4], u[2];
    UNROLL for (int i = 0; i < 4; i++)
        t[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]),
                                _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]));
    UNROLL for (int i = 0; i < 2; i++)
        u[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(t[2 * i], t[2 * i + 1]),
                                _mm512_unpackhi_epi64(t[2 * i], t[2 * i + 1]));
    return _mm512_add_epi32(_mm512_shuffle_i32x4(u[0], u[1], 0x88), _mm512_shuffle_i32x4(u[0], u[1], 0xdd));
}

/* -128 * sum of each block's activation quants, per token: the seeds of the int accumulators.
 * Sixteen blocks at a time: one VPDPBUSD against ones per two blocks leaves 8 partial sums of
 * each in its half, and three levels of shuffles and adds fold the 8 vectors into the 16 sums
 * (as q8_gemv8 folds rows), put in block order by one permute. */
static void act_seeds(const lmp_q8_act *x, int64_t ntok, int64_t cols, int32_t *seed) {
    const __m512i ones = _mm512_set1_epi8(1);
    /* the fold leaves block k in lane idx[k] */
    const __m512i idx = _mm512_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15);
    const int64_t nb = cols / LMP_QK;
    for (int64_t t = 0; t < ntok; t++) {
        const int8_t *q = x->q + t * cols;
        int32_t *sd = seed + t * nb;
        int64_t b = 0;
        for (; b + 16 <= nb; b += 16) {
            __m512i r[8];
            UNROLL for (int i = 0; i < 8; i++)
                r[i] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, _mm512_loadu_si512(q + (b + 2 * i) * LMP_QK));
            const __m512i c = _mm512_permutexvar_epi32(idx, fold8_epi32(r));
            _mm512_storeu_si512(sd + b, _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(c, 7)));
        }
        for (; b < nb; b++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(q + b * LMP_QK));
            __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ones,
                                            _mm512_castsi256_si512(v)); /* upper half: 0 */
            sd[b] = -128 * _mm512_reduce_add_epi32(s);
        }
    }
}

/* acc + float(isum) * (dw * dx), each rounded (the adds' explicit rounding keeps them unfused). */
INLINE __m512 q8_step(__m512 acc, __m512i isum, __m512 dw, float dx) {
    __m512 s = _mm512_mul_round_ps(dw, _mm512_set1_ps(dx), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 p = _mm512_mul_round_ps(_mm512_cvtepi32_ps(isum), s, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm512_add_round_ps(acc, p, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

INLINE int32_t ld32(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

INLINE __m512 expand2(__m128 two) { /* [a, b, ...] -> [a x8, b x8] */
    const __m512i idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(two));
}

/* Generation: rows [r, r+nr) (nr <= 8) against one token, streamed as the tiles of the float
 * GEMVs are. Per 64-byte step each row's VPDPBUSD leaves 8 partial sums of each of its 2 blocks
 * in the lanes (the block seeds ride in lanes 0 and 8); three levels of shuffles and adds fold
 * the 8 rows into one vector of exact block sums [rows 0-3 b, rows 0-3 b+1, rows 4-7 b,
 * rows 4-7 b+1], which a permute puts in row order, block b in the low half. */
INLINE void q8_gemv8(const int8_t *wq, const uint16_t *ws, const int8_t *xq, const float *xd,
                     const int32_t *seed, int64_t cols, int nr, int64_t ahead, float *y) {
    const int64_t nb = cols / LMP_QK;
    const __m512i k128 = _mm512_set1_epi8((char)0x80);
    const __m512i order = _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15);
    const __mmask8 rmask = (__mmask8)((1u << nr) - 1);
    uint16_t sc[16 * 8];
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b += 2) {
        if (ahead) { /* see gemv_ahead */
            GEMV_PREFETCH(wq, ahead + b * LMP_QK * nr, nr * 2 * LMP_QK);
            GEMV_PREFETCH(ws, ahead / 16 + b * 2 * nr, 1);
        }
        if ((b & 15) == 0) q8_scales_8x16(ws, nb, b, nr, sc);
        const int one = b + 1 == nb;
        const __mmask64 m = one ? (__mmask64)0xffffffffu : ~(__mmask64)0;
        const __m512i xv = _mm512_maskz_loadu_epi8(m, xq + b * LMP_QK);
        const __m512i sv = _mm512_maskz_set1_epi32(1, seed[b]);
        const __m512i sd = one ? sv : _mm512_mask_set1_epi32(sv, 1 << 8, seed[b + 1]);
        __m512i r[8];
        UNROLL for (int i = 0; i < 8; i++) {
            __m512i wv = i < nr ? _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, wq + i * cols + b * LMP_QK), k128)
                                : _mm512_setzero_si512();
            r[i] = _mm512_dpbusd_epi32(i < nr ? sd : _mm512_setzero_si512(), wv, xv);
        }
        __m512 f = _mm512_cvtepi32_ps(_mm512_permutexvar_epi32(order, fold8_epi32(r)));
        /* scales of blocks b and b+1 of each row, b in the low half (b+1 past the end: 0) */
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(sc + 8 * (b & 15))));
        __m512 dx = expand2(one ? _mm_load_ss(xd + b) : _mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)(xd + b))));
        __m512 pr = _mm512_mul_round_ps(f, _mm512_mul_round_ps(dw, dx, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        acc = _mm256_add_ps(acc, _mm512_castps512_ps256(pr));
        if (!one) acc = _mm256_add_ps(acc, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(pr), 1)));
    }
    _mm256_mask_storeu_ps(y, rmask, acc);
}

/* Copies blocks [b0, b0+kb) of nr <= 32 rows into the panel buffer: for each block, 8 steps of
 * 2 panel vectors (rows 0-15, 16-31), then the block's 2 scale vectors in sd. */
static void pack_panel(const int8_t *wq, const uint16_t *ws, int64_t cols, int nr, int64_t b0, int kb,
                       __m512i *pw, __m512 *sd) {
    const int64_t nb = cols / LMP_QK;
    for (int g = 0; g < 2; g++) {
        int ng = nr - 16 * g;
        ng = ng < 0 ? 0 : ng > 16 ? 16 : ng;
        const int8_t *wg = wq + 16 * g * cols;
        for (int b = 0; b < kb; b += 2) {
            const int one = b + 1 == kb;
            __m512i p[16];
            load_panel(wg + (b0 + b) * LMP_QK, cols, ng, one, p);
            UNROLL for (int k = 0; k < 8; k++) pw[(b * 8 + k) * 2 + g] = p[k];
            if (!one) UNROLL for (int k = 0; k < 8; k++) pw[((b + 1) * 8 + k) * 2 + g] = p[8 + k];
        }
        for (int b = 0; b < kb; b++) sd[b * 2 + g] = load_scales(ws + 16 * g * nb, nb, b0 + b, ng);
    }
}

/* One tile: the packed panel's 32 rows x RN tokens over its kb blocks, continuing the chains held
 * in y (first: start from 0). y: &Y[t0*ldy + r]; nr rows are stored. */
INLINE void q8_tile(const __m512i *pw, const __m512 *sd, int kb, const int8_t *xq, const float *xd,
                    const int32_t *seed, int64_t cols, int64_t nb, int first, int nr, int rn,
                    float *y, int64_t ldy) {
    const __mmask16 m0 = nr >= 16 ? 0xffff : (__mmask16)((1u << nr) - 1);
    const __mmask16 m1 = nr >= 32 ? 0xffff : nr <= 16 ? 0 : (__mmask16)((1u << (nr - 16)) - 1);
    __m512 acc[2][QRN];
    UNROLL for (int j = 0; j < rn; j++) {
        acc[0][j] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m0, y + j * ldy);
        acc[1][j] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m1, y + j * ldy + 16);
    }
    for (int b = 0; b < kb; b++) {
        __m512i s[2][QRN];
        UNROLL for (int j = 0; j < rn; j++) s[0][j] = s[1][j] = _mm512_set1_epi32(seed[j * nb + b]);
        const int8_t *xb = xq + b * LMP_QK;
        UNROLL for (int k = 0; k < 8; k++) {
            const __m512i w0 = pw[(b * 8 + k) * 2], w1 = pw[(b * 8 + k) * 2 + 1];
            UNROLL for (int j = 0; j < rn; j++) {
                const __m512i xv = _mm512_set1_epi32(ld32(xb + j * cols + 4 * k));
                s[0][j] = _mm512_dpbusd_epi32(s[0][j], w0, xv);
                s[1][j] = _mm512_dpbusd_epi32(s[1][j], w1, xv);
            }
        }
        UNROLL for (int j = 0; j < rn; j++) {
            acc[0][j] = q8_step(acc[0][j], s[0][j], sd[b * 2], xd[j * nb + b]);
            acc[1][j] = q8_step(acc[1][j], s[1][j], sd[b * 2 + 1], xd[j * nb + b]);
        }
    }
    UNROLL for (int j = 0; j < rn; j++) {
        _mm512_mask_storeu_ps(y + j * ldy, m0, acc[0][j]);
        if (m1) _mm512_mask_storeu_ps(y + j * ldy + 16, m1, acc[1][j]);
    }
}

/* Requests the kb blocks of one weight row (quants and scales) at wq, ws ahead of their packing:
 * the panel copy would otherwise wait on every line of rows that are not in cache (a layer's
 * weights come from memory in a forward pass). */
INLINE void prefetch_row(const int8_t *wq, const uint16_t *ws, int kb) {
    for (int i = 0; i < kb * LMP_QK; i += 64) _mm_prefetch((const char *)wq + i, _MM_HINT_T0);
    _mm_prefetch((const char *)ws, _MM_HINT_T0);
    _mm_prefetch((const char *)(ws + kb - 1), _MM_HINT_T0);
}

#define Q8CASE(RN) case RN: q8_tile(pw, sd, kb, xq, xd, sq, cols, nb, first, nr, RN, yt, ldy); break;

static void matmul_q8_0(const lmp_weight *w, int64_t r0, int64_t r1, const void *xv,
                        int64_t ntok, float *y, int64_t ldy) {
    const lmp_q8_act *x = xv;
    const int8_t *wq = w->data;
    const int64_t cols = w->cols, nb = cols / LMP_QK;
    int32_t seed_small[256];
    int32_t *seed = ntok * nb <= 256 ? seed_small : malloc((size_t)(ntok * nb) * sizeof(int32_t));
    if (!seed) { /* no memory for the seeds: the scalar chain gives the same bits */
        lmp_kernels_scalar.matmul[LMP_Q8_0](w, r0, r1, xv, ntok, y, ldy);
        return;
    }
    if (ntok > 1) /* the first panel's rows, while the seeds are computed (the tiles prefetch the rest) */
        for (int64_t r = r0; r < r1 && r < r0 + 32; r++)
            prefetch_row(wq + r * cols, w->scales + r * nb, nb < QKB ? (int)nb : QKB);
    act_seeds(x, ntok, cols, seed);
    if (ntok == 1) {
        const int64_t ahead = gemv_ahead(cols, 8, 1);
        gemv_prologue(wq + r0 * cols, w->scales + r0 * nb, (r1 - r0) * cols, ahead);
        for (int64_t r = r0; r < r1; r += 8) {
            int nr = r1 - r < 8 ? (int)(r1 - r) : 8;
            q8_gemv8(wq + r * cols, w->scales + r * nb, x->q, x->d, seed, cols, nr, ahead, y + r);
        }
    } else {
        _Alignas(64) __m512i pw[QKB * 16];
        _Alignas(64) __m512 sd[QKB * 2];
        for (int64_t r = r0; r < r1; r += 32) {
            const int nr = r1 - r < 32 ? (int)(r1 - r) : 32;
            for (int64_t b0 = 0; b0 < nb; b0 += QKB) {
                const int kb = nb - b0 < QKB ? (int)(nb - b0) : QKB;
                pack_panel(wq + r * cols, w->scales + r * nb, cols, nr, b0, kb, pw, sd);
                /* the next panel: the next k-slice of these rows, or the next rows' first */
                const int64_t pr = b0 + QKB < nb ? r : r + 32, pb = b0 + QKB < nb ? b0 + QKB : 0;
                const int pn = pr >= r1 ? 0 : r1 - pr < 32 ? (int)(r1 - pr) : 32;
                const int pkb = nb - pb < QKB ? (int)(nb - pb) : QKB;
                const int64_t ntiles = (ntok + QRN - 1) / QRN;
                int64_t tile = 0;
                for (int64_t t = 0; t < ntok; t += QRN, tile++) {
                    const int rn = ntok - t < QRN ? (int)(ntok - t) : QRN;
                    for (int64_t i = tile * pn / ntiles; i < (tile + 1) * pn / ntiles; i++)
                        prefetch_row(wq + (pr + i) * cols + pb * LMP_QK, w->scales + (pr + i) * nb + pb, pkb);
                    const int8_t *xq = x->q + t * cols + b0 * LMP_QK;
                    const float *xd = x->d + t * nb + b0;
                    const int32_t *sq = seed + t * nb + b0;
                    const int first = b0 == 0;
                    float *yt = y + t * ldy + r;
                    switch (rn) { Q8CASE(1) Q8CASE(2) Q8CASE(3) Q8CASE(4) Q8CASE(5) Q8CASE(6) default: break; }
                }
            }
        }
    }
    if (seed != seed_small) free(seed);
}

/* ---- quantizers ------------------------------------------------------------------------- */

/* Whole groups of 16 blocks (512 values) go through two passes over the group, which stays in
 * L1: the first takes each block's max |x| on the raw bit patterns and reduces the 16 of them
 * together; the 16 scales then come out of one vector division and one conversion to fp16,
 * and the second pass quantizes. Blocks after the last whole group take the one-block path. */
#define QGROUP 16

/* How far ahead of the group being read its source is requested: the first pass would
 * otherwise wait on each cache line in turn (4-8 KiB measured best on a 128 MiB source). */
#define QPREFETCH 4096

/* Round half away from zero to int32, exactly, for |v| <= 2^24 (x*id here is within 127.5):
 * trunc(v + copysign(0.5 - 2^-25, v)). Only a fraction of at least one half can carry the sum
 * to the next integer: at |v| >= 1 the sum keeps v's ulp (>= 2^-23), so a fraction just below
 * a half stays below; at 0.5 the sum is 1 - 2^-25, which ties to even 1.0; below 0.5 it stays
 * under 1. (Checked against the scalar rule for every such float.) The add carries its own
 * rounding mode, so the compiler cannot fuse it with the multiply before it. */
INLINE __m512i round_away(__m512 v) {
    const __m512 sign = _mm512_set1_ps(-0.0f);
    const __m512 half = _mm512_set1_ps(0x1.fffffep-2f);
    __m512 t = _mm512_add_round_ps(v, _mm512_or_ps(_mm512_and_ps(v, sign), half),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm512_cvttps_epi32(t);
}

/* Quants of blocks A (a0: values 0-15, a1: 16-31) and B as 64 bytes in order. The packs work
 * per 128-bit lane, leaving dword 4j+k = 4-value group j of a0, a1, b0, b1 (k = 0..3). */
INLINE __m512i pack_2blocks(__m512i a0, __m512i a1, __m512i b0, __m512i b1) {
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    __m512i p = _mm512_packs_epi16(_mm512_packs_epi32(a0, a1), _mm512_packs_epi32(b0, b1));
    return _mm512_permutexvar_epi32(order, p);
}

/* Quantizes 32 finite values held in two vectors; returns d = amax/127 (f32). */
INLINE float quant_block(__m512 a, __m512 b, int8_t *q) {
    const __m512 sign = _mm512_set1_ps(-0.0f);
    __m512 m = _mm512_max_ps(_mm512_andnot_ps(sign, a), _mm512_andnot_ps(sign, b));
    float amax = _mm512_reduce_max_ps(m);
    float d = amax / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    if (isinf(id)) { /* 1/d overflowed: ggml's reference gives quants 0 here (see scalar) */
        _mm256_storeu_si256((__m256i *)q, _mm256_setzero_si256());
        return d;
    }
    __m512 vid = _mm512_set1_ps(id);
    _mm_storeu_si128((__m128i *)q, _mm512_cvtepi32_epi8(round_away(_mm512_mul_ps(a, vid))));
    _mm_storeu_si128((__m128i *)(q + 16), _mm512_cvtepi32_epi8(round_away(_mm512_mul_ps(b, vid))));
    return d;
}

/* Nonzero if any lane is inf or nan. */
INLINE int nonfinite2(__m512 a, __m512 b) {
    const __m512 sign = _mm512_set1_ps(-0.0f);
    const __m512 big = _mm512_set1_ps(FLT_MAX);
    return (_mm512_cmp_ps_mask(_mm512_andnot_ps(sign, a), big, _CMP_NLE_UQ) |
            _mm512_cmp_ps_mask(_mm512_andnot_ps(sign, b), big, _CMP_NLE_UQ)) != 0;
}

INLINE void load_block(const void *src, int dt, int64_t i, __m512 *a, __m512 *b) {
    if (dt == LMP_F32) *a = ld_f32(src, i), *b = ld_f32(src, i + 16);
    else if (dt == LMP_F16) *a = ld_f16(src, i), *b = ld_f16(src, i + 16);
    else *a = ld_bf16(src, i), *b = ld_bf16(src, i + 16);
}

/* Max |x| of each of the 16 blocks at src + i, as the f32 bit patterns (exact; inf and nan
 * compare above every finite value). Signless IEEE bits order like their values, so the max
 * runs on integers: 32-bit lanes for f32, and for 16-bit sources the raw halves (one vector a
 * block, 16-bit max), widened only once, at the end. Each level of the tree halves the vector
 * count and interleaves the partial maxima of pairs: after the 128-bit and the 32-bit shuffle
 * levels, dword 4j+k holds block j+4k, which the last permute puts in order. */
INLINE __m512i group_amax(const void *src, int dt, int64_t i) {
    const int words = dt != LMP_F32;
    __m512i m[QGROUP];
    if (words) {
        const __m512i abs16 = _mm512_set1_epi16(0x7fff);
        UNROLL for (int b = 0; b < QGROUP; b++)
            m[b] = _mm512_and_si512(_mm512_loadu_si512((const uint16_t *)src + i + b * LMP_QK), abs16);
    } else {
        const __m512i abs32 = _mm512_set1_epi32(0x7fffffff);
        const float *s = (const float *)src + i;
        UNROLL for (int b = 0; b < QGROUP; b++)
            m[b] = _mm512_max_epu32(_mm512_and_si512(_mm512_loadu_si512(s + b * LMP_QK), abs32),
                                    _mm512_and_si512(_mm512_loadu_si512(s + b * LMP_QK + 16), abs32));
    }
#define QMAX(x, y) (words ? _mm512_max_epu16((x), (y)) : _mm512_max_epu32((x), (y)))
#define QSHUF128(x, y, imm) _mm512_shuffle_i32x4((x), (y), (imm))
#define QSHUF32(x, y, imm) \
    _mm512_castps_si512(_mm512_shuffle_ps(_mm512_castsi512_ps(x), _mm512_castsi512_ps(y), (imm)))
    UNROLL for (int k = 0; k < 8; k++) /* quarters 0-1 of m[2k], then of m[2k+1] */
        m[k] = QMAX(QSHUF128(m[2 * k], m[2 * k + 1], 0x44), QSHUF128(m[2 * k], m[2 * k + 1], 0xee));
    UNROLL for (int k = 0; k < 4; k++) /* quarter j: block 4k+j */
        m[k] = QMAX(QSHUF128(m[2 * k], m[2 * k + 1], 0x88), QSHUF128(m[2 * k], m[2 * k + 1], 0xdd));
    UNROLL for (int k = 0; k < 2; k++) /* quarter j: two dwords of block 8k+j, two of 8k+4+j */
        m[k] = QMAX(QSHUF32(m[2 * k], m[2 * k + 1], 0x44), QSHUF32(m[2 * k], m[2 * k + 1], 0xee));
    __m512i r = QMAX(QSHUF32(m[0], m[1], 0x88), QSHUF32(m[0], m[1], 0xdd));
#undef QMAX
#undef QSHUF128
#undef QSHUF32
    r = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), r);
    if (!words) return r;
    r = _mm512_max_epu16(r, _mm512_srli_epi32(r, 16)); /* low half: the block's max half */
    if (dt == LMP_BF16) return _mm512_slli_epi32(r, 16);
    return _mm512_castps_si512(_mm512_cvtph_ps(_mm512_cvtepi32_epi16(r)));
}

/* Nonzero lanes: blocks whose max |x| bits are inf or nan. */
INLINE __mmask16 group_nonfinite(__m512i amax) {
    return _mm512_cmpge_epu32_mask(amax, _mm512_set1_epi32(0x7f800000));
}

/* d = amax/127 and id = 1/d per lane, id = 0 where d is 0 or 1/d overflows (ggml's reference
 * writes quants 0 there, see scalar): both IEEE divisions, as the scalar rule does them. */
INLINE __m512 group_scales(__m512i amax, __m512 *id) {
    __m512 d = _mm512_div_ps(_mm512_castsi512_ps(amax), _mm512_set1_ps(127.0f));
    __m512 r = _mm512_maskz_div_ps(_mm512_cmp_ps_mask(d, _mm512_setzero_ps(), _CMP_NEQ_OQ),
                                   _mm512_set1_ps(1.0f), d);
    *id = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(r, _mm512_set1_ps(INFINITY), _CMP_LT_OQ), r);
    return d;
}

/* bf16 blocks need no widening shuffle: the even-indexed values are the low halves of the
 * dwords shifted up, the odd ones the high halves masked. Their quants go back into 16-bit
 * order with one shift and one blend, and two blocks pack to bytes with one pack and one permute
 * (the pack leaves qword 2j = values 8j..8j+7 of the first block, 2j+1 those of the second). */
INLINE __m512i quant_bf16_words(__m512i raw, __m512 id) {
    __m512 ev = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
    __m512 od = _mm512_castsi512_ps(_mm512_and_si512(raw, _mm512_set1_epi32((int)0xffff0000u)));
    __m512i qe = round_away(_mm512_mul_ps(ev, id)), qo = round_away(_mm512_mul_ps(od, id));
    return _mm512_mask_blend_epi16(0xaaaaaaaau, qe, _mm512_slli_epi32(qo, 16));
}

/* Second pass: quants of the 16 blocks at src + i, block b scaled by lane b of id. The scales
 * go through memory so each block's comes back as a broadcast load rather than a shuffle (the
 * shuffle port is the busy one here); the empty asm keeps the compiler from turning them into
 * permutes. */
INLINE void group_quant(const void *src, int dt, int64_t i, __m512 id, int8_t *q) {
    float ids[QGROUP];
    _mm512_storeu_ps(ids, id);
#if defined(__GNUC__)
    __asm__("" : "+m"(ids));
#endif
    UNROLL for (int b = 0; b < QGROUP; b += 2) {
        const __m512 ia = _mm512_set1_ps(ids[b]), ib = _mm512_set1_ps(ids[b + 1]);
        __m512i p;
        if (dt == LMP_BF16) {
            const uint16_t *s = (const uint16_t *)src + i + b * LMP_QK;
            p = _mm512_packs_epi16(quant_bf16_words(_mm512_loadu_si512(s), ia),
                                   quant_bf16_words(_mm512_loadu_si512(s + LMP_QK), ib));
            p = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7), p);
        } else {
            __m512 a0, a1, b0, b1;
            load_block(src, dt, i + b * LMP_QK, &a0, &a1);
            load_block(src, dt, i + (b + 1) * LMP_QK, &b0, &b1);
            p = pack_2blocks(round_away(_mm512_mul_ps(a0, ia)), round_away(_mm512_mul_ps(a1, ia)),
                             round_away(_mm512_mul_ps(b0, ib)), round_away(_mm512_mul_ps(b1, ib)));
        }
        _mm512_storeu_si512(q + b * LMP_QK, p);
    }
}

INLINE void prefetch_group(const void *src, int dt, int64_t i, int64_t n) {
    const int64_t es = dt == LMP_F32 ? 4 : 2, gbytes = QGROUP * LMP_QK * es;
    const int64_t at = i * es + QPREFETCH;
    if (at + gbytes > n * es) return; /* the pointer stays inside the source */
    UNROLL for (int64_t k = 0; k < gbytes; k += 64) _mm_prefetch((const char *)src + at + k, _MM_HINT_T0);
}

/* The whole quantizer for one source type (a constant after inlining). */
INLINE int quantize_q8_0_dt(const void *src, const int dt, int64_t n, int8_t *q, uint16_t *d) {
    const int64_t nb = n / LMP_QK;
    int64_t blk = 0;
    for (; blk + QGROUP <= nb; blk += QGROUP) {
        const int64_t i = blk * LMP_QK;
        prefetch_group(src, dt, i, n);
        __m512i amax = group_amax(src, dt, i);
        if (group_nonfinite(amax)) return -1;
        __m512 id, dv = group_scales(amax, &id);
        _mm256_storeu_si256((__m256i *)(d + blk),
                            _mm512_cvtps_ph(dv, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        group_quant(src, dt, i, id, q + i);
    }
    for (; blk < nb; blk++) {
        const int64_t i = blk * LMP_QK;
        __m512 a, b;
        load_block(src, dt, i, &a, &b);
        if (nonfinite2(a, b)) return -1;
        d[blk] = lmp_f32_to_f16(quant_block(a, b, q + i));
    }
    return 0;
}

static int quantize_q8_0(const void *src, int src_dtype, int64_t n, int8_t *q, uint16_t *d) {
    if (src_dtype == LMP_F32) return quantize_q8_0_dt(src, LMP_F32, n, q, d);
    if (src_dtype == LMP_F16) return quantize_q8_0_dt(src, LMP_F16, n, q, d);
    return quantize_q8_0_dt(src, LMP_BF16, n, q, d);
}

/* One block of activations; a block holding inf or nan gets quants 0 and scale nan, so the nan
 * reaches every output that reads it. */
INLINE void quantize_act_block(const float *x, int8_t *q, float *d) {
    __m512 a = _mm512_loadu_ps(x), b = _mm512_loadu_ps(x + 16);
    if (nonfinite2(a, b)) {
        _mm256_storeu_si256((__m256i *)q, _mm256_setzero_si256());
        *d = NAN;
        return;
    }
    *d = quant_block(a, b, q);
}

static void quantize_act_q8(const float *x, int64_t n, int8_t *q, float *d) {
    const int64_t nb = n / LMP_QK;
    int64_t blk = 0;
    for (; blk + QGROUP <= nb; blk += QGROUP) {
        const int64_t i = blk * LMP_QK;
        __m512i amax = group_amax(x, LMP_F32, i);
        if (group_nonfinite(amax)) { /* rare: block by block, so only the bad blocks get nan */
            for (int b = 0; b < QGROUP; b++)
                quantize_act_block(x + i + b * LMP_QK, q + i + b * LMP_QK, d + blk + b);
            continue;
        }
        __m512 id;
        _mm512_storeu_ps(d + blk, group_scales(amax, &id));
        group_quant(x, LMP_F32, i, id, q + i);
    }
    for (; blk < nb; blk++) quantize_act_block(x + blk * LMP_QK, q + blk * LMP_QK, d + blk);
}

/* ---- vector helpers ---------------------------------------------------------------------- */

static float dot_f32(const float *a, const float *b, int64_t n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
        s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), s2);
        s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), s3);
    }
    for (; i + 16 <= n; i += 16)
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s0);
    }
    return hsum16(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

static void axpy_f32(float a, const float *x, float *y, int64_t n) {
    __m512 va = _mm512_set1_ps(a);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        __m512 v = _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i));
        _mm512_mask_storeu_ps(y + i, m, v);
    }
}

/* e^x to about one ulp: x = n ln2 + r with |r| <= ln2/2, a degree-7 Taylor polynomial for e^r
 * (truncation below 5e-9 relative), then scalef by 2^n, which underflows gracefully to 0. NaN
 * stays NaN. */
INLINE __m512 exp512(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x); /* below: 0 after scalef; NaN passes */
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* The SwiGLU gate: g/(1 + e^-g) * u, the division and multiply rounded as the scalar loop's. */
static void silu_mul_f32(float *g, const float *u, int64_t n) {
    const __m512 one = _mm512_set1_ps(1.0f), sign = _mm512_set1_ps(-0.0f);
    int64_t i = 0;
    for (; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 gv = _mm512_maskz_loadu_ps(m, g + i);
        __m512 s = _mm512_div_ps(gv, _mm512_add_ps(one, exp512(_mm512_xor_ps(gv, sign))));
        _mm512_mask_storeu_ps(g + i, m, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, u + i)));
    }
}

/* s[p] = e^(s[p] - mx) for p < n; returns their sum (16 lanes by p mod 16, fixed reduction). */
static float softmax_exp(float *s, int64_t n, float mx) {
    const __m512 m = _mm512_set1_ps(mx);
    __m512 acc = _mm512_setzero_ps();
    int64_t p = 0;
    for (; p + 16 <= n; p += 16) {
        __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(s + p), m));
        _mm512_storeu_ps(s + p, e);
        acc = _mm512_add_ps(acc, e);
    }
    if (p < n) {
        __mmask16 k = (__mmask16)((1u << (n - p)) - 1);
        __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + p), m));
        _mm512_mask_storeu_ps(s + p, k, e);
        acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(k, e));
    }
    return hsum16(acc);
}

/* Sixteen score vectors to one vector of their sixteen sums, each lane bit for bit hsum16 of its
 * vector: at every level the same pairs are added (halves, quarters, pairs, then the last two),
 * for many scores per instruction. Each level adds a blend of two vectors to a shuffle of the
 * opposite blend, one shuffle per add (the shuffle unit is the narrow one; blends run anywhere).
 * The lanes come out in bit-reversed order of the vectors, so callers put score i in
 * a[ATT_T(i)]. */
#define ATT_T(i) ((((i) & 1) << 3) | (((i) & 2) << 1) | (((i) & 4) >> 1) | (((i) & 8) >> 3))
INLINE __m512 hsum16x16(const __m512 a[16]) {
    __m512 b[8], c[4], d[2];
    UNROLL for (int j = 0; j < 8; j++) { /* lanes i + 8: [8 sums of a[2j] | 8 of a[2j+1]] */
        const __m512 x = a[2 * j], y = a[2 * j + 1];
        b[j] = _mm512_add_ps(_mm512_mask_blend_ps(0xff00, x, y), _mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(1, 0, 3, 2)));
    }
    UNROLL for (int j = 0; j < 4; j++) { /* lanes i + 4: 128-bit blocks hold b[2j]'s two, b[2j+1]'s two */
        const __m512 x = b[2 * j], y = b[2 * j + 1], yx = _mm512_mask_blend_ps(0xf0f0, y, x);
        c[j] = _mm512_add_ps(_mm512_mask_blend_ps(0xf0f0, x, y), _mm512_shuffle_f32x4(yx, yx, _MM_SHUFFLE(2, 3, 0, 1)));
    }
    UNROLL for (int j = 0; j < 2; j++) { /* lanes i + 2, within each 128-bit block */
        const __m512 x = c[2 * j], y = c[2 * j + 1];
        d[j] = _mm512_add_ps(_mm512_mask_blend_ps(0xcccc, x, y),
                             _mm512_castpd_ps(_mm512_shuffle_pd(_mm512_castps_pd(x), _mm512_castps_pd(y), 0x55)));
    }
    /* the last pair: lanes 2l and 2l + 1 of each block */
    return _mm512_add_ps(_mm512_mask_blend_ps(0xaaaa, d[0], d[1]),
                         _mm512_permute_ps(_mm512_mask_blend_ps(0xaaaa, d[1], d[0]), _MM_SHUFFLE(2, 3, 0, 1)));
}

/* Vector i of a head row; the last one masked to the head's width unless it is whole (FULL). */
#define ATT_LD(p, i) (i == NV - 1 && !FULL ? _mm512_maskz_loadu_ps(tail, (p) + i * 16) : _mm512_loadu_ps((p) + i * 16))

/* Scores of one query at positions [p, p + 16) clipped to npos: s[p + j] = scale * hsum16 of the
 * chain over the head's NV vectors of fma(q, k_p), the single-query chain; mx takes their max. */
INLINE void att_scores16(const __m512 *qv, const float *k, int64_t ld, int64_t p, int64_t npos, __mmask16 tail,
                         __m512 sc, float *s, __m512 *mx, const int NV, const int FULL) {
    __m512 a[16];
    if (p + 16 <= npos) {
        const float *kp = k + p * ld;
        UNROLL for (int j = 0; j < 16; j++) {
            __m512 acc = _mm512_setzero_ps();
            UNROLL for (int i = 0; i < NV; i++) acc = _mm512_fmadd_ps(qv[i], ATT_LD(kp + j * ld, i), acc);
            a[ATT_T(j)] = acc;
        }
        const __m512 x = _mm512_mul_ps(hsum16x16(a), sc);
        _mm512_storeu_ps(s + p, x);
        *mx = _mm512_max_ps(*mx, x);
        return;
    }
    UNROLL for (int j = 0; j < 16; j++) {
        /* past the last position: repeat it (always a valid row), the lane is dropped */
        const float *kp = k + (p + j < npos ? p + j : npos - 1) * ld;
        __m512 acc = _mm512_setzero_ps();
        UNROLL for (int i = 0; i < NV; i++) acc = _mm512_fmadd_ps(qv[i], ATT_LD(kp, i), acc);
        a[ATT_T(j)] = acc;
    }
    const __m512 x = _mm512_mul_ps(hsum16x16(a), sc);
    const __mmask16 m = (__mmask16)((1u << (npos - p)) - 1);
    _mm512_mask_storeu_ps(s + p, m, x);
    *mx = _mm512_mask_max_ps(*mx, m, *mx, x);
}

/* The scores of two queries (the same chains as att_scores16) at positions [p, p + 8) clipped to
 * na and nb (na <= nb), each key vector loaded once for both: lanes 0-7 of the reduction are the
 * first query's, 8-15 the second's. */
INLINE void att_scores2x8(const __m512 *qa, const __m512 *qb, const float *k, int64_t ld, int64_t p, int64_t na,
                          int64_t nb, __mmask16 tail, __m512 sc, float *sa, float *sb, __m512 *mxa, __m512 *mxb,
                          const int NV, const int FULL) {
    __m512 a[16];
    const int whole = p + 8 <= na;
    UNROLL for (int j = 0; j < 8; j++) {
        /* past the second query's last position: repeat it, the lane is dropped */
        const float *kp = k + (whole || p + j < nb ? p + j : nb - 1) * ld;
        __m512 x = _mm512_setzero_ps(), y = _mm512_setzero_ps();
        UNROLL for (int i = 0; i < NV; i++) {
            const __m512 kv = ATT_LD(kp, i);
            x = _mm512_fmadd_ps(qa[i], kv, x);
            y = _mm512_fmadd_ps(qb[i], kv, y);
        }
        a[ATT_T(j)] = x;
        a[ATT_T(j + 8)] = y;
    }
    const __m512 x = _mm512_mul_ps(hsum16x16(a), sc);
    const __mmask8 ma = p >= na ? 0 : na - p >= 8 ? (__mmask8)0xff : (__mmask8)((1u << (na - p)) - 1);
    const __mmask8 mb = nb - p >= 8 ? (__mmask8)0xff : (__mmask8)((1u << (nb - p)) - 1);
    _mm256_mask_storeu_ps(sa + p, ma, _mm512_castps512_ps256(x));
    _mm256_mask_storeu_ps(sb + p, mb, _mm512_extractf32x8_ps(x, 1));
    *mxa = _mm512_mask_max_ps(*mxa, ma, *mxa, x);
    *mxb = _mm512_mask_max_ps(*mxb, (__mmask16)((unsigned)mb << 8), *mxb, x);
}

/* QB queries' weighted value sums over positions [c0, c1): o_r += s_r[p] v_p in order of p for
 * each, each value vector loaded once for all of them; npos[] is non-decreasing, so positions
 * past the first query's finish query by query. The sums start at 0 when c0 is 0, else from
 * out, where they are left (exactly: a stored float reloads as itself). */
INLINE void att_values(const float *v, int64_t ld, int64_t c0, int64_t c1, const int64_t *npos, __mmask16 tail,
                       float *const *s, float *const *out, const int NV, const int FULL, const int QB) {
    __m512 o[8][8];
    UNROLL for (int r = 0; r < QB; r++) UNROLL for (int i = 0; i < NV; i++)
        o[r][i] = c0 == 0 ? _mm512_setzero_ps() : ATT_LD(out[r], i);
    int64_t p = c0;
    for (; p < c1 && p < npos[0]; p++) {
        const float *vp = v + p * ld;
        __m512 w[8];
        UNROLL for (int r = 0; r < QB; r++) w[r] = _mm512_set1_ps(s[r][p]);
        UNROLL for (int i = 0; i < NV; i++) {
            const __m512 x = ATT_LD(vp, i);
            UNROLL for (int r = 0; r < QB; r++) o[r][i] = _mm512_fmadd_ps(w[r], x, o[r][i]);
        }
    }
    UNROLL for (int r = 1; r < QB; r++)
        for (int64_t pp = p; pp < c1 && pp < npos[r]; pp++) {
            const float *vp = v + pp * ld;
            const __m512 w = _mm512_set1_ps(s[r][pp]);
            UNROLL for (int i = 0; i < NV; i++) o[r][i] = _mm512_fmadd_ps(w, ATT_LD(vp, i), o[r][i]);
        }
    UNROLL for (int r = 0; r < QB; r++) UNROLL for (int i = 0; i < NV; i++) {
        if (i == NV - 1 && !FULL) _mm512_mask_storeu_ps(out[r] + i * 16, tail, o[r][i]);
        else _mm512_storeu_ps(out[r] + i * 16, o[r][i]);
    }
}

/* Queries per value pass, a divisor of LMP_ATT_ROWS: QB*NV accumulators + QB weights + one value
 * vector within 32 zmm. */
#define ATT_QB(NV) ((NV) <= 2 ? 8 : (NV) <= 6 ? 4 : 2)

/* Attention for a block of queries (kernels.h), LMP_ATT_ROWS queries at a time: their scores
 * 16 positions at a time, query by query while those key rows stay in L1; per query the softmax
 * with the vector exp (softmax_exp, the single-query sum) and each score times 1/sum, rounded as
 * the single-query kernel did; then the value sums, ATT_QB queries per loaded value row. NV
 * (vectors per head row) is a constant in each instance so q and the outputs stay in registers. */
INLINE void attend_nv(const float *q, int64_t ldq, int64_t nh, int64_t ntok, const float *k, const float *v,
                      int64_t ld, int64_t npos0, int64_t hd, float scale, float *s, float *out, int64_t ldo,
                      const int NV, const int FULL) {
    const int QB = ATT_QB(NV);
    const __mmask16 tail = hd % 16 ? (__mmask16)((1u << (hd % 16)) - 1) : (__mmask16)0xffff;
    const __m512 sc = _mm512_set1_ps(scale);
    const int64_t nq = nh * ntok, stride = npos0 + ntok - 1;
    for (int64_t r0 = 0; r0 < nq; r0 += LMP_ATT_ROWS) {
        const int nb = nq - r0 < LMP_ATT_ROWS ? (int)(nq - r0) : LMP_ATT_ROWS;
        int64_t npos[LMP_ATT_ROWS];
        const float *qr[LMP_ATT_ROWS];
        float *sr[LMP_ATT_ROWS], *orow[LMP_ATT_ROWS];
        __m512 mx[LMP_ATT_ROWS];
        for (int r = 0; r < nb; r++) {
            const int64_t t = (r0 + r) / nh, jh = (r0 + r) % nh;
            npos[r] = npos0 + t;
            qr[r] = q + t * ldq + jh * hd;
            sr[r] = s + (int64_t)r * stride;
            orow[r] = out + t * ldo + jh * hd;
            mx[r] = _mm512_set1_ps(-INFINITY);
        }
        /* queries in pairs sharing each key load where both queries' q fit in registers */
        const int npair = NV <= 4 ? nb / 2 : 0;
        const int64_t last = npos0 + (r0 + nb - 1) / nh; /* the block's longest row */
        for (int64_t p = 0; p < last; p += 16) {
            for (int r = 0; r < 2 * npair; r += 2) {
                __m512 qa[8], qb[8];
                UNROLL for (int i = 0; i < NV; i++) qa[i] = ATT_LD(qr[r], i);
                UNROLL for (int i = 0; i < NV; i++) qb[i] = ATT_LD(qr[r + 1], i);
                for (int64_t pp = p; pp < p + 16 && pp < npos[r + 1]; pp += 8)
                    att_scores2x8(qa, qb, k, ld, pp, npos[r], npos[r + 1], tail, sc, sr[r], sr[r + 1], &mx[r],
                                  &mx[r + 1], NV, FULL);
            }
            for (int r = 2 * npair; r < nb; r++) {
                if (p >= npos[r]) continue;
                __m512 qv[8];
                UNROLL for (int i = 0; i < NV; i++) qv[i] = ATT_LD(qr[r], i);
                att_scores16(qv, k, ld, p, npos[r], tail, sc, sr[r], &mx[r], NV, FULL);
            }
        }
        for (int r = 0; r < nb; r++) {
            const float inv = 1.0f / softmax_exp(sr[r], npos[r], _mm512_reduce_max_ps(mx[r]));
            const __m512 vi = _mm512_set1_ps(inv);
            for (int64_t p = 0; p < npos[r]; p += 16) {
                const __mmask16 m = npos[r] - p >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (npos[r] - p)) - 1);
                _mm512_mask_storeu_ps(sr[r] + p, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, sr[r] + p), vi));
            }
        }
        /* (slicing the positions so value rows stay in L1 across the block measured no faster
         * here: ATT_QB queries already share each row loaded) */
        int r = 0;
        for (; r + QB <= nb; r += QB) att_values(v, ld, 0, last, npos + r, tail, sr + r, orow + r, NV, FULL, QB);
        for (; r < nb; r++) att_values(v, ld, 0, last, npos + r, tail, sr + r, orow + r, NV, FULL, 1);
    }
}

DEFINE_ATTEND_WIDE(attend_wide, dot_f32, softmax_exp, axpy_f32)

static void attend_f32(const float *q, int64_t ldq, int64_t nh, int64_t ntok, const float *k, const float *v,
                       int64_t ld, int64_t npos0, int64_t hd, float scale, float *s, float *out, int64_t ldo) {
    switch ((hd + 15) / 16 * 2 + (hd % 16 == 0)) {
#define ATT_CASE(NV)                                                                                       \
    case NV * 2: attend_nv(q, ldq, nh, ntok, k, v, ld, npos0, hd, scale, s, out, ldo, NV, 0); return;     \
    case NV * 2 + 1: attend_nv(q, ldq, nh, ntok, k, v, ld, npos0, hd, scale, s, out, ldo, NV, 1); return;
        ATT_CASE(1) ATT_CASE(2) ATT_CASE(3) ATT_CASE(4) ATT_CASE(5) ATT_CASE(6) ATT_CASE(7) ATT_CASE(8)
#undef ATT_CASE
    default: break;
    }
    /* heads wider than 128: the composed path, query by query */
    attend_wide(q, ldq, nh, ntok, k, v, ld, npos0, hd, scale, s, out, ldo);
}

const lmp_kernels lmp_kernels_avx512 = {
    .name = "avx512",
    .matmul = {[LMP_F32] = matmul_f32, [LMP_F16] = matmul_f16, [LMP_BF16] = matmul_bf16,
               [LMP_Q8_0] = matmul_q8_0},
    .matmul_bf16_act = matmul_bf16_act,
    .quantize_q8_0 = quantize_q8_0,
    .quantize_act_q8 = quantize_act_q8,
    .dot_f32 = dot_f32,
    .axpy_f32 = axpy_f32,
    .silu_mul_f32 = silu_mul_f32,
    .attend_f32 = attend_f32,
};

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif /* x86-64 */
