/* lmpack._core.Model: a decoder model over a buffer holding a .lmp file, with its KV cache.
 *
 * The constructor is the gate between Python and forward.c. It takes the config's dimensions and
 * feature switches and a flat list of weight slots (which slots a family fills, and which tensor
 * of the file goes in each, is lmpack/formats/arch.py's table); it checks every slot's dtype,
 * shape against the config, size, alignment and byte range against the buffer, and the RoPE
 * table, before any pointer into the buffer is formed. forward() checks ids, positions and the
 * output buffer, then runs the whole step in C with the GIL released.
 */
#include "pyapi.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "forward.h"

/* Every config dimension and n_heads*head_dim is at most 2^24, the limit of
 * lmpack/formats/arch.py MAX_DIM: products of two (a matrix's elements) fit an int64. */
#define MAX_DIM (1LL << 24)
#define MAX_THREADS 1024

typedef struct {
    PyObject_HEAD
    Py_buffer view; /* the file, held for the model's lifetime */
    int has_view;
    void *copy;     /* 64-byte aligned copy of the buffer when its base address is not aligned */
    int has_state;
    int busy;       /* a forward() is running with the GIL released */
    int threads;
    lmp_model m;
} ModelObject;

/* ---- config ------------------------------------------------------------------------------- */

/* An integer (int, or anything with __index__ such as numpy ints; not bool) as a long long.
 * Returns 0 and sets *overflow when it does not fit, -1 with no exception when not an integer. */
static int as_index(PyObject *v, long long *x, int *overflow) {
    *overflow = 0;
    if (PyBool_Check(v) || !PyIndex_Check(v)) return -1;
    PyObject *i = PyNumber_Index(v);
    if (!i) {
        PyErr_Clear();
        return -1;
    }
    *x = PyLong_AsLongLongAndOverflow(i, overflow);
    Py_DECREF(i);
    if (*x == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        *overflow = 1;
    }
    return 0;
}

static int cfg_int(PyObject *cfg, const char *key, int64_t *out) {
    PyObject *v = PyDict_GetItemString(cfg, key); /* borrowed */
    if (!v) {
        PyErr_Format(PyExc_ValueError, "config: missing '%s'", key);
        return -1;
    }
    int overflow;
    long long x = 0;
    if (as_index(v, &x, &overflow)) {
        PyErr_Format(PyExc_ValueError, "config: '%s' must be an int", key);
        return -1;
    }
    if (overflow || x < 1 || x > MAX_DIM) {
        PyErr_Format(PyExc_ValueError, "config: '%s' must be in [1, %lld]", key, MAX_DIM);
        return -1;
    }
    *out = (int64_t)x;
    return 0;
}

