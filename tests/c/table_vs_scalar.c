/* Holds one kernel table to the scalar reference, outside Python: for ISAs this machine cannot
 * run natively (NEON here), tests/test_cross_isa.py cross-compiles this file with the table and
 * runs it under qemu-user. Checks every entry on odd shapes: q8_0 quantization bit-exact, the
 * int8 matmul exact up to float accumulation, float matmuls within a rounding bound, and the
 * batch-size and row-split invariance of kernels.h. Prints "N passed, M failed" and exits non-zero
 * on any failure. Usage: table_vs_scalar NAME (the table is linked in as lmp_kernels_<NAME>). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "half.h"
#include "kernels.h"

#ifndef TABLE
#error "compile with -DTABLE=lmp_kernels_<isa>"
#endif

static int passed, failed;

static void check(int ok, const char *what, int rows, int cols, int ntok) {
    if (ok) {
        passed++;
    } else {
        failed++;
        printf("FAIL %s rows=%d cols=%d ntok=%d\n", what, rows, cols, ntok);
    }
}

static uint64_t rng = 88172645463325252ull;
static float frand(void) { /* xorshift, roughly normal-ish via sum of uniforms */
    float s = 0;
    for (int i = 0; i < 4; i++) {
        rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
        s += (float)(rng >> 40) / (float)(1 << 24) - 0.5f;
    }
    return s;
}

static void fill_weight(int dtype, int rows, int cols, void *data, uint16_t *scales, float *dense) {
    for (int64_t i = 0; i < (int64_t)rows * cols; i++) {
        float v = frand();
        if (dtype == LMP_F32) ((float *)data)[i] = v, dense[i] = v;
        if (dtype == LMP_F16) ((uint16_t *)data)[i] = lmp_f32_to_f16(v), dense[i] = lmp_f16_to_f32(lmp_f32_to_f16(v));
        if (dtype == LMP_BF16) ((uint16_t *)data)[i] = lmp_f32_to_bf16(v), dense[i] = lmp_bf16_to_f32(lmp_f32_to_bf16(v));
        if (dtype == LMP_Q8_0) dense[i] = v;
    }
    if (dtype == LMP_Q8_0) lmp_kernels_scalar.quantize_q8_0(dense, LMP_F32, (int64_t)rows * cols, data, scales);
}

static void matmul(const lmp_kernels *k, const lmp_weight *w, const float *x, int8_t *xq, float *xd, int ntok,
                   int r0, int r1, float *y) {
    if (w->dtype == LMP_Q8_0) {
        for (int t = 0; t < ntok; t++) k->quantize_act_q8(x + t * w->cols, w->cols, xq + t * w->cols, xd + t * (w->cols / 32));
        lmp_q8_act a = {xq, xd};
        k->matmul[LMP_Q8_0](w, r0, r1, &a, ntok, y, w->rows);
    } else {
        k->matmul[w->dtype](w, r0, r1, x, ntok, y, w->rows);
    }
}

