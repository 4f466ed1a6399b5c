/* The AMX kernel table: the AVX-512 table with q8_0 and bf16 matmuls on Intel AMX tiles.
 *
 * AMX multiplies 16x64-byte tiles in one instruction (TDPBSSD: int8 dot products into int32;
 * TDPBF16PS: bf16 pairs into f32), an order of magnitude more multiply-adds per cycle than
 * AVX-512. The weight tile (A: 16 rows of 32 int8 or 32 bf16) is loaded straight from the
 * mapped row-major matrix with the row stride; only the activations are repacked into the
 * "VNNI" layout the B operand wants (4-byte groups of K, one per token, token-minor).
 *
 * q8_0: one TDPBSSD per 32-column block gives the exact int32 dot of each (row, token, block);
 * the block scales are then applied in AVX-512 registers as
 *     acc = fma(float(isum) * d_x, d_w, acc)         blocks in order,
 * with tokens in the lanes for prompts and rows in the lanes for generation: the same rounded
 * operations per output, so an output's bits do not depend on the tile it was computed in.
 *
 * bf16: f32 activations are split exactly into three bf16 parts, x = h + m + l (h the top 8
 * significant bits by truncation, m the next 8, l the rest), so the products with bf16 weights
 * are exact and the result keeps f32 activations, as the other tables do (rounding x to bf16 would
 * not). Per 32-column chunk the tile accumulator takes h, then m, then l, chunks in order.
 *
 * Determinism: every output is one element of an accumulator tile, and an element's arithmetic
 * depends only on its own row, token and the columns; rows near the end of the matrix are
 * computed in a tile shifted back to end at the last row (never reading past it), so results
 * are the same for any row split, batch size or token position. f32, f16 and everything else
 * are the AVX-512 table's.
 *
 * Linux hands out the AMX register state only on request (arch_prctl ARCH_REQ_XCOMP_PERM);
 * lmp_amx_enable asks once, and dispatch.c offers this table only when it was granted. Each
 * call loads its tile configuration and releases the tiles on return, so a thread that never
 * multiplies keeps no AMX state.
 */
#define _GNU_SOURCE /* syscall() */
#include "kernels.h"

#if defined(LMP_HAVE_AMX)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,amx-tile,amx-int8,amx-bf16"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,amx-tile,amx-int8,amx-bf16")
#endif

#include <immintrin.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

#if defined(__GNUC__)
#define UNROLL _Pragma("GCC unroll 16")
#else
#define UNROLL
#endif

int lmp_amx_enable(void) {
    static int state = 0; /* 0 unknown, 1 granted, -1 refused */
    if (state == 0) state = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 ? 1 : -1;
    return state == 1 ? 0 : -1;
}

/* ---- tile configurations --------------------------------------------------------------------- */

typedef struct {
    uint8_t palette;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tilecfg;

static void cfg_set(tilecfg *c, int tile, int rows, int colsb) {
    c->rows[tile] = (uint8_t)rows;
    c->colsb[tile] = (uint16_t)colsb;
}

/* q8_0, n tokens per tile (16 for prompts, 1 for generation): C 0-1, A 2-3, B 4-5. */
static void load_cfg_q8(int n) {
    tilecfg c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int i = 0; i < 2; i++) {
        cfg_set(&c, i, 16, 4 * n);
        cfg_set(&c, 2 + i, 16, 32);
        cfg_set(&c, 4 + i, 8, 4 * n);
    }
    _tile_loadconfig(&c);
}

/* bf16 prompts: C 0-3 (2 row groups x 2 token groups), A 4-5, B 6-7. */
static void load_cfg_bf16_gemm(void) {
    tilecfg c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int i = 0; i < 8; i++) cfg_set(&c, i, 16, 64);
    _tile_loadconfig(&c);
}

/* bf16 generation: C 0-1 (2 row groups), A 2-3, B 4-6 (h, m, l of one token). */
static void load_cfg_bf16_gemv(void) {
    tilecfg c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    cfg_set(&c, 0, 16, 4);
    cfg_set(&c, 1, 16, 4);
    cfg_set(&c, 2, 16, 64);
    cfg_set(&c, 3, 16, 64);
    for (int i = 4; i < 7; i++) cfg_set(&c, i, 16, 4);
    _tile_loadconfig(&c);
}

