/* The row x token tiling of the float matmuls, shared by the SIMD kernel tables.
 *
 * Each table defines its register tile NAME(w, x, cols, rm, rn, y, ldy) for constant shapes, the
 * largest tile FRM x FRN, and FCASES_RM(T, RM) listing the token counts 1..FRN for a row count;
 * DEFINE_FMATMUL then instantiates every shape (so accumulators stay in registers) and the loop
 * that covers rows [r0, r1) x tokens [0, ntok): generation (one token) streams 8 rows at a time,
 * prompts walk FRM x FRN tiles. Every shape runs the same per-output chain, which is what makes
 * a row's result independent of the tile it lands in.
 */
#ifndef LMPACK_TILING_H
#define LMPACK_TILING_H

#define FCASE(T, RM, RN) case (RM) * 16 + (RN): T(w, x, cols, RM, RN, y, ldy); break;

#define DEFINE_FMATMUL(NAME, TILE, ESIZE)                                                        \
    static void TILE##_any(const char *w, const float *x, int64_t cols, int rm, int rn, float *y, \
                           int64_t ldy) {                                                       \
        switch (rm * 16 + rn) {                                                                 \
            FCASES_RM(TILE, 1) FCASES_RM(TILE, 2) FCASES_RM(TILE, 3) FCASES_RM(TILE, 4)         \
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