static void test_matmul(const lmp_kernels *k, int dtype, int rows, int cols, int ntok) {
    size_t n = (size_t)rows * cols;
    void *data = aligned_alloc(64, (n * 4 + 63) / 64 * 64);
    uint16_t *scales = malloc(n / 32 * 2 + 2);
    float *dense = malloc(n * 4), *x = malloc((size_t)ntok * cols * 4);
    int8_t *xq = malloc((size_t)ntok * cols);
    float *xd = malloc((size_t)ntok * cols / 32 * 4 + 4);
    float *y = malloc((size_t)ntok * rows * 4), *ref = malloc((size_t)ntok * rows * 4), *one = malloc((size_t)rows * 4);
    fill_weight(dtype, rows, cols, data, scales, dense);
    for (int i = 0; i < ntok * cols; i++) x[i] = frand();
    lmp_weight w = {data, dtype == LMP_Q8_0 ? scales : NULL, rows, cols, dtype};
    matmul(&lmp_kernels_scalar, &w, x, xq, xd, ntok, 0, rows, ref);
    matmul(k, &w, x, xq, xd, ntok, 0, rows, y);
    double worst = 0;
    for (int t = 0; t < ntok; t++)
        for (int r = 0; r < rows; r++) {
            double bound = 0;
            for (int c = 0; c < cols; c++) bound += fabs(dense[(size_t)r * cols + c] * x[t * cols + c]);
            double err = fabs(y[t * rows + r] - ref[t * rows + r]) / (bound * 1e-5 + 1e-30);
            if (err > worst) worst = err;
        }
    check(worst <= 1.0, "matmul vs scalar", rows, cols, ntok);
    /* batch invariance: each token alone gives the batch's bits */
    int same = 1;
    for (int t = 0; t < ntok; t++) {
        matmul(k, &w, x + t * cols, xq, xd, 1, 0, rows, one);
        same &= memcmp(one, y + t * rows, (size_t)rows * 4) == 0;
    }
    check(same, "batch invariance", rows, cols, ntok);
    /* row splits: [0, r) and [r, rows) give the same bits */
    float *split = malloc((size_t)ntok * rows * 4);
    int cut = rows / 3;
    matmul(k, &w, x, xq, xd, ntok, 0, cut, split);
    matmul(k, &w, x, xq, xd, ntok, cut, rows, split);
    check(memcmp(split, y, (size_t)ntok * rows * 4) == 0, "row split invariance", rows, cols, ntok);
    free(split); free(data); free(scales); free(dense); free(x); free(xq); free(xd); free(y); free(ref); free(one);
}

static void test_quantizers(const lmp_kernels *k, int n) {
    float *x = malloc((size_t)n * 4);
    for (int i = 0; i < n; i++) x[i] = frand() * (i % 97 == 0 ? 1e6f : 1.0f);
    for (int i = 0; i < 32 && i < n; i++) x[i] = 0; /* an all-zero block */
    if (n >= 64) for (int i = 32; i < 64; i++) x[i] = (float)(i - 48) + 0.5f; /* exact ties */
    int8_t *q0 = malloc(n), *q1 = malloc(n);
    uint16_t *d0 = malloc(n / 32 * 2), *d1 = malloc(n / 32 * 2);
    float *f0 = malloc(n / 32 * 4), *f1 = malloc(n / 32 * 4);
    lmp_kernels_scalar.quantize_q8_0(x, LMP_F32, n, q0, d0);
    k->quantize_q8_0(x, LMP_F32, n, q1, d1);
    check(!memcmp(q0, q1, n) && !memcmp(d0, d1, n / 32 * 2), "quantize_q8_0 bit-exact", 1, n, 0);
    lmp_kernels_scalar.quantize_act_q8(x, n, q0, f0);
    k->quantize_act_q8(x, n, q1, f1);
    check(!memcmp(q0, q1, n) && !memcmp(f0, f1, n / 32 * 4), "quantize_act_q8 bit-exact", 1, n, 0);
    float *a = malloc((size_t)n * 4), *b = malloc((size_t)n * 4);
    for (int i = 0; i < n; i++) a[i] = frand(), b[i] = frand();
    double bound = 0;
    for (int i = 0; i < n; i++) bound += fabs(a[i] * b[i]);
    check(fabs(k->dot_f32(a, b, n) - lmp_kernels_scalar.dot_f32(a, b, n)) <= bound * 1e-5, "dot_f32", 1, n, 0);
    memcpy(q0, b, 0);
    float *y0 = malloc((size_t)n * 4), *y1 = malloc((size_t)n * 4);
    memcpy(y0, b, (size_t)n * 4);
    memcpy(y1, b, (size_t)n * 4);
    lmp_kernels_scalar.axpy_f32(0.75f, a, y0, n);
    k->axpy_f32(0.75f, a, y1, n);
    int ok = 1;
    for (int i = 0; i < n; i++) ok &= fabsf(y0[i] - y1[i]) <= 1e-6f * (fabsf(y0[i]) + 1);
    check(ok, "axpy_f32", 1, n, 0);
    free(x); free(q0); free(q1); free(d0); free(d1); free(f0); free(f1); free(a); free(b); free(y0); free(y1);
}

