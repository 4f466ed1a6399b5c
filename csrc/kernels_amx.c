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
 * with tokens in the lanes: the same rounded operations per output, so an output's bits do not
 * depend on the tile it was computed in.
 *
 * bf16: f32 activations are split exactly into three bf16 parts, x = h + m + l (h the top 8
 * significant bits by truncation, m the next 8, l the rest), so the products with bf16 weights
 * are exact and the result keeps f32 activations, as the other tables do (rounding x to bf16 would
 * not). Per 32-column chunk the tile accumulator takes h, then m, then l, chunks in order.
 *
 * Only prompts (ntok > 1) use the tiles. A single token (generation) is a matrix-vector product
 * bound by memory bandwidth, where AMX buys nothing and its tile loads and epilogue cost more than
 * the AVX-512 GEMV's streaming loads (TinyLlama, 2 threads: bf16 7.5 -> 11.0 tok/s, q8_0 10.1 ->
 * 13.0 tok/s with the AVX-512 GEMV), so ntok == 1 goes to the AVX-512 table.
 *
 * Determinism: every output is one element of an accumulator tile, and an element's arithmetic
 * depends only on its own row, token and the columns; rows near the end of the matrix are
 * computed in a tile shifted back to end at the last row (never reading past it), so results
 * are the same for any row split (hence any thread count), batch size > 1 or token position.
 * A single token takes the AVX-512 GEMV and may differ from the same token inside a batch in
 * the last bits: this table is the one exception to the batch-size clause of kernels.h's
 * contract. f32, f16 and everything else are the AVX-512 table's.
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

/* q8_0 prompts, n tokens per tile: C 0-1, A 2-3, B 4-5. */
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

/* bf16 prompts: C 0-3 (2 token groups x 2 row groups, 15 rows = 5 tokens x 3 parts), A 4-5
 * (activation parts), B 6-7 (weight panels). */
static void load_cfg_bf16_gemm(void) {
    tilecfg c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int i = 0; i < 6; i++) cfg_set(&c, i, 15, 64);
    cfg_set(&c, 6, 16, 64);
    cfg_set(&c, 7, 16, 64);
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

/* ---- weight panels for prompts ------------------------------------------------------------ */

