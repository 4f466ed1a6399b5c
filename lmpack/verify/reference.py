"""An independent forward pass in numpy float32 over a source checkpoint's own weights.

This is the yardstick of `lmpack verify --against`: it shares no code with the C runtime (its
RoPE table included) and reads the source checkpoint, not the `.lmp` file; from the family table
(`lmpack.formats.arch`) it takes only which tensor plays which part. It follows Hugging Face's LlamaForCausalLM
step by step in float32 — RMSNorm, half-split RoPE with float32 angles, grouped-query causal
attention, SwiGLU, a separate or tied head — and streams the weights: each matrix is loaded from
the Source when its matmul runs and widened to float32 a block of rows at a time, so memory stays
at the activations plus one row block, never a layer and never the model.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

import numpy as np

from lmpack.convert.source import Source
from lmpack.formats import arch
from lmpack.formats.dtypes import to_f32

BLOCK_BYTES = 32 << 20  # float32 bytes of one widened row block of a weight matrix


class _Weights:
    """Loads source tensors on demand as float32, one matrix (or row block) at a time."""

    def __init__(self, source: Source):
        self.source = source
        self.dtypes = {s.name: s.dtype for s in source.tensor_specs()}

    def vector(self, name: str) -> np.ndarray:
        return np.array(to_f32(self.source.load(name), self.dtypes[name]), dtype=np.float32)

    def rows(self, name: str, ids: np.ndarray) -> np.ndarray:
        w = self.source.load(name)
        return np.array(to_f32(np.asarray(w[ids]), self.dtypes[name]), dtype=np.float32)

    def linear(self, x: np.ndarray, name: str) -> np.ndarray:
        """x @ W.T for W [out, in] stored in the source; W widened a row block at a time."""
        w = self.source.load(name)
        dtype = self.dtypes[name]
        out = np.empty((x.shape[0], w.shape[0]), np.float32)
        step = max(1, BLOCK_BYTES // (4 * w.shape[1]))
        for r0 in range(0, w.shape[0], step):
            block = to_f32(np.asarray(w[r0:r0 + step]), dtype)
            np.matmul(x, block.T, out=out[:, r0:r0 + step])
        del w
        return out


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    var = np.mean(x * x, axis=-1, keepdims=True, dtype=np.float32)
    return (weight * (x / np.sqrt(var + np.float32(eps)))).astype(np.float32)


def inv_freq(cfg) -> np.ndarray:
    """RoPE inverse frequencies (float32, as the model was trained with) from the config alone:
    base^(-2i/d), then the config's scaling. Written here from the papers' formulas, in float64
    rounded once, so a scaling bug in the runtime's own table cannot also hide here."""
    d = cfg.rope_dim or cfg.head_dim  # Phi-3 rotates only the first rope_dim dims of a head
    base = np.float64(cfg.rope_theta) ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    rs = cfg.rope_scaling
    if rs is not None and rs["type"] == "linear":
        base = base / float(rs["factor"])
    elif rs is not None and rs["type"] == "llama3":
        # Llama 3.1: long wavelengths divided by `factor`, short ones kept, a linear blend between.
        factor, lo, hi = float(rs["factor"]), float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
        old = float(rs["original_max_position_embeddings"])
        wavelength = 2 * np.pi / base
        blend = np.clip((old / wavelength - lo) / (hi - lo), 0.0, 1.0)
        base = (1 - blend) * base / factor + blend * base
    return base.astype(np.float32)


def rope_tables(n: int, inv_freq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [n, head_dim] of HF's half-split RoPE: angles pos * inv_freq formed in float32."""
    ang = np.arange(n, dtype=np.float32)[:, None] * inv_freq.astype(np.float32)[None, :]
    emb = np.concatenate([ang, ang], axis=-1)
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x [n, heads, head_dim]: rotates the pairs (x[i], x[i + r/2]) of the first r dims of each
    head, r = cos.shape[-1] (all of them unless the rotation is partial); the rest pass through."""
    r = cos.shape[-1]
    xr, rest = x[..., :r], x[..., r:]
    half = r // 2
    rotated = np.concatenate([-xr[..., half:], xr[..., :half]], axis=-1)
    out = xr * cos[:, None, :] + rotated * sin[:, None, :]
    return np.concatenate([out, rest], axis=-1).astype(np.float32)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, window: int = 0, scale: float | None = None,
              cap: float | None = None) -> np.ndarray:
    """Causal grouped-query attention: q [n, H, d], k/v [n, KV, d] -> [n, H*d]; query head h reads
    key/value head h // (H / KV). With a window, token i sees only tokens i - window + 1 .. i.
    Scores are q.k times `scale` (default d^-1/2), then cap*tanh(score/cap) if capped."""
    n, heads, d = q.shape
    group = heads // k.shape[1]
    qg = q.reshape(n, k.shape[1], group, d).transpose(1, 2, 0, 3)  # [KV, group, n, d]
    kt = k.transpose(1, 2, 0)[:, None]  # [KV, 1, d, n]
    scores = (qg @ kt) * np.float32(d ** -0.5 if scale is None else scale)  # [KV, group, n, n]
    if cap:
        scores = (np.tanh(scores / np.float32(cap)) * np.float32(cap)).astype(np.float32)
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    hidden = (j > i) | ((i - j >= window) if window else False)  # the future, and beyond the window
    scores[..., hidden] = -np.inf
    scores -= scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=-1, keepdims=True)
    out = p @ v.transpose(1, 0, 2)[:, None]  # [KV, group, n, d]
    return out.transpose(2, 0, 1, 3).reshape(n, heads * d).astype(np.float32)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU in its tanh approximation (Hendrycks & Gimpel): x/2 (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3)))."""
    x64 = x.astype(np.float64)
    return (0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64 ** 3)))).astype(np.float32)


