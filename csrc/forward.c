/* The forward step: one call advances the KV cache by a run of tokens and yields logits.
 *
 * Semantics are Hugging Face's decoders (LlamaForCausalLM and the families of
 * lmpack/formats/arch.py, whose optional slots and config switches select biases, q/k norms,
 * post-norms, GeGLU, sliding windows, soft-capping) in f32 activations with an f32 KV cache. Long runs
 * are cut into chunks of LMP_CHUNK tokens so the scratch is a fixed size allocated once; within a
 * chunk every layer's matmuls see all the chunk's tokens at once (a GEMM for prompts, a GEMV for
 * generation). Work is shared by the pool as row ranges of the weights and (token, head) pairs of
 * the attention; both give results independent of the thread count, because a row's dot product
 * and a head's softmax are computed by one thread in a fixed order.
 */
#define _POSIX_C_SOURCE 200809L
#include "forward.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "half.h"

/* ---- allocation ---------------------------------------------------------------------------- */

/* a*b into *out, 0 on overflow (all operands are non-negative). */
static int mul64(int64_t a, int64_t b, int64_t *out) {
    if (a < 0 || b < 0) return 0;
    if (a != 0 && b > INT64_MAX / a) return 0;
    *out = a * b;
    return 1;
}

/* Zeroed, 64-byte aligned (the int8 activation rows feed aligned SIMD loads). */
static void *zalloc(int64_t n_elems, size_t elem) {
    if (n_elems < 1) n_elems = 1;
    if ((uint64_t)n_elems > (SIZE_MAX - 64) / elem) return NULL;
    size_t bytes = (size_t)n_elems * elem;
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes) != 0) return NULL;
    memset(p, 0, bytes);
    return p;
}

void lmp_state_free(lmp_model *m) {
    lmp_pool_destroy(m->pool);
    m->pool = NULL;
    float **fs[] = {&m->kcache, &m->vcache, &m->h, &m->xn, &m->q, &m->att, &m->proj, &m->gate,
                    &m->up, &m->scores, &m->rope_cos, &m->rope_sin, &m->act_d, &m->rlog, &m->xg,
                    &m->moe, &m->route_w, &m->kring, &m->vring};
    for (size_t i = 0; i < sizeof fs / sizeof fs[0]; i++) {
        free(*fs[i]);
        *fs[i] = NULL;
    }
    free(m->act_q);
    m->act_q = NULL;
    free(m->act_h);
    m->act_h = NULL;
    free(m->route_tok);
    m->route_tok = NULL;
}

static int any_q8(const lmp_model *m) {
    if (m->embed.dtype == LMP_Q8_0 || m->lm_head.dtype == LMP_Q8_0) return 1;
    for (int64_t l = 0; l < m->cfg.n_layers; l++) {
        const lmp_layer *L = &m->layers[l];
        const lmp_weight *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down, &L->router};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++)
            if (ws[i]->dtype == LMP_Q8_0) return 1;
        for (int64_t e = 0; e < m->cfg.n_experts; e++)
            if (L->x_gate[e].dtype == LMP_Q8_0 || L->x_up[e].dtype == LMP_Q8_0 || L->x_down[e].dtype == LMP_Q8_0)
                return 1;
    }
    return 0;
}

