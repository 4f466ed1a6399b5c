/* The AVX2 kernel table (AVX2 + FMA + F16C): the fast path on x86-64 CPUs from 2013 on.
 *
 * Compiled with a raised target for this file only; dispatch.c hands it out only after cpuid and
 * xgetbv said the CPU and the OS support AVX2/FMA/F16C and the YMM state.
 *
 * Same structure as kernels_avx512.c at half the width: a tile of RM rows x RN tokens keeps its
 * accumulators in registers (16 ymm here, so smaller tiles), generation uses RN = 1. Every tile
 * shape runs the same per-output chain and final reduction, so an output's value depends only on
 * (row, token, cols).
 */
#include "kernels.h"
#include "tiling.h"

#if defined(__x86_64__) || defined(_M_X64)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

#include <float.h>
#include <immintrin.h>
#include <math.h>
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

/* Fixed-order horizontal sum: halves, then pairs. */
INLINE float hsum8(__m256 v) {
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    b = _mm_add_ps(b, _mm_movehl_ps(b, b));
    b = _mm_add_ss(b, _mm_movehdup_ps(b));
    return _mm_cvtss_f32(b);
}

/* Lane mask with the first k (0..8) lanes set, for maskload. */
INLINE __m256i first_lanes(int64_t k) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* ---- f32 / f16 / bf16 weights ---------------------------------------------------------- */

INLINE __m256 ld_f32(const void *p, int64_t c) { return _mm256_loadu_ps((const float *)p + c); }
INLINE __m256 ldm_f32(const void *p, int64_t c, int64_t k) {
    return _mm256_maskload_ps((const float *)p + c, first_lanes(k));
}
INLINE __m256 ld_f16(const void *p, int64_t c) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + c)));
}
/* 16-bit tails have no masked load: copy the k live halves into a zeroed block. */
INLINE __m128i tail16(const void *p, int64_t c, int64_t k) {
    uint16_t buf[8] = {0};
    memcpy(buf, (const uint16_t *)p + c, (size_t)k * 2);
    return _mm_loadu_si128((const __m128i *)buf);
}
INLINE __m256 ldm_f16(const void *p, int64_t c, int64_t k) { return _mm256_cvtph_ps(tail16(p, c, k)); }
INLINE __m256 bf16_widen(__m128i h) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
INLINE __m256 ld_bf16(const void *p, int64_t c) {
    return bf16_widen(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + c)));
}
INLINE __m256 ldm_bf16(const void *p, int64_t c, int64_t k) { return bf16_widen(tail16(p, c, k)); }

#define FRM 4 /* tile rows */
#define FRN 3 /* tile tokens: 12 accumulators + 3 activations + 1 weight = 16 ymm */

#define DEFINE_FTILE(NAME, ESIZE, LD, LDM)                                                       \
    INLINE void NAME(const char *w, const float *x, int64_t cols, int rm, int rn, float *y,     \
                     int64_t ldy) {                                                             \
        __m256 acc[FRM * 2][FRN];                                                               \
        UNROLL for (int i = 0; i < rm; i++) UNROLL for (int j = 0; j < rn; j++) acc[i][j] =    \
            _mm256_setzero_ps();                                                                \
        const int64_t ahead = rn == 1 ? gemv_ahead(cols * ESIZE, rm, 0) : 0;                   \
        int64_t c = 0;                                                                          \
        for (; c + 8 <= cols; c += 8) {                                                         \
            if (ahead) /* see gemv_ahead */                                                     \
                GEMV_PREFETCH(w, ahead + c * rm * ESIZE, rm * 8 * ESIZE);                      \
            __m256 xv[FRN];                                                                     \
            UNROLL for (int j = 0; j < rn; j++) xv[j] = _mm256_loadu_ps(x + j * cols + c);     \
            UNROLL for (int i = 0; i < rm; i++) {                                               \
                __m256 wv = LD(w + i * cols * ESIZE, c);                                        \
                UNROLL for (int j = 0; j < rn; j++) acc[i][j] =                                 \
                    _mm256_fmadd_ps(wv, xv[j], acc[i][j]);                                      \
            }                                                                                   \
        }                                                                                       \
        if (c < cols) {                                                                         \
            const int64_t k = cols - c;                                                         \
            __m256 xv[FRN];                                                                     \
            UNROLL for (int j = 0; j < rn; j++) xv[j] = ldm_f32(x + j * cols, c, k);           \
            UNROLL for (int i = 0; i < rm; i++) {                                               \
                __m256 wv = LDM(w + i * cols * ESIZE, c, k);                                    \
                UNROLL for (int j = 0; j < rn; j++) acc[i][j] =                                 \
                    _mm256_fmadd_ps(wv, xv[j], acc[i][j]);                                      \
            }                                                                                   \
        }                                                                                       \
        UNROLL for (int i = 0; i < rm; i++) UNROLL for (int j = 0; j < rn; j++)                \
            y[j * ldy + i] = hsum8(acc[i][j]);                                                  \
    }

DEFINE_FTILE(ftile_f32, 4, ld_f32, ldm_f32)
DEFINE_FTILE(ftile_f16, 2, ld_f16, ldm_f16)
DEFINE_FTILE(ftile_bf16, 2, ld_bf16, ldm_bf16)

#define FCASES_RM(T, RM) FCASE(T, RM, 1) FCASE(T, RM, 2) FCASE(T, RM, 3)

