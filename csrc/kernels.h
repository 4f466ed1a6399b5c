/* The kernel dispatch table: every hot loop of the runtime and the quantizer, one entry each.
 *
 * One table per instruction set (scalar, avx2, avx512, neon) lives in its own kernels_<isa>.c;
 * dispatch.c picks the best one the CPU supports at import time (or the one forced by
 * LMPACK_KERNELS / _core.set_kernel_path) and that choice is the only mutable global of the
 * C core. The scalar table is the reference every other table is tested against.
 */
#ifndef LMPACK_KERNELS_H
#define LMPACK_KERNELS_H

#include <stddef.h>
#include <stdint.h>

enum lmp_dtype { LMP_F32 = 0, LMP_F16 = 1, LMP_BF16 = 2, LMP_Q8_0 = 3, LMP_DTYPE_COUNT };

#define LMP_QK 32 /* weights per Q8_0 block */
#define LMP_ATT_ROWS 8 /* score rows of attend_f32's scratch: the queries it holds at once */

/* A 2-D weight matrix as mapped from the file, row-major [rows, cols]. */
typedef struct {
    const void *data;        /* f32/f16/bf16 elements, or the int8 quants plane for q8_0 */
    const uint16_t *scales;  /* q8_0 only: fp16 scales [rows, cols/32]; NULL otherwise */
    int64_t rows, cols;
    int dtype;               /* enum lmp_dtype */
} lmp_weight;

/* Activations quantized to blocks of 32 for q8_0 weights: ntok rows of cols values. */
typedef struct {
    const int8_t *q; /* [ntok, cols] */
    const float *d;  /* [ntok, cols/32] f32 scales */
} lmp_q8_act;

/* Y[t*ldy + r] = dot(W row r, X row t) for r in [r0, r1) and t in [0, ntok).
 * For f32/f16/bf16 weights X is f32 [ntok, cols]; for q8_0 it is an lmp_q8_act.
 * Each output is one dot product accumulated in f32 in an order that depends only on cols,
 * so results are identical whatever the row split across threads, and (every table but amx,
 * whose single-token calls take the AVX-512 GEMV) whatever the batch size ntok. */
typedef void (*lmp_matmul_fn)(const lmp_weight *w, int64_t r0, int64_t r1,
                              const void *x, int64_t ntok, float *y, int64_t ldy);

typedef struct {
    const char *name;
    lmp_matmul_fn matmul[LMP_DTYPE_COUNT];
    /* Optional (NULL: bf16 weights keep the exact matmul[LMP_BF16]): the opt-in bf16-activation
     * matmul for bf16 weights, X bf16 [ntok, cols] (the f32 activations rounded to nearest even
     * once). Its chain is VDPBF16PS's, defined by the scalar table: per output 16 f32 lanes, lane
     * l of 32-column step s takes columns 32s+2l+1 then 32s+2l (columns past cols read as +0),
     * each acc = fma(w, x, acc) in round-to-nearest-even with bf16 denormal inputs read as 0 and
     * denormal results flushed to 0; then the lanes are summed as hsum16 does (l + l+8, + l+4,
     * (0+2) + (1+3)). Results depend only on (row, token, cols): any ntok, any thread split. */
    lmp_matmul_fn matmul_bf16_act;
    /* ggml-exact reference Q8_0 of n values (n % 32 == 0): quants q[n], fp16 scales d[n/32].
     * src_dtype is LMP_F32, LMP_F16 or LMP_BF16. Returns 0, or -1 if a value is inf/nan. */
    int (*quantize_q8_0)(const void *x, int src_dtype, int64_t n, int8_t *q, uint16_t *d);
    /* Activation quantizer for the int8 matmul: same rule, scales kept in f32. */
    void (*quantize_act_q8)(const float *x, int64_t n, int8_t *q, float *d);
    float (*dot_f32)(const float *a, const float *b, int64_t n);
    void (*axpy_f32)(float a, const float *x, float *y, int64_t n); /* y += a*x */
    /* Optional (NULL: the caller's scalar loop): g[i] = silu(g[i]) * u[i] = g/(1 + e^-g) * u, the
     * SwiGLU gate, for i < n. */
    void (*silu_mul_f32)(float *g, const float *u, int64_t n);
    /* Optional (NULL: the caller composes dot_f32 and axpy_f32): causal attention for a block of
     * queries against cached positions whose key and value rows sit at k + p*ld and v + p*ld.
     * Query (t, j), t < ntok, j < nh, is the row q + t*ldq + j*hd; it sees the first npos0 + t
     * positions, and out + t*ldo + j*hd = sum_p softmax_p(scale * q.k_p) v_p. s is scratch of
     * LMP_ATT_ROWS * (npos0 + ntok - 1) floats. Each output's bits depend only on its own query,
     * its npos and hd: one query alone (ntok = nh = 1, generation) gives the same bits as inside
     * any block, which only lets a loaded key or value row serve several queries. */
    void (*attend_f32)(const float *q, int64_t ldq, int64_t nh, int64_t ntok, const float *k, const float *v,
                       int64_t ld, int64_t npos0, int64_t hd, float scale, float *s, float *out, int64_t ldo);
} lmp_kernels;

extern const lmp_kernels lmp_kernels_scalar;
#if defined(__x86_64__) || defined(_M_X64)
extern const lmp_kernels lmp_kernels_avx2;
extern const lmp_kernels lmp_kernels_avx512;
#endif
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define LMP_HAVE_AMX 1
extern const lmp_kernels lmp_kernels_amx; /* kernels_amx.c */
int lmp_amx_enable(void);                 /* asks Linux for the AMX tile state: 0 if granted */
#endif
#if defined(__aarch64__)
extern const lmp_kernels lmp_kernels_neon;
#endif

/* The active table (dispatch.c). */
const lmp_kernels *lmp_active_kernels(void);
/* k's matmul_bf16_act if this CPU can run it (the avx512 table's needs AVX512-BF16, which not
 * every CPU with that table has), else NULL. */
lmp_matmul_fn lmp_bf16_act_matmul(const lmp_kernels *k);

/* How the one-token matmuls (GEMVs) of the x86 tables prefetch and load weights (tiling.h
 * gemv_ahead). The hardware prefetchers differ by vendor, so gemv_prefetch.c picks one profile per
 * CPU vendor, once, beside the table; a profile never changes a result, only how fast rows arrive. */
typedef struct {
    const char *name;
    int64_t short_row;         /* rows of this many bytes or more are left to the hardware */
    int64_t ahead_f, ahead_q8; /* bytes ahead: f32/f16/bf16 weights, the q8_0 quants plane */
    int whole_tile;            /* at least one whole row tile ahead, whatever the row length */
    int narrow_gemv;           /* float GEMV tiles of 16 lanes: 1 avx512 row, 2 avx2 rows (tiling.h) */
} lmp_gemv_prefetch;

/* gemv_prefetch.c: the active profile (resolved from cpuid on first use), a switch to the one
 * called `name` (-1 if none is) for benchmarks and tests, and the profiles' names, comma-separated
 * (truncated to fit `size`). */
const lmp_gemv_prefetch *lmp_gemv_prefetch_active(void);
int lmp_gemv_prefetch_set(const char *name);
void lmp_gemv_prefetch_names(char *buf, size_t size);

#endif