int lmp_state_alloc(lmp_model *m, int threads) {
    const lmp_config *c = &m->cfg;
    int64_t kv_dim, q_dim, kv_n = 0, n_scores;
    if (!mul64(c->n_kv_heads, c->head_dim, &kv_dim) || !mul64(c->n_heads, c->head_dim, &q_dim) ||
        !mul64(threads, m->n_ctx, &n_scores) || !mul64(n_scores, LMP_ATT_ROWS, &n_scores))
        return -1;
    /* A sliding layer keeps only the rows its queries can still see: a chunk's first token looks
     * back window - 1 positions while the chunk writes LMP_CHUNK rows ahead of it. */
    m->has_ring = 0;
    for (int64_t l = 0; l < c->n_layers; l++) {
        lmp_layer *L = &m->layers[l];
        const int64_t w = L->window;
        L->cache_len = w && w + LMP_CHUNK - 1 < m->n_ctx ? w + LMP_CHUNK - 1 : m->n_ctx;
        m->has_ring |= L->cache_len < m->n_ctx;
        int64_t rows;
        if (!mul64(L->cache_len, kv_dim, &rows) || kv_n > INT64_MAX - rows) return -1;
        L->cache_off = kv_n;
        kv_n += rows;
    }
    m->kv_end = 0;
    int64_t maxcols = c->dim;
    if (q_dim > maxcols) maxcols = q_dim;
    if (c->ffn_dim > maxcols) maxcols = c->ffn_dim;
    const int64_t C = LMP_CHUNK;
    /* The KV cache can be large: calloc leaves untouched pages unmapped, and positions never
     * written read as zeros rather than garbage. */
    if ((uint64_t)kv_n <= SIZE_MAX / sizeof(float)) {
        m->kcache = calloc((size_t)kv_n, sizeof(float));
        m->vcache = calloc((size_t)kv_n, sizeof(float));
    }
    m->h = zalloc(C * c->dim, sizeof(float));
    m->xn = zalloc(C * c->dim, sizeof(float));
    m->q = zalloc(C * q_dim, sizeof(float));
    m->att = zalloc(C * q_dim, sizeof(float));
    m->proj = zalloc(C * c->dim, sizeof(float));
    m->gate = zalloc(C * c->ffn_dim, sizeof(float));
    m->up = zalloc(C * c->ffn_dim, sizeof(float));
    m->scores = zalloc(n_scores, sizeof(float));
    m->rope_cos = zalloc(c->n_rope * C * (c->rope_dim / 2), sizeof(float));
    m->rope_sin = zalloc(c->n_rope * C * (c->rope_dim / 2), sizeof(float));
    int ok = m->kcache && m->vcache && m->h && m->xn && m->q && m->att && m->proj && m->gate && m->up &&
             m->scores && m->rope_cos && m->rope_sin;
    if (ok && m->has_ring) {
        m->kring = zalloc(C * kv_dim, sizeof(float));
        m->vring = zalloc(C * kv_dim, sizeof(float));
        ok = m->kring && m->vring;
    }
    if (ok && c->n_experts) {
        m->rlog = zalloc(C * c->n_experts, sizeof(float));
        m->xg = zalloc(C * c->dim, sizeof(float));
        m->moe = zalloc(C * c->dim, sizeof(float));
        m->route_tok = zalloc(C * c->n_experts, sizeof(int32_t));
        m->route_w = zalloc(C * c->n_experts, sizeof(float));
        ok = m->rlog && m->xg && m->moe && m->route_tok && m->route_w;
    }
    if (ok && any_q8(m)) {
        m->act_q = zalloc(C * maxcols, sizeof(int8_t));
        m->act_d = zalloc(C * (maxcols / LMP_QK + 1), sizeof(float));
        ok = m->act_q && m->act_d;
    }
    if (ok && m->act_bf16) {
        m->act_h = zalloc(C * maxcols, sizeof(uint16_t));
        ok = m->act_h != NULL;
    }
    if (!ok) {
        lmp_state_free(m);
        return -1;
    }
    m->pool = lmp_pool_create(threads);
    if (!m->pool) {
        lmp_state_free(m);
        return -2;
    }
    return 0;
}

/* ---- element-wise pieces (cheap next to the matmuls: run on the calling thread) ----------- */

/* y = x / sqrt(mean(x^2) + eps) * (offset + w) on `rows` rows of n values (y may be x).
 * The sum of squares is in double (the mean is then as good as torch's cascaded f32 sum), one
 * chain per row in element order; RMS_ROWS rows' chains run side by side, since one chain alone
 * waits on each add's latency. */
#define RMS_ROWS 8
static void rmsnorm(float *y, const float *x, const float *w, int64_t rows, int64_t n, float eps, float offset) {
    for (int64_t t0 = 0; t0 < rows; t0 += RMS_ROWS) {
        const int nr = rows - t0 < RMS_ROWS ? (int)(rows - t0) : RMS_ROWS;
        double ss[RMS_ROWS] = {0.0};
        const float *xr = x + t0 * n;
        if (nr == RMS_ROWS) {
            for (int64_t i = 0; i < n; i++)
                for (int r = 0; r < RMS_ROWS; r++) ss[r] += (double)xr[r * n + i] * (double)xr[r * n + i];
        } else {
            for (int r = 0; r < nr; r++)
                for (int64_t i = 0; i < n; i++) ss[r] += (double)xr[r * n + i] * (double)xr[r * n + i];
        }
        for (int r = 0; r < nr; r++) {
            const float *xi = xr + r * n;
            float *yi = y + (t0 + r) * n;
            float var = (float)(ss[r] / (double)n);
            float rs = 1.0f / sqrtf(var + eps);
            if (offset == 0.0f)
                for (int64_t i = 0; i < n; i++) yi[i] = w[i] * (xi[i] * rs);
            else
                for (int64_t i = 0; i < n; i++) yi[i] = (xi[i] * rs) * (offset + w[i]);
        }
    }
}

/* x = cap * tanh(x / cap), element-wise (Gemma 2's soft-capping of scores and logits). */
static void softcap(float *x, int64_t n, float cap) {
    for (int64_t i = 0; i < n; i++) x[i] = tanhf(x[i] / cap) * cap;
}