/* Optional number `key` in [lo, hi] (default `dflt` when absent) into *out. */
static int cfg_opt_float(PyObject *cfg, const char *key, double dflt, double lo, double hi, double *out) {
    PyObject *x = PyDict_GetItemString(cfg, key); /* borrowed */
    if (!x) {
        *out = dflt;
        return 0;
    }
    double v = (PyBool_Check(x) || !(PyFloat_Check(x) || PyLong_Check(x))) ? NAN : PyFloat_AsDouble(x);
    if (v == -1.0 && PyErr_Occurred()) PyErr_Clear(), v = NAN;
    if (!(v >= lo && v <= hi)) { /* false for NaN */
        PyErr_Format(PyExc_ValueError, "config: '%s' must be a number in [%g, %g]", key, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_config(PyObject *cfg, lmp_config *c) {
    if (!PyDict_Check(cfg)) {
        PyErr_SetString(PyExc_ValueError, "config must be a dict");
        return -1;
    }
    if (cfg_int(cfg, "dim", &c->dim) || cfg_int(cfg, "n_layers", &c->n_layers) ||
        cfg_int(cfg, "n_heads", &c->n_heads) || cfg_int(cfg, "n_kv_heads", &c->n_kv_heads) ||
        cfg_int(cfg, "head_dim", &c->head_dim) || cfg_int(cfg, "ffn_dim", &c->ffn_dim) ||
        cfg_int(cfg, "vocab_size", &c->vocab_size))
        return -1;
    PyObject *eps = PyDict_GetItemString(cfg, "norm_eps");
    if (!eps) {
        PyErr_SetString(PyExc_ValueError, "config: missing 'norm_eps'");
        return -1;
    }
    if (PyBool_Check(eps) || !(PyFloat_Check(eps) || PyLong_Check(eps))) {
        PyErr_SetString(PyExc_ValueError, "config: 'norm_eps' must be a float");
        return -1;
    }
    double e = PyFloat_AsDouble(eps);
    if (e == -1.0 && PyErr_Occurred()) return -1;
    if (!isfinite(e) || !(e > 0.0) || !(e < 1.0)) {
        PyErr_SetString(PyExc_ValueError, "config: 'norm_eps' must be a finite number in (0, 1)");
        return -1;
    }
    c->norm_eps = (float)e;
    /* family switches (lmpack/formats/arch.py core_config); absent keys keep Llama's behaviour */
    double v;
    if (cfg_opt_float(cfg, "norm_offset", 0.0, 0.0, 1.0, &v)) return -1;
    c->norm_offset = (float)v;
    if (cfg_opt_float(cfg, "act", 0.0, 0.0, 1.0, &v)) return -1;
    c->act = v == 0.0 ? LMP_ACT_SILU : LMP_ACT_GELU_TANH;
    if (v != 0.0 && v != 1.0) {
        PyErr_SetString(PyExc_ValueError, "config: 'act' must be 0 (silu) or 1 (gelu_tanh)");
        return -1;
    }
    if (cfg_opt_float(cfg, "embed_scale", 1.0, 1e-6, 1e6, &v)) return -1;
    c->embed_scale = (float)v;
    /* the scale HF uses, head_dim**-0.5, rounded to float */
    if (cfg_opt_float(cfg, "attn_scale", 1.0 / sqrt((double)c->head_dim), 1e-6, 1e6, &v)) return -1;
    c->attn_scale = (float)v;
    if (cfg_opt_float(cfg, "attn_softcap", 0.0, 0.0, 1e6, &v)) return -1;
    c->attn_softcap = (float)v;
    if (cfg_opt_float(cfg, "final_softcap", 0.0, 0.0, 1e6, &v)) return -1;
    c->final_softcap = (float)v;
    c->n_rope = 1;
    if (cfg_opt_float(cfg, "rope_dim", (double)c->head_dim, 2.0, (double)c->head_dim, &v)) return -1;
    c->rope_dim = (int64_t)v;
    if ((double)c->rope_dim != v || c->rope_dim % 2 != 0) {
        PyErr_SetString(PyExc_ValueError, "config: 'rope_dim' must be an even integer");
        return -1;
    }
    if (cfg_opt_float(cfg, "qk_norm_full", 0.0, 0.0, 1.0, &v)) return -1;
    c->qk_norm_full = v != 0.0;
    double ne, nu;
    if (cfg_opt_float(cfg, "n_experts", 0.0, 0.0, LMP_MAX_EXPERTS, &ne) ||
        cfg_opt_float(cfg, "n_experts_used", 0.0, 0.0, LMP_MAX_EXPERTS, &nu))
        return -1;
    c->n_experts = (int64_t)ne;
    c->n_experts_used = (int64_t)nu;
    if ((double)c->n_experts != ne || (double)c->n_experts_used != nu ||
        (c->n_experts && (c->n_experts < 2 || c->n_experts_used < 1 || c->n_experts_used > c->n_experts)) ||
        (!c->n_experts && c->n_experts_used)) {
        PyErr_Format(PyExc_ValueError, "config: n_experts must be 0 or an integer in [2, %d] and n_experts_used "
                     "an integer in [1, n_experts]", LMP_MAX_EXPERTS);
        return -1;
    }
    if (c->n_heads % c->n_kv_heads != 0) {
        PyErr_Format(PyExc_ValueError, "config: n_heads (%lld) is not a multiple of n_kv_heads (%lld)",
                     (long long)c->n_heads, (long long)c->n_kv_heads);
        return -1;
    }
    if (c->head_dim % 2 != 0) {
        PyErr_Format(PyExc_ValueError, "config: head_dim (%lld) must be even", (long long)c->head_dim);
        return -1;
    }
    if (c->n_heads * c->head_dim > MAX_DIM) {
        PyErr_SetString(PyExc_ValueError, "config: n_heads * head_dim is too large");
        return -1;
    }
    return 0;
}

/* ---- tensors ------------------------------------------------------------------------------ */

static const char *const DTYPE_NAMES[LMP_DTYPE_COUNT] = {"f32", "f16", "bf16", "q8_0"};
static const int64_t DTYPE_SIZE[LMP_DTYPE_COUNT] = {4, 2, 2, 1};

/* The byte size a tensor of `numel` elements takes, or -1 if it overflows. */
static int64_t tensor_nbytes(int dtype, int64_t numel) {
    if (numel > INT64_MAX / 8) return -1;
    if (dtype == LMP_Q8_0) return (numel + 63) / 64 * 64 + numel / 16;
    return numel * DTYPE_SIZE[dtype];
}

typedef struct {
    const char *base; /* the (aligned) file bytes */
    int64_t len;
    PyObject *weights;
} tensor_src;

static int64_t get_i64(PyObject *v, const char *name, const char *what, int *ok) {
    int overflow;
    long long x = 0;
    if (as_index(v, &x, &overflow)) {
        PyErr_Format(PyExc_ValueError, "tensor '%s': %s must be an int", name, what);
        *ok = 0;
        return 0;
    }
    if (overflow || x < 0) {
        PyErr_Format(PyExc_ValueError, "tensor '%s': %s out of range", name, what);
        *ok = 0;
        return 0;
    }
    *ok = 1;
    return (int64_t)x;
}

/* Checks one slot entry `entry` (offset, nbytes, dtype, shape) against the expected shape [cols]
 * (rows < 0) or [rows, cols]; on success points *vec (a vector, which must be f32) or *w into the
 * buffer. `name`/`layer` only label the messages (layer < 0 for a model-wide slot). */
static int load_slot(const tensor_src *src, PyObject *entry, const char *slot, int64_t layer, int64_t rows,
                     int64_t cols, lmp_weight *w, const float **vec) {
    char name[64];
    if (layer >= 0)
        snprintf(name, sizeof name, "%s[%lld]", slot, (long long)layer);
    else
        snprintf(name, sizeof name, "%s", slot);
    const int ndim = rows < 0 ? 1 : 2;
    if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 4) {
        PyErr_Format(PyExc_ValueError, "weight '%s': expected a tuple (offset, nbytes, dtype, shape)", name);
        return -1;
    }
    int ok;
    int64_t offset = get_i64(PyTuple_GET_ITEM(entry, 0), name, "offset", &ok);
    if (!ok) return -1;
    int64_t nbytes = get_i64(PyTuple_GET_ITEM(entry, 1), name, "nbytes", &ok);
    if (!ok) return -1;
    PyObject *dt = PyTuple_GET_ITEM(entry, 2);
    const char *dts = PyUnicode_Check(dt) ? PyUnicode_AsUTF8(dt) : NULL;
    if (!dts) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "weight '%s': dtype must be a str", name);
        return -1;
    }
    int dtype = -1;
    for (int i = 0; i < LMP_DTYPE_COUNT; i++)
        if (strcmp(dts, DTYPE_NAMES[i]) == 0) dtype = i;
    if (dtype < 0) {
        PyErr_Format(PyExc_ValueError, "weight '%s': unknown dtype '%.20s'", name, dts);
        return -1;
    }
    PyObject *shape = PyTuple_GET_ITEM(entry, 3);
    if (!PyTuple_Check(shape) && !PyList_Check(shape)) {
        PyErr_Format(PyExc_ValueError, "weight '%s': shape must be a tuple", name);
        return -1;
    }
    Py_ssize_t nd = PySequence_Fast_GET_SIZE(shape);
    int64_t dims[2] = {0, 0};
    int shape_ok = nd == ndim;
    for (Py_ssize_t i = 0; shape_ok && i < nd; i++) {
        PyObject *d = PySequence_Fast_GET_ITEM(shape, i);
        dims[i] = get_i64(d, name, "shape entry", &ok);
        if (!ok) return -1;
    }
    if (shape_ok) shape_ok = ndim == 1 ? dims[0] == cols : dims[0] == rows && dims[1] == cols;
    if (!shape_ok) {
        if (ndim == 1)
            PyErr_Format(PyExc_ValueError, "weight '%s': shape must be [%lld] for this config", name,
                         (long long)cols);
        else
            PyErr_Format(PyExc_ValueError, "weight '%s': shape must be [%lld, %lld] for this config", name,
                         (long long)rows, (long long)cols);
        return -1;
    }
    if (ndim == 1 && dtype != LMP_F32) {
        PyErr_Format(PyExc_ValueError, "weight '%s': 1-D tensors must be f32, got %s", name, dts);
        return -1;
    }
    if (dtype == LMP_Q8_0 && cols % LMP_QK != 0) {
        PyErr_Format(PyExc_ValueError, "weight '%s': q8_0 needs a column count divisible by 32, got %lld", name,
                     (long long)cols);
        return -1;
    }
    int64_t numel = ndim == 1 ? cols : rows * cols; /* both <= 2^24: no overflow */
    int64_t want_bytes = tensor_nbytes(dtype, numel);
    if (want_bytes < 0 || nbytes != want_bytes) {
        PyErr_Format(PyExc_ValueError, "weight '%s': nbytes is %lld, a %s tensor of this shape takes %lld", name,
                     (long long)nbytes, dts, (long long)want_bytes);
        return -1;
    }
    int64_t align = dtype == LMP_Q8_0 ? 64 : DTYPE_SIZE[dtype];
    if (offset % align != 0) {
        PyErr_Format(PyExc_ValueError, "weight '%s': offset %lld is not a multiple of %lld", name,
                     (long long)offset, (long long)align);
        return -1;
    }
    if (offset > src->len || nbytes > src->len - offset) {
        PyErr_Format(PyExc_ValueError, "weight '%s': bytes [%lld, +%lld) run past the end of the %lld-byte buffer",
                     name, (long long)offset, (long long)nbytes, (long long)src->len);
        return -1;
    }
    const char *p = src->base + offset;
    if (ndim == 1) {
        *vec = (const float *)p;
    } else {
        w->data = p;
        w->scales = dtype == LMP_Q8_0 ? (const uint16_t *)(p + (numel + 63) / 64 * 64) : NULL;
        w->rows = rows;
        w->cols = cols;
        w->dtype = dtype;
    }
    return 0;
}