/* ---- per-thread scratch ---------------------------------------------------------------------- */

/* Grown on demand and freed when the thread exits (a few MB at most: packed activations of one
 * call and converted scales of one row group). NULL when memory runs out; the caller then falls
 * back to the AVX-512 kernel. */
typedef struct {
    void *p[3];
    size_t n[3];
} scratch_set;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static int scratch_key_ok;

static void scratch_free(void *v) {
    scratch_set *s = v;
    for (int i = 0; i < 3; i++) free(s->p[i]);
    free(s);
}

static void scratch_init(void) { scratch_key_ok = pthread_key_create(&scratch_key, scratch_free) == 0; }

static void *scratch(int slot, size_t bytes) {
    pthread_once(&scratch_once, scratch_init);
    if (!scratch_key_ok) return NULL;
    scratch_set *s = pthread_getspecific(scratch_key);
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s || pthread_setspecific(scratch_key, s) != 0) {
            free(s);
            return NULL;
        }
    }
    if (s->n[slot] < bytes) {
        free(s->p[slot]);
        size_t n = (bytes + 4095) & ~(size_t)4095;
        s->p[slot] = aligned_alloc(64, n);
        s->n[slot] = s->p[slot] ? n : 0;
    }
    return s->p[slot];
}

/* First row of the 16-row tile that serves rows from r: r itself, or moved back so the tile
 * ends at the matrix's last row (the overlap is recomputed, bit for bit, and not stored).
 * Matrices of fewer than 16 rows go through a zero-padded copy instead (rows_pad). */
static int64_t tile_row(int64_t r, int64_t rows) { return r + 16 <= rows ? r : rows - 16; }

/* ---- q8_0 ---------------------------------------------------------------------------------- */

static void fallback(int dtype, const lmp_weight *w, int64_t r0, int64_t r1, const void *x, int64_t ntok,
                     float *y, int64_t ldy) {
    lmp_kernels_avx512.matmul[dtype](w, r0, r1, x, ntok, y, ldy);
}

/* Scales of rows [rs, rs+16) as f32, row-major [16][nb] (rows past `rows` read as 0). */
static void scales_f32(const uint16_t *ws, int64_t rs, int64_t rows, int64_t nb, float *out) {
    for (int i = 0; i < 16; i++) {
        float *o = out + i * nb;
        if (rs + i >= rows) {
            memset(o, 0, (size_t)nb * sizeof(float));
            continue;
        }
        const uint16_t *s = ws + (rs + i) * nb;
        int64_t b = 0;
        for (; b + 16 <= nb; b += 16)
            _mm512_storeu_ps(o + b, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s + b))));
        if (b < nb) {
            __mmask16 m = (__mmask16)((1u << (nb - b)) - 1);
            _mm512_mask_storeu_ps(o + b, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, s + b)));
        }
    }
}

/* Generation: rows in the lanes. A from the matrix, B the activation block itself (8 rows of
 * 4 bytes), C stored as 16 contiguous int32, one per row. */
static void q8_gemv(const int8_t *wq, int64_t lda, const float *dwf, int64_t nb, const int8_t *xq,
                    const float *xd, float out[16]) {
    __m512i idx = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                     _mm512_set1_epi32((int)nb));
    __m512 acc = _mm512_setzero_ps();
    int32_t c0[16] __attribute__((aligned(64))), c1[16] __attribute__((aligned(64)));
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_loadd(2, wq + b * 32, lda);
        _tile_loadd(4, xq + b * 32, 4);
        _tile_loadd(3, wq + b * 32 + 32, lda);
        _tile_loadd(5, xq + b * 32 + 32, 4);
        _tile_dpbssd(0, 2, 4);
        _tile_dpbssd(1, 3, 5);
        _tile_stored(0, c0, 4);
        _tile_stored(1, c1, 4);
        __m512 t0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c0)), _mm512_set1_ps(xd[b]));
        acc = _mm512_fmadd_ps(t0, _mm512_i32gather_ps(idx, dwf + b, 4), acc);
        __m512 t1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c1)), _mm512_set1_ps(xd[b + 1]));
        acc = _mm512_fmadd_ps(t1, _mm512_i32gather_ps(idx, dwf + b + 1, 4), acc);
    }
    if (b < nb) {
        _tile_zero(0);
        _tile_loadd(2, wq + b * 32, lda);
        _tile_loadd(4, xq + b * 32, 4);
        _tile_dpbssd(0, 2, 4);
        _tile_stored(0, c0, 4);
        __m512 t0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c0)), _mm512_set1_ps(xd[b]));
        acc = _mm512_fmadd_ps(t0, _mm512_i32gather_ps(idx, dwf + b, 4), acc);
    }
    _mm512_storeu_ps(out, acc);
}

