"""Model families: one description per architecture, and everything that derives from it.

A `Family` row says, for one architecture, how a Hugging Face `config.json` maps onto the
canonical `ModelConfig` (and what is refused), which tensors a file holds with their shapes
(optional ones named by the condition that brings them in), which C-core slot each tensor fills,
and which forward features the C core switches on. The converter (`check_tensor_set`), the
`.lmp` reader (`expected_tensors`), the runtime's hand-over to the C core (`core_config`,
`core_weights`) and `verify`'s reference all read these rows; adding a family is one row plus
the ops it needs.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

from lmpack.errors import LmpackError, LmpackWarning, brief

# The one limit on every config dimension, and on n_heads*head_dim, shared with csrc/py_model.c
# (MAX_DIM): products of two such numbers fit an int64 with room to spare.
MAX_DIM = 1 << 24
MAX_EXPERTS = 256  # also csrc/forward.h LMP_MAX_EXPERTS

LAYER_PREFIX = "model.layers."


@dataclass(frozen=True)
class TensorDef:
    """One tensor of a family: its HF name (after `model.layers.{i}.` for a layer tensor), the C
    core's slot it fills, its shape in `dims()` symbols, and the condition that brings it in."""

    name: str
    slot: str
    shape: tuple[str, ...]
    when: str | None = None  # a key of CONDITIONS; None: always present
    per_expert: bool = False  # one per expert: `name` holds "{e}", the C slot takes n_layers*n_experts
    exact: bool = False  # stays in the source's precision when a file is quantized (MoE routers)


# Conditions under which an optional tensor is part of a file.
CONDITIONS: dict[str, Callable[[Any], bool]] = {
    "untied": lambda cfg: not cfg.tie_embeddings,
}