/* The shape of a slot, in config dimensions. */
enum { D_VEC = -1, D_DIM, D_VOCAB, D_FFN, D_HD, D_Q, D_KV, D_QN, D_KN, D_EXPERTS };

/* When a slot must be present: always, as the family's table says, in dense models only, in
 * mixture-of-experts models only. A slot of the other kind must then be absent. */
enum { OPTIONAL = 0, REQUIRED = 1, DENSE = 2, MOE = 3 };

typedef struct {
    const char *name;
    int required; /* OPTIONAL, REQUIRED, DENSE or MOE */
    int rows;     /* D_VEC for a vector [cols] */
    int cols;
    size_t off;   /* of the field in lmp_model (model-wide) or lmp_layer (per layer) */
} slot_def;

static const slot_def MODEL_SLOTS[] = {
    {"embed", 1, D_VOCAB, D_DIM, offsetof(lmp_model, embed)},
    {"final_norm", 1, D_VEC, D_DIM, offsetof(lmp_model, final_norm)},
    {"lm_head", 0, D_VOCAB, D_DIM, offsetof(lmp_model, lm_head)}, /* absent: tied to embed */
};

static const slot_def LAYER_SLOTS[] = {
    {"attn_norm", 0, D_VEC, D_DIM, offsetof(lmp_layer, attn_norm)},
    {"wq", 1, D_Q, D_DIM, offsetof(lmp_layer, wq)},
    {"wk", 1, D_KV, D_DIM, offsetof(lmp_layer, wk)},
    {"wv", 1, D_KV, D_DIM, offsetof(lmp_layer, wv)},
    {"wo", 1, D_DIM, D_Q, offsetof(lmp_layer, wo)},
    {"bq", 0, D_VEC, D_Q, offsetof(lmp_layer, bq)},
    {"bk", 0, D_VEC, D_KV, offsetof(lmp_layer, bk)},
    {"bv", 0, D_VEC, D_KV, offsetof(lmp_layer, bv)},
    {"q_norm", 0, D_VEC, D_QN, offsetof(lmp_layer, q_norm)},
    {"k_norm", 0, D_VEC, D_KN, offsetof(lmp_layer, k_norm)},
    {"post_attn_norm", 0, D_VEC, D_DIM, offsetof(lmp_layer, post_attn_norm)},
    {"ffn_norm", 0, D_VEC, D_DIM, offsetof(lmp_layer, ffn_norm)},
    {"w_gate", DENSE, D_FFN, D_DIM, offsetof(lmp_layer, w_gate)},
    {"w_up", DENSE, D_FFN, D_DIM, offsetof(lmp_layer, w_up)},
    {"w_down", DENSE, D_DIM, D_FFN, offsetof(lmp_layer, w_down)},
    {"router", MOE, D_EXPERTS, D_DIM, offsetof(lmp_layer, router)},
    {"post_ffn_norm", 0, D_VEC, D_DIM, offsetof(lmp_layer, post_ffn_norm)},
};

