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

DEFINE_FMATMUL(matmul_f32, ftile_f32, 4)
DEFINE_FMATMUL(matmul_f16, ftile_f16, 2)
DEFINE_FMATMUL(matmul_bf16, ftile_bf16, 2)

/* ---- q8_0 weights x q8 activations -------------------------------------------------------- */

/* Per 32-block: maddubs takes unsigned x signed bytes, so it gets |w| and x with w's sign moved
 * onto it (|q| <= 127, so neither overflows and pair sums stay below 2^15); madd with ones
 * widens to 8 int32 lanes of 4 products each, converted to float and FMA'd with d_w*d_x. */

#define QRM 2
#define QRN 2

INLINE __m256i dot_lanes(__m256i aw, __m256i w, __m256i x) {
    __m256i p16 = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(x, w));
    return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}

INLINE void qtile(const int8_t *wq, const uint16_t *ws, const lmp_q8_act *x, int64_t t0,
                  int64_t cols, int rm, int rn, float *y, int64_t ldy) {
    const int64_t nb = cols / LMP_QK;
    __m256 acc[QRM * 2][QRN];
    UNROLL for (int i = 0; i < rm; i++) UNROLL for (int j = 0; j < rn; j++) acc[i][j] =
        _mm256_setzero_ps();
    const int64_t ahead = rn == 1 ? gemv_ahead(cols, rm, 1) : 0;
    for (int64_t b = 0; b < nb; b++) {
        if (ahead) { /* see gemv_ahead */
            GEMV_PREFETCH(wq, ahead + b * LMP_QK * rm, rm * LMP_QK);
            GEMV_PREFETCH(ws, ahead / 16 + b * 2 * rm, 1);
        }
        __m256i wv[QRM * 2], aw[QRM * 2];
        __m256 dw[QRM * 2];
        UNROLL for (int i = 0; i < rm; i++) {
            wv[i] = _mm256_loadu_si256((const __m256i *)(wq + i * cols + b * LMP_QK));
            aw[i] = _mm256_sign_epi8(wv[i], wv[i]);
            dw[i] = _mm256_set1_ps(_cvtsh_ss(ws[i * nb + b]));
        }
        UNROLL for (int j = 0; j < rn; j++) {
            __m256i xv = _mm256_loadu_si256((const __m256i *)(x->q + (t0 + j) * cols + b * LMP_QK));
            __m256 dx = _mm256_broadcast_ss(x->d + (t0 + j) * nb + b);
            UNROLL for (int i = 0; i < rm; i++) {
                __m256 f = _mm256_cvtepi32_ps(dot_lanes(aw[i], wv[i], xv));
                acc[i][j] = _mm256_fmadd_ps(f, _mm256_mul_ps(dw[i], dx), acc[i][j]);
            }
        }
    }
    UNROLL for (int i = 0; i < rm; i++) UNROLL for (int j = 0; j < rn; j++)
        y[j * ldy + i] = hsum8(acc[i][j]);
}

#define QCASE(RM, RN) case (RM) * 16 + (RN): qtile(wq, ws, x, t0, cols, RM, RN, y, ldy); break;

static void qtile_any(const int8_t *wq, const uint16_t *ws, const lmp_q8_act *x, int64_t t0,
                      int64_t cols, int rm, int rn, float *y, int64_t ldy) {
    switch (rm * 16 + rn) {
        QCASE(1, 1) QCASE(1, 2) QCASE(2, 1) QCASE(2, 2) QCASE(4, 1)
    default: break;
    }
}

static void matmul_q8_0(const lmp_weight *w, int64_t r0, int64_t r1, const void *xv,
                        int64_t ntok, float *y, int64_t ldy) {
    const lmp_q8_act *x = xv;
    const int8_t *wq = w->data;
    const int64_t cols = w->cols, nb = cols / LMP_QK;
    if (ntok == 1) {
        gemv_prologue(wq + r0 * cols, w->scales + r0 * nb, (r1 - r0) * cols, gemv_ahead(cols, 4, 1));
        int64_t r = r0;
        for (; r + 4 <= r1; r += 4) qtile_any(wq + r * cols, w->scales + r * nb, x, 0, cols, 4, 1, y + r, ldy);
        for (; r < r1; r++) qtile_any(wq + r * cols, w->scales + r * nb, x, 0, cols, 1, 1, y + r, ldy);
        return;
    }
    for (int64_t r = r0; r < r1; r += QRM) {
        int rm = r1 - r < QRM ? (int)(r1 - r) : QRM;
        for (int64_t t = 0; t < ntok; t += QRN) {
            int rn = ntok - t < QRN ? (int)(ntok - t) : QRN;
            qtile_any(wq + r * cols, w->scales + r * nb, x, t, cols, rm, rn, y + t * ldy + r, ldy);
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

const lmp_kernels lmp_kernels_avx2 = {
    .name = "avx2",
    .matmul = {[LMP_F32] = matmul_f32, [LMP_F16] = matmul_f16, [LMP_BF16] = matmul_bf16,
               [LMP_Q8_0] = matmul_q8_0},
    .quantize_q8_0 = quantize_q8_0,
    .quantize_act_q8 = quantize_act_q8,
    .dot_f32 = dot_f32,
    .axpy_f32 = axpy_f32,
};

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif /* x86-64 */