/* Prompts: tokens in the lanes. xp: this token group's activations packed per block as
 * [8 k-groups][16 tokens][4 bytes]; dxt: their scales as [nb][16]. */
static void q8_gemm_tile(const int8_t *wq, int64_t lda, const float *dwf, int64_t nb, const int8_t *xp,
                         const float *dxt, float out[16][16]) {
    __m512 acc[16];
    UNROLL for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
    int32_t c[2][256] __attribute__((aligned(64)));
    for (int64_t b = 0; b < nb; b += 2) {
        const int two = b + 1 < nb;
        _tile_zero(0);
        _tile_loadd(2, wq + b * 32, lda);
        _tile_loadd(4, xp + b * 512, 64);
        _tile_dpbssd(0, 2, 4);
        if (two) {
            _tile_zero(1);
            _tile_loadd(3, wq + b * 32 + 32, lda);
            _tile_loadd(5, xp + b * 512 + 512, 64);
            _tile_dpbssd(1, 3, 5);
        }
        _tile_stored(0, c[0], 64);
        if (two) _tile_stored(1, c[1], 64);
        for (int k = 0; k <= two; k++) {
            __m512 dx = _mm512_load_ps(dxt + (b + k) * 16);
            const float *dw = dwf + b + k;
            UNROLL for (int i = 0; i < 16; i++) {
                __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c[k] + i * 16)), dx);
                acc[i] = _mm512_fmadd_ps(t, _mm512_set1_ps(dw[i * nb]), acc[i]);
            }
        }
    }
    UNROLL for (int i = 0; i < 16; i++) _mm512_storeu_ps(out[i], acc[i]);
}

/* Packs tokens [t0, t0+16) (zeros past ntok) for B: per block [8][16][4] bytes, scales [nb][16]. */
static void q8_pack(const lmp_q8_act *x, int64_t t0, int64_t ntok, int64_t cols, int8_t *xp, float *dxt) {
    const int64_t nb = cols / 32;
    for (int t = 0; t < 16; t++) {
        int64_t tt = t0 + t;
        if (tt < ntok) {
            const uint32_t *src = (const uint32_t *)(x->q + tt * cols);
            const float *d = x->d + tt * nb;
            for (int64_t b = 0; b < nb; b++) {
                uint32_t *dst = (uint32_t *)(xp + b * 512) + t;
                for (int k = 0; k < 8; k++) {
                    uint32_t v;
                    memcpy(&v, src + b * 8 + k, 4);
                    dst[k * 16] = v;
                }
                dxt[b * 16 + t] = d[b];
            }
        } else {
            for (int64_t b = 0; b < nb; b++) {
                uint32_t *dst = (uint32_t *)(xp + b * 512) + t;
                for (int k = 0; k < 8; k++) dst[k * 16] = 0;
                dxt[b * 16 + t] = 0.0f;
            }
        }
    }
}