_ATTN = (
    TensorDef("self_attn.q_proj.weight", "wq", ("q_dim", "dim")),
    TensorDef("self_attn.k_proj.weight", "wk", ("kv_dim", "dim")),
    TensorDef("self_attn.v_proj.weight", "wv", ("kv_dim", "dim")),
    TensorDef("self_attn.o_proj.weight", "wo", ("dim", "q_dim")),
)
_MLP = (
    TensorDef("mlp.gate_proj.weight", "w_gate", ("ffn_dim", "dim")),
    TensorDef("mlp.up_proj.weight", "w_up", ("ffn_dim", "dim")),
    TensorDef("mlp.down_proj.weight", "w_down", ("dim", "ffn_dim")),
)
# Llama's block: pre-norm attention, pre-norm SwiGLU MLP.
_LLAMA_LAYER = (
    TensorDef("input_layernorm.weight", "attn_norm", ("dim",)),
    *_ATTN,
    TensorDef("post_attention_layernorm.weight", "ffn_norm", ("dim",)),
    *_MLP,
)
# Qwen2's attention: q/k/v projections with biases.
_BIASED_ATTN = (
    TensorDef("self_attn.q_proj.weight", "wq", ("q_dim", "dim")),
    TensorDef("self_attn.q_proj.bias", "bq", ("q_dim",)),
    TensorDef("self_attn.k_proj.weight", "wk", ("kv_dim", "dim")),
    TensorDef("self_attn.k_proj.bias", "bk", ("kv_dim",)),
    TensorDef("self_attn.v_proj.weight", "wv", ("kv_dim", "dim")),
    TensorDef("self_attn.v_proj.bias", "bv", ("kv_dim",)),
    TensorDef("self_attn.o_proj.weight", "wo", ("dim", "q_dim")),
)
_QWEN2_LAYER = (
    TensorDef("input_layernorm.weight", "attn_norm", ("dim",)),
    *_BIASED_ATTN,
    TensorDef("post_attention_layernorm.weight", "ffn_norm", ("dim",)),
    *_MLP,
)
# Qwen3's attention: RMSNorm over each head of q and k (weights [head_dim]) before RoPE.
_QWEN3_LAYER = (
    TensorDef("input_layernorm.weight", "attn_norm", ("dim",)),
    TensorDef("self_attn.q_proj.weight", "wq", ("q_dim", "dim")),
    TensorDef("self_attn.q_norm.weight", "q_norm", ("head_dim",)),
    TensorDef("self_attn.k_proj.weight", "wk", ("kv_dim", "dim")),
    TensorDef("self_attn.k_norm.weight", "k_norm", ("head_dim",)),
    TensorDef("self_attn.v_proj.weight", "wv", ("kv_dim", "dim")),
    TensorDef("self_attn.o_proj.weight", "wo", ("dim", "q_dim")),
    TensorDef("post_attention_layernorm.weight", "ffn_norm", ("dim",)),
    *_MLP,
)
# Gemma 2: norms before and after both attention and MLP (the HF name post_attention_layernorm is
# here a post-norm); Gemma 3 adds per-head q/k norms.
_GEMMA2_LAYER = (
    TensorDef("input_layernorm.weight", "attn_norm", ("dim",)),
    *_ATTN,
    TensorDef("post_attention_layernorm.weight", "post_attn_norm", ("dim",)),
    TensorDef("pre_feedforward_layernorm.weight", "ffn_norm", ("dim",)),
    *_MLP,
    TensorDef("post_feedforward_layernorm.weight", "post_ffn_norm", ("dim",)),
)
_GEMMA3_LAYER = (
    TensorDef("input_layernorm.weight", "attn_norm", ("dim",)),
    _ATTN[0],
    TensorDef("self_attn.q_norm.weight", "q_norm", ("head_dim",)),
    _ATTN[1],
    TensorDef("self_attn.k_norm.weight", "k_norm", ("head_dim",)),
    *_ATTN[2:],
    *_GEMMA2_LAYER[5:],
)
# OLMo 2: no norms before attention or MLP, norms after both; q/k RMSNorm over the whole projection.
_OLMO2_LAYER = (
    TensorDef("self_attn.q_proj.weight", "wq", ("q_dim", "dim")),
    TensorDef("self_attn.q_norm.weight", "q_norm", ("q_dim",)),
    TensorDef("self_attn.k_proj.weight", "wk", ("kv_dim", "dim")),
    TensorDef("self_attn.k_norm.weight", "k_norm", ("kv_dim",)),
    *_ATTN[2:],
    TensorDef("post_attention_layernorm.weight", "post_attn_norm", ("dim",)),
    *_MLP,
    TensorDef("post_feedforward_layernorm.weight", "post_ffn_norm", ("dim",)),
)
# Mixtral: Llama's attention; the MLP is a router over n_experts SwiGLU experts, of which each
# token takes the top n_experts_used, weighted by their renormalised softmax.
_MIXTRAL_LAYER = (
    TensorDef("input_layernorm.weight", "attn_norm", ("dim",)),
    *_ATTN,
    TensorDef("post_attention_layernorm.weight", "ffn_norm", ("dim",)),
    TensorDef("block_sparse_moe.gate.weight", "router", ("n_experts", "dim"), exact=True),
    TensorDef("block_sparse_moe.experts.{e}.w1.weight", "x_gate", ("ffn_dim", "dim"), per_expert=True),
    TensorDef("block_sparse_moe.experts.{e}.w2.weight", "x_down", ("dim", "ffn_dim"), per_expert=True),
    TensorDef("block_sparse_moe.experts.{e}.w3.weight", "x_up", ("ffn_dim", "dim"), per_expert=True),
)
_TOP_FIRST = (TensorDef("model.embed_tokens.weight", "embed", ("vocab_size", "dim")),)
_TOP_LAST = (
    TensorDef("model.norm.weight", "final_norm", ("dim",)),
    TensorDef("lm_head.weight", "lm_head", ("vocab_size", "dim"), when="untied"),
)