/* Generation on the AMD profile streams float rows two at a time: 16 lanes of chains, as one
 * avx512 row (kernels_avx512.c); one row alone waits on its FMA latency. On a Zen 5 (2 threads,
 * `bench_gen.py --tables avx2 --prefetch amd,amd-8rows`, 16 rounds, two runs) TinyLlama bf16
 * steps ran 5-7% faster at the median than with 8 rows (stories110M 3%); one row lost 18%, four
 * gained nothing. Same chains, same bits. */
#undef GEMV_TILE_ROWS
#define GEMV_TILE_ROWS (lmp_gemv_prefetch_active()->narrow_gemv ? 2 : 8)
/* Prompts: each 4-row tile reads 3 activation vectors per 12 FMAs, so walking every token for
 * each row tile streams all of X once per 4 rows, from L3 once X outgrows L2 (a 2048x5632 bf16
 * GEMM fell from ~92 to ~74 GFLOP/s at 512 tokens). Blocks of rows x tokens whose weights and
 * activations both stay in L2 keep that traffic there. */
#undef FBLOCK_W_BYTES
#undef FBLOCK_X_BYTES
#define FBLOCK_W_BYTES (192 * 1024) /* weight rows of a block */
#define FBLOCK_X_BYTES (384 * 1024) /* activation rows of a block */
DEFINE_FMATMUL(matmul_f32, ftile_f32, 4)
DEFINE_FMATMUL(matmul_f16, ftile_f16, 2)
DEFINE_FMATMUL(matmul_bf16, ftile_bf16, 2)

/* ---- q8_0 weights x q8 activations -------------------------------------------------------- */

/* Every output follows the scalar reference's chain exactly: per 32-block the exact int32 dot,
 * then acc = acc + float(isum) * (d_w * d_x), blocks in order, each operation rounded on its own
 * (-ffp-contract=off). So q8_0 results are bit-identical to the scalar table's, whatever the tile,
 * the batch size or the thread split.
 *
 * The int32 dot: VPMADDUBSW multiplies unsigned by signed bytes and adds pairs into saturating
 * int16, so it gets |w| and x with w's sign moved onto it. Quants are in [-127, 127] (a -128 from
 * a file still works: |w| = 128 read unsigned), so a pair sum stays below 2^15 and is exact;
 * VPMADDWD with ones widens the pairs into int32 lanes of 4 products.
 *
 * Prompts (ntok > 1) put rows in the lanes: a panel vector holds the same 4 columns of 8 rows (an
 * 8x8 dword transpose of 8 row vectors), multiplied against the activation's 4 bytes broadcast, so
 * after the block's 8 steps each lane holds one row's exact block sum, with no horizontal sums.
 * Each panel of 8 rows x QKB blocks is transposed once into a buffer (with its |w| twin and the
 * block scales) and reused by every tile of QRN tokens. Generation (ntok == 1) streams rows in
 * their row-major layout and folds the lanes of 8 rows instead (q8_gemv8). */

#define QRN 4  /* tokens of a prompt tile */
#define QKB 32 /* blocks of a packed panel: 8 rows x 32 blocks x 2 = 16 KiB, stays in L1 */

INLINE int32_t ld32(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* The exact int32 dots of 4-byte groups: lane i gets sum_k aw_k * (x_k with the sign of w_k). */
INLINE __m256i dot4(__m256i w, __m256i aw, __m256i x) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(x, w)), _mm256_set1_epi16(1));
}

/* f32 scales of block b of nr <= 8 rows (row stride nb), missing rows 0. */
INLINE __m256 load_scales8(const uint16_t *ws, int64_t nb, int64_t b, int nr) {
    uint16_t s[8];
    UNROLL for (int i = 0; i < 8; i++) s[i] = i < nr ? ws[i * nb + b] : 0;
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)s));
}

/* Copies blocks [b0, b0+kb) of nr <= 8 rows into the panel buffer: per block, 8 steps of
 * (panel vector, its |w|), step k = dword k of every row; then the block's scales in sd. */