def silu(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return (x / (np.float32(1) + np.exp(-x))).astype(np.float32)


def reference_logits(source: Source, ids: Sequence[int],
                     progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """float32 logits [len(ids), vocab] of `ids` at positions 0.. from the source's weights.

    `progress(done, total)` is called after each layer."""
    cfg = source.config()
    w = _Weights(source)
    tokens = np.asarray(ids, dtype=np.int64)
    n = len(tokens)
    if n == 0 or tokens.min() < 0 or tokens.max() >= cfg.vocab_size:
        raise ValueError("token ids must be non-empty and inside the vocabulary")
    fam = arch.family(cfg.architecture)
    tables = [rope_tables(n, inv_freq(cfg))]
    if cfg.rope_local_theta is not None:  # sliding layers' own base, unscaled (Gemma 3)
        tables.append(rope_tables(n, inv_freq(replace(cfg, rope_theta=cfg.rope_local_theta, rope_scaling=None))))
    eps, hd = cfg.norm_eps, cfg.head_dim
    names = _slot_names(cfg)
    # Gemma: norms scale by (1 + w), embeddings by sqrt(dim) (rounded to float32, as HF does)
    offset = np.float32(1.0 if fam.gemma_style else 0.0)

    def norm(x: np.ndarray, name: str) -> np.ndarray:
        return rms_norm(x, w.vector(name) + offset, eps)

    act = gelu_tanh if fam.gemma_style else silu
    scale = None if cfg.query_pre_attn_scalar is None else cfg.query_pre_attn_scalar ** -0.5

    h = w.rows(names["embed"], tokens)
    if fam.gemma_style:
        h = (h * np.float32(np.sqrt(cfg.dim))).astype(np.float32)
    for i in range(cfg.n_layers):
        t = {slot: f"{arch.LAYER_PREFIX}{i}.{name}" for slot, name in names["layer"].items()}
        cos, sin = tables[1 if cfg.rope_local_theta is not None and cfg.window(i) else 0]
        x = norm(h, t["attn_norm"]) if "attn_norm" in t else h  # post-norm blocks have none
        q, k, v = (w.linear(x, t[p]) + (w.vector(t[b]) if b in t else np.float32(0))
                   for p, b in (("wq", "bq"), ("wk", "bk"), ("wv", "bv")))
        if "q_norm" in t and fam.qk_norm_full:  # RMSNorm over the whole projection (OLMo 2)
            q, k = norm(q, t["q_norm"]), norm(k, t["k_norm"])
        q, k = q.reshape(n, cfg.n_heads, hd), k.reshape(n, cfg.n_kv_heads, hd)
        if "q_norm" in t and not fam.qk_norm_full:  # RMSNorm over each head
            q, k = norm(q, t["q_norm"]), norm(k, t["k_norm"])
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        v = v.reshape(n, cfg.n_kv_heads, hd)
        out = w.linear(attention(q, k, v, cfg.window(i), scale, cfg.attn_softcap), t["wo"])
        h = h + (norm(out, t["post_attn_norm"]) if "post_attn_norm" in t else out)
        x = norm(h, t["ffn_norm"]) if "ffn_norm" in t else h
        if cfg.n_experts:
            out = _moe(w, x, t, cfg)
        else:
            out = w.linear(act(w.linear(x, t["w_gate"])) * w.linear(x, t["w_up"]), t["w_down"])
        h = h + (norm(out, t["post_ffn_norm"]) if "post_ffn_norm" in t else out)
        if progress:
            progress(i + 1, cfg.n_layers)
    x = norm(h, names["final_norm"])
    logits = w.linear(x, names.get("lm_head", names["embed"]))
    if cfg.final_softcap:
        logits = (np.tanh(logits / np.float32(cfg.final_softcap)) * np.float32(cfg.final_softcap)).astype(np.float32)
    return logits


def _slot_names(cfg) -> dict:
    """Which source tensor plays each part of the block, from the family table: model-wide slots
    to full names, and "layer" to the per-layer slots' names after `model.layers.{i}.` (with
    "{e}" for the expert in per-expert ones)."""
    fam = arch.family(cfg.architecture)
    out: dict = {"layer": {t.slot: t.name for t in fam.layer if t.when is None or arch.CONDITIONS[t.when](cfg)}}
    for name, t in fam.tensors(cfg):
        if arch.layer_of(name) is None:
            out[t.slot] = name
    return out


def _moe(w: _Weights, x: np.ndarray, t: dict, cfg) -> np.ndarray:
    """Mixture of experts (Mixtral): each row's top-k experts by router softmax, their outputs
    summed with the top-k probabilities renormalised to 1. Each expert runs on its rows only."""
    probs = w.linear(x, t["router"]).astype(np.float64)
    probs = np.exp(probs - probs.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    top = np.argsort(-probs, axis=-1, kind="stable")[:, :cfg.n_experts_used]
    weight = np.take_along_axis(probs, top, axis=-1)
    weight /= weight.sum(axis=-1, keepdims=True)
    out = np.zeros_like(x)
    for e in range(cfg.n_experts):
        rows, slot = np.nonzero(top == e)
        if rows.size == 0:
            continue
        xe = x[rows]
        name = {k: t[k].replace("{e}", str(e)) for k in ("x_gate", "x_up", "x_down")}
        y = w.linear(silu(w.linear(xe, name["x_gate"])) * w.linear(xe, name["x_up"]), name["x_down"])
        out[rows] += (y * weight[rows, slot][:, None]).astype(np.float32)
    return out