@dataclass(frozen=True)
class Family:
    """One architecture: its tensors, its forward features and its config.json mapping."""

    name: str                       # `architecture` in the .lmp header
    model_types: tuple[str, ...]    # HF `model_type` values it converts
    layer: tuple[TensorDef, ...]    # per-layer tensors in file order
    # HF config.json -> the family's canonical fields beyond the common ones (and refusals)
    from_hf: Callable[[dict, str, str], dict] = field(default=lambda cfg, where, mt: {})
    # hidden_act values it runs; "silu" = SwiGLU, "gelu_pytorch_tanh" = GeGLU with tanh gelu
    acts: tuple[str, ...] = ("silu",)
    gemma_style: bool = False  # RMSNorm by (1 + w), embeddings times sqrt(dim)
    qk_norm_full: bool = False  # q/k norms span the whole projection, not each head
    # Source tensors that hold several of ours stacked by rows (per layer): fused name, and the
    # parts in row order with their row counts (a dims() symbol). Converted as row ranges.
    fused: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()

    def tensors(self, cfg) -> list[tuple[str, TensorDef]]:
        """(full name, definition) of every tensor a file for `cfg` holds, in file order."""
        out = [(t.name, t) for t in _TOP_FIRST if _present(t, cfg)]
        layer = [t for t in self.layer if _present(t, cfg)]
        for i in range(cfg.n_layers):
            for t in layer:
                names = [t.name.format(e=e) for e in range(cfg.n_experts)] if t.per_expert else [t.name]
                out += [(f"{LAYER_PREFIX}{i}.{name}", t) for name in names]
        out += [(t.name, t) for t in _TOP_LAST if _present(t, cfg)]
        return out

    def tensor_count(self, cfg) -> int:
        """len(self.tensors(cfg)), without building the names (for a cheap first check)."""
        top = sum(_present(t, cfg) for t in _TOP_FIRST + _TOP_LAST)
        return top + cfg.n_layers * sum((cfg.n_experts if t.per_expert else 1) for t in self.layer if _present(t, cfg))


def fused_parts(cfg) -> dict[str, tuple[str, int, int]]:
    """For each tensor a source stores fused with others: name -> (fused source name, first row,
    end row)."""
    d = dims(cfg)
    out = {}
    for fused, parts in family(cfg.architecture).fused:
        for i in range(cfg.n_layers):
            r0 = 0
            for part, rows in parts:
                out[f"{LAYER_PREFIX}{i}.{part}"] = (f"{LAYER_PREFIX}{i}.{fused}", r0, r0 + d[rows])
                r0 += d[rows]
    return out


def _present(t: TensorDef, cfg) -> bool:
    return t.when is None or CONDITIONS[t.when](cfg)


def dims(cfg) -> dict[str, int]:
    """The shape symbols of TensorDef.shape for `cfg`."""
    return {
        "dim": cfg.dim, "vocab_size": cfg.vocab_size, "ffn_dim": cfg.ffn_dim, "head_dim": cfg.head_dim,
        "q_dim": cfg.n_heads * cfg.head_dim, "kv_dim": cfg.n_kv_heads * cfg.head_dim, "n_experts": cfg.n_experts,
    }


# ---- config.json mapping ------------------------------------------------------------------------

def _refuse(where: str, model_type: str, feature: str) -> LmpackError:
    return LmpackError(f"{where}: model_type '{model_type}': {feature} is not supported")


def _no_biases(cfg: dict, where: str, model_type: str) -> None:
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key):
            raise _refuse(where, model_type, f"{key}=true")


def _window(cfg: dict, where: str, model_type: str) -> int | None:
    w = cfg.get("sliding_window")
    if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w <= 0):
        raise LmpackError(f"{where}: field 'sliding_window' must be a positive integer or null, got {brief(w)}")
    return w


_HF_LAYER_TYPES = {"full_attention": "full", "sliding_attention": "sliding"}


def _layer_types(cfg: dict, where: str, model_type: str) -> list[str] | None:
    """HF `layer_types` in canonical spelling, or None when absent."""
    lt = cfg.get("layer_types")
    if lt is None:
        return None
    if not isinstance(lt, list) or not all(isinstance(t, str) for t in lt):
        raise LmpackError(f"{where}: field 'layer_types' must be a list of strings")
    unknown = [t for t in lt if t not in _HF_LAYER_TYPES]
    if unknown:
        raise _refuse(where, model_type, f"layer type {brief(unknown[0])}")
    return [_HF_LAYER_TYPES[t] for t in lt]