static void matmul_q8_0(const lmp_weight *w, int64_t r0, int64_t r1, const void *xv, int64_t ntok, float *y,
                        int64_t ldy) {
    const lmp_q8_act *x = xv;
    const int64_t cols = w->cols, nb = cols / 32, rows = w->rows;
    if (r0 >= r1) return;
    /* A matrix of fewer than 16 rows is copied into a zero-padded 16-row one. */
    const int8_t *wq = w->data;
    const uint16_t *ws = w->scales;
    if (rows < 16) {
        int8_t *pad = scratch(2, (size_t)(16 * cols + 16 * nb * 2));
        if (!pad) {
            fallback(LMP_Q8_0, w, r0, r1, xv, ntok, y, ldy);
            return;
        }
        memset(pad, 0, (size_t)(16 * cols + 16 * nb * 2));
        memcpy(pad, wq, (size_t)(rows * cols));
        memcpy(pad + 16 * cols, ws, (size_t)(rows * nb * 2));
        wq = pad;
        ws = (const uint16_t *)(pad + 16 * cols);
    }
    const int64_t prow = rows < 16 ? 16 : rows;
    float *dwf = scratch(0, (size_t)(16 * nb) * sizeof(float));
    const int64_t ngroups = ntok == 1 ? 0 : (ntok + 15) / 16;
    int8_t *xp = ngroups ? scratch(1, (size_t)(ngroups * (cols * 16 + nb * 16 * 4))) : NULL;
    if (!dwf || (ngroups && !xp)) {
        fallback(LMP_Q8_0, w, r0, r1, xv, ntok, y, ldy);
        return;
    }
    if (ntok == 1) {
        load_cfg_q8(1);
        float out[16];
        for (int64_t r = r0; r < r1; r += 16) {
            int64_t rs = tile_row(r, prow);
            scales_f32(ws, rs, rows, nb, dwf);
            q8_gemv(wq + rs * cols, cols, dwf, nb, x->q, x->d, out);
            for (int64_t i = r - rs; i < 16 && rs + i < r1; i++) y[rs + i] = out[i];
        }
        _tile_release();
        return;
    }
    for (int64_t g = 0; g < ngroups; g++) {
        int8_t *p = xp + g * (cols * 16 + nb * 64);
        q8_pack(x, g * 16, ntok, cols, p, (float *)(p + cols * 16));
    }
    load_cfg_q8(16);
    float out[16][16] __attribute__((aligned(64)));
    for (int64_t r = r0; r < r1; r += 16) {
        int64_t rs = tile_row(r, prow);
        scales_f32(ws, rs, rows, nb, dwf);
        for (int64_t g = 0; g < ngroups; g++) {
            const int8_t *p = xp + g * (cols * 16 + nb * 64);
            q8_gemm_tile(wq + rs * cols, cols, dwf, nb, p, (const float *)(p + cols * 16), out);
            for (int64_t i = r - rs; i < 16 && rs + i < r1; i++)
                for (int64_t t = 0; t < 16 && g * 16 + t < ntok; t++) y[(g * 16 + t) * ldy + rs + i] = out[i][t];
        }
    }
    _tile_release();
}

/* ---- bf16 -------------------------------------------------------------------------------- */

/* Exact split of 16 f32 values into bf16 h + m + l, returned as 16-bit halves of the inputs'
 * upper words (ready to be narrowed). */
static inline void split3(__m512 x, __m512 *h, __m512 *m, __m512 *l) {
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
    *h = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x), hi));
    __m512 r = _mm512_sub_ps(x, *h);
    *m = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(r), hi));
    *l = _mm512_sub_ps(r, *m); /* at most 8 significant bits left: exact in bf16 */
}

/* The upper halves of 32 f32 (two vectors) as 32 bf16 in order. */
static inline __m512i narrow2(__m512 a, __m512 b) {
    const __m512i idx = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33,
                                         31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    return _mm512_permutex2var_epi16(_mm512_castps_si512(a), idx, _mm512_castps_si512(b));
}

/* The 3 parts of 32 columns of one f32 row from c (zeros past cols) as bf16 vectors. */
static inline void split_chunk(const float *x, int64_t c, int64_t cols, __m512i parts[3]) {
    int64_t n = cols - c;
    __mmask16 m0 = n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
    __mmask16 m1 = n >= 32 ? (__mmask16)0xffff : n > 16 ? (__mmask16)((1u << (n - 16)) - 1) : 0;
    __m512 a = _mm512_maskz_loadu_ps(m0, x + c), b = _mm512_maskz_loadu_ps(m1, x + c + 16);
    __m512 ah, am, al, bh, bm, bl;
    split3(a, &ah, &am, &al);
    split3(b, &bh, &bm, &bl);
    parts[0] = narrow2(ah, bh);
    parts[1] = narrow2(am, bm);
    parts[2] = narrow2(al, bl);
}

/* Weights of rows [rs, rs+16) and columns [c, c+32) for a tile, or a zero-padded copy when the
 * chunk runs past cols (or the matrix has fewer than 16 rows). */