static void embed_row(const lmp_weight *e, int64_t row, float *y) {
    const int64_t n = e->cols;
    switch (e->dtype) {
    case LMP_F32:
        memcpy(y, (const float *)e->data + row * n, (size_t)n * sizeof(float));
        break;
    case LMP_F16: {
        const uint16_t *s = (const uint16_t *)e->data + row * n;
        for (int64_t i = 0; i < n; i++) y[i] = lmp_f16_to_f32(s[i]);
        break;
    }
    case LMP_BF16: {
        const uint16_t *s = (const uint16_t *)e->data + row * n;
        for (int64_t i = 0; i < n; i++) y[i] = lmp_bf16_to_f32(s[i]);
        break;
    }
    case LMP_Q8_0: {
        const int8_t *q = (const int8_t *)e->data + row * n;
        const uint16_t *d = e->scales + row * (n / LMP_QK);
        for (int64_t b = 0; b < n / LMP_QK; b++) {
            float s = lmp_f16_to_f32(d[b]);
            for (int64_t j = 0; j < LMP_QK; j++) y[b * LMP_QK + j] = s * (float)q[b * LMP_QK + j];
        }
        break;
    }
    }
}

/* HF's angle: float32 position times float32 inverse frequency, then cos/sin of that float;
 * for each RoPE table. */
static void rope_table(lmp_model *m, int64_t p0, int64_t n) {
    const int64_t half = m->cfg.rope_dim / 2;
    for (int64_t r = 0; r < m->cfg.n_rope; r++) {
        const float *inv = m->inv_freq + r * half;
        float *cs = m->rope_cos + r * LMP_CHUNK * half, *sn = m->rope_sin + r * LMP_CHUNK * half;
        for (int64_t t = 0; t < n; t++) {
            float p = (float)(p0 + t);
            for (int64_t i = 0; i < half; i++) {
                float a = p * inv[i];
                cs[t * half + i] = (float)cos((double)a);
                sn[t * half + i] = (float)sin((double)a);
            }
        }
    }
}

/* Half-split RoPE with table `table` on n rows of `heads` heads each, row stride `ld`: in each
 * head the pairs (i, i + rope_dim/2) of its first rope_dim dims turn; the rest pass through. */
static void rope_rows(const lmp_model *m, int64_t table, float *x, int64_t n, int64_t heads, int64_t ld) {
    const int64_t hd = m->cfg.head_dim, half = m->cfg.rope_dim / 2;
    const float *cos0 = m->rope_cos + table * LMP_CHUNK * half, *sin0 = m->rope_sin + table * LMP_CHUNK * half;
    for (int64_t t = 0; t < n; t++) {
        const float *cs = cos0 + t * half, *sn = sin0 + t * half;
        for (int64_t h = 0; h < heads; h++) {
            float *v = x + t * ld + h * hd;
            for (int64_t i = 0; i < half; i++) {
                float x0 = v[i], x1 = v[i + half];
                v[i] = x0 * cs[i] - x1 * sn[i];
                v[i + half] = x1 * cs[i] + x0 * sn[i];
            }
        }
    }
}

/* ---- matmuls across the pool ------------------------------------------------------------- */

#define SERIAL_WORK (INT64_C(1) << 16)

typedef struct {
    const lmp_weight *w;
    lmp_matmul_fn fn;
    const void *x;
    float *y;
    int64_t ldy;
    int64_t rows_per_task, ntasks;
} mm_op;

typedef struct {
    const lmp_kernels *k;
    int64_t ntok;
    int nops;
    mm_op op[3];
    lmp_q8_act qa;
} mm_job;

static void mm_task(void *ctx, int64_t task, int thread) {
    (void)thread;
    mm_job *j = ctx;
    int i = 0;
    while (task >= j->op[i].ntasks) task -= j->op[i++].ntasks;
    const mm_op *o = &j->op[i];
    int64_t r0 = task * o->rows_per_task;
    int64_t r1 = r0 + o->rows_per_task;
    if (r1 > o->w->rows) r1 = o->w->rows;
    o->fn(o->w, r0, r1, o->x, j->ntok, o->y, o->ldy);
}

/* h[i] = bf16(x[i]) rounded to nearest even, NaN kept quiet: lmp_f32_to_bf16 without its branch,
 * so the compiler vectorises it (it runs on the calling thread, once per matmul input). */
static void round_bf16(const float *x, int64_t n, uint16_t *h) {
    for (int64_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        const uint32_t rne = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16, quiet = (u >> 16) | 0x40u;
        h[i] = (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? quiet : rne);
    }
}

/* Element-wise passes over a prompt's rows split across the pool (one thread runs them
 * whole): the quantization of a matmul input, the MLP's gate. Each element's result depends on
 * its own block or value only, so any split gives the same bits. */
#define SPLIT_MIN (INT64_C(1) << 15) /* elements below which the hand-off costs more than it saves */

/* fn(ctx, i0, i1) over [0, n) in pieces of `per`, one pool task each. */
typedef struct {
    void (*fn)(const void *ctx, int64_t i0, int64_t i1);
    const void *ctx;
    int64_t n, per;
} range_job;