/* One entry per layer and expert (layer-major); `off` is that of the lmp_weight array pointer. */
static const slot_def EXPERT_SLOTS[] = {
    {"x_gate", MOE, D_FFN, D_DIM, offsetof(lmp_layer, x_gate)},
    {"x_up", MOE, D_FFN, D_DIM, offsetof(lmp_layer, x_up)},
    {"x_down", MOE, D_DIM, D_FFN, offsetof(lmp_layer, x_down)},
};

#define N_EXPERT_SLOTS ((int)(sizeof EXPERT_SLOTS / sizeof EXPERT_SLOTS[0]))
#define N_MODEL_SLOTS ((int)(sizeof MODEL_SLOTS / sizeof MODEL_SLOTS[0]))
#define N_LAYER_SLOTS ((int)(sizeof LAYER_SLOTS / sizeof LAYER_SLOTS[0]))

static int64_t dim_of(const lmp_config *c, int d) {
    switch (d) {
    case D_DIM: return c->dim;
    case D_VOCAB: return c->vocab_size;
    case D_FFN: return c->ffn_dim;
    case D_HD: return c->head_dim;
    case D_Q: return c->n_heads * c->head_dim;
    case D_KV: return c->n_kv_heads * c->head_dim;
    case D_QN: return c->qk_norm_full ? c->n_heads * c->head_dim : c->head_dim;
    case D_KN: return c->qk_norm_full ? c->n_kv_heads * c->head_dim : c->head_dim;
    case D_EXPERTS: return c->n_experts;
    default: return -1;
    }
}