static const uint16_t *a_tile(const uint16_t *w, int64_t rows, int64_t cols, int64_t rs, int64_t c,
                              uint16_t pad[16 * 32], int64_t *lda) {
    if (c + 32 <= cols && rows >= 16) {
        *lda = cols * 2;
        return w + rs * cols + c;
    }
    memset(pad, 0, 16 * 32 * 2);
    int64_t n = cols - c < 32 ? cols - c : 32;
    for (int64_t i = 0; i < 16 && rs + i < rows; i++) memcpy(pad + i * 32, w + (rs + i) * cols + c, (size_t)n * 2);
    *lda = 64;
    return pad;
}

static void bf16_gemv(const lmp_weight *w, int64_t r0, int64_t r1, const float *x, float *y) {
    const int64_t cols = w->cols, rows = w->rows, nch = (cols + 31) / 32;
    const uint16_t *wd = w->data;
    uint16_t *xs = scratch(1, (size_t)(3 * nch * 32 * 2));
    if (!xs) {
        fallback(LMP_BF16, w, r0, r1, x, 1, y, 1);
        return;
    }
    for (int64_t ch = 0; ch < nch; ch++) {
        __m512i parts[3];
        split_chunk(x, ch * 32, cols, parts);
        for (int p = 0; p < 3; p++) _mm512_storeu_si512(xs + (p * nch + ch) * 32, parts[p]);
    }
    const int64_t prow = rows < 16 ? 16 : rows;
    uint16_t pad0[16 * 32] __attribute__((aligned(64))), pad1[16 * 32] __attribute__((aligned(64)));
    float out[2][16] __attribute__((aligned(64)));
    load_cfg_bf16_gemv();
    for (int64_t r = r0; r < r1; r += 32) {
        int64_t ra = tile_row(r, prow);
        int64_t rb = r + 16 < r1 ? tile_row(r + 16, prow) : ra;
        _tile_zero(0);
        _tile_zero(1);
        for (int64_t ch = 0; ch < nch; ch++) {
            int64_t la, lb;
            const uint16_t *pa = a_tile(wd, rows, cols, ra, ch * 32, pad0, &la);
            const uint16_t *pb = a_tile(wd, rows, cols, rb, ch * 32, pad1, &lb);
            _tile_loadd(2, pa, la);
            _tile_loadd(3, pb, lb);
            _tile_loadd(4, xs + (0 * nch + ch) * 32, 4);
            _tile_loadd(5, xs + (1 * nch + ch) * 32, 4);
            _tile_loadd(6, xs + (2 * nch + ch) * 32, 4);
            _tile_dpbf16ps(0, 2, 4);
            _tile_dpbf16ps(1, 3, 4);
            _tile_dpbf16ps(0, 2, 5);
            _tile_dpbf16ps(1, 3, 5);
            _tile_dpbf16ps(0, 2, 6);
            _tile_dpbf16ps(1, 3, 6);
        }
        _tile_stored(0, out[0], 4);
        _tile_stored(1, out[1], 4);
        for (int64_t i = r - ra; i < 16 && ra + i < r1; i++) y[ra + i] = out[0][i];
        if (r + 16 < r1)
            for (int64_t i = r + 16 - rb; i < 16 && rb + i < r1; i++) y[rb + i] = out[1][i];
    }
    _tile_release();
}

/* Packs tokens [t0, t0+32) (zeros past ntok) as B tiles: per chunk, per part (h, m, l), per
 * 16-token half: [16 k-pairs][16 tokens][2 bf16] = 1 KiB. */
static void bf16_pack(const float *x, int64_t t0, int64_t ntok, int64_t cols, uint32_t *xp) {
    const int64_t nch = (cols + 31) / 32;
    for (int t = 0; t < 32; t++) {
        const int64_t tt = t0 + t;
        const int half = t >> 4, lane = t & 15;
        for (int64_t ch = 0; ch < nch; ch++) {
            uint32_t v[3][16] __attribute__((aligned(64)));
            if (tt < ntok) {
                __m512i parts[3];
                split_chunk(x + tt * cols, ch * 32, cols, parts);
                for (int p = 0; p < 3; p++) _mm512_store_si512(v[p], parts[p]);
            } else {
                memset(v, 0, sizeof v);
            }
            for (int p = 0; p < 3; p++) {
                uint32_t *dst = xp + ((ch * 3 + p) * 2 + half) * 256 + lane;
                for (int k = 0; k < 16; k++) dst[k * 16] = v[p][k];
            }
        }
    }
}