static void range_task(void *ctx, int64_t task, int thread) {
    (void)thread;
    const range_job *j = ctx;
    const int64_t i0 = task * j->per, i1 = i0 + j->per < j->n ? i0 + j->per : j->n;
    j->fn(j->ctx, i0, i1);
}

static void run_ranges(lmp_model *m, int64_t n, int64_t per, void (*fn)(const void *, int64_t, int64_t),
                       const void *ctx) {
    range_job j = {fn, ctx, n, per};
    lmp_pool_run(m->pool, (n + per - 1) / per, range_task, &j);
}

typedef struct {
    const lmp_kernels *k;
    const float *x;
    int64_t cols;
    int8_t *q;
    float *d;
} quant_job;

static void quant_tokens(const void *ctx, int64_t t0, int64_t t1) {
    const quant_job *j = ctx;
    j->k->quantize_act_q8(j->x + t0 * j->cols, (t1 - t0) * j->cols, j->q + t0 * j->cols,
                          j->d + t0 * (j->cols / LMP_QK));
}

/* The q8_0 activations of x [ntok, cols] into m->act_q / act_d. */
static void quantize_rows(lmp_model *m, const lmp_kernels *k, const float *x, int64_t cols, int64_t ntok) {
    const int nth = lmp_pool_size(m->pool);
    if (nth == 1 || ntok < 2 || ntok * cols < SPLIT_MIN) {
        k->quantize_act_q8(x, ntok * cols, m->act_q, m->act_d);
        return;
    }
    const quant_job j = {k, x, cols, m->act_q, m->act_d};
    run_ranges(m, ntok, (ntok + 2 * nth - 1) / (2 * nth), quant_tokens, &j);
}

/* Y_i = W_i X for up to three weights sharing the input x [ntok, cols], in one parallel region.
 * Rows go out in blocks of a multiple of 16 (whole SIMD row tiles), about four blocks per thread
 * so a thread slowed by a neighbour on the machine does not hold up the step. */
static void matmuls(lmp_model *m, const lmp_kernels *k, const float *x, int64_t cols, int64_t ntok, int nops,
                    const lmp_weight *const *ws, float *const *ys, const int64_t *ldys) {
    mm_job j;
    j.k = k;
    j.ntok = ntok;
    j.nops = nops;
    j.qa.q = NULL;
    j.qa.d = NULL;
    /* opt-in bf16 activations: the table's matmul, or NULL (the exact path) where it has none */
    const lmp_matmul_fn bact = m->act_bf16 ? lmp_bf16_act_matmul(k) : NULL;
    const uint16_t *xh = NULL;
    /* Below ~64K multiply-adds a region is quicker on one thread than the hand-off to others. */
    int64_t work = 0;
    for (int i = 0; i < nops; i++) work += ws[i]->rows * cols * ntok;
    const int nth = work < SERIAL_WORK ? 1 : lmp_pool_size(m->pool);
    int64_t ntasks = 0;
    for (int i = 0; i < nops; i++) {
        if (ws[i]->dtype == LMP_Q8_0 && !j.qa.q) {
            quantize_rows(m, k, x, cols, ntok);
            j.qa.q = m->act_q;
            j.qa.d = m->act_d;
        }
        mm_op *o = &j.op[i];
        o->w = ws[i];
        o->fn = k->matmul[ws[i]->dtype];
        o->x = ws[i]->dtype == LMP_Q8_0 ? (const void *)&j.qa : (const void *)x;
        if (ws[i]->dtype == LMP_BF16 && bact) {
            if (!xh) { /* round once for the weights sharing x */
                round_bf16(x, ntok * cols, m->act_h);
                xh = m->act_h;
            }
            o->fn = bact;
            o->x = xh;
        }
        o->y = ys[i];
        o->ldy = ldys[i];
        int64_t rows = ws[i]->rows;
        if (nth == 1) {
            o->rows_per_task = rows;
        } else {
            int64_t target = (int64_t)nth * 4;
            int64_t r = (rows + target - 1) / target;
            r = (r + 15) / 16 * 16;
            o->rows_per_task = r;
        }
        o->ntasks = (rows + o->rows_per_task - 1) / o->rows_per_task;
        ntasks += o->ntasks;
    }
    if (nth == 1) {
        for (int64_t i = 0; i < ntasks; i++) mm_task(&j, i, 0);
    } else {
        lmp_pool_run(m->pool, ntasks, mm_task, &j);
    }
}

/* ---- attention ----------------------------------------------------------------------------- */