static int slot_into(const tensor_src *src, const slot_def *d, PyObject *entry, int64_t layer, const lmp_config *c,
                     char *base) {
    lmp_weight *w = d->rows == D_VEC ? NULL : (lmp_weight *)(base + d->off);
    const float **v = d->rows == D_VEC ? (const float **)(base + d->off) : NULL;
    return load_slot(src, entry, d->name, layer, dim_of(c, d->rows), dim_of(c, d->cols), w, v);
}

/* Optional config list `key` of n_layers integers in [0, MAX_DIM] into the int64 at `off` of
 * each lmp_layer (left 0 when the key is absent). */
static int layer_ints(PyObject *cfg, const char *key, lmp_model *m, size_t off) {
    PyObject *list = PyDict_GetItemString(cfg, key); /* borrowed */
    if (!list) return 0;
    if (!PyList_Check(list) || PyList_GET_SIZE(list) != m->cfg.n_layers) {
        PyErr_Format(PyExc_ValueError, "config: '%s' must be a list of n_layers = %lld integers", key,
                     (long long)m->cfg.n_layers);
        return -1;
    }
    for (int64_t l = 0; l < m->cfg.n_layers; l++) {
        long long x = 0;
        int overflow;
        if (as_index(PyList_GET_ITEM(list, l), &x, &overflow) || overflow || x < 0 || x > MAX_DIM) {
            PyErr_Format(PyExc_ValueError, "config: '%s'[%lld] must be an integer in [0, %lld]", key, (long long)l,
                         MAX_DIM);
            return -1;
        }
        *(int64_t *)((char *)&m->layers[l] + off) = (int64_t)x;
    }
    return 0;
}

/* weights: slot name -> entry (model-wide slots) or a list of n_layers entries (per-layer slots);
 * cfg: the per-layer features of the config. */