static void pack_panel8(const int8_t *wq, const uint16_t *ws, int64_t cols, int nr, int64_t b0, int kb,
                        __m256i *pw, __m256 *sd) {
    const int64_t nb = cols / LMP_QK;
    for (int b = 0; b < kb; b++) {
        __m256i r[8], t[8], u[8];
        UNROLL for (int i = 0; i < 8; i++)
            r[i] = i < nr ? _mm256_loadu_si256((const __m256i *)(wq + i * cols + (b0 + b) * LMP_QK))
                          : _mm256_setzero_si256();
        UNROLL for (int i = 0; i < 4; i++) { /* rows 2i, 2i+1: dwords 0,1 | 4,5 and 2,3 | 6,7 */
            t[2 * i] = _mm256_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm256_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        UNROLL for (int q = 0; q < 2; q++) { /* u[4q+m]: rows 4q..4q+3, dword m | m+4 */
            u[4 * q + 0] = _mm256_unpacklo_epi64(t[4 * q], t[4 * q + 2]);
            u[4 * q + 1] = _mm256_unpackhi_epi64(t[4 * q], t[4 * q + 2]);
            u[4 * q + 2] = _mm256_unpacklo_epi64(t[4 * q + 1], t[4 * q + 3]);
            u[4 * q + 3] = _mm256_unpackhi_epi64(t[4 * q + 1], t[4 * q + 3]);
        }
        __m256i *p = pw + b * 16;
        UNROLL for (int m = 0; m < 4; m++) {
            __m256i lo = _mm256_permute2x128_si256(u[m], u[4 + m], 0x20);
            __m256i hi = _mm256_permute2x128_si256(u[m], u[4 + m], 0x31);
            p[2 * m] = lo, p[2 * m + 1] = _mm256_abs_epi8(lo);
            p[2 * (m + 4)] = hi, p[2 * (m + 4) + 1] = _mm256_abs_epi8(hi);
        }
        sd[b] = load_scales8(ws, nb, b0 + b, nr);
    }
}

/* One tile: the packed panel's 8 rows x RN tokens over its kb blocks, continuing the chains held
 * in y (first: start from 0). y: &Y[t0*ldy + r]; nr rows are stored. */
INLINE void q8_tile(const __m256i *pw, const __m256 *sd, int kb, const int8_t *xq, const float *xd,
                    int64_t cols, int64_t nb, int first, __m256i rmask, int rn, float *y, int64_t ldy) {
    __m256 acc[QRN];
    const int8_t *xt[QRN];
    UNROLL for (int j = 0; j < rn; j++) {
        acc[j] = first ? _mm256_setzero_ps() : _mm256_maskload_ps(y + j * ldy, rmask);
        xt[j] = xq + j * cols;
    }
    for (int b = 0; b < kb; b++, pw += 16) {
        __m256i s[QRN];
        UNROLL for (int j = 0; j < rn; j++) s[j] = _mm256_setzero_si256();
        UNROLL for (int k = 0; k < 8; k++) {
            const __m256i w = pw[2 * k], aw = pw[2 * k + 1];
            UNROLL for (int j = 0; j < rn; j++) {
                s[j] = _mm256_add_epi32(s[j], dot4(w, aw, _mm256_set1_epi32(ld32(xt[j] + 4 * k))));
#if defined(__GNUC__)
                /* one running sum per tile entry: otherwise GCC reassociates the 8 steps into a
                 * tree, keeps every product live and spills them */
                __asm__("" : "+x"(s[j]));
#endif
            }
        }
        UNROLL for (int j = 0; j < rn; j++) {
            __m256 d = _mm256_mul_ps(sd[b], _mm256_broadcast_ss(xd + j * nb + b));
            acc[j] = _mm256_add_ps(acc[j], _mm256_mul_ps(_mm256_cvtepi32_ps(s[j]), d));
            xt[j] += LMP_QK;
        }
    }
    UNROLL for (int j = 0; j < rn; j++) _mm256_maskstore_ps(y + j * ldy, rmask, acc[j]);
}

/* Generation: rows [0, nr) (nr <= 8) against one token. Per block each row's dot leaves 8
 * partial sums in its lanes; three levels of unpacks and adds fold the 8 rows into one vector
 * of exact block sums in row order. */
INLINE void q8_gemv8(const int8_t *wq, const uint16_t *ws, const int8_t *xq, const float *xd,
                     int64_t cols, int nr, int64_t ahead, float *y) {
    const int64_t nb = cols / LMP_QK;
    const __m256i rmask = first_lanes(nr);
    uint16_t sc[16 * 8];
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        if (ahead) { /* see gemv_ahead */
            GEMV_PREFETCH(wq, ahead + b * LMP_QK * nr, nr * LMP_QK);
            GEMV_PREFETCH(ws, ahead / 16 + b * 2 * nr, 1);
        }
        if ((b & 15) == 0) q8_scales_8x16(ws, nb, b, nr, sc);
        const __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + b * LMP_QK));
        __m256i r[8], t[4], u[2];
        UNROLL for (int i = 0; i < 8; i++) {
            if (i < nr) {
                __m256i w = _mm256_loadu_si256((const __m256i *)(wq + i * cols + b * LMP_QK));
                r[i] = dot4(w, _mm256_abs_epi8(w), xv);
            } else {
                r[i] = _mm256_setzero_si256();
            }
        }
        UNROLL for (int i = 0; i < 4; i++) /* rows 2i, 2i+1 alternate, 2 partials each per half */
            t[i] = _mm256_add_epi32(_mm256_unpacklo_epi32(r[2 * i], r[2 * i + 1]),
                                    _mm256_unpackhi_epi32(r[2 * i], r[2 * i + 1]));
        UNROLL for (int i = 0; i < 2; i++) /* rows 4i..4i+3 per half */
            u[i] = _mm256_add_epi32(_mm256_unpacklo_epi64(t[2 * i], t[2 * i + 1]),
                                    _mm256_unpackhi_epi64(t[2 * i], t[2 * i + 1]));
        __m256i c = _mm256_add_epi32(_mm256_permute2x128_si256(u[0], u[1], 0x20),
                                     _mm256_permute2x128_si256(u[0], u[1], 0x31));
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc + 8 * (b & 15))));
        __m256 d = _mm256_mul_ps(dw, _mm256_broadcast_ss(xd + b));
        acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(c), d));
    }
    _mm256_maskstore_ps(y, rmask, acc);
}

#define Q8CASE(RN) case RN: q8_tile(pw, sd, kb, xq, xd, cols, nb, first, rmask, RN, yt, ldy); break;