typedef struct {
    const lmp_model *m;
    const lmp_kernels *k;
    const float *kc, *vc; /* this layer's caches, row 0 */
    int64_t len;          /* their rows: position p is in row p % len (a ring when len < n_ctx) */
    int64_t p0;           /* position of the chunk's first token */
    float scale;
    int64_t n;            /* tokens in the chunk */
    int64_t window;       /* the layer's window, 0 for full attention */
    float softcap;        /* 0, or the cap of the scores */
    int64_t nblk, hs, nsub; /* tasks: ATT_TOKENS-token blocks x KV heads x nsub slices of hs query heads */
} att_job;

/* Tokens per attention task: with a KV head's query heads, enough queries for the kernel to
 * reuse each loaded key and value row, few enough tasks' worth of work to balance threads. */
#define ATT_TOKENS 16

/* One query (token t, head h) composed from dot_f32 and axpy_f32: the path of soft-capped
 * scores, of rings that wrap, and of tables without attend_f32. */
static void att_one(const att_job *j, int64_t t, int64_t h, float *s) {
    const lmp_config *c = &j->m->cfg;
    const int64_t hd = c->head_dim, kv_dim = c->n_kv_heads * hd, q_dim = c->n_heads * hd;
    const int64_t kvh = h / (c->n_heads / c->n_kv_heads);
    /* positions [first, p0 + t]: all of them, or the last `window` in a sliding layer */
    int64_t npos = j->p0 + t + 1, first = 0;
    if (j->window && npos > j->window) {
        first = npos - j->window;
        npos = j->window;
    }
    const float *qh = j->m->q + t * q_dim + h * hd;
    const int64_t row0 = first % j->len;
    /* rows [row0, row0 + npos) of the cache, unless they wrap around the end of a ring */
    const int wraps = row0 + npos > j->len;
    const float *kc = j->kc + row0 * kv_dim, *vc = j->vc + row0 * kv_dim;
    float *o = j->m->att + t * q_dim + h * hd;
    /* the rows are [row0, row0 + n1), then (a ring that wraps) [0, npos - n1) */
    const int64_t n1 = wraps ? j->len - row0 : npos;
    /* locals: the stores to s[] could otherwise alias the job's floats and force reloads */
    const float scale = j->scale, cap = j->softcap;
    float mx = -INFINITY;
    for (int64_t p = 0; p < npos; p++) {
        const float *kr = p < n1 ? kc + p * kv_dim : j->kc + (p - n1) * kv_dim;
        float x = j->k->dot_f32(qh, kr + kvh * hd, hd) * scale;
        if (cap) x = tanhf(x / cap) * cap;
        s[p] = x;
        if (x > mx) mx = x;
    }
    float sum = 0.0f;
    for (int64_t p = 0; p < npos; p++) {
        s[p] = expf(s[p] - mx);
        sum += s[p];
    }
    float inv = 1.0f / sum;
    memset(o, 0, (size_t)hd * sizeof(float));
    for (int64_t p = 0; p < npos; p++) {
        const float *vr = p < n1 ? vc + p * kv_dim : j->vc + (p - n1) * kv_dim;
        j->k->axpy_f32(s[p] * inv, vr + kvh * hd, o, hd);
    }
}

/* One block of tokens x a slice of the query heads sharing a KV head. Tasks come latest block
 * first: causal rows cost more further on, and the dynamic hand-out ends on the cheap ones. */
static void att_task(void *ctx, int64_t task, int thread) {
    const att_job *j = ctx;
    const lmp_config *c = &j->m->cfg;
    const int64_t hd = c->head_dim, kv_dim = c->n_kv_heads * hd, q_dim = c->n_heads * hd;
    const int64_t g = c->n_heads / c->n_kv_heads, per_blk = c->n_kv_heads * j->nsub;
    const int64_t blk = j->nblk - 1 - task / per_blk, kvh = task % per_blk / j->nsub, sub = task % j->nsub;
    const int64_t t0 = blk * ATT_TOKENS, t1 = t0 + ATT_TOKENS < j->n ? t0 + ATT_TOKENS : j->n;
    const int64_t h0 = kvh * g + sub * j->hs, nh = h0 + j->hs < (kvh + 1) * g ? j->hs : (kvh + 1) * g - h0;
    float *s = j->m->scores + (int64_t)thread * LMP_ATT_ROWS * j->m->n_ctx;
    const float *q = j->m->q + h0 * hd;
    float *o = j->m->att + h0 * hd;
    if (j->k->attend_f32 && !j->softcap) {
        /* every query of the block sees the cache from row 0, no window cut in yet: one call */
        if (!j->window || j->p0 + t1 <= j->window) {
            j->k->attend_f32(q + t0 * q_dim, q_dim, nh, t1 - t0, j->kc + kvh * hd, j->vc + kvh * hd, kv_dim,
                             j->p0 + t0 + 1, hd, j->scale, s, o + t0 * q_dim, q_dim);
            return;
        }
        /* a sliding window: each token's own rows, the heads together where they do not wrap */
        for (int64_t t = t0; t < t1; t++) {
            int64_t npos = j->p0 + t + 1, first = 0;
            if (npos > j->window) {
                first = npos - j->window;
                npos = j->window;
            }
            const int64_t row0 = first % j->len;
            if (row0 + npos <= j->len) {
                j->k->attend_f32(q + t * q_dim, q_dim, nh, 1, j->kc + row0 * kv_dim + kvh * hd,
                                 j->vc + row0 * kv_dim + kvh * hd, kv_dim, npos, hd, j->scale, s, o + t * q_dim,
                                 q_dim);
            } else {
                for (int64_t h = h0; h < h0 + nh; h++) att_one(j, t, h, s);
            }
        }
        return;
    }
    for (int64_t t = t0; t < t1; t++)
        for (int64_t h = h0; h < h0 + nh; h++) att_one(j, t, h, s);
}

