/* The NEON kernel table (AArch64 Advanced SIMD + the dotprod extension): the fast path on arm64.
 *
 * Only compiled on aarch64. Advanced SIMD is part of the base architecture; sdot is not, so this
 * file raises its target to +dotprod and dispatch.c offers the table only when getauxval (or
 * sysctl on macOS) reports ASIMDDP.
 *
 * Same structure as the x86 tables: a tile of RM rows x RN tokens with one 4-lane accumulator per
 * output, generation with RN = 1, and a per-output chain and reduction that do not depend on the
 * tile shape, so an output's value depends only on (row, token, cols).
 */
#include "kernels.h"
#include "tiling.h"

#if defined(__aarch64__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("dotprod"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")
#endif

#include <arm_neon.h>
#include <float.h>
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

/* acc + 4-lane dot of 16 signed bytes (sdot). Older clang headers only declare vdotq_s32 when the
 * whole unit is built with dotprod, so there the instruction is spelled out. */
INLINE int32x4_t sdot(int32x4_t acc, int8x16_t a, int8x16_t b) {
#if defined(__clang__) && !defined(__ARM_FEATURE_DOTPROD)
    __asm__(".arch_extension dotprod\n\tsdot %0.4s, %1.16b, %2.16b" : "+w"(acc) : "w"(a), "w"(b));
    return acc;
#else
    return vdotq_s32(acc, a, b);
#endif
}

/* Fixed-order horizontal sum: (a0 + a2) + (a1 + a3). */
INLINE float hsum4(float32x4_t v) {
    float32x2_t s = vadd_f32(vget_low_f32(v), vget_high_f32(v));
    return vget_lane_f32(s, 0) + vget_lane_f32(s, 1);
}

/* ---- f32 / f16 / bf16 weights ---------------------------------------------------------- */

INLINE float32x4_t ld_f32(const void *p, int64_t c) { return vld1q_f32((const float *)p + c); }
INLINE float32x4_t ld_f16(const void *p, int64_t c) {
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)p + c)));
}
INLINE float32x4_t ld_bf16(const void *p, int64_t c) {
    return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16((const uint16_t *)p + c), 16));
}
/* Tails (k < 4 live values) through a zeroed block, so nothing past the row is read. */
INLINE float32x4_t ldt_f32(const void *p, int64_t c, int64_t k) {
    float b[4] = {0};
    memcpy(b, (const float *)p + c, (size_t)k * 4);
    return vld1q_f32(b);
}
INLINE float32x4_t ldt_f16(const void *p, int64_t c, int64_t k) {
    uint16_t b[4] = {0};
    memcpy(b, (const uint16_t *)p + c, (size_t)k * 2);
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(b)));
}
INLINE float32x4_t ldt_bf16(const void *p, int64_t c, int64_t k) {
    uint16_t b[4] = {0};
    memcpy(b, (const uint16_t *)p + c, (size_t)k * 2);
    return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(b), 16));
}

#define FRM 4
#define FRN 4 /* 16 accumulators + 4 activations + 1 weight of 32 vector registers */

#define DEFINE_FTILE(NAME, ESIZE, LD, LDT)                                                       \
    INLINE void NAME(const char *w, const float *x, int64_t cols, int rm, int rn, float *y,     \
                     int64_t ldy) {                                                             \
        float32x4_t acc[FRM * 2][FRN];                                                          \
        UNROLL for (int i = 0; i < rm; i++) UNROLL for (int j = 0; j < rn; j++) acc[i][j] =    \
            vdupq_n_f32(0.0f);                                                                  \
        int64_t c = 0;                                                                          \
        for (; c + 4 <= cols; c += 4) {                                                         \
            float32x4_t xv[FRN];                                                                \
            UNROLL for (int j = 0; j < rn; j++) xv[j] = vld1q_f32(x + j * cols + c);           \
            UNROLL for (int i = 0; i < rm; i++) {                                               \
                float32x4_t wv = LD(w + i * cols * ESIZE, c);                                   \
                UNROLL for (int j = 0; j < rn; j++) acc[i][j] = vfmaq_f32(acc[i][j], wv, xv[j]); \
            }                                                                                   \
        }                                                                                       \
        if (c < cols) {                                                                         \
            const int64_t k = cols - c;                                                         \
            float32x4_t xv[FRN];                                                                \
            UNROLL for (int j = 0; j < rn; j++) xv[j] = ldt_f32(x + j * cols, c, k);           \
            UNROLL for (int i = 0; i < rm; i++) {                                               \
                float32x4_t wv = LDT(w + i * cols * ESIZE, c, k);                               \
                UNROLL for (int j = 0; j < rn; j++) acc[i][j] = vfmaq_f32(acc[i][j], wv, xv[j]); \
            }                                                                                   \
        }                                                                                       \
        UNROLL for (int i = 0; i < rm; i++) UNROLL for (int j = 0; j < rn; j++)                \
            y[j * ldy + i] = hsum4(acc[i][j]);                                                  \
    }