static void matmul_q8_0(const lmp_weight *w, int64_t r0, int64_t r1, const void *xv,
                        int64_t ntok, float *y, int64_t ldy) {
    const lmp_q8_act *x = xv;
    const int8_t *wq = w->data;
    const int64_t cols = w->cols, nb = cols / LMP_QK;
    if (ntok == 1) {
        const int64_t ahead = gemv_ahead(cols, 8, 1);
        gemv_prologue(wq + r0 * cols, w->scales + r0 * nb, (r1 - r0) * cols, ahead);
        for (int64_t r = r0; r < r1; r += 8) {
            int nr = r1 - r < 8 ? (int)(r1 - r) : 8;
            q8_gemv8(wq + r * cols, w->scales + r * nb, x->q, x->d, cols, nr, ahead, y + r);
        }
        return;
    }
    _Alignas(32) __m256i pw[QKB * 16];
    _Alignas(32) __m256 sd[QKB];
    for (int64_t r = r0; r < r1; r += 8) {
        const int nr = r1 - r < 8 ? (int)(r1 - r) : 8;
        const __m256i rmask = first_lanes(nr);
        for (int64_t b0 = 0; b0 < nb; b0 += QKB) {
            const int kb = nb - b0 < QKB ? (int)(nb - b0) : QKB;
            pack_panel8(wq + r * cols, w->scales + r * nb, cols, nr, b0, kb, pw, sd);
            for (int64_t t = 0; t < ntok; t += QRN) {
                const int rn = ntok - t < QRN ? (int)(ntok - t) : QRN;
                const int8_t *xq = x->q + t * cols + b0 * LMP_QK;
                const float *xd = x->d + t * nb + b0;
                const int first = b0 == 0;
                float *yt = y + t * ldy + r;
                switch (rn) { Q8CASE(1) Q8CASE(2) Q8CASE(3) Q8CASE(4) default: break; }
            }
        }
    }
}

/* ---- quantizers ------------------------------------------------------------------------- */

/* Whole groups of 8 blocks (256 values) go through two passes over the group, which stays in
 * L1: the first takes each block's max |x| on the raw bit patterns and reduces the 8 of them
 * together; the 8 scales then come out of one vector division and one conversion to fp16, and
 * the second pass quantizes. Blocks after the last whole group take the one-block path. */
#define QGROUP 8

/* How far ahead of the group being read its source is requested: the first pass would
 * otherwise wait on each cache line in turn. */
#define QPREFETCH 4096

/* Round half away from zero to int32, exactly, for |v| <= 2^24 (x*id here is within 127.5):
 * trunc(v + copysign(0.5 - 2^-25, v)). Only a fraction of at least one half can carry the sum
 * to the next integer: at |v| >= 1 the sum keeps v's ulp (>= 2^-23), so a fraction just below
 * a half stays below; at 0.5 the sum is 1 - 2^-25, which ties to even 1.0; below 0.5 it stays
 * under 1. (Checked against the scalar rule for every such float.) The add must not be fused
 * with the multiply before it: ISO C mode (-std=c11) keeps GCC from contracting. */
INLINE __m256i round_away(__m256 v) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 half = _mm256_set1_ps(0x1.fffffep-2f);
    return _mm256_cvttps_epi32(_mm256_add_ps(v, _mm256_or_ps(_mm256_and_ps(v, sign), half)));
}

/* Quants of 32 values (i0..i3: values 0-7, ..., 24-31) as 32 bytes in order: the packs work
 * within 128-bit halves; the permute puts the 4-byte groups back in order. */
INLINE __m256i pack_block(__m256i i0, __m256i i1, __m256i i2, __m256i i3) {
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
    return _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* Quantizes 32 finite values in v[0..3]; returns d = amax/127 (f32). */
INLINE float quant_block(const __m256 v[4], int8_t *q) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                             _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    float amax = _mm_cvtss_f32(h);
    float d = amax / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    if (isinf(id)) { /* 1/d overflowed: ggml's reference gives quants 0 here (see scalar) */
        _mm256_storeu_si256((__m256i *)q, _mm256_setzero_si256());
        return d;
    }
    __m256 vid = _mm256_set1_ps(id);
    _mm256_storeu_si256((__m256i *)q, pack_block(round_away(_mm256_mul_ps(v[0], vid)),
                                                 round_away(_mm256_mul_ps(v[1], vid)),
                                                 round_away(_mm256_mul_ps(v[2], vid)),
                                                 round_away(_mm256_mul_ps(v[3], vid))));
    return d;
}

INLINE int nonfinite4(const __m256 v[4]) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 big = _mm256_set1_ps(FLT_MAX);
    __m256 bad = _mm256_setzero_ps();
    for (int k = 0; k < 4; k++)
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(_mm256_andnot_ps(sign, v[k]), big, _CMP_NLE_UQ));
    return _mm256_movemask_ps(bad) != 0;
}

INLINE void load_block(const void *src, int dt, int64_t i, __m256 v[4]) {
    for (int k = 0; k < 4; k++) {
        if (dt == LMP_F32) v[k] = ld_f32(src, i + 8 * k);
        else if (dt == LMP_F16) v[k] = ld_f16(src, i + 8 * k);
        else v[k] = ld_bf16(src, i + 8 * k);
    }
}

/* Max |x| of each of the 8 blocks at src + i, as the f32 bit patterns (exact; inf and nan
 * compare above every finite value). Signless IEEE bits order like their values, so the max
 * runs on integers: 32-bit lanes for f32, and for 16-bit sources the raw halves (16-bit max),
 * widened only once, at the end. Each level of the tree halves the vector count and
 * interleaves the partial maxima of pairs: after the 128-bit and the two 32-bit shuffle levels,
 * dword 4h+k holds block h+2k, which the last permute puts in order. */