/* ---- the step ------------------------------------------------------------------------------ */

static void add_rows(float *h, const float *d, int64_t n) {
    for (int64_t i = 0; i < n; i++) h[i] += d[i];
}

/* x[t, :] += b for n rows of `cols` values. */
static void add_bias(float *x, const float *b, int64_t n, int64_t cols) {
    for (int64_t t = 0; t < n; t++) add_rows(x + t * cols, b, cols);
}

/* The MLP's gate times its up projection, in place in m->gate: SwiGLU or GeGLU. */
static void glu_range(lmp_model *m, const lmp_kernels *k, int64_t i0, int64_t i1) {
    float *gate = m->gate;
    const float *up = m->up;
    if (m->cfg.act == LMP_ACT_GELU_TANH) {
        /* gelu(g) = g/2 (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))), torch's tanh form */
        const float k0 = 0.7978845608028654f, k1 = 0.044715f;
        for (int64_t i = i0; i < i1; i++) {
            float g = gate[i];
            gate[i] = 0.5f * g * (1.0f + tanhf(k0 * (g + k1 * g * g * g))) * up[i];
        }
    } else if (k->silu_mul_f32) {
        k->silu_mul_f32(gate + i0, up + i0, i1 - i0);
    } else {
        for (int64_t i = i0; i < i1; i++) {
            float g = gate[i];
            gate[i] = g / (1.0f + expf(-g)) * up[i];
        }
    }
}

typedef struct {
    lmp_model *m;
    const lmp_kernels *k;
} glu_job;

static void glu_values(const void *ctx, int64_t i0, int64_t i1) {
    const glu_job *j = ctx;
    glu_range(j->m, j->k, i0, i1);
}

/* gate = act(gate) * up over count values, across the pool once there are enough of them to pay
 * for the hand-off (a prompt's rows, or one token of an MLP wider than SPLIT_MIN). The pieces are whole
 * multiples of 64 values, so a SIMD kernel sees its full vectors where it did unsplit. */
static void glu(lmp_model *m, const lmp_kernels *k, int64_t count) {
    const int nth = lmp_pool_size(m->pool);
    if (nth == 1 || count < SPLIT_MIN) {
        glu_range(m, k, 0, count);
        return;
    }
    const glu_job j = {m, k};
    run_ranges(m, count, ((count + 2 * nth - 1) / (2 * nth) + 63) / 64 * 64, glu_values, &j);
}

/* The dense MLP on n rows x [n, dim] into m->proj. */
static void mlp(lmp_model *m, const lmp_kernels *k, const lmp_weight *gate, const lmp_weight *up,
                const lmp_weight *down, const float *x, int64_t n) {
    const int64_t dim = m->cfg.dim, ffn = m->cfg.ffn_dim;
    {
        const lmp_weight *ws[2] = {gate, up};
        float *ys[2] = {m->gate, m->up};
        const int64_t ld[2] = {ffn, ffn};
        matmuls(m, k, x, dim, n, 2, ws, ys, ld);
    }
    glu(m, k, n * ffn);
    const lmp_weight *ws[1] = {down};
    float *ys[1] = {m->proj};
    const int64_t ld[1] = {dim};
    matmuls(m, k, m->gate, ffn, n, 1, ws, ys, ld);
}

/* The mixture of experts on n rows x [n, dim] into m->moe: each token takes the top
 * n_experts_used experts by router softmax (ties to the lower index), weighted by their
 * probabilities renormalised to sum 1 (HF Mixtral). Tokens are grouped by expert, so each chosen
 * expert runs once over all its tokens (a GEMM in a prompt) and an expert no token chose is never
 * read: a generated token reads n_experts_used experts' rows, not all of them. */