DEFINE_FTILE(ftile_f32, 4, ld_f32, ldt_f32)
DEFINE_FTILE(ftile_f16, 2, ld_f16, ldt_f16)
DEFINE_FTILE(ftile_bf16, 2, ld_bf16, ldt_bf16)

#define FCASES_RM(T, RM) FCASE(T, RM, 1) FCASE(T, RM, 2) FCASE(T, RM, 3) FCASE(T, RM, 4)

DEFINE_FMATMUL(matmul_f32, ftile_f32, 4)
DEFINE_FMATMUL(matmul_f16, ftile_f16, 2)
DEFINE_FMATMUL(matmul_bf16, ftile_bf16, 2)

/* ---- q8_0 weights x q8 activations -------------------------------------------------------- */

/* Per 32-block: two sdot give 4 int32 lanes of 8 products each (exact), converted to float and
 * FMA'd with d_w*d_x into the output's float accumulator. */

#define QRM 4
#define QRN 2

INLINE void qtile(const int8_t *wq, const uint16_t *ws, const lmp_q8_act *x, int64_t t0,
                  int64_t cols, int rm, int rn, float *y, int64_t ldy) {
    const int64_t nb = cols / LMP_QK;
    float32x4_t acc[QRM][QRN];
    UNROLL for (int i = 0; i < rm; i++) UNROLL for (int j = 0; j < rn; j++) acc[i][j] =
        vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++) {
        int8x16_t w0[QRM], w1[QRM];
        float dw[QRM];
        UNROLL for (int i = 0; i < rm; i++) {
            const int8_t *p = wq + i * cols + b * LMP_QK;
            w0[i] = vld1q_s8(p);
            w1[i] = vld1q_s8(p + 16);
            dw[i] = lmp_f16_to_f32(ws[i * nb + b]);
        }
        UNROLL for (int j = 0; j < rn; j++) {
            const int8_t *p = x->q + (t0 + j) * cols + b * LMP_QK;
            int8x16_t x0 = vld1q_s8(p), x1 = vld1q_s8(p + 16);
            float dx = x->d[(t0 + j) * nb + b];
            UNROLL for (int i = 0; i < rm; i++) {
                int32x4_t s = sdot(sdot(vdupq_n_s32(0), w0[i], x0), w1[i], x1);
                acc[i][j] = vfmaq_f32(acc[i][j], vcvtq_f32_s32(s), vdupq_n_f32(dw[i] * dx));
            }
        }
    }
    UNROLL for (int i = 0; i < rm; i++) UNROLL for (int j = 0; j < rn; j++)
        y[j * ldy + i] = hsum4(acc[i][j]);
}

#define QCASE(RM, RN) case (RM) * 16 + (RN): qtile(wq, ws, x, t0, cols, RM, RN, y, ldy); break;

static void qtile_any(const int8_t *wq, const uint16_t *ws, const lmp_q8_act *x, int64_t t0,
                      int64_t cols, int rm, int rn, float *y, int64_t ldy) {
    switch (rm * 16 + rn) {
        QCASE(1, 1) QCASE(1, 2) QCASE(2, 1) QCASE(2, 2) QCASE(3, 1) QCASE(3, 2) QCASE(4, 1)
        QCASE(4, 2)
    default: break;
    }
}

