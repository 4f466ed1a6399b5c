"""A plain numpy Llama forward pass: the second oracle (beside transformers) for the C runtime.

It follows Hugging Face LlamaForCausalLM step by step (RMSNorm, half-split RoPE with HF's float32
angles, grouped-query causal attention, SwiGLU, tied or separate head), computing in float64 so
that its own rounding is negligible next to the runtime's float32. With `q8_act` it also mimics
what the runtime does for q8_0 weights: the input rows of those matmuls are first quantized to
blocks of 32 int8 values with ggml's reference rule, which is the one intended difference from
transformers on dequantized weights. It uses only numpy, never lmpack.
"""
from __future__ import annotations

import numpy as np

LAYER_TENSORS = (
    "input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
    "self_attn.o_proj.weight", "post_attention_layernorm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)


def tensor_names(n_layers: int, tie_embeddings: bool) -> list[str]:
    """The tensor names of docs/FORMAT.md for a model of n_layers (lm_head only when untied)."""
    names = ["model.embed_tokens.weight"]
    for i in range(n_layers):
        names += [f"model.layers.{i}.{t}" for t in LAYER_TENSORS]
    names.append("model.norm.weight")
    if not tie_embeddings:
        names.append("lm_head.weight")
    return names


def quantize_act_q8(x: np.ndarray) -> np.ndarray:
    """ggml reference Q8_0 of float32 rows (last axis a multiple of 32), returned dequantized."""
    x = np.asarray(x, np.float32)
    blocks = x.reshape(*x.shape[:-1], -1, 32)
    d = (np.abs(blocks).max(axis=-1, keepdims=True) / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    v = (blocks * inv).astype(np.float32)
    # round half away from zero; v - trunc(v) is exact in float32 where v + 0.5 would round
    r = np.trunc(v)
    q = r + np.where(np.abs(v - r) >= np.float32(0.5), np.sign(v), np.float32(0))
    return (q.astype(np.float64) * d.astype(np.float64)).reshape(x.shape)


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """Half-split RoPE on x [ntok, heads, head_dim]; angles as HF forms them, in float32."""
    ang = positions.astype(np.float32)[:, None] * inv_freq.astype(np.float32)[None, :]
    cos = np.cos(ang.astype(np.float64))[:, None, :]
    sin = np.sin(ang.astype(np.float64))[:, None, :]
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def forward(weights: dict[str, np.ndarray], cfg: dict, inv_freq: np.ndarray, tokens, q8_act=()) -> np.ndarray:
    """Logits [len(tokens), vocab] (float64) of tokens at positions 0.. from an empty context.

    weights: name -> float array holding the model's values (dequantized); cfg: the keys of
    `_core.Model`'s config; q8_act: names of the weights stored as q8_0, whose inputs get
    quantized like the runtime's activations.
    """
    w = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    q8 = set(q8_act)

    def mm(x, name):
        xin = quantize_act_q8(x) if name in q8 else x
        return xin @ w[name].T

    tokens = np.asarray(tokens, np.int64)
    n = len(tokens)
    nh, nkv, hd, eps = cfg["n_heads"], cfg["n_kv_heads"], cfg["head_dim"], cfg["norm_eps"]
    rep = nh // nkv
    pos = np.arange(n)
    h = w["model.embed_tokens.weight"][tokens]
    causal = np.triu(np.full((n, n), -np.inf), k=1)
    for i in range(cfg["n_layers"]):
        p = f"model.layers.{i}."
        x = rmsnorm(h, w[p + "input_layernorm.weight"], eps)
        q = rope(mm(x, p + "self_attn.q_proj.weight").reshape(n, nh, hd), pos, inv_freq)
        k = rope(mm(x, p + "self_attn.k_proj.weight").reshape(n, nkv, hd), pos, inv_freq)
        v = mm(x, p + "self_attn.v_proj.weight").reshape(n, nkv, hd)
        k = np.repeat(k, rep, axis=1)  # query head j reads kv head j // rep
        v = np.repeat(v, rep, axis=1)
        s = np.einsum("thd,uhd->htu", q, k) / np.sqrt(hd) + causal[None]
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        att = np.einsum("htu,uhd->thd", s, v).reshape(n, nh * hd)
        h = h + mm(att, p + "self_attn.o_proj.weight")
        x = rmsnorm(h, w[p + "post_attention_layernorm.weight"], eps)
        g = mm(x, p + "mlp.gate_proj.weight")
        u = mm(x, p + "mlp.up_proj.weight")
        h = h + mm(g / (1.0 + np.exp(-g)) * u, p + "mlp.down_proj.weight")
    x = rmsnorm(h, w["model.norm.weight"], eps)
    head = "model.embed_tokens.weight" if cfg["tie_embeddings"] else "lm_head.weight"
    return mm(x, head)
