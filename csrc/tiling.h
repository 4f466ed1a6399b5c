/* The row x token tiling of the float matmuls, shared by the SIMD kernel tables (and the wide-head
 * attention they compose from their own pieces).
 *
 * Each table defines its register tile NAME(w, x, cols, rm, rn, y, ldy) for constant shapes, the
 * largest tile FRM x FRN, and FCASES_RM(T, RM) listing the token counts 1..FRN for a row count
 * (and FCASES_ROWS(T) the row counts, when FRM is not 4);
 * DEFINE_FMATMUL then instantiates every shape (so accumulators stay in registers) and the loop
 * that covers rows [r0, r1) x tokens [0, ntok): generation (one token) streams GEMV_TILE_ROWS
 * rows at a time, prompts walk FRM x FRN tiles, block by block (FBLOCK_W_BYTES x FBLOCK_X_BYTES,
 * so a table can keep a block's weights and activations in its L2). Every shape runs the same
 * per-output chain, which is what makes a row's result independent of the tile it lands in.
 */
#ifndef LMPACK_TILING_H
#define LMPACK_TILING_H

#include <stdint.h>

#include "kernels.h"

/* Generation (one token) streams each weight row once, so it runs at memory speed only if lines
 * arrive before they are used. A GEMV tile reads 8 rows side by side (fewer under the AMD profile,
 * below): as many short streams at once, each restarting on every tile, and the hardware
 * prefetchers keep up with that differently per vendor (csrc/gemv_prefetch.c picks an lmp_gemv_prefetch profile per vendor):
 *   - Intel (a 2-core Xeon): for rows shorter than a page the prefetchers fell behind (768-column
 *     bf16 rows ~11 GB/s against ~20 GB/s for page-long rows, Q8_0 ~10 GB/s), and prefetching
 *     each step's tile bytes, in address order, a fixed distance ahead restored ~20 GB/s bf16,
 *     ~22 GB/s Q8_0; rows of a page or more are left to the hardware, where the extra
 *     instructions cost ~10%.
 *   - AMD (a 2-core EPYC Zen 5): the Q8_0 GEMV fell behind at every row length, worst on long
 *     rows (2 threads, 5632-column rows: ~6 GB/s on the hardware alone, ~10 with the Intel rule,
 *     ~30 with the prefetch below; 2048 columns: ~8, ~18, ~28); bf16 rows moved less (20-30 GB/s
 *     either way on this shared machine, ~20% more per core in CPU time when prefetched). So
 *     every GEMV prefetches, in address order, at least one whole row tile ahead (never less
 *     than 16 KiB): the next tile's rows are in cache when it starts, at any row length.
 * Measured with `benchmarks/bench_kernels.py --gemv-rows` (--prefetch compares the profiles).
 * On whole models, `benchmarks/bench_gen.py` times the profiles step by step in turns: TinyLlama
 * bf16 on the Zen 5 streamed as many bytes/s as Q8_0 (no compute limit from the widening), and
 * prefetchnta, two tiles ahead, 4 or 6 rows per GEMV tile, or 1-16 tasks per thread (forward.c)
 * all stayed within that shared machine's noise of this profile; 4 rows lost on AVX2.
 * The AMD profile also gives float GEMV tiles just 16 lanes of chains (narrow_gemv; same bits):
 * one avx512 row or two avx2 rows, which hide the FMA latency while each thread streams as few
 * rows side by side as that allows. TinyLlama bf16 steps ran ~15% faster on avx512 and ~5% on
 * avx2 that way (kernels_avx512.c, kernels_avx2.c).
 * Prefetches never fault, so running past the end of the matrix is harmless. (No NEON machine
 * was at hand to measure, so that table does not prefetch.) */

/* The distance ahead, in bytes, at which a GEMV over rows of row_bytes, rm at a time, prefetches
 * its tile bytes; 0: it leaves them to the hardware. q8: the quants plane (its scales go a
 * sixteenth of that ahead in theirs). */
static inline int64_t gemv_ahead(int64_t row_bytes, int rm, int q8) {
    const lmp_gemv_prefetch *p = lmp_gemv_prefetch_active();
    if (row_bytes >= p->short_row) return 0;
    int64_t ahead = q8 ? p->ahead_q8 : p->ahead_f;
    if (p->whole_tile && ahead < row_bytes * rm) ahead = row_bytes * rm;
    return ahead;
}

/* Prefetch the cache lines of [base + offset, base + offset + bytes): one GEMV step's worth, some
 * distance ahead. The address is computed on integers: it may lie past the end of the weights,
 * where forming a pointer by pointer arithmetic would be undefined. */
#define GEMV_PREFETCH(base, offset, bytes)                                                      \
    for (int pf_ = 0; pf_ < (bytes); pf_ += 64)                                                 \
    __builtin_prefetch((const void *)((uintptr_t)(base) + (uintptr_t)(offset) + (uintptr_t)pf_), 0, 3)

/* The first `ahead` bytes of a GEMV's rows (of `bytes`), prefetched before it starts: the loop
 * prefetches `ahead` past where it reads, so without this its first tile would wait on the
 * hardware. For Q8_0, scales (else NULL) is the first row's scales, a sixteenth of the bytes. */
static inline void gemv_prologue(const void *w, const void *scales, int64_t bytes, int64_t ahead) {
    const int64_t n = bytes < ahead ? bytes : ahead;
    GEMV_PREFETCH(w, 0, n);
    if (scales) GEMV_PREFETCH(scales, 0, n / 16);
}