static void moe(lmp_model *m, const lmp_kernels *k, const lmp_layer *L, const float *x, int64_t n) {
    const int64_t dim = m->cfg.dim, E = m->cfg.n_experts, K = m->cfg.n_experts_used;
    {
        const lmp_weight *ws[1] = {&L->router};
        float *ys[1] = {m->rlog};
        const int64_t ld[1] = {E};
        matmuls(m, k, x, dim, n, 1, ws, ys, ld);
    }
    int64_t count[LMP_MAX_EXPERTS] = {0};
    for (int64_t t = 0; t < n; t++) {
        float *p = m->rlog + t * E;
        float mx = p[0], sum = 0.0f;
        for (int64_t e = 1; e < E; e++) mx = p[e] > mx ? p[e] : mx;
        for (int64_t e = 0; e < E; e++) sum += p[e] = expf(p[e] - mx);
        for (int64_t e = 0; e < E; e++) p[e] /= sum;
        int64_t chosen[LMP_MAX_EXPERTS];
        unsigned char taken[LMP_MAX_EXPERTS] = {0};
        float wsum = 0.0f;
        for (int64_t j = 0; j < K; j++) {
            int64_t best = -1;
            for (int64_t e = 0; e < E; e++)
                if (!taken[e] && (best < 0 || p[e] > p[best])) best = e;
            taken[best] = 1;
            chosen[j] = best;
            wsum += p[best];
        }
        for (int64_t j = 0; j < K; j++) {
            const int64_t e = chosen[j];
            m->route_tok[e * LMP_CHUNK + count[e]] = (int32_t)t;
            m->route_w[e * LMP_CHUNK + count[e]] = p[e] / wsum;
            count[e]++;
        }
    }
    memset(m->moe, 0, (size_t)(n * dim) * sizeof(float));
    for (int64_t e = 0; e < E; e++) { /* in expert order, as HF adds them */
        const int64_t nt = count[e];
        if (!nt) continue;
        const int32_t *tok = m->route_tok + e * LMP_CHUNK;
        for (int64_t i = 0; i < nt; i++) memcpy(m->xg + i * dim, x + tok[i] * dim, (size_t)dim * sizeof(float));
        mlp(m, k, &L->x_gate[e], &L->x_up[e], &L->x_down[e], m->xg, nt);
        for (int64_t i = 0; i < nt; i++) {
            const float w = m->route_w[e * LMP_CHUNK + i];
            float *o = m->moe + tok[i] * dim;
            const float *y = m->proj + i * dim;
            for (int64_t d = 0; d < dim; d++) o[d] += y[d] * w;
        }
    }
}

/* Runs one chunk of n <= LMP_CHUNK tokens at positions p0.. through every layer; leaves the
 * residual stream of its tokens in m->h. */