INLINE __m256i group_amax(const void *src, int dt, int64_t i) {
    const int words = dt != LMP_F32;
    __m256i m[QGROUP];
    if (words) {
        const __m256i abs16 = _mm256_set1_epi16(0x7fff);
        const __m256i *s = (const __m256i *)((const uint16_t *)src + i);
        UNROLL for (int b = 0; b < QGROUP; b++)
            m[b] = _mm256_max_epu16(_mm256_and_si256(_mm256_loadu_si256(s + 2 * b), abs16),
                                    _mm256_and_si256(_mm256_loadu_si256(s + 2 * b + 1), abs16));
    } else {
        const __m256i abs32 = _mm256_set1_epi32(0x7fffffff);
        const __m256i *s = (const __m256i *)((const float *)src + i);
        UNROLL for (int b = 0; b < QGROUP; b++) {
            __m256i x0 = _mm256_and_si256(_mm256_loadu_si256(s + 4 * b), abs32);
            __m256i x1 = _mm256_and_si256(_mm256_loadu_si256(s + 4 * b + 1), abs32);
            __m256i x2 = _mm256_and_si256(_mm256_loadu_si256(s + 4 * b + 2), abs32);
            __m256i x3 = _mm256_and_si256(_mm256_loadu_si256(s + 4 * b + 3), abs32);
            m[b] = _mm256_max_epu32(_mm256_max_epu32(x0, x1), _mm256_max_epu32(x2, x3));
        }
    }
#define QMAX(x, y) (words ? _mm256_max_epu16((x), (y)) : _mm256_max_epu32((x), (y)))
#define QSHUF32(x, y, imm) \
    _mm256_castps_si256(_mm256_shuffle_ps(_mm256_castsi256_ps(x), _mm256_castsi256_ps(y), (imm)))
    UNROLL for (int k = 0; k < 4; k++) /* half 0: block 2k, half 1: block 2k+1 */
        m[k] = QMAX(_mm256_permute2x128_si256(m[2 * k], m[2 * k + 1], 0x20),
                    _mm256_permute2x128_si256(m[2 * k], m[2 * k + 1], 0x31));
    UNROLL for (int k = 0; k < 2; k++) /* half h: two dwords of block 4k+h, two of 4k+2+h */
        m[k] = QMAX(QSHUF32(m[2 * k], m[2 * k + 1], 0x44), QSHUF32(m[2 * k], m[2 * k + 1], 0xee));
    __m256i r = QMAX(QSHUF32(m[0], m[1], 0x88), QSHUF32(m[0], m[1], 0xdd));
#undef QMAX
#undef QSHUF32
    r = _mm256_permutevar8x32_epi32(r, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    if (!words) return r;
    r = _mm256_max_epu16(r, _mm256_srli_epi32(r, 16)); /* low half: the block's max half */
    if (dt == LMP_BF16) return _mm256_slli_epi32(r, 16);
    r = _mm256_and_si256(r, _mm256_set1_epi32(0xffff));
    r = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08); /* the 8 halves, in order */
    return _mm256_castps_si256(_mm256_cvtph_ps(_mm256_castsi256_si128(r)));
}

/* Bit b set: block b's max |x| is inf or nan (signless bits compare as positive int32). */
INLINE int group_nonfinite(__m256i amax) {
    return _mm256_movemask_ps(_mm256_castsi256_ps(
        _mm256_cmpgt_epi32(amax, _mm256_set1_epi32(0x7f7fffff))));
}

/* d = amax/127 and id = 1/d per lane, id = 0 where d is 0 or 1/d overflows (ggml's reference
 * writes quants 0 there, see scalar): both IEEE divisions, as the scalar rule does them (a zero
 * d is divided as 1, so no division by zero is raised). */
INLINE __m256 group_scales(__m256i amax, __m256 *id) {
    const __m256 one = _mm256_set1_ps(1.0f);
    __m256 d = _mm256_div_ps(_mm256_castsi256_ps(amax), _mm256_set1_ps(127.0f));
    __m256 zero = _mm256_cmp_ps(d, _mm256_setzero_ps(), _CMP_EQ_OQ);
    __m256 r = _mm256_div_ps(one, _mm256_blendv_ps(d, one, zero));
    __m256 keep = _mm256_andnot_ps(zero, _mm256_cmp_ps(r, _mm256_set1_ps(INFINITY), _CMP_LT_OQ));
    *id = _mm256_and_ps(r, keep);
    return d;
}

/* bf16 blocks need no widening shuffle: the even-indexed values are the low halves of the
 * dwords shifted up, the odd ones the high halves masked. Their quants go back into 16-bit
 * order with a shift and a mask (no word blend: that is a shuffle-port op on many AVX2 CPUs). */
INLINE __m256i quant_bf16_words(__m256i raw, __m256 id) {
    const __m256i lo = _mm256_set1_epi32(0xffff);
    __m256 ev = _mm256_castsi256_ps(_mm256_slli_epi32(raw, 16));
    __m256 od = _mm256_castsi256_ps(_mm256_andnot_si256(lo, raw));
    __m256i qe = round_away(_mm256_mul_ps(ev, id)), qo = round_away(_mm256_mul_ps(od, id));
    return _mm256_or_si256(_mm256_and_si256(qe, lo), _mm256_slli_epi32(qo, 16));
}

/* Second pass: quants of the 8 blocks at src + i, block b scaled by lane b of id. The scales
 * go through memory so each block's comes back as a broadcast load rather than a shuffle (the
 * one shuffle port is the busy one here); the empty asm keeps the compiler from turning them
 * into permutes. */