def _llama(cfg: dict, where: str, model_type: str) -> dict:
    _no_biases(cfg, where, model_type)
    return {}


def _mistral(cfg: dict, where: str, model_type: str) -> dict:
    """Mistral v0.1-v0.3, Nemo, Small: Llama's block; every layer attends to the last
    `sliding_window` positions when that is set (null: full attention); head_dim may be explicit."""
    _no_biases(cfg, where, model_type)
    return {"sliding_window": _window(cfg, where, model_type)}


def _qwen_windows(cfg: dict, where: str, model_type: str) -> dict:
    """Qwen2/Qwen3 sliding windows: only with use_sliding_window, on the layers `layer_types` marks
    (older configs: the layers from max_window_layers on)."""
    if not cfg.get("use_sliding_window"):
        return {}
    window = _window(cfg, where, model_type)
    if window is None:
        return {}
    types = _layer_types(cfg, where, model_type)
    if types is None:
        first = cfg.get("max_window_layers", 0)
        if isinstance(first, bool) or not isinstance(first, int):
            raise LmpackError(f"{where}: field 'max_window_layers' must be an integer")
        n = cfg.get("num_hidden_layers")
        types = ["sliding" if i >= first else "full" for i in range(n if isinstance(n, int) else 0)]
    return {"sliding_window": window, "layer_types": types}


def _qwen2(cfg: dict, where: str, model_type: str) -> dict:
    """Qwen2 / Qwen2.5: Llama's block with q/k/v biases (always on; no other biases)."""
    return _qwen_windows(cfg, where, model_type)


def _qwen3(cfg: dict, where: str, model_type: str) -> dict:
    """Qwen3 (dense): Llama's block with per-head q/k RMSNorm; no biases."""
    _no_biases(cfg, where, model_type)
    return _qwen_windows(cfg, where, model_type)


def _positive(cfg: dict, key: str, where: str) -> float | None:
    v = cfg.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
        raise LmpackError(f"{where}: field '{key}' must be a positive number or null, got {brief(v)}")
    return None if v is None else float(v)


def _gemma_common(cfg: dict, where: str, model_type: str) -> dict:
    _no_biases(cfg, where, model_type)
    if cfg.get("use_bidirectional_attention"):
        raise _refuse(where, model_type, "use_bidirectional_attention=true")
    types = _layer_types(cfg, where, model_type)
    window = _window(cfg, where, model_type)
    if types is not None and "sliding" in types and window is None:
        raise LmpackError(f"{where}: sliding layers but no 'sliding_window'")
    return {
        "sliding_window": window if types is None or "sliding" in types else None,
        "layer_types": types if window is not None else None,
        "query_pre_attn_scalar": _positive(cfg, "query_pre_attn_scalar", where),
        "attn_softcap": _positive(cfg, "attn_logit_softcapping", where),
        "final_softcap": _positive(cfg, "final_logit_softcapping", where),
    }


def _gemma2(cfg: dict, where: str, model_type: str) -> dict:
    """Gemma 2: GeGLU, (1 + w) norms around attention and MLP, embeddings times sqrt(hidden),
    q.k scaled by query_pre_attn_scalar^-1/2, soft-capped scores and logits, alternating
    sliding and full layers."""
    return _gemma_common(cfg, where, model_type)