static void run_chunk(lmp_model *m, const lmp_kernels *k, const int32_t *tokens, int64_t n, int64_t p0) {
    const lmp_config *c = &m->cfg;
    const int64_t dim = c->dim, hd = c->head_dim;
    const int64_t kv_dim = c->n_kv_heads * hd, q_dim = c->n_heads * hd;

    for (int64_t t = 0; t < n; t++) embed_row(&m->embed, tokens[t], m->h + t * dim);
    if (c->embed_scale != 1.0f)
        for (int64_t i = 0; i < n * dim; i++) m->h[i] *= c->embed_scale;
    rope_table(m, p0, n);

    for (int64_t l = 0; l < c->n_layers; l++) {
        const lmp_layer *L = &m->layers[l];
        float *kc = m->kcache + L->cache_off, *vc = m->vcache + L->cache_off;
        /* the chunk's K/V rows: straight in the cache, or staged for a ring's slots */
        const int ring = L->cache_len < m->n_ctx;
        float *kn = ring ? m->kring : kc + p0 * kv_dim, *vn = ring ? m->vring : vc + p0 * kv_dim;

        /* the attention's input: the normed residual stream, or the stream itself (post-norm blocks) */
        const float *xa = m->h;
        if (L->attn_norm) {
            rmsnorm(m->xn, m->h, L->attn_norm, n, dim, c->norm_eps, c->norm_offset);
            xa = m->xn;
        }
        {
            /* K and V go straight into their cache rows */
            const lmp_weight *ws[3] = {&L->wq, &L->wk, &L->wv};
            float *ys[3] = {m->q, kn, vn};
            const int64_t ld[3] = {q_dim, kv_dim, kv_dim};
            matmuls(m, k, xa, dim, n, 3, ws, ys, ld);
        }
        if (L->bq) add_bias(m->q, L->bq, n, q_dim);
        if (L->bk) add_bias(kn, L->bk, n, kv_dim);
        if (L->bv) add_bias(vn, L->bv, n, kv_dim);
        /* q/k norms over each head (the q rows and the chunk's K cache rows are n*heads rows of
         * head_dim) or over each token's whole projection */
        const int64_t qn = c->qk_norm_full ? q_dim : hd, kn_len = c->qk_norm_full ? kv_dim : hd;
        if (L->q_norm) rmsnorm(m->q, m->q, L->q_norm, n * q_dim / qn, qn, c->norm_eps, c->norm_offset);
        if (L->k_norm) rmsnorm(kn, kn, L->k_norm, n * kv_dim / kn_len, kn_len, c->norm_eps, c->norm_offset);
        rope_rows(m, L->rope, m->q, n, c->n_heads, q_dim);
        rope_rows(m, L->rope, kn, n, c->n_kv_heads, kv_dim);
        if (ring)
            for (int64_t t = 0; t < n; t++) {
                const int64_t row = (p0 + t) % L->cache_len;
                memcpy(kc + row * kv_dim, kn + t * kv_dim, (size_t)kv_dim * sizeof(float));
                memcpy(vc + row * kv_dim, vn + t * kv_dim, (size_t)kv_dim * sizeof(float));
            }

        att_job aj = {m, k, kc, vc, L->cache_len, p0, c->attn_scale, n, L->window, c->attn_softcap};
        {
            const int64_t seen = L->window && L->window < p0 + n ? L->window : p0 + n;
            const int serial = (double)(n * c->n_heads * hd) * (double)seen < (double)SERIAL_WORK;
            const int64_t nth = serial ? 1 : lmp_pool_size(m->pool), g = c->n_heads / c->n_kv_heads;
            /* the query heads of a KV head together, split only when too few tasks (generation)
             * would leave threads idle */
            aj.nblk = (n + ATT_TOKENS - 1) / ATT_TOKENS;
            int64_t nsub = 1;
            while (nsub < g && aj.nblk * c->n_kv_heads * nsub < 4 * nth) nsub++;
            aj.hs = (g + nsub - 1) / nsub;
            aj.nsub = (g + aj.hs - 1) / aj.hs;
            const int64_t ntasks = aj.nblk * c->n_kv_heads * aj.nsub;
            if (serial) {
                for (int64_t i = 0; i < ntasks; i++) att_task(&aj, i, 0);
            } else {
                lmp_pool_run(m->pool, ntasks, att_task, &aj);
            }
        }
        {
            const lmp_weight *ws[1] = {&L->wo};
            float *ys[1] = {m->proj};
            const int64_t ld[1] = {dim};
            matmuls(m, k, m->att, q_dim, n, 1, ws, ys, ld);
        }
        if (L->post_attn_norm) rmsnorm(m->proj, m->proj, L->post_attn_norm, n, dim, c->norm_eps, c->norm_offset);
        add_rows(m->h, m->proj, n * dim);

        const float *xf = m->h;
        if (L->ffn_norm) {
            rmsnorm(m->xn, m->h, L->ffn_norm, n, dim, c->norm_eps, c->norm_offset);
            xf = m->xn;
        }
        float *ffn_out = m->proj;
        if (c->n_experts) {
            moe(m, k, L, xf, n);
            ffn_out = m->moe;
        } else {
            mlp(m, k, &L->w_gate, &L->w_up, &L->w_down, xf, n);
        }
        if (L->post_ffn_norm) rmsnorm(ffn_out, ffn_out, L->post_ffn_norm, n, dim, c->norm_eps, c->norm_offset);
        add_rows(m->h, ffn_out, n * dim);
    }
}

int lmp_can_start(const lmp_model *m, int64_t pos) {
    return !m->has_ring || pos == 0 || (pos <= m->kv_end && pos >= m->kv_end - LMP_CHUNK);
}

void lmp_forward(lmp_model *m, const int32_t *tokens, int64_t ntok, int64_t pos, float *out, int all_logits) {
    if (pos == 0) m->kv_end = 0;
    if (pos + ntok > m->kv_end) m->kv_end = pos + ntok;
    /* fetched per call: set_kernel_path may switch tables between calls */
    const lmp_kernels *k = lmp_active_kernels();
    const lmp_config *c = &m->cfg;
    const int64_t dim = c->dim, vocab = c->vocab_size;
    const lmp_weight *head = &m->lm_head;
    float *head_out[1];
    const int64_t ld[1] = {vocab};

    for (int64_t c0 = 0; c0 < ntok; c0 += LMP_CHUNK) {
        int64_t n = ntok - c0 < LMP_CHUNK ? ntok - c0 : LMP_CHUNK;
        run_chunk(m, k, tokens + c0, n, pos + c0);
        if (all_logits) {
            rmsnorm(m->xn, m->h, m->final_norm, n, dim, c->norm_eps, c->norm_offset);
            head_out[0] = out + c0 * vocab;
            matmuls(m, k, m->xn, dim, n, 1, &head, head_out, ld);
            if (c->final_softcap) softcap(head_out[0], n * vocab, c->final_softcap);
        } else if (c0 + n == ntok) {
            rmsnorm(m->xn, m->h + (n - 1) * dim, m->final_norm, 1, dim, c->norm_eps, c->norm_offset);
            head_out[0] = out;
            matmuls(m, k, m->xn, dim, 1, 1, &head, head_out, ld);
            if (c->final_softcap) softcap(out, vocab, c->final_softcap);
        }
    }
}