/* out[j] = dword j of each of the 16 rows in r (r[i] holds 16 dwords of row i). */
static inline void transpose16(__m512i r[16]) {
    __m512i t[16], s[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    /* s[4q + c]: per 128-bit lane L, rows 4q..4q+3 of column 4L + c */
    for (int q = 0; q < 4; q++) {
        s[4 * q + 0] = _mm512_unpacklo_epi64(t[4 * q], t[4 * q + 2]);
        s[4 * q + 1] = _mm512_unpackhi_epi64(t[4 * q], t[4 * q + 2]);
        s[4 * q + 2] = _mm512_unpacklo_epi64(t[4 * q + 1], t[4 * q + 3]);
        s[4 * q + 3] = _mm512_unpackhi_epi64(t[4 * q + 1], t[4 * q + 3]);
    }
    for (int c = 0; c < 4; c++) {
        __m512i u0 = _mm512_shuffle_i32x4(s[c], s[4 + c], 0x44), u1 = _mm512_shuffle_i32x4(s[c], s[4 + c], 0xEE);
        __m512i u2 = _mm512_shuffle_i32x4(s[8 + c], s[12 + c], 0x44), u3 = _mm512_shuffle_i32x4(s[8 + c], s[12 + c], 0xEE);
        r[0 + c] = _mm512_shuffle_i32x4(u0, u2, 0x88);
        r[4 + c] = _mm512_shuffle_i32x4(u0, u2, 0xDD);
        r[8 + c] = _mm512_shuffle_i32x4(u1, u3, 0x88);
        r[12 + c] = _mm512_shuffle_i32x4(u1, u3, 0xDD);
    }
}

/* Rows [rs, rs+16) of a row-major matrix (row stride ld bytes, `valid` rows present, `nbytes`
 * bytes per row) as a B-operand panel: per 64-byte chunk ch, [16 dwords][16 rows] at
 * out + ch * 1024 bytes. Missing rows and bytes past the row end read as zero. */
static void build_panel(const uint8_t *w, int64_t ld, int valid, int64_t nbytes, uint8_t *out) {
    const int64_t nch = (nbytes + 63) / 64;
    for (int64_t ch = 0; ch < nch; ch++) {
        int64_t n = nbytes - ch * 64 < 64 ? nbytes - ch * 64 : 64;
        __mmask64 m = n == 64 ? ~(__mmask64)0 : (((__mmask64)1 << n) - 1);
        __m512i r[16];
        for (int i = 0; i < 16; i++)
            r[i] = i < valid ? _mm512_maskz_loadu_epi8(m, w + i * ld + ch * 64) : _mm512_setzero_si512();
        transpose16(r);
        for (int j = 0; j < 16; j++) _mm512_store_si512(out + ch * 1024 + j * 64, r[j]);
    }
}

/* ---- q8_0 prompts -------------------------------------------------------------------------- */

/* Tokens in A (16 tokens x one block, straight from the quantized activations), a 16-row weight
 * panel in B, C[token][row]: rows in the lanes, as in generation. dwt: scales [nb][16 rows]. */
static void q8_gemm_tile(const int8_t *xq, int64_t cols, const float *xd, const uint8_t *panel, const float *dwt,
                         __m512 acc[16]) {
    const int64_t nb = cols / 32;
    int32_t c[2][256] __attribute__((aligned(64)));
    UNROLL for (int t = 0; t < 16; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b += 2) {
        const int two = b + 1 < nb;
        /* a panel chunk covers two blocks: dwords 0-7 are block b, 8-15 block b+1 */
        const uint8_t *pb = panel + (b / 2) * 1024;
        _tile_zero(0);
        _tile_loadd(2, xq + b * 32, cols);
        _tile_loadd(4, pb, 64);
        _tile_dpbssd(0, 2, 4);
        if (two) {
            _tile_zero(1);
            _tile_loadd(3, xq + b * 32 + 32, cols);
            _tile_loadd(5, pb + 512, 64);
            _tile_dpbssd(1, 3, 5);
        }
        _tile_stored(0, c[0], 64);
        if (two) _tile_stored(1, c[1], 64);
        for (int k = 0; k <= two; k++) {
            __m512 dw = _mm512_load_ps(dwt + (b + k) * 16);
            UNROLL for (int t = 0; t < 16; t++) {
                __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c[k] + t * 16)),
                                         _mm512_set1_ps(xd[t * nb + b + k]));
                acc[t] = _mm512_fmadd_ps(v, dw, acc[t]);
            }
        }
    }
}

/* Scales of 16 rows from row-major f32 [16][nb] to [nb][16]. */
static void transpose_scales(const float *rowmajor, int64_t nb, float *out) {
    for (int64_t b0 = 0; b0 < nb; b0 += 16) {
        int64_t n = nb - b0 < 16 ? nb - b0 : 16;
        __mmask16 m = (__mmask16)((1u << n) - 1);
        __m512i r[16];
        for (int i = 0; i < 16; i++) r[i] = _mm512_castps_si512(_mm512_maskz_loadu_ps(m, rowmajor + i * nb + b0));
        transpose16(r);
        for (int64_t j = 0; j < n; j++) _mm512_store_si512(out + (b0 + j) * 16, r[j]);
    }
}