def _gemma3(cfg: dict, where: str, model_type: str) -> dict:
    """Gemma 3 (text): Gemma 2's block plus per-head q/k norms; sliding layers have their own RoPE
    base (unscaled), full layers take rope_theta and its scaling."""
    out = _gemma_common(cfg, where, model_type)
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and ("full_attention" in params or "sliding_attention" in params):
        full, local = params.get("full_attention") or {}, params.get("sliding_attention") or {}
        if not isinstance(full, dict) or not isinstance(local, dict):
            raise LmpackError(f"{where}: rope_parameters per layer type must be objects")
        out["rope_theta"], out["rope_scaling"] = hf_rope(full, {"rope_theta": 1e6}, where, model_type)
        if local.get("rope_type", "default") != "default":
            raise _refuse(where, model_type, f"rope scaling type {brief(local.get('rope_type'))} on sliding layers")
        local_theta = local.get("rope_theta", 10000.0)
    else:  # the older flat spelling
        out["rope_theta"], out["rope_scaling"] = hf_rope(_merged_rope(cfg, where), {"rope_theta": 1e6}, where,
                                                         model_type)
        local_theta = cfg.get("rope_local_base_freq", 10000.0)
    out["rope_local_theta"] = local_theta
    return out


def _olmo2(cfg: dict, where: str, model_type: str) -> dict:
    """OLMo 2: post-norm blocks (attention and MLP outputs normalised before the residual add),
    q/k RMSNorm over the whole projection before RoPE; no biases."""
    _no_biases(cfg, where, model_type)
    return {}


def _phi3(cfg: dict, where: str, model_type: str) -> dict:
    """Phi-3 / Phi-3.5 / Phi-4-mini: Llama's block with fused qkv_proj and gate_up_proj (split at
    conversion), RoPE on the first partial_rotary_factor of each head, an optional window on every
    layer. longrope ("su") scaling is refused: its per-frequency factors switch with the length."""
    # (hf_rope, run before this for every family, is where that refusal happens)
    _no_biases(cfg, where, model_type)
    params = _merged_rope(cfg, where)  # longrope/su scaling is refused by hf_rope already
    factor = params.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor <= 1:
        raise LmpackError(f"{where}: field 'partial_rotary_factor' must be in (0, 1], got {brief(factor)}")
    heads, dim = cfg.get("num_attention_heads"), cfg.get("hidden_size")
    out: dict = {"sliding_window": _window(cfg, where, model_type)}
    if factor != 1 and isinstance(heads, int) and isinstance(dim, int) and heads > 0:
        head_dim = cfg.get("head_dim") or dim // heads
        out["rope_dim"] = int(head_dim * factor)
    return out


def _mixtral(cfg: dict, where: str, model_type: str) -> dict:
    """Mixtral: Mistral's attention (window included) with a top-k mixture of SwiGLU experts."""
    _no_biases(cfg, where, model_type)
    n, k = cfg.get("num_local_experts"), cfg.get("num_experts_per_tok")
    for key, v in (("num_local_experts", n), ("num_experts_per_tok", k)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise LmpackError(f"{where}: field '{key}' must be an integer, got {brief(v)}")
    return {"sliding_window": _window(cfg, where, model_type), "n_experts": n, "n_experts_used": k}


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("llama", ("llama",), _LLAMA_LAYER, _llama),
    Family("mistral", ("mistral",), _LLAMA_LAYER, _mistral),
    Family("qwen2", ("qwen2",), _QWEN2_LAYER, _qwen2),
    Family("qwen3", ("qwen3",), _QWEN3_LAYER, _qwen3),
    Family("gemma2", ("gemma2",), _GEMMA2_LAYER, _gemma2, ("gelu_pytorch_tanh",), gemma_style=True),
    Family("gemma3", ("gemma3_text",), _GEMMA3_LAYER, _gemma3, ("gelu_pytorch_tanh",), gemma_style=True),
    Family("olmo2", ("olmo2",), _OLMO2_LAYER, _olmo2, qk_norm_full=True),
    Family("mixtral", ("mixtral",), _MIXTRAL_LAYER, _mixtral),
    Family("phi3", ("phi3",), _LLAMA_LAYER, _phi3, fused=(
        ("self_attn.qkv_proj.weight", (("self_attn.q_proj.weight", "q_dim"), ("self_attn.k_proj.weight", "kv_dim"),
                                       ("self_attn.v_proj.weight", "kv_dim"))),
        ("mlp.gate_up_proj.weight", (("mlp.gate_proj.weight", "ffn_dim"), ("mlp.up_proj.weight", "ffn_dim"))),
    )),
)}