static int load_weights(ModelObject *self, PyObject *cfg, PyObject *weights) {
    lmp_model *m = &self->m;
    const lmp_config *c = &m->cfg;
    if (!PyDict_Check(weights)) {
        PyErr_SetString(PyExc_ValueError, "weights must be a dict");
        return -1;
    }
    PyObject *key, *value;
    Py_ssize_t it = 0;
    while (PyDict_Next(weights, &it, &key, &value)) {
        const char *name = PyUnicode_Check(key) ? PyUnicode_AsUTF8(key) : NULL;
        if (!name) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "weights: slot names must be str");
            return -1;
        }
        int known = 0;
        for (int i = 0; i < N_MODEL_SLOTS; i++) known |= strcmp(name, MODEL_SLOTS[i].name) == 0;
        for (int i = 0; i < N_LAYER_SLOTS; i++) known |= strcmp(name, LAYER_SLOTS[i].name) == 0;
        for (int i = 0; i < N_EXPERT_SLOTS; i++) known |= strcmp(name, EXPERT_SLOTS[i].name) == 0;
        if (!known) {
            PyErr_Format(PyExc_ValueError, "weight '%.200s': not a slot of the forward pass", name);
            return -1;
        }
    }
    tensor_src src = {self->copy ? (const char *)self->copy : (const char *)self->view.buf,
                      (int64_t)self->view.len, weights};
    for (int i = 0; i < N_MODEL_SLOTS; i++) {
        const slot_def *d = &MODEL_SLOTS[i];
        PyObject *entry = PyDict_GetItemString(weights, d->name); /* borrowed */
        if (!entry) {
            if (!d->required) continue;
            PyErr_Format(PyExc_ValueError, "weight '%s': missing", d->name);
            return -1;
        }
        if (slot_into(&src, d, entry, -1, c, (char *)m)) return -1;
    }
    if (!PyDict_GetItemString(weights, "lm_head")) m->lm_head = m->embed;
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->layers) {
        PyErr_NoMemory();
        return -1;
    }
    if (c->n_experts) { /* three arrays of n_experts weights per layer, in one block */
        m->experts = calloc((size_t)(c->n_layers * 3 * c->n_experts), sizeof *m->experts);
        if (!m->experts) {
            PyErr_NoMemory();
            return -1;
        }
        for (int64_t l = 0; l < c->n_layers; l++) {
            m->layers[l].x_gate = m->experts + (l * 3 + 0) * c->n_experts;
            m->layers[l].x_up = m->experts + (l * 3 + 1) * c->n_experts;
            m->layers[l].x_down = m->experts + (l * 3 + 2) * c->n_experts;
        }
    }
    if (layer_ints(cfg, "layer_window", m, offsetof(lmp_layer, window)) ||
        layer_ints(cfg, "layer_rope", m, offsetof(lmp_layer, rope)))
        return -1;
    for (int64_t l = 0; l < c->n_layers; l++)
        if (m->layers[l].rope >= c->n_rope) {
            PyErr_Format(PyExc_ValueError, "config: 'layer_rope'[%lld] = %lld, but inv_freq holds %lld table(s)",
                         (long long)l, (long long)m->layers[l].rope, (long long)c->n_rope);
            return -1;
        }
    for (int i = 0; i < N_LAYER_SLOTS + N_EXPERT_SLOTS; i++) {
        const int expert = i >= N_LAYER_SLOTS;
        const slot_def *d = expert ? &EXPERT_SLOTS[i - N_LAYER_SLOTS] : &LAYER_SLOTS[i];
        PyObject *list = PyDict_GetItemString(weights, d->name);
        const int wanted = d->required == REQUIRED || (d->required == DENSE && !c->n_experts) ||
                           (d->required == MOE && c->n_experts);
        if (!list) {
            if (!wanted) continue;
            PyErr_Format(PyExc_ValueError, "weight '%s': missing", d->name);
            return -1;
        }
        if (!wanted && d->required != OPTIONAL) {
            PyErr_Format(PyExc_ValueError, "weight '%s': not part of a %s model", d->name,
                         c->n_experts ? "mixture-of-experts" : "dense");
            return -1;
        }
        const int64_t per = expert ? c->n_experts : 1;
        if (!PyList_Check(list) || PyList_GET_SIZE(list) != c->n_layers * per) {
            PyErr_Format(PyExc_ValueError, "weight '%s': expected a list of %s = %lld entries", d->name,
                         expert ? "n_layers*n_experts" : "n_layers", (long long)(c->n_layers * per));
            return -1;
        }
        for (int64_t l = 0; l < c->n_layers; l++) {
            if (!expert) {
                if (slot_into(&src, d, PyList_GET_ITEM(list, l), l, c, (char *)&m->layers[l])) return -1;
                continue;
            }
            lmp_weight *ws = *(lmp_weight **)((char *)&m->layers[l] + d->off);
            for (int64_t e = 0; e < per; e++)
                if (load_slot(&src, PyList_GET_ITEM(list, l * per + e), d->name, l * per + e, dim_of(c, d->rows),
                              dim_of(c, d->cols), &ws[e], NULL))
                    return -1;
        }
    }
    return 0;
}

/* ---- buffers ------------------------------------------------------------------------------ */

/* 1 if a buffer's struct format is a native little-endian `kind` ('i' int32 or 'f' float32). */
static int format_is(const Py_buffer *b, char kind) {
    if (b->itemsize != 4 || !b->format) return 0;
    const char *f = b->format;
    if (*f == '@' || *f == '=' || *f == '<') f++;
    if (f[0] == kind && f[1] == '\0') return 1;
    return kind == 'i' && f[0] == 'l' && f[1] == '\0' && sizeof(long) == 4;
}

static int get_typed_buffer(PyObject *obj, Py_buffer *b, char kind, int writable, const char *what) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, b, flags) != 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be a %sC-contiguous buffer of %s", what, writable ? "writable " : "",
                     kind == 'i' ? "int32" : "float32");
        return -1;
    }
    if (!format_is(b, kind)) {
        PyErr_Format(PyExc_ValueError, "%s must hold %s, got format '%s'", what, kind == 'i' ? "int32" : "float32",
                     b->format ? b->format : "B");
        PyBuffer_Release(b);
        return -1;
    }
    return 0;
}

