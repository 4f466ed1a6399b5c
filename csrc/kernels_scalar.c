/* The scalar kernel table: plain C reference for every entry of lmp_kernels.
 *
 * Every SIMD table is tested against this one: the quantizers bit for bit, the int8 parts of the
 * q8_0 matmul exactly, and the float matmuls within a tolerance. It is also what runs on a CPU
 * with none of the supported instruction sets, so it is written to be portable before fast.
 */
#include <float.h>
#include <math.h>

#include "half.h"
#include "kernels.h"

/* fp16 -> f32 without branches on the value: a half's bits shifted into f32 position read as a
 * float 2^112 too small (subnormal halves as f32 denormals), and the power-of-two multiply is
 * exact. Equal to lmp_f16_to_f32 for all 65536 inputs (checked by the tests through the
 * quantizer) and several times faster, which matters on CPUs that fall back to this table. */
static inline float f16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)(h & 0x7fffu) << 13, sign = (uint32_t)(h & 0x8000u) << 16;
    if ((h & 0x7c00u) == 0x7c00u) {
        u |= 0x7f800000u; /* inf / nan: exponent all ones, payload kept */
    } else {
        float f;
        memcpy(&f, &u, 4);
        f *= 0x1p112f;
        memcpy(&u, &f, 4);
    }
    u |= sign;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Accumulation lanes of the float dot products: element c goes to lane c % 8, then the lanes
 * are summed pairwise. The order depends only on cols, which is what the table promises. */
#define NLANE 8

static float reduce_lanes(const float acc[NLANE]) {
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

static float dot_f32_row(const float *w, const float *x, int64_t n) {
    float acc[NLANE] = {0};
    int64_t c = 0;
    for (; c + NLANE <= n; c += NLANE)
        for (int j = 0; j < NLANE; j++) acc[j] += w[c + j] * x[c + j];
    for (int j = 0; c + j < n; j++) acc[j] += w[c + j] * x[c + j];
    return reduce_lanes(acc);
}

static float dot_f16_row(const uint16_t *w, const float *x, int64_t n) {
    float acc[NLANE] = {0};
    int64_t c = 0;
    for (; c + NLANE <= n; c += NLANE)
        for (int j = 0; j < NLANE; j++) acc[j] += f16_to_f32(w[c + j]) * x[c + j];
    for (int j = 0; c + j < n; j++) acc[j] += f16_to_f32(w[c + j]) * x[c + j];
    return reduce_lanes(acc);
}

static float dot_bf16_row(const uint16_t *w, const float *x, int64_t n) {
    float acc[NLANE] = {0};
    int64_t c = 0;
    for (; c + NLANE <= n; c += NLANE)
        for (int j = 0; j < NLANE; j++) acc[j] += lmp_bf16_to_f32(w[c + j]) * x[c + j];
    for (int j = 0; c + j < n; j++) acc[j] += lmp_bf16_to_f32(w[c + j]) * x[c + j];
    return reduce_lanes(acc);
}

/* Y[t, r] = one row dot per output, rows [r0, r1) x tokens [0, ntok): the loop of every weight
 * type whose dot is a plain row function (WT weights, XT activations). */
#define DEFINE_ROW_MATMUL(NAME, WT, XT, DOT)                                                         \
    static void NAME(const lmp_weight *w, int64_t r0, int64_t r1, const void *xv, int64_t ntok,       \
                     float *y, int64_t ldy) {                                                        \
        const XT *x = xv;                                                                            \
        const WT *wd = w->data;                                                                      \
        for (int64_t r = r0; r < r1; r++)                                                            \
            for (int64_t t = 0; t < ntok; t++)                                                       \
                y[t * ldy + r] = DOT(wd + r * w->cols, x + t * w->cols, w->cols);                    \
    }

DEFINE_ROW_MATMUL(matmul_f32, float, float, dot_f32_row)
DEFINE_ROW_MATMUL(matmul_f16, uint16_t, float, dot_f16_row)
DEFINE_ROW_MATMUL(matmul_bf16, uint16_t, float, dot_bf16_row)

/* ---- bf16 weights x bf16 activations: VDPBF16PS's arithmetic ------------------------------ */

/* The reference of the opt-in bf16-activation mode, the chain kernels.h documents. Per f32 lane
 * VDPBF16PS does acc += w_odd * x_odd, then acc += w_even * x_even (Intel SDM pseudo-code), each
 * a fused multiply-add rounded to nearest even, reading bf16 denormals as 0 (DAZ) and flushing
 * denormal results to 0 (FTZ), whatever MXCSR says. The product of two bf16 values is exact in
 * f32 except where it underflows, so only the add rounds in the normal range; fmaf keeps the
 * exceptions exact too. */
#define BLANE 16

static inline float bf16_daz(uint16_t h) {
    return (h & 0x7f80u) == 0 ? lmp_bf16_to_f32((uint16_t)(h & 0x8000u)) : lmp_bf16_to_f32(h);
}

static inline float ftz(float v) {
    return fabsf(v) < FLT_MIN ? copysignf(0.0f, v) : v;
}

static inline float bf16_pair_step(float acc, uint16_t w, uint16_t x) {
    return ftz(fmaf(bf16_daz(w), bf16_daz(x), acc));
}

/* hsum16 of the SIMD tables: lane l + lane l+8, then + l+4, then (0 + 2) + (1 + 3). */
static float reduce16(const float a[BLANE]) {
    float b[8], c[4];
    for (int i = 0; i < 8; i++) b[i] = a[i] + a[i + 8];
    for (int i = 0; i < 4; i++) c[i] = b[i] + b[i + 4];
    return (c[0] + c[2]) + (c[1] + c[3]);
}

static float dot_bf16_bf16_row(const uint16_t *w, const uint16_t *x, int64_t n) {
    float acc[BLANE] = {0};
    for (int64_t c = 0; c < n; c += 2 * BLANE)
        for (int l = 0; l < BLANE; l++) {
            const int64_t e = c + 2 * l, o = e + 1; /* past n: +0, as the masked loads read */
            acc[l] = bf16_pair_step(acc[l], o < n ? w[o] : 0, o < n ? x[o] : 0);
            acc[l] = bf16_pair_step(acc[l], e < n ? w[e] : 0, e < n ? x[e] : 0);
        }
    return reduce16(acc);
}

DEFINE_ROW_MATMUL(matmul_bf16_act, uint16_t, uint16_t, dot_bf16_bf16_row)

/* Per 32-block: the exact int32 dot of the quants, then acc += isum * (d_w * d_x), blocks in
 * order. |isum| <= 32*127*127 < 2^24, so the int to float conversion is exact. */
static void matmul_q8_0(const lmp_weight *w, int64_t r0, int64_t r1, const void *xv, int64_t ntok,
                        float *y, int64_t ldy) {
    const lmp_q8_act *x = xv;
    const int8_t *wq = w->data;
    const int64_t cols = w->cols, nb = cols / LMP_QK;
    for (int64_t r = r0; r < r1; r++) {
        const int8_t *wr = wq + r * cols;
        const uint16_t *ws = w->scales + r * nb;
        for (int64_t t = 0; t < ntok; t++) {
            const int8_t *xq = x->q + t * cols;
            const float *xd = x->d + t * nb;
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                int32_t isum = 0;
                for (int j = 0; j < LMP_QK; j++)
                    isum += (int32_t)wr[b * LMP_QK + j] * (int32_t)xq[b * LMP_QK + j];
                acc += (float)isum * (f16_to_f32(ws[b]) * xd[b]);
            }
            y[t * ldy + r] = acc;
        }
    }
}

