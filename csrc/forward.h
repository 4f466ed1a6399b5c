/* The decoder forward pass over weights mapped from a .lmp file: plain structs for the config, the
 * weights and the run state, and one function that advances the KV cache by a run of tokens.
 *
 * Everything here trusts its inputs: py_model.c validates the config, every tensor's dtype,
 * shape, offset and size, the token ids and the positions before calling in.
 */
#ifndef LMPACK_FORWARD_H
#define LMPACK_FORWARD_H

#include <stdint.h>

#include "kernels.h"
#include "threadpool.h"

/* Tokens per pass through the layers: bounds the scratch memory whatever the prompt length. */
#define LMP_CHUNK 128
/* Experts per MoE layer at most (lmpack/formats/arch.py MAX_EXPERTS). */
#define LMP_MAX_EXPERTS 256

enum lmp_act { LMP_ACT_SILU = 0, LMP_ACT_GELU_TANH = 1 }; /* the MLP's gate: SwiGLU or GeGLU */

typedef struct {
    int64_t dim, n_layers, n_heads, n_kv_heads, head_dim, ffn_dim, vocab_size;
    float norm_eps;
    float norm_offset;    /* every RMSNorm scales by (norm_offset + w): 1 for Gemma, else 0 */
    int act;              /* enum lmp_act */
    float embed_scale;    /* embedding rows times this (Gemma: sqrt(dim)); 1 for none */
    float attn_scale;     /* q.k multiplier, 1/sqrt(head_dim) unless the family says otherwise */
    float attn_softcap;   /* scores become cap*tanh(score/cap) before the softmax; 0 for none */
    float final_softcap;  /* the same on the logits */
    int64_t n_rope;       /* RoPE frequency tables; each layer picks one (lmp_layer.rope) */
    int64_t rope_dim;     /* RoPE rotates the first rope_dim (even) dims of each head: head_dim unless partial */
    int qk_norm_full;     /* q/k norms span the whole projection (OLMo 2), not each head */
    int64_t n_experts;    /* MoE: experts per layer, 0 for a dense MLP */
    int64_t n_experts_used; /* MoE: experts each token takes (top-k) */
} lmp_config;

/* One block's weights. Which slots a family fills is lmpack/formats/arch.py's table; py_model.c
 * checks each filled slot's shape, dtype and bytes (csrc/py_model.c LAYER_SLOTS). */
typedef struct {
    const float *attn_norm; /* [dim], before attention; absent in post-norm blocks (OLMo 2) */
    lmp_weight wq, wk, wv, wo;
    const float *bq, *bk, *bv; /* optional biases of q [n_heads*head_dim], k and v [n_kv_heads*head_dim] */
    const float *q_norm, *k_norm; /* optional RMSNorm of q and k before RoPE: of each head [head_dim],
                                   * or with qk_norm_full of the whole projection [heads*head_dim] */
    const float *ffn_norm;  /* [dim], before the MLP; absent in post-norm blocks */
    lmp_weight w_gate, w_up, w_down; /* the dense MLP */
    lmp_weight router;               /* MoE: [n_experts, dim] */
    lmp_weight *x_gate, *x_up, *x_down; /* MoE: [n_experts] experts, each shaped like the dense MLP */
    const float *post_attn_norm, *post_ffn_norm; /* optional RMSNorm of the attention / MLP output [dim] */
    int64_t window;         /* a query attends to the last `window` positions, itself included; 0: all */
    int64_t rope;           /* its RoPE table, < n_rope */
    /* its KV cache rows, set by lmp_state_alloc: n_ctx rows, or for a sliding layer whose window
     * is well inside the context a ring of window + LMP_CHUNK - 1 rows (position p in row p % len) */
    int64_t cache_len, cache_off;
} lmp_layer;

typedef struct {
    lmp_config cfg;
    lmp_weight embed;        /* [vocab, dim] */
    lmp_weight lm_head;      /* a copy of embed when the file has no lm_head (tied) */
    const float *final_norm; /* [dim] */
    lmp_layer *layers;       /* [n_layers] */
    lmp_weight *experts;     /* MoE: [n_layers, 3, n_experts] that layers[].x_* point into, owned */
    float *inv_freq;         /* [n_rope, rope_dim/2], owned */
    int64_t n_ctx;

    /* run state, allocated once by lmp_state_alloc */
    lmp_pool *pool;
    float *kcache, *vcache; /* per layer [cache_len, n_kv_heads*head_dim], at cache_off */
    int64_t kv_end;         /* one past the highest position written since position 0 was */
    int has_ring;           /* some layer's cache is a ring */
    float *kring, *vring;   /* a ring layer's chunk K/V rows before they go to their slots [CHUNK, kv_dim] */
    float *h;               /* residual stream [CHUNK, dim] */
    float *xn;              /* normalized input [CHUNK, dim] */
    float *q;               /* queries [CHUNK, n_heads*head_dim] */
    float *att;             /* attention output [CHUNK, n_heads*head_dim] */
    float *proj;            /* o_proj / down_proj output [CHUNK, dim] */
    float *gate, *up;       /* [CHUNK, ffn_dim] */
    float *scores;          /* [threads, LMP_ATT_ROWS, n_ctx] softmax rows, LMP_ATT_ROWS per thread */
    float *rope_cos, *rope_sin; /* [n_rope, CHUNK, rope_dim/2] for the chunk's positions */
    float *rlog;            /* MoE: router logits, then probabilities [CHUNK, n_experts] */
    float *xg, *moe;        /* MoE: one expert's gathered input rows, and the mixture [CHUNK, dim] */
    int32_t *route_tok;     /* MoE: per expert, the chunk's tokens that chose it [n_experts, CHUNK] */
    float *route_w;         /* MoE: and their weights [n_experts, CHUNK] */
    int act_bf16;           /* opt-in: bf16 weights' matmuls take activations rounded to bf16 where
                             * the table has matmul_bf16_act (set before lmp_state_alloc) */
    uint16_t *act_h;        /* those rounded activations [CHUNK, max cols], NULL unless act_bf16 */
    int8_t *act_q;          /* q8_0 activations [CHUNK, max cols], NULL without q8_0 weights */
    float *act_d;           /* their scales [CHUNK, max cols / 32] */
} lmp_model;

/* Allocates the KV cache and scratch and starts the pool. Returns 0, -1 when out of memory or a
 * size overflows, -2 when the threads cannot be started. On failure nothing stays allocated. */
int lmp_state_alloc(lmp_model *m, int threads);
void lmp_state_free(lmp_model *m);

/* Runs tokens[0..ntok) at positions pos.., writing their K/V into the cache, and stores the
 * logits: out[ntok, vocab] if all_logits, else out[vocab] for the last token. Requires
 * ntok >= 1, 0 <= pos, pos + ntok <= n_ctx, every id in [0, vocab), and with ring caches
 * pos == 0 or kv_end - LMP_CHUNK <= pos <= kv_end (lmp_can_start). */
/* Whether a run may start at pos: a ring cache still holds the window before pos only if pos is
 * at most LMP_CHUNK positions behind the furthest one written (and not past it). */
int lmp_can_start(const lmp_model *m, int64_t pos);
void lmp_forward(lmp_model *m, const int32_t *tokens, int64_t ntok, int64_t pos, float *out, int all_logits);

#endif