def family(name: str, where: str = "config") -> Family:
    """The family of an `architecture` name, or an LmpackError listing the supported ones."""
    if name not in FAMILIES:
        raise LmpackError(f"{where}: unsupported architecture '{name}' (supported: {', '.join(FAMILIES)})")
    return FAMILIES[name]


def family_for_model_type(model_type: Any, where: str) -> Family:
    for f in FAMILIES.values():
        if model_type in f.model_types:
            return f
    supported = ", ".join(t for f in FAMILIES.values() for t in f.model_types)
    raise LmpackError(f"{where}: unsupported model_type {brief(model_type)} (lmpack supports: {supported})")


def hf_rope(params: dict, cfg: dict, where: str, model_type: str) -> tuple[float, dict | None]:
    """(rope_theta, canonical rope_scaling) from HF rope settings merged from `rope_scaling`
    (older spelling) and `rope_parameters` (transformers 5)."""
    theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind == "llama3":
        keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        missing = [k for k in keys if k not in params]
        if missing:
            raise LmpackError(f"{where}: llama3 rope scaling is missing '{missing[0]}'")
        return theta, {"type": "llama3", **{k: params[k] for k in keys}}
    if kind == "linear":
        if "factor" not in params:
            raise LmpackError(f"{where}: linear rope scaling is missing 'factor'")
        return theta, {"type": "linear", "factor": params["factor"]}
    raise LmpackError(f"{where}: model_type '{model_type}': rope scaling type '{kind}' is not supported "
                      f"(lmpack runs default, llama3 and linear)")


def _merged_rope(cfg: dict, where: str) -> dict:
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    if not isinstance(params, dict) or not isinstance(scaling, dict):
        raise LmpackError(f"{where}: rope_parameters/rope_scaling must be objects")
    return {**scaling, **params}


def _tie_embeddings(cfg: dict[str, Any], where: str) -> bool:
    """`tie_word_embeddings` as transformers reads it (any truthy value ties), with a warning when
    it is not a JSON boolean: the string "false" is true to transformers, and lm_head is dropped."""
    value = cfg.get("tie_word_embeddings", False)
    if value is not None and not isinstance(value, bool):
        tied = bool(value) if isinstance(value, (str, int, float, list, dict)) else True
        warnings.warn(f"{where}: tie_word_embeddings is {brief(value, 40)}, not JSON true or false; transformers reads it "
                      f"as {str(tied).lower()}, and so does lmpack{' (lm_head.weight is ignored)' if tied else ''}",
                      LmpackWarning, stacklevel=2)
        return tied
    return bool(value)


def config_from_hf(cfg: Any, where: str) -> dict:
    """The canonical config dict (ModelConfig.from_dict's input, without chat_format) of a parsed
    HF `config.json`; refuses what lmpack cannot run with one line naming model_type and feature."""
    if not isinstance(cfg, dict):
        raise LmpackError(f"{where}: expected a JSON object")
    model_type = cfg.get("model_type")
    fam = family_for_model_type(model_type, where)
    act = cfg.get("hidden_activation") or cfg.get("hidden_act") or fam.acts[0]
    if act not in fam.acts:
        raise _refuse(where, model_type, f"hidden_act {brief(act)} (only {', '.join(fam.acts)})")

    def need(key: str) -> Any:
        if cfg.get(key) is None:
            raise LmpackError(f"{where}: missing field '{key}'")
        return cfg[key]

    dim, heads = need("hidden_size"), need("num_attention_heads")
    if not isinstance(dim, int) or not isinstance(heads, int) or heads <= 0:
        raise LmpackError(f"{where}: hidden_size and num_attention_heads must be positive integers")
    theta, scaling = hf_rope(_merged_rope(cfg, where), cfg, where, model_type)
    eos = cfg.get("eos_token_id", 2)
    eos_ids = eos if isinstance(eos, list) else [eos]
    bos = cfg.get("bos_token_id", 1)
    out = {
        "architecture": fam.name,
        "dim": dim,
        "n_layers": need("num_hidden_layers"),
        "n_heads": heads,
        "n_kv_heads": cfg.get("num_key_value_heads") or heads,
        "head_dim": cfg.get("head_dim") or dim // heads,
        "ffn_dim": need("intermediate_size"),
        "vocab_size": need("vocab_size"),
        "norm_eps": cfg.get("rms_norm_eps", 1e-6),
        "rope_theta": theta,
        "rope_scaling": scaling,
        "tie_embeddings": _tie_embeddings(cfg, where),
        "max_context": cfg.get("max_position_embeddings", 2048),
        "bos_id": 1 if bos is None else bos,
        "eos_ids": [e for e in eos_ids if e is not None] or [2],
    }
    out.update(fam.from_hf(cfg, where, model_type))
    return out


