/* The row x token tiling of the float matmuls, shared by the SIMD kernel tables.
 *
 * Each table defines its register tile NAME(w, x, cols, rm, rn, y, ldy) for constant shapes, the
 * largest tile FRM x FRN, and FCASES_RM(T, RM) listing the token counts 1..FRN for a row count
 * (and FCASES_ROWS(T) the row counts, when FRM is not 4);
 * DEFINE_FMATMUL then instantiates every shape (so accumulators stay in registers) and the loop
 * that covers rows [r0, r1) x tokens [0, ntok): generation (one token) streams 8 rows at a time,
 * prompts walk FRM x FRN tiles. Every shape runs the same per-output chain, which is what makes
 * a row's result independent of the tile it lands in.
 */
#ifndef LMPACK_TILING_H
#define LMPACK_TILING_H

#include <stdint.h>

/* Generation (one token) streams each weight row once, so it runs at memory speed only if lines
 * arrive before they are used. When rows are shorter than a page, a tile's rows are several short
 * streams sharing pages and the hardware prefetchers fall behind: on a 2-core Xeon, 768-column
 * bf16 rows streamed at ~11 GB/s against ~20 GB/s for page-long rows, and Q8_0 at ~10 GB/s. For
 * such rows the x86 GEMVs prefetch each step's tile bytes, in address order, a fixed distance
 * ahead (~20 GB/s bf16, ~22 GB/s Q8_0); rows of a page or more are left to the hardware, where
 * the extra instructions cost ~10%. The distances were measured with
 * `benchmarks/bench_kernels.py --gemv-rows`. Prefetches never fault, so running past the end of
 * the matrix is harmless. (No NEON machine was at hand to measure, so that table does not.) */
#define GEMV_SHORT_ROW 4096   /* row bytes below which the GEMV prefetches */
#define GEMV_AHEAD_F 16384    /* bytes ahead, f32/f16/bf16 weights */
#define GEMV_AHEAD_Q8 8192    /* bytes ahead in the quants plane (scales: a sixteenth of it) */

/* Prefetch the cache lines of [base + offset, base + offset + bytes): one GEMV step's worth, some
 * distance ahead. The address is computed on integers: it may lie past the end of the weights,
 * where forming a pointer by pointer arithmetic would be undefined. */
#define GEMV_PREFETCH(base, offset, bytes)                                                      \
    for (int pf_ = 0; pf_ < (bytes); pf_ += 64)                                                 \
    __builtin_prefetch((const void *)((uintptr_t)(base) + (uintptr_t)(offset) + (uintptr_t)pf_), 0, 3)

#define FCASE(T, RM, RN) case (RM) * 16 + (RN): T(w, x, cols, RM, RN, y, ldy); break;
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
            int64_t r = r0;                                                                     \
            for (; r + 8 <= r1; r += 8) TILE##_any(wd + r * cols * ESIZE, x, cols, 8, 1, y + r, ldy); \
            for (; r < r1; r += FRM) {                                                          \
                int rm = r1 - r < FRM ? (int)(r1 - r) : FRM;                                    \
                TILE##_any(wd + r * cols * ESIZE, x, cols, rm, 1, y + r, ldy);                  \
            }                                                                                   \
            return;                                                                             \
        }                                                                                       \
        for (int64_t r = r0; r < r1; r += FRM) {                                                \
            int rm = r1 - r < FRM ? (int)(r1 - r) : FRM;                                        \
            for (int64_t t = 0; t < ntok; t += FRN) {                                           \
                int rn = ntok - t < FRN ? (int)(ntok - t) : FRN;                                \
                TILE##_any(wd + r * cols * ESIZE, x + t * cols, cols, rm, rn, y + t * ldy + r,  \
                           ldy);                                                                \
            }                                                                                   \
        }                                                                                       \
    }

#endif