/* ---- the type ----------------------------------------------------------------------------- */

static void model_dealloc(ModelObject *self) {
    if (self->has_state) lmp_state_free(&self->m);
    free(self->m.layers);
    free(self->m.experts);
    free(self->m.inv_freq);
    free(self->copy);
    if (self->has_view) PyBuffer_Release(&self->view);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *model_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"buffer", "config", "weights", "inv_freq", "n_ctx", "threads", "activations", NULL};
    PyObject *buffer, *config, *weights, *inv_freq;
    long long n_ctx, threads = 1;
    const char *activations = "f32";
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOL|Ls:Model", kwlist, &buffer, &config, &weights, &inv_freq,
                                     &n_ctx, &threads, &activations))
        return NULL;
    if (strcmp(activations, "f32") != 0 && strcmp(activations, "bf16") != 0) {
        PyErr_SetString(PyExc_ValueError, "activations must be 'f32' or 'bf16'");
        return NULL;
    }
    ModelObject *self = (ModelObject *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    lmp_model *m = &self->m;

    if (parse_config(config, &m->cfg)) goto fail;
    if (n_ctx < 1 || n_ctx > MAX_DIM) {
        PyErr_Format(PyExc_ValueError, "n_ctx must be in [1, %lld], got %lld", MAX_DIM, n_ctx);
        goto fail;
    }
    if (threads < 1 || threads > MAX_THREADS) {
        PyErr_Format(PyExc_ValueError, "threads must be in [1, %d], got %lld", MAX_THREADS, threads);
        goto fail;
    }
    m->n_ctx = (int64_t)n_ctx;
    m->act_bf16 = strcmp(activations, "bf16") == 0;
    self->threads = (int)threads;

    {
        /* one or more tables of head_dim/2 frequencies: [n_rope, head_dim/2] */
        Py_buffer fb;
        if (get_typed_buffer(inv_freq, &fb, 'f', 0, "inv_freq")) goto fail;
        int64_t half = m->cfg.rope_dim / 2, nf = (int64_t)(fb.len / 4);
        if (nf < half || nf % half != 0 || nf / half > 64) {
            PyErr_Format(PyExc_ValueError, "inv_freq must hold 1 to 64 tables of rope_dim/2 = %lld floats, got %lld",
                         (long long)half, (long long)nf);
            PyBuffer_Release(&fb);
            goto fail;
        }
        m->cfg.n_rope = nf / half;
        m->inv_freq = malloc((size_t)nf * sizeof(float));
        if (!m->inv_freq) {
            PyBuffer_Release(&fb);
            PyErr_NoMemory();
            goto fail;
        }
        memcpy(m->inv_freq, fb.buf, (size_t)nf * sizeof(float));
        PyBuffer_Release(&fb);
        for (int64_t i = 0; i < nf; i++)
            if (!isfinite(m->inv_freq[i])) {
                PyErr_Format(PyExc_ValueError, "inv_freq[%lld] is not finite", (long long)i);
                goto fail;
            }
    }

    if (PyObject_GetBuffer(buffer, &self->view, PyBUF_SIMPLE) != 0) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "buffer must be a contiguous bytes-like object");
        goto fail;
    }
    self->has_view = 1;
    if ((uintptr_t)self->view.buf % 64 != 0 && self->view.len > 0) {
        /* The q8_0 planes must sit on 64-byte boundaries in memory, not just in the file (an mmap
         * always is; a bytes object is not), so an unaligned buffer is read from a copy. */
        if ((size_t)self->view.len > SIZE_MAX - 64 ||
            posix_memalign(&self->copy, 64, (size_t)self->view.len) != 0) {
            self->copy = NULL;
            PyErr_NoMemory();
            goto fail;
        }
        memcpy(self->copy, self->view.buf, (size_t)self->view.len);
    }
    if (load_weights(self, config, weights)) goto fail;

    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = lmp_state_alloc(m, self->threads);
    Py_END_ALLOW_THREADS
    if (rc == -1) {
        PyErr_Format(PyExc_MemoryError, "cannot allocate the KV cache and scratch for n_ctx=%lld", n_ctx);
        goto fail;
    }
    if (rc == -2) {
        PyErr_Format(PyExc_RuntimeError, "cannot start %lld threads", threads);
        goto fail;
    }
    self->has_state = 1;
    return (PyObject *)self;
fail:
    Py_DECREF(self);
    return NULL;
}