/* The fused attention entry, where the table has one, against softmax attention in double:
 * head widths around the vector sizes and past the fused limit, position counts around the
 * groups of 4 and 16, rows with a stride wider than the head, one query alone and causal blocks
 * of ntok tokens x nh heads (query t sees npos + t positions). */
static void test_attend(const lmp_kernels *k, int hd, int npos, int nh, int ntok) {
    if (!k->attend_f32) return;
    const int ld = hd * 2 + 3, rows = npos + ntok - 1, nq = nh * ntok;
    float *q = malloc((size_t)nq * hd * 4), *kc = malloc((size_t)rows * ld * 4), *vc = malloc((size_t)rows * ld * 4);
    float *s = malloc((size_t)LMP_ATT_ROWS * rows * 4), *out = malloc((size_t)nq * hd * 4 + 4);
    double *sc = malloc((size_t)rows * 8);
    for (int i = 0; i < nq * hd; i++) q[i] = frand();
    for (int i = 0; i < rows * ld; i++) kc[i] = frand(), vc[i] = frand();
    out[nq * hd] = 12345.0f; /* must stay: nothing past the last head is written */
    const float scale = 1.0f / sqrtf((float)hd);
    k->attend_f32(q, nh * hd, nh, ntok, kc, vc, ld, npos, hd, scale, s, out, nh * hd);
    int ok = out[nq * hd] == 12345.0f;
    for (int t = 0; t < ntok; t++)
        for (int j = 0; j < nh; j++) {
            const float *qr = q + (t * nh + j) * hd;
            const float *o = out + (t * nh + j) * hd;
            const int n = npos + t;
            double mx = -INFINITY, sum = 0, vmax = 0;
            for (int p = 0; p < n; p++) {
                double d = 0;
                for (int i = 0; i < hd; i++) d += (double)qr[i] * kc[p * ld + i];
                sc[p] = d * scale;
                if (sc[p] > mx) mx = sc[p];
            }
            for (int p = 0; p < n; p++) sum += sc[p] = exp(sc[p] - mx);
            for (int i = 0; i < hd; i++) {
                double want = 0;
                for (int p = 0; p < n; p++) {
                    want += sc[p] / sum * vc[p * ld + i];
                    if (fabs(vc[p * ld + i]) > vmax) vmax = fabs(vc[p * ld + i]);
                }
                ok &= fabs(o[i] - want) <= 1e-5 * vmax;
            }
        }
    check(ok, "attend_f32 vs double", hd, npos, nh * 100 + ntok);
    free(q); free(kc); free(vc); free(s); free(out); free(sc);
}

int main(void) {
    const lmp_kernels *k = &TABLE;
    static const int shapes[][2] = {{1, 32}, {5, 96}, {13, 4128}, {9, 64}, {33, 160}, {17, 2048}};
    for (int dtype = 0; dtype < LMP_DTYPE_COUNT; dtype++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (int ntok = 1; ntok <= 7; ntok += 3) test_matmul(k, dtype, shapes[s][0], shapes[s][1], ntok);
    for (int n = 32; n <= 4128; n = n * 3 + 32) test_quantizers(k, n);
    static const int hds[] = {1, 8, 13, 64, 100, 128, 136};
    for (size_t h = 0; h < sizeof hds / sizeof hds[0]; h++)
        for (int npos = 1; npos <= 40; npos = npos * 2 + 1) {
            test_attend(k, hds[h], npos, 1, 1);
            test_attend(k, hds[h], npos, 3, 7);
        }
    printf("%s: %d passed, %d failed\n", k->name, passed, failed);
    return failed != 0;
}