/* round(v) half away from zero, exactly: trunc(v + 0.5) would round 0.49999997f up because the
 * addition itself rounds; |v - trunc(v)| is exact in f32, so comparing it with 0.5 is not. */
static inline int round_half_away(float v) {
    float r = truncf(v);
    if (fabsf(v - r) >= 0.5f) r += (v < 0.0f) ? -1.0f : 1.0f;
    return (int)r;
}

/* One block of 32 finite values: d = amax/127, q = round(x * (1/d)). When 1/d overflows (amax
 * below ~2^-121) every x*id is inf or nan, which ggml's reference and gguf-py both turn into
 * quant 0 on x86; we write those zeros on purpose, and fp16(d) is 0 there too. */
static float quantize_block(const float *x, int8_t *q) {
    float amax = 0.0f;
    for (int j = 0; j < LMP_QK; j++) {
        float a = fabsf(x[j]);
        if (a > amax) amax = a;
    }
    float d = amax / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    if (isinf(id)) {
        for (int j = 0; j < LMP_QK; j++) q[j] = 0;
        return d;
    }
    for (int j = 0; j < LMP_QK; j++) q[j] = (int8_t)round_half_away(x[j] * id);
    return d;
}

/* Loads block b of a source row as f32; returns 0 if a value is inf or nan. */
static int load_block(const void *src, int src_dtype, int64_t b, float out[LMP_QK]) {
    int ok = 1;
    for (int j = 0; j < LMP_QK; j++) {
        int64_t i = b * LMP_QK + j;
        float v;
        if (src_dtype == LMP_F32) v = ((const float *)src)[i];
        else if (src_dtype == LMP_F16) v = f16_to_f32(((const uint16_t *)src)[i]);
        else v = lmp_bf16_to_f32(((const uint16_t *)src)[i]);
        ok &= fabsf(v) <= FLT_MAX; /* false for inf and nan */
        out[j] = v;
    }
    return ok;
}

static int quantize_q8_0(const void *x, int src_dtype, int64_t n, int8_t *q, uint16_t *d) {
    float buf[LMP_QK];
    for (int64_t b = 0; b < n / LMP_QK; b++) {
        if (!load_block(x, src_dtype, b, buf)) return -1;
        d[b] = lmp_f32_to_f16(quantize_block(buf, q + b * LMP_QK));
    }
    return 0;
}

/* Activations: the same rule with f32 scales. A block holding inf or nan gets quants 0 and
 * scale nan, so the non-finite value shows up as nan in every output that reads it. */
static void quantize_act_q8(const float *x, int64_t n, int8_t *q, float *d) {
    for (int64_t b = 0; b < n / LMP_QK; b++) {
        const float *xb = x + b * LMP_QK;
        int ok = 1;
        for (int j = 0; j < LMP_QK; j++) ok &= fabsf(xb[j]) <= FLT_MAX;
        if (!ok) {
            for (int j = 0; j < LMP_QK; j++) q[b * LMP_QK + j] = 0;
            d[b] = NAN;
            continue;
        }
        d[b] = quantize_block(xb, q + b * LMP_QK);
    }
}

static float dot_f32(const float *a, const float *b, int64_t n) {
    return dot_f32_row(a, b, n);
}

static void axpy_f32(float a, const float *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

const lmp_kernels lmp_kernels_scalar = {
    .name = "scalar",
    .matmul = {[LMP_F32] = matmul_f32, [LMP_F16] = matmul_f16, [LMP_BF16] = matmul_bf16,
               [LMP_Q8_0] = matmul_q8_0},
    .matmul_bf16_act = matmul_bf16_act,
    .quantize_q8_0 = quantize_q8_0,
    .quantize_act_q8 = quantize_act_q8,
    .dot_f32 = dot_f32,
    .axpy_f32 = axpy_f32,
};