static void q8_gemm(const lmp_weight *w, const int8_t *wq, const uint16_t *ws, int64_t prow, int64_t r0, int64_t r1,
                    const lmp_q8_act *x, int64_t ntok, float *y, int64_t ldy) {
    const int64_t cols = w->cols, nb = cols / 32, rows = w->rows;
    const int64_t ngroups = (ntok + 15) / 16;
    /* the last token group reads 16 rows of activations: pad it when ntok % 16 != 0 */
    const int64_t tail = ntok % 16;
    uint8_t *panel = scratch(1, (size_t)((nb + 1) / 2 * 1024 + 16 * nb * 4 * 2 + (tail ? 16 * cols + 16 * nb * 4 : 0)));
    if (!panel) {
        fallback(LMP_Q8_0, w, r0, r1, x, ntok, y, ldy);
        return;
    }
    float *dwr = (float *)(panel + (nb + 1) / 2 * 1024), *dwt = dwr + 16 * nb;
    int8_t *xpad = (int8_t *)(dwt + 16 * nb);
    float *dpad = (float *)(xpad + 16 * cols);
    if (tail) {
        memset(xpad, 0, (size_t)(16 * cols));
        memset(dpad, 0, (size_t)(16 * nb * 4));
        memcpy(xpad, x->q + (ntok - tail) * cols, (size_t)(tail * cols));
        memcpy(dpad, x->d + (ntok - tail) * nb, (size_t)(tail * nb * 4));
    }
    load_cfg_q8(16);
    __m512 acc[16];
    for (int64_t r = r0; r < r1; r += 16) {
        const int64_t rs = tile_row(r, prow);
        build_panel((const uint8_t *)wq + rs * cols, cols, 16, cols, panel);
        scales_f32(ws, rs, rows, nb, dwr);
        transpose_scales(dwr, nb, dwt);
        const int64_t i0 = r - rs, i1 = r1 - rs < 16 ? r1 - rs : 16;
        const __mmask16 keep = (__mmask16)(((1u << i1) - 1) & ~((1u << i0) - 1));
        for (int64_t g = 0; g < ngroups; g++) {
            const int partial = tail && g == ngroups - 1;
            const int8_t *xq = partial ? xpad : x->q + g * 16 * cols;
            const float *xd = partial ? dpad : x->d + g * 16 * nb;
            q8_gemm_tile(xq, cols, xd, panel, dwt, acc);
            const int nt = partial ? (int)tail : 16;
            for (int t = 0; t < nt; t++) _mm512_mask_storeu_ps(y + (g * 16 + t) * ldy + rs, keep, acc[t]);
        }
    }
    _tile_release();
}

static void matmul_q8_0(const lmp_weight *w, int64_t r0, int64_t r1, const void *xv, int64_t ntok, float *y,
                        int64_t ldy) {
    const lmp_q8_act *x = xv;
    const int64_t cols = w->cols, nb = cols / 32, rows = w->rows;
    if (r0 >= r1) return;
    if (ntok == 1) { /* generation is bandwidth-bound: the AVX-512 GEMV streams rows faster */
        lmp_kernels_avx512.matmul[LMP_Q8_0](w, r0, r1, xv, ntok, y, ldy);
        return;
    }
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
    q8_gemm(w, wq, ws, prow, r0, r1, x, ntok, y, ldy);
}

/* ---- bf16 ---------------------------------------------------------------------------------- */

/* Exact split of 16 f32 values into bf16-representable h + m + l. */
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

/* The three parts of one f32 row as bf16 rows of cp (cols rounded up to 32) zero-padded values:
 * out + p * stride for part p. */
static void split_row(const float *x, int64_t cols, int64_t cp, uint16_t *out, int64_t stride) {
    for (int64_t c = 0; c < cp; c += 32) {
        int64_t n = cols - c;
        __mmask16 m0 = n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
        __mmask16 m1 = n >= 32 ? (__mmask16)0xffff : n > 16 ? (__mmask16)((1u << (n - 16)) - 1) : 0;
        __m512 a = _mm512_maskz_loadu_ps(m0, x + c), b = _mm512_maskz_loadu_ps(m1, x + c + 16);
        __m512 ah, am, al, bh, bm, bl;
        split3(a, &ah, &am, &al);
        split3(b, &bh, &bm, &bl);
        _mm512_storeu_si512(out + c, narrow2(ah, bh));
        _mm512_storeu_si512(out + stride + c, narrow2(am, bm));
        _mm512_storeu_si512(out + 2 * stride + c, narrow2(al, bl));
    }
}

/* Prompts: A the activation parts, 15 rows = 5 tokens x (h, m, l) from a row-major split
 * [token][part][cp]; B a 16-row weight panel; C[token*3 + part][row]. Two token groups x two
 * row groups per step. */