INLINE void group_quant(const void *src, int dt, int64_t i, __m256 id, int8_t *q) {
    float ids[QGROUP];
    _mm256_storeu_ps(ids, id);
#if defined(__GNUC__)
    __asm__("" : "+m"(ids));
#endif
    UNROLL for (int b = 0; b < QGROUP; b++) {
        const __m256 vid = _mm256_broadcast_ss(&ids[b]);
        __m256i p;
        if (dt == LMP_BF16) { /* the pack leaves qwords w0.lo, w1.lo, w0.hi, w1.hi */
            const __m256i *s = (const __m256i *)((const uint16_t *)src + i + b * LMP_QK);
            p = _mm256_packs_epi16(quant_bf16_words(_mm256_loadu_si256(s), vid),
                                   quant_bf16_words(_mm256_loadu_si256(s + 1), vid));
            p = _mm256_permute4x64_epi64(p, 0xd8);
        } else {
            __m256 v[4];
            load_block(src, dt, i + b * LMP_QK, v);
            p = pack_block(round_away(_mm256_mul_ps(v[0], vid)), round_away(_mm256_mul_ps(v[1], vid)),
                           round_away(_mm256_mul_ps(v[2], vid)), round_away(_mm256_mul_ps(v[3], vid)));
        }
        _mm256_storeu_si256((__m256i *)(q + b * LMP_QK), p);
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
        __m256i amax = group_amax(src, dt, i);
        if (group_nonfinite(amax)) return -1;
        __m256 id, dv = group_scales(amax, &id);
        _mm_storeu_si128((__m128i *)(d + blk), _mm256_cvtps_ph(dv, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        group_quant(src, dt, i, id, q + i);
    }
    for (; blk < nb; blk++) {
        const int64_t i = blk * LMP_QK;
        __m256 v[4];
        load_block(src, dt, i, v);
        if (nonfinite4(v)) return -1;
        d[blk] = lmp_f32_to_f16(quant_block(v, q + i));
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
    __m256 v[4];
    load_block(x, LMP_F32, 0, v);
    if (nonfinite4(v)) {
        _mm256_storeu_si256((__m256i *)q, _mm256_setzero_si256());
        *d = NAN;
        return;
    }
    *d = quant_block(v, q);
}

static void quantize_act_q8(const float *x, int64_t n, int8_t *q, float *d) {
    const int64_t nb = n / LMP_QK;
    int64_t blk = 0;
    for (; blk + QGROUP <= nb; blk += QGROUP) {
        const int64_t i = blk * LMP_QK;
        __m256i amax = group_amax(x, LMP_F32, i);
        if (group_nonfinite(amax)) { /* rare: block by block, so only the bad blocks get nan */
            for (int b = 0; b < QGROUP; b++)
                quantize_act_block(x + i + b * LMP_QK, q + i + b * LMP_QK, d + blk + b);
            continue;
        }
        __m256 id;
        _mm256_storeu_ps(d + blk, group_scales(amax, &id));
        group_quant(x, LMP_F32, i, id, q + i);
    }
    for (; blk < nb; blk++) quantize_act_block(x + blk * LMP_QK, q + blk * LMP_QK, d + blk);
}

/* ---- vector helpers ---------------------------------------------------------------------- */

static float dot_f32(const float *a, const float *b, int64_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    if (i < n) s0 = _mm256_fmadd_ps(ldm_f32(a, i, n - i), ldm_f32(b, i, n - i), s0);
    return hsum8(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

static void axpy_f32(float a, const float *x, float *y, int64_t n) {
    __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    if (i < n) {
        __m256i m = first_lanes(n - i);
        __m256 v = _mm256_fmadd_ps(va, _mm256_maskload_ps(x + i, m), _mm256_maskload_ps(y + i, m));
        _mm256_maskstore_ps(y + i, m, v);
    }
}

/* ---- SwiGLU gate and attention --------------------------------------------------------------- */

/* e^x per lane: x = n ln2 + r with n = round(x log2 e) and ln2 in two parts, e^r by its Taylor
 * polynomial to r^7 (|r| <= ln2/2), then times 2^n as two exact powers of two, so results that
 * fall below the normal range round once, like a scaling instruction would. x is clamped to
 * [-104, 104] (e^x is 0 below after rounding, inf above after the scaling); NaN passes. */
INLINE __m256 exp256(__m256 x) {
    x = _mm256_max_ps(_mm256_set1_ps(-104.0f), x); /* NaN x: the second operand, x, is kept */
    x = _mm256_min_ps(_mm256_set1_ps(104.0f), x);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), r);
    __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    /* 2^n = 2^n1 * 2^n2 with n1 = n >> 1: both within the normal exponents for |n| <= 151 */
    __m256i ni = _mm256_cvtps_epi32(n);
    __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
    const __m256i bias = _mm256_set1_epi32(127);
    __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
    __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}

/* The SwiGLU gate: g/(1 + e^-g) * u, the division and multiply rounded as the scalar loop's. */
static void silu_mul_f32(float *g, const float *u, int64_t n) {
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < n; i += 8) {
        const __m256i m = first_lanes(n - i >= 8 ? 8 : n - i);
        __m256 gv = _mm256_maskload_ps(g + i, m);
        __m256 s = _mm256_div_ps(gv, _mm256_add_ps(one, exp256(_mm256_xor_ps(gv, sign))));
        _mm256_maskstore_ps(g + i, m, _mm256_mul_ps(s, _mm256_maskload_ps(u + i, m)));
    }
}

/* s[p] = e^(s[p] - mx) for p < n; returns their sum (8 lanes by p mod 8, fixed reduction). Whole
 * vectors load and store plainly (masked moves are slow on some cores); the tail is masked. */
static float softmax_exp(float *s, int64_t n, float mx) {
    const __m256 m = _mm256_set1_ps(mx);
    __m256 acc = _mm256_setzero_ps();
    int64_t p = 0;
    for (; p + 8 <= n; p += 8) {
        const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(s + p), m));
        _mm256_storeu_ps(s + p, e);
        acc = _mm256_add_ps(acc, e);
    }
    if (p < n) {
        const __m256i k = first_lanes(n - p);
        __m256 e = _mm256_and_ps(exp256(_mm256_sub_ps(_mm256_maskload_ps(s + p, k), m)), _mm256_castsi256_ps(k));
        _mm256_maskstore_ps(s + p, k, e);
        acc = _mm256_add_ps(acc, e);
    }
    return hsum8(acc);
}