# ---- the hand-over to the C core ----------------------------------------------------------------

def expected_tensors(cfg) -> dict[str, tuple[int, ...]]:
    """Every tensor name a file for `cfg` must hold, with its shape, in canonical file order."""
    d = dims(cfg)
    return {name: tuple(d[s] for s in t.shape) for name, t in family(cfg.architecture).tensors(cfg)}


def core_config(cfg) -> dict[str, Any]:
    """The config dict `_core.Model` takes: dimensions and forward features (csrc/py_model.c)."""
    out = {k: getattr(cfg, k) for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim",
                                        "vocab_size", "norm_eps")}
    fam = family(cfg.architecture)
    if cfg.sliding_window is not None:
        out["layer_window"] = [cfg.window(i) for i in range(cfg.n_layers)]
    if cfg.rope_local_theta is not None:  # table 1 (rope_tables) for sliding layers
        out["layer_rope"] = [1 if cfg.window(i) else 0 for i in range(cfg.n_layers)]
    if fam.gemma_style:
        out.update(norm_offset=1.0, act=1, embed_scale=math.sqrt(cfg.dim))
    if fam.qk_norm_full:
        out["qk_norm_full"] = 1
    if cfg.rope_dim is not None:
        out["rope_dim"] = cfg.rope_dim
    if cfg.n_experts:
        out.update(n_experts=cfg.n_experts, n_experts_used=cfg.n_experts_used)
    if cfg.query_pre_attn_scalar is not None:
        out["attn_scale"] = cfg.query_pre_attn_scalar ** -0.5
    if cfg.attn_softcap is not None:
        out["attn_softcap"] = cfg.attn_softcap
    if cfg.final_softcap is not None:
        out["final_softcap"] = cfg.final_softcap
    return out


def core_weights(cfg, entries: dict[str, Any]) -> dict[str, Any]:
    """The weights dict `_core.Model` takes: slot -> entry for the model-wide tensors, slot -> list
    of n_layers entries for the per-layer ones. `entries` maps each tensor name to its entry."""
    fam = family(cfg.architecture)
    out: dict[str, Any] = {}
    for t in _TOP_FIRST + _TOP_LAST:
        if _present(t, cfg):
            out[t.slot] = entries[t.name]
    for t in fam.layer:
        if _present(t, cfg):  # per-expert slots: layer-major, n_experts entries per layer
            names = [t.name.format(e=e) for e in range(cfg.n_experts)] if t.per_expert else [t.name]
            out[t.slot] = [entries[f"{LAYER_PREFIX}{i}.{name}"] for i in range(cfg.n_layers) for name in names]
    return out


def keeps_precision(name: str) -> bool:
    """Whether a file's tensor stays in its source precision when quantized: a MoE router, whose
    top-k choice a rounding could flip (llama.cpp keeps it too)."""
    i = layer_of(name)
    suffix = name.split(".", 3)[3] if i is not None and name.count(".") >= 3 else None
    return any(t.exact and t.name == suffix for f in FAMILIES.values() for t in f.layer)


def layer_of(name: str) -> int | None:
    """The layer index of a per-layer tensor name, else None."""
    if not name.startswith(LAYER_PREFIX):
        return None
    head = name[len(LAYER_PREFIX):].split(".", 1)[0]
    return int(head) if head.isdigit() and str(int(head)) == head else None