static void matmul_bf16(const lmp_weight *w, int64_t r0, int64_t r1, const void *xv, int64_t ntok, float *y,
                        int64_t ldy) {
    const float *x = xv;
    if (r0 >= r1) return;
    const int64_t cols = w->cols, rows = w->rows, cp = (cols + 31) / 32 * 32, nch = cp / 32;
    const int64_t prow = rows < 16 ? 16 : rows;
    if (ntok == 1) { /* generation is bandwidth-bound: the AVX-512 GEMV streams rows faster */
        lmp_kernels_avx512.matmul[LMP_BF16](w, r0, r1, xv, ntok, y, ldy);
        return;
    }
    const int64_t ngroups = (ntok + 9) / 10; /* pairs of 5-token groups */
    const size_t xbytes = (size_t)(ngroups * 30 * cp * 2), pbytes = (size_t)(nch * 1024);
    uint8_t *buf = scratch(1, xbytes + 2 * pbytes);
    if (!buf) {
        fallback(LMP_BF16, w, r0, r1, xv, ntok, y, ldy);
        return;
    }
    uint16_t *xs = (uint16_t *)buf;
    uint8_t *pa = buf + xbytes, *pb = pa + pbytes;
    for (int64_t t = 0; t < ngroups * 10; t++) {
        if (t < ntok) split_row(x + t * cols, cols, cp, xs + t * 3 * cp, cp);
        else memset(xs + t * 3 * cp, 0, (size_t)(3 * cp * 2));
    }
    float c[4][16 * 16] __attribute__((aligned(64)));
    load_cfg_bf16_gemm();
    for (int64_t r = r0; r < r1; r += 32) {
        const int64_t ra = tile_row(r, prow), rb = tile_row(r + 16 < r1 ? r + 16 : r, prow);
        build_panel((const uint8_t *)w->data + ra * cols * 2, cols * 2, (int)(rows - ra < 16 ? rows - ra : 16),
                    cols * 2, pa);
        if (r + 16 < r1)
            build_panel((const uint8_t *)w->data + rb * cols * 2, cols * 2, (int)(rows - rb < 16 ? rows - rb : 16),
                        cols * 2, pb);
        for (int64_t g = 0; g < ngroups; g++) {
            const uint16_t *x0 = xs + g * 30 * cp, *x1 = x0 + 15 * cp;
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            for (int64_t ch = 0; ch < nch; ch++) {
                _tile_loadd(4, x0 + ch * 32, cp * 2);
                _tile_loadd(5, x1 + ch * 32, cp * 2);
                _tile_loadd(6, pa + ch * 1024, 64);
                _tile_loadd(7, pb + ch * 1024, 64);
                _tile_dpbf16ps(0, 4, 6);
                _tile_dpbf16ps(1, 4, 7);
                _tile_dpbf16ps(2, 5, 6);
                _tile_dpbf16ps(3, 5, 7);
            }
            _tile_stored(0, c[0], 64);
            _tile_stored(1, c[1], 64);
            _tile_stored(2, c[2], 64);
            _tile_stored(3, c[3], 64);
            for (int k = 0; k < 4; k++) {
                const int64_t rs = k & 1 ? rb : ra, from = k & 1 ? r + 16 : r;
                if (from >= r1) continue;
                const int64_t i0 = from - rs, i1 = r1 - rs < 16 ? r1 - rs : 16;
                const __mmask16 keep = (__mmask16)(((1u << i1) - 1) & ~((1u << i0) - 1));
                for (int j = 0; j < 5; j++) {
                    const int64_t t = g * 10 + (k >> 1) * 5 + j;
                    if (t >= ntok) break;
                    const float *cc = c[k] + j * 48;
                    __m512 v = _mm512_add_ps(_mm512_add_ps(_mm512_load_ps(cc), _mm512_load_ps(cc + 16)),
                                             _mm512_load_ps(cc + 32));
                    _mm512_mask_storeu_ps(y + t * ldy + rs, keep, v);
                }
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
static void silu_mul_f32(float *g, const float *u, int64_t n) { lmp_kernels_avx512.silu_mul_f32(g, u, n); }
static void axpy_f32(float a, const float *x, float *y, int64_t n) { lmp_kernels_avx512.axpy_f32(a, x, y, n); }
static void attend_f32(const float *q, int64_t ldq, int64_t nh, int64_t ntok, const float *k, const float *v,
                       int64_t ld, int64_t npos0, int64_t hd, float scale, float *s, float *out, int64_t ldo) {
    lmp_kernels_avx512.attend_f32(q, ldq, nh, ntok, k, v, ld, npos0, hd, scale, s, out, ldo);
}

const lmp_kernels lmp_kernels_amx = {
    .name = "amx",
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

#endif /* LMP_HAVE_AMX */