/* Vector i of a head row; the last one masked to the head's width unless it is whole (FULL). */
#define ATT_LD(p, i) (i == NV - 1 && !FULL ? _mm256_maskload_ps((p) + i * 8, tail) : _mm256_loadu_ps((p) + i * 8))

/* Scores of one query at positions [p, p + 4) clipped to npos (a short group repeats its final
 * position): two chains per position (even and odd vectors of the head), added, then the 4
 * sums folded with the same adds for every position, times scale. mx takes their max. */
INLINE void att_scores4(const float *q, const float *k, int64_t ld, int64_t p, int64_t npos, __m256i tail,
                        __m128 sc, float *s, __m128 *mx, const int NV, const int FULL) {
    const float *kp[4];
    UNROLL for (int j = 0; j < 4; j++) kp[j] = k + (p + j < npos ? p + j : npos - 1) * ld;
    __m256 a[4], b[4];
    UNROLL for (int j = 0; j < 4; j++) a[j] = b[j] = _mm256_setzero_ps();
    UNROLL for (int i = 0; i < NV; i++) {
        const __m256 qv = ATT_LD(q, i);
        UNROLL for (int j = 0; j < 4; j++) {
            if (i % 2) b[j] = _mm256_fmadd_ps(qv, ATT_LD(kp[j], i), b[j]);
            else a[j] = _mm256_fmadd_ps(qv, ATT_LD(kp[j], i), a[j]);
        }
    }
    UNROLL for (int j = 0; j < 4; j++) a[j] = _mm256_add_ps(a[j], b[j]);
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    const __m128 x = _mm_mul_ps(_mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)), sc);
    if (p + 4 <= npos) {
        _mm_storeu_ps(s + p, x);
        *mx = _mm_max_ps(*mx, x);
        return;
    }
    float x4[4];
    _mm_storeu_ps(x4, x);
    for (int j = 0; p + j < npos; j++) s[p + j] = x4[j];
    /* the repeated position's score equals the last real one: the max is unchanged */
    *mx = _mm_max_ps(*mx, x);
}

/* QB queries' weighted value sums over positions [c0, c1): o_r += s_r[p] v_p in order of p for
 * each, each value vector loaded once for all of them; npos[] is non-decreasing, so positions
 * past the first query's finish query by query. The sums start at 0 when c0 is 0, else from
 * out, where they are left (exactly: a stored float reloads as itself). */
INLINE void att_values(const float *v, int64_t ld, int64_t c0, int64_t c1, const int64_t *npos, __m256i tail,
                       float *const *s, float *const *out, int64_t col, const int NV, const int FULL, const int QB) {
    __m256 o[4][16];
    v += col;
    UNROLL for (int r = 0; r < QB; r++) UNROLL for (int i = 0; i < NV; i++)
        o[r][i] = c0 == 0 ? _mm256_setzero_ps() : ATT_LD(out[r] + col, i);
    int64_t p = c0;
    for (; p < c1 && p < npos[0]; p++) {
        const float *vp = v + p * ld;
        __m256 w[4];
        UNROLL for (int r = 0; r < QB; r++) w[r] = _mm256_broadcast_ss(s[r] + p);
        UNROLL for (int i = 0; i < NV; i++) {
            const __m256 x = ATT_LD(vp, i);
            UNROLL for (int r = 0; r < QB; r++) o[r][i] = _mm256_fmadd_ps(w[r], x, o[r][i]);
        }
    }
    UNROLL for (int r = 1; r < QB; r++)
        for (int64_t pp = p; pp < c1 && pp < npos[r]; pp++) {
            const float *vp = v + pp * ld;
            const __m256 w = _mm256_broadcast_ss(s[r] + pp);
            UNROLL for (int i = 0; i < NV; i++) o[r][i] = _mm256_fmadd_ps(w, ATT_LD(vp, i), o[r][i]);
        }
    UNROLL for (int r = 0; r < QB; r++) UNROLL for (int i = 0; i < NV; i++) {
        if (i == NV - 1 && !FULL) _mm256_maskstore_ps(out[r] + col + i * 8, tail, o[r][i]);
        else _mm256_storeu_ps(out[r] + col + i * 8, o[r][i]);
    }
}

/* The value sums of nb queries over positions [c0, c1), the head's columns in slices of at most
 * 4 vectors for 3 queries at a time: 12 independent FMA chains (one FMA's latency times the two
 * FMA units, with room to spare) and 3 weights within 16 ymm; the block's last one or two queries
 * go together. A column slice is a set of lanes, each summed in order of p as before. */
INLINE void att_values_cols(const float *v, int64_t ld, int64_t c0, int64_t c1, const int64_t *npos, __m256i tail,
                            float *const *s, float *const *out, int nb, int64_t col, const int NS, const int FULL) {
    int r = 0;
    for (; r + 3 <= nb; r += 3) att_values(v, ld, c0, c1, npos + r, tail, s + r, out + r, col, NS, FULL, 3);
    if (nb - r == 2) att_values(v, ld, c0, c1, npos + r, tail, s + r, out + r, col, NS, FULL, 2);
    else if (nb - r == 1) att_values(v, ld, c0, c1, npos + r, tail, s + r, out + r, col, NS, FULL, 1);
}