static PyObject *model_forward(ModelObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"tokens", "pos", "out", "all_logits", NULL};
    PyObject *tokens_obj, *out_obj;
    long long pos;
    int all_logits = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OLO|p:forward", kwlist, &tokens_obj, &pos, &out_obj, &all_logits))
        return NULL;
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Model.forward is already running in another thread");
        return NULL;
    }
    lmp_model *m = &self->m;
    Py_buffer tb, ob;
    if (get_typed_buffer(tokens_obj, &tb, 'i', 0, "tokens")) return NULL;
    int64_t ntok = (int64_t)(tb.len / 4);
    const int32_t *tok = tb.buf;
    if (ntok < 1) {
        PyErr_SetString(PyExc_ValueError, "tokens is empty");
        goto fail_t;
    }
    if (pos < 0 || pos > m->n_ctx || ntok > m->n_ctx - pos) {
        PyErr_Format(PyExc_ValueError, "pos %lld with %lld tokens does not fit the context of %lld positions", pos,
                     (long long)ntok, (long long)m->n_ctx);
        goto fail_t;
    }
    if (!lmp_can_start(m, (int64_t)pos)) {
        PyErr_Format(PyExc_ValueError, "pos %lld: a sliding-window cache holds positions up to %lld and can go back "
                     "at most %d of them (start again from 0)", pos, (long long)m->kv_end, LMP_CHUNK);
        goto fail_t;
    }
    for (int64_t i = 0; i < ntok; i++)
        if (tok[i] < 0 || tok[i] >= m->cfg.vocab_size) {
            PyErr_Format(PyExc_ValueError, "token id %d at index %lld is outside the vocabulary [0, %lld)", tok[i],
                         (long long)i, (long long)m->cfg.vocab_size);
            goto fail_t;
        }
    if (get_typed_buffer(out_obj, &ob, 'f', 1, "out")) goto fail_t;
    int64_t want = (all_logits ? ntok : 1) * m->cfg.vocab_size;
    if (ob.len / 4 != want) {
        PyErr_Format(PyExc_ValueError, "out holds %lld floats, expected %lld", (long long)(ob.len / 4),
                     (long long)want);
        goto fail_o;
    }
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    lmp_forward(m, tok, ntok, (int64_t)pos, (float *)ob.buf, all_logits);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    PyBuffer_Release(&ob);
    PyBuffer_Release(&tb);
    Py_RETURN_NONE;
fail_o:
    PyBuffer_Release(&ob);
fail_t:
    PyBuffer_Release(&tb);
    return NULL;
}

static PyObject *model_get_n_ctx(ModelObject *self, void *closure) { return PyLong_FromLongLong(self->m.n_ctx); }
static PyObject *model_get_threads(ModelObject *self, void *closure) { return PyLong_FromLong(self->threads); }
static PyObject *model_get_activations(ModelObject *self, void *closure) {
    /* What runs, not what was asked: tables without a bf16-activation matmul run the exact path. */
    const int bf16 = self->m.act_bf16 && lmp_bf16_act_matmul(lmp_active_kernels()) != NULL;
    return PyUnicode_FromString(bf16 ? "bf16" : "f32");
}

static PyMethodDef model_methods[] = {
    {"forward", (PyCFunction)(void (*)(void))model_forward, METH_VARARGS | METH_KEYWORDS,
     "forward(tokens, pos, out, all_logits=False) -> None: run int32 tokens at positions pos.. through the model, "
     "(over)writing their KV cache entries; out (float32) gets ntok*vocab logits if all_logits else the last "
     "token's vocab logits."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef model_getset[] = {
    {"n_ctx", (getter)model_get_n_ctx, NULL, "KV cache length in positions.", NULL},
    {"threads", (getter)model_get_threads, NULL, "Threads used by forward (including the caller's).", NULL},
    {"activations", (getter)model_get_activations, NULL,
     "'f32' (exact) or 'bf16' (bf16 weights' matmuls round activations to bf16 where the kernels can).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject LmpModel_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "lmpack._core.Model",
    .tp_basicsize = sizeof(ModelObject),
    .tp_dealloc = (destructor)model_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Model(buffer, config, weights, inv_freq, n_ctx, threads=1): a decoder model over the bytes of a "
              ".lmp file (weights: slot -> (offset, nbytes, dtype, shape), or a list of one per layer; inv_freq: "
              "float32 RoPE tables [n, rope_dim/2]), with an f32 KV cache of n_ctx positions and a pool of "
              "`threads` threads.",
    .tp_methods = model_methods,
    .tp_getset = model_getset,
    .tp_new = model_new,
};