static void matmul_q8_0(const lmp_weight *w, int64_t r0, int64_t r1, const void *xv,
                        int64_t ntok, float *y, int64_t ldy) {
    const lmp_q8_act *x = xv;
    const int8_t *wq = w->data;
    const int64_t cols = w->cols, nb = cols / LMP_QK;
    for (int64_t r = r0; r < r1; r += QRM) {
        int rm = r1 - r < QRM ? (int)(r1 - r) : QRM;
        for (int64_t t = 0; t < ntok; t += QRN) {
            int rn = ntok - t < QRN ? (int)(ntok - t) : QRN;
            qtile_any(wq + r * cols, w->scales + r * nb, x, t, cols, rm, rn, y + t * ldy + r, ldy);
        }
    }
}

/* ---- quantizers ------------------------------------------------------------------------- */

/* fcvtas rounds to nearest with ties away from zero on the exact product: ggml's roundf. */
INLINE float quant_block(const float32x4_t v[8], int8_t *q) {
    float32x4_t m = vabsq_f32(v[0]);
    for (int k = 1; k < 8; k++) m = vmaxq_f32(m, vabsq_f32(v[k]));
    float amax = vmaxvq_f32(m);
    float d = amax / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    if (isinf(id)) { /* 1/d overflowed: ggml's reference gives quants 0 here (see scalar) */
        memset(q, 0, LMP_QK);
        return d;
    }
    for (int k = 0; k < 8; k += 2) {
        int32x4_t a = vcvtaq_s32_f32(vmulq_n_f32(v[k], id));
        int32x4_t b = vcvtaq_s32_f32(vmulq_n_f32(v[k + 1], id));
        int16x8_t h = vcombine_s16(vmovn_s32(a), vmovn_s32(b));
        vst1_s8(q + 4 * k, vmovn_s16(h));
    }
    return d;
}

INLINE int nonfinite8(const float32x4_t v[8]) {
    uint32x4_t ok = vcleq_f32(vabsq_f32(v[0]), vdupq_n_f32(FLT_MAX)); /* false for inf, nan */
    for (int k = 1; k < 8; k++) ok = vandq_u32(ok, vcleq_f32(vabsq_f32(v[k]), vdupq_n_f32(FLT_MAX)));
    return vminvq_u32(ok) == 0;
}

static int quantize_q8_0(const void *src, int src_dtype, int64_t n, int8_t *q, uint16_t *d) {
    for (int64_t blk = 0; blk < n / LMP_QK; blk++) {
        int64_t i = blk * LMP_QK;
        float32x4_t v[8];
        for (int k = 0; k < 8; k++) {
            if (src_dtype == LMP_F32) v[k] = ld_f32(src, i + 4 * k);
            else if (src_dtype == LMP_F16) v[k] = ld_f16(src, i + 4 * k);
            else v[k] = ld_bf16(src, i + 4 * k);
        }
        if (nonfinite8(v)) return -1;
        d[blk] = lmp_f32_to_f16(quant_block(v, q + i));
    }
    return 0;
}

static void quantize_act_q8(const float *x, int64_t n, int8_t *q, float *d) {
    for (int64_t blk = 0; blk < n / LMP_QK; blk++) {
        int64_t i = blk * LMP_QK;
        float32x4_t v[8];
        for (int k = 0; k < 8; k++) v[k] = vld1q_f32(x + i + 4 * k);
        if (nonfinite8(v)) { /* quants 0, scale nan: the nan reaches every output */
            memset(q + i, 0, LMP_QK);
            d[blk] = NAN;
            continue;
        }
        d[blk] = quant_block(v, q + i);
    }
}

/* ---- vector helpers ---------------------------------------------------------------------- */

static float dot_f32(const float *a, const float *b, int64_t n) {
    float32x4_t s0 = vdupq_n_f32(0.0f), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
        s1 = vfmaq_f32(s1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
        s2 = vfmaq_f32(s2, vld1q_f32(a + i + 8), vld1q_f32(b + i + 8));
        s3 = vfmaq_f32(s3, vld1q_f32(a + i + 12), vld1q_f32(b + i + 12));
    }
    for (; i + 4 <= n; i += 4) s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
    if (i < n) s0 = vfmaq_f32(s0, ldt_f32(a, i, n - i), ldt_f32(b, i, n - i));
    return hsum4(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
}

static void axpy_f32(float a, const float *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), vld1q_f32(x + i), a));
    for (; i < n; i++) y[i] = fmaf(a, x[i], y[i]); /* same single rounding as the vector body */
}

const lmp_kernels lmp_kernels_neon = {
    .name = "neon",
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

#endif /* __aarch64__ */