static void matmul_bf16(const lmp_weight *w, int64_t r0, int64_t r1, const void *xv, int64_t ntok, float *y,
                        int64_t ldy) {
    const float *x = xv;
    if (r0 >= r1) return;
    if (ntok == 1) {
        bf16_gemv(w, r0, r1, x, y);
        return;
    }
    const int64_t cols = w->cols, rows = w->rows, nch = (cols + 31) / 32;
    const uint16_t *wd = w->data;
    const int64_t prow = rows < 16 ? 16 : rows;
    uint32_t *xp = scratch(1, (size_t)(nch * 6 * 256 * 4));
    if (!xp) {
        fallback(LMP_BF16, w, r0, r1, xv, ntok, y, ldy);
        return;
    }
    uint16_t pad0[16 * 32] __attribute__((aligned(64))), pad1[16 * 32] __attribute__((aligned(64)));
    float out[4][16][16] __attribute__((aligned(64)));
    load_cfg_bf16_gemm();
    for (int64_t t0 = 0; t0 < ntok; t0 += 32) {
        bf16_pack(x, t0, ntok, cols, xp);
        for (int64_t r = r0; r < r1; r += 32) {
            int64_t ra = tile_row(r, prow);
            int64_t rb = r + 16 < r1 ? tile_row(r + 16, prow) : ra;
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            for (int64_t ch = 0; ch < nch; ch++) {
                int64_t la, lb;
                const uint16_t *pa = a_tile(wd, rows, cols, ra, ch * 32, pad0, &la);
                const uint16_t *pb = a_tile(wd, rows, cols, rb, ch * 32, pad1, &lb);
                _tile_loadd(4, pa, la);
                _tile_loadd(5, pb, lb);
                for (int p = 0; p < 3; p++) {
                    const uint32_t *b = xp + (ch * 3 + p) * 2 * 256;
                    _tile_loadd(6, b, 64);
                    _tile_loadd(7, b + 256, 64);
                    _tile_dpbf16ps(0, 4, 6);
                    _tile_dpbf16ps(1, 4, 7);
                    _tile_dpbf16ps(2, 5, 6);
                    _tile_dpbf16ps(3, 5, 7);
                }
            }
            _tile_stored(0, out[0], 64);
            _tile_stored(1, out[1], 64);
            _tile_stored(2, out[2], 64);
            _tile_stored(3, out[3], 64);
            for (int k = 0; k < 4; k++) {
                const int64_t rs = k < 2 ? ra : rb, from = k < 2 ? r : r + 16;
                if (from >= r1) continue;
                const int64_t tb = t0 + (k & 1) * 16;
                for (int64_t i = from - rs; i < 16 && rs + i < r1; i++)
                    for (int64_t t = 0; t < 16 && tb + t < ntok; t++) y[(tb + t) * ldy + rs + i] = out[k][i][t];
            }
        }
    }
    _tile_release();
}

/* ---- everything else is the AVX-512 table's ---------------------------------------------------- */

static void matmul_f32(const lmp_weight *w, int64_t r0, int64_t r1, const void *x, int64_t ntok, float *y,
                       int64_t ldy) {
    lmp_kernels_avx512.matmul[LMP_F32](w, r0, r1, x, ntok, y, ldy);
}
static void matmul_f16(const lmp_weight *w, int64_t r0, int64_t r1, const void *x, int64_t ntok, float *y,
                       int64_t ldy) {
    lmp_kernels_avx512.matmul[LMP_F16](w, r0, r1, x, ntok, y, ldy);
}
static int quantize_q8_0(const void *x, int src_dtype, int64_t n, int8_t *q, uint16_t *d) {
    return lmp_kernels_avx512.quantize_q8_0(x, src_dtype, n, q, d);
}
static void quantize_act_q8(const float *x, int64_t n, int8_t *q, float *d) {
    lmp_kernels_avx512.quantize_act_q8(x, n, q, d);
}
static float dot_f32(const float *a, const float *b, int64_t n) { return lmp_kernels_avx512.dot_f32(a, b, n); }
static void axpy_f32(float a, const float *x, float *y, int64_t n) { lmp_kernels_avx512.axpy_f32(a, x, y, n); }

const lmp_kernels lmp_kernels_amx = {
    .name = "amx",
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

#endif /* LMP_HAVE_AMX */