/* Positions per slice of the value pass: a slice of rows stays in L1 for all of a block's queries
 * even when the cache's row stride maps its rows onto a few sets (a multiple of 1 KB does). */
#define ATT_VCHUNK 16

/* Attention for a block of queries (kernels.h), LMP_ATT_ROWS queries at a time: their scores
 * 4 positions at a time, a 16-position slice for every query before the next so its key rows
 * stay in L1; per query the softmax with the vector exp (softmax_exp, the single-query sum) and
 * each score times 1/sum, rounded as the single-query kernel did; then the value sums
 * (att_values_cols), ATT_VCHUNK positions at a time. NV (vectors per head row) is a constant in
 * each instance. */
INLINE void attend_nv(const float *q, int64_t ldq, int64_t nh, int64_t ntok, const float *k, const float *v,
                      int64_t ld, int64_t npos0, int64_t hd, float scale, float *s, float *out, int64_t ldo,
                      const int NV, const int FULL) {
    const __m256i tail = first_lanes(hd - 8 * (NV - 1));
    const __m128 sc = _mm_set1_ps(scale);
    const int64_t nq = nh * ntok, stride = npos0 + ntok - 1;
    for (int64_t r0 = 0; r0 < nq; r0 += LMP_ATT_ROWS) {
        const int nb = nq - r0 < LMP_ATT_ROWS ? (int)(nq - r0) : LMP_ATT_ROWS;
        int64_t npos[LMP_ATT_ROWS];
        const float *qr[LMP_ATT_ROWS];
        float *sr[LMP_ATT_ROWS], *orow[LMP_ATT_ROWS];
        __m128 mx[LMP_ATT_ROWS];
        for (int r = 0; r < nb; r++) {
            const int64_t t = (r0 + r) / nh, jh = (r0 + r) % nh;
            npos[r] = npos0 + t;
            qr[r] = q + t * ldq + jh * hd;
            sr[r] = s + (int64_t)r * stride;
            orow[r] = out + t * ldo + jh * hd;
            mx[r] = _mm_set1_ps(-INFINITY);
        }
        const int64_t last = npos0 + (r0 + nb - 1) / nh; /* the block's longest row */
        for (int64_t p = 0; p < last; p += 16)
            for (int r = 0; r < nb; r++)
                for (int64_t pp = p; pp < p + 16 && pp < npos[r]; pp += 4)
                    att_scores4(qr[r], k, ld, pp, npos[r], tail, sc, sr[r], &mx[r], NV, FULL);
        for (int r = 0; r < nb; r++) {
            __m128 m = _mm_max_ps(mx[r], _mm_movehl_ps(mx[r], mx[r]));
            m = _mm_max_ss(m, _mm_movehdup_ps(m));
            const float inv = 1.0f / softmax_exp(sr[r], npos[r], _mm_cvtss_f32(m));
            const __m256 vi = _mm256_set1_ps(inv);
            int64_t p = 0;
            for (; p + 8 <= npos[r]; p += 8) _mm256_storeu_ps(sr[r] + p, _mm256_mul_ps(_mm256_loadu_ps(sr[r] + p), vi));
            for (; p < npos[r]; p++) sr[r][p] *= inv;
        }
        /* the value rows a slice of positions at a time (~16 KB), every query of the block in
         * turn, so each row comes from L2 once per block */
        for (int64_t c0 = 0; c0 < last; c0 += ATT_VCHUNK) {
            int i0 = 0;
            for (; i0 + 4 < NV; i0 += 4)
                att_values_cols(v, ld, c0, c0 + ATT_VCHUNK, npos, tail, sr, orow, nb, i0 * 8, 4, 1);
            att_values_cols(v, ld, c0, c0 + ATT_VCHUNK, npos, tail, sr, orow, nb, i0 * 8, NV - 4 * ((NV - 1) / 4), FULL);
        }
    }
#undef ATT_LD
}

DEFINE_ATTEND_WIDE(attend_wide, dot_f32, softmax_exp, axpy_f32)

static void attend_f32(const float *q, int64_t ldq, int64_t nh, int64_t ntok, const float *k, const float *v,
                       int64_t ld, int64_t npos0, int64_t hd, float scale, float *s, float *out, int64_t ldo) {
    switch ((hd + 7) / 8 * 2 + (hd % 8 == 0)) {
#define ATT_CASE(NV)                                                                                       \
    case NV * 2: attend_nv(q, ldq, nh, ntok, k, v, ld, npos0, hd, scale, s, out, ldo, NV, 0); return;     \
    case NV * 2 + 1: attend_nv(q, ldq, nh, ntok, k, v, ld, npos0, hd, scale, s, out, ldo, NV, 1); return;
        ATT_CASE(1) ATT_CASE(2) ATT_CASE(3) ATT_CASE(4) ATT_CASE(5) ATT_CASE(6) ATT_CASE(7) ATT_CASE(8)
        ATT_CASE(9) ATT_CASE(10) ATT_CASE(11) ATT_CASE(12) ATT_CASE(13) ATT_CASE(14) ATT_CASE(15) ATT_CASE(16)
#undef ATT_CASE
    default: break;
    }
    /* heads wider than 128: the composed path, query by query */
    attend_wide(q, ldq, nh, ntok, k, v, ld, npos0, hd, scale, s, out, ldo);
}

const lmp_kernels lmp_kernels_avx2 = {
    .name = "avx2",
    .matmul = {[LMP_F32] = matmul_f32, [LMP_F16] = matmul_f16, [LMP_BF16] = matmul_bf16,
               [LMP_Q8_0] = matmul_q8_0},
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