#define FCASE(T, RM, RN) case (RM) * 16 + (RN): T(w, x, cols, RM, RN, y, ldy); break;
/* Rows of a one-token tile: 8 side by side, enough independent FMA chains to hide their latency
 * with 8-lane vectors; a table may choose otherwise. */
#define GEMV_TILE_ROWS 8
/* Prompts walk blocks of weight rows x tokens whose bytes (weights, f32 activations) stay below
 * these, tile by tile inside a block; a table sets its own (default: one block, so a row tile
 * walks every token). Only the order of the tiles changes: each output is one tile's chain. */
#define FBLOCK_W_BYTES INT64_MAX
#define FBLOCK_X_BYTES INT64_MAX
/* The row counts 1..FRM a table's tiles come in; a table may define its own list. */
#ifndef FCASES_ROWS
#define FCASES_ROWS(T) FCASES_RM(T, 1) FCASES_RM(T, 2) FCASES_RM(T, 3) FCASES_RM(T, 4)
#endif

#define DEFINE_FMATMUL(NAME, TILE, ESIZE)                                                        \
    static void TILE##_any(const char *w, const float *x, int64_t cols, int rm, int rn, float *y, \
                           int64_t ldy) {                                                       \
        switch (rm * 16 + rn) {                                                                 \
            FCASES_ROWS(TILE)                                                                   \
            FCASE(TILE, 8, 1)                                                                   \
        default: break;                                                                         \
        }                                                                                       \
    }                                                                                           \
    static void NAME(const lmp_weight *w, int64_t r0, int64_t r1, const void *xv, int64_t ntok,  \
                     float *y, int64_t ldy) {                                                   \
        const char *wd = w->data;                                                               \
        const float *x = xv;                                                                    \
        const int64_t cols = w->cols;                                                           \
        if (ntok == 1) {                                                                        \
            const int gr = GEMV_TILE_ROWS;                                                      \
            gemv_prologue(wd + r0 * cols * ESIZE, NULL, (r1 - r0) * cols * ESIZE,              \
                          gemv_ahead(cols * ESIZE, gr, 0));                                     \
            int64_t r = r0;                                                                     \
            for (; r + gr <= r1; r += gr) TILE##_any(wd + r * cols * ESIZE, x, cols, gr, 1, y + r, ldy); \
            for (; r < r1; r += FRM) {                                                          \
                int rm = r1 - r < FRM ? (int)(r1 - r) : FRM;                                    \
                TILE##_any(wd + r * cols * ESIZE, x, cols, rm, 1, y + r, ldy);                  \
            }                                                                                   \
            return;                                                                             \
        }                                                                                       \
        const int64_t rb0 = (int64_t)(FBLOCK_W_BYTES) / (cols * ESIZE) / FRM * FRM;             \
        const int64_t tb0 = (int64_t)(FBLOCK_X_BYTES) / (cols * 4) / FRN * FRN;                 \
        const int64_t rb = rb0 < FRM ? FRM : rb0, tb = tb0 < FRN ? FRN : tb0;                   \
        for (int64_t rB = r0; rB < r1; rB += rb) {                                              \
            const int64_t rE = r1 - rB < rb ? r1 : rB + rb;                                     \
            for (int64_t tB = 0; tB < ntok; tB += tb) {                                         \
                const int64_t tE = ntok - tB < tb ? ntok : tB + tb;                             \
                for (int64_t r = rB; r < rE; r += FRM) {                                        \
                    int rm = rE - r < FRM ? (int)(rE - r) : FRM;                                \
                    for (int64_t t = tB; t < tE; t += FRN) {                                    \
                        int rn = tE - t < FRN ? (int)(tE - t) : FRN;                            \
                        TILE##_any(wd + r * cols * ESIZE, x + t * cols, cols, rm, rn,           \
                                   y + t * ldy + r, ldy);                                       \
                    }                                                                           \
                }                                                                               \
            }                                                                                   \
        }                                                                                       \
    }

/* Attention query by query, composed from a table's own DOT, SOFTMAX_EXP (exponentials in place,
 * returning their sum) and AXPY: the tables' path for heads wider than their block kernels hold in
 * registers, one definition so the tables cannot drift apart in it. s: npos0 + ntok - 1 floats. */
#define DEFINE_ATTEND_WIDE(NAME, DOT, SOFTMAX_EXP, AXPY)                                            \
    static void NAME(const float *q, int64_t ldq, int64_t nh, int64_t ntok, const float *k,         \
                     const float *v, int64_t ld, int64_t npos0, int64_t hd, float scale, float *s,  \
                     float *out, int64_t ldo) {                                                     \
        for (int64_t t = 0; t < ntok; t++)                                                          \
            for (int64_t jh = 0; jh < nh; jh++) {                                                   \
                const float *qr = q + t * ldq + jh * hd;                                            \
                float *o = out + t * ldo + jh * hd;                                                 \
                const int64_t npos = npos0 + t;                                                     \
                float mx = -INFINITY;                                                               \
                for (int64_t p = 0; p < npos; p++) {                                                \
                    s[p] = DOT(qr, k + p * ld, hd) * scale;                                         \
                    if (s[p] > mx) mx = s[p];                                                       \
                }                                                                                   \
                float inv = 1.0f / SOFTMAX_EXP(s, npos, mx);                                        \
                memset(o, 0, (size_t)hd * sizeof(float));                                           \
                for (int64_t p = 0; p < npos; p++) AXPY(s[p] * inv, v + p * ld, o, hd);            \
            }                                                                                       \
    }

#endif
