"""How each model family lmpack runs is described in GGUF: one table row per family.

A row names the gguf-py architecture (`gguf.MODEL_ARCH`), whether llama.cpp runs it with
adjacent-pair ("normal") RoPE, which needs the q/k rows of each head permuted from Hugging Face's
half-split order, and which of lmpack's forward features llama.cpp's graph for it runs (its fixed
sliding-layer pattern, soft-caps, partial RoPE, experts); a model using a feature the graph lacks
is refused on the way out. Everything else is derived, in both directions, from the family table
(`lmpack.formats.arch`: which tensors are fused or per expert, which norms are Gemma's (1 + w))
and from gguf-py's own tables: tensor names from its tensor-name map (HF name ->
`blk.N.attn_q.weight`, fused and stacked names included), metadata keys from `gguf.Keys`
(`llama.embedding_length`, ...).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmpack.errors import LmpackError
from lmpack.formats.arch import LAYER_PREFIX, MAX_DIM, family as arch_family, fused_parts
from lmpack.formats.config import ModelConfig, expected_tensors
from lmpack.formats.gguf import GgufFile, gguf_module


@dataclass(frozen=True)
class Family:
    """How llama.cpp's loader takes one lmpack family: the architecture, RoPE order, and which of
    lmpack's forward features its graph for that architecture runs (the rest are refused on the
    way out, since llama.cpp would load the file and silently compute something else)."""

    architecture: str     # lmpack's ModelConfig.architecture
    gguf_arch: str        # the gguf.MODEL_ARCH member
    rope_interleaved: bool  # llama.cpp rotates pairs (2i, 2i+1): q/k rows are permuted on the way out
    # GGUF of this family is read back as this lmpack architecture (None: not read; several
    # lmpack families can share one llama.cpp architecture, e.g. Mistral is llama.cpp's llama)
    reads_as: str | None = None
    # llama.cpp fixes which layers slide: layer i slides iff i % swa_period < swa_period - 1
    # (Gemma 2: every other one, Gemma 3: five of six). None: no sliding layers.
    swa_period: int | None = None
    window_key: bool = False  # the loader requires `attention.sliding_window` (Gemma 3, older Phi-3)
    default_window: int | None = None  # the loader's window when the key is absent (Gemma 2: 4096)
    softcaps: bool = False    # the graph always soft-caps scores and logits (Gemma 2; defaults 50, 30)
    gemma_scale: bool = False  # q.k scale is head_dim^-1/2, or (dim/n_heads)^-1/2 at 27B's layer count
    partial_rope: bool = False  # rope.dimension_count below the head size is run (Phi-3)
    experts: bool = False     # a MoE MLP of stacked experts (llama.cpp's llama with expert_count)
    # the loader takes the output matrix from token_embd (gguf-py's architecture has no output tensor)
    tied_only: bool = False

    @property
    def gguf_name(self) -> str:
        gguf = gguf_module()
        return gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[self.gguf_arch]]

    def sliding(self, layer: int) -> bool:
        p = self.swa_period
        return p is not None and layer % p < p - 1

    def attn_scalar(self, config: ModelConfig) -> int:
        """The number llama.cpp's Gemma graph takes the q.k scale's -1/2 power of (it decides by
        the layer count: 46 (Gemma 2) and 62 (Gemma 3) layers are the 27B models)."""
        big = {"GEMMA2": 46, "GEMMA3": 62}.get(self.gguf_arch)
        return config.dim // config.n_heads if config.n_layers == big else config.head_dim

    def check(self, config: ModelConfig) -> None:
        """Refuse a config whose features llama.cpp's architecture does not run (and would ignore)."""
        where = f"GGUF export: llama.cpp's {self.gguf_name} architecture"
        windowed = config.sliding_window is not None and config.sliding_window < config.max_context
        slides = [bool(config.window(i)) and windowed for i in range(config.n_layers)]
        if any(slides) and self.swa_period is None:
            raise LmpackError(f"{where} has no sliding-window attention, and this {config.architecture} model "
                              f"uses a window of {config.sliding_window} positions")
        if any(slides) and slides != [self.sliding(i) for i in range(config.n_layers)]:
            raise LmpackError(f"{where} makes layer i sliding when i % {self.swa_period} < {self.swa_period - 1}; "
                              f"this model's sliding layers are {[i for i, s in enumerate(slides) if s]}")
        if self.softcaps and (config.attn_softcap is None or config.final_softcap is None):
            raise LmpackError(f"{where} always soft-caps attention scores and logits; this model does not")
        if not self.softcaps and (config.attn_softcap is not None or config.final_softcap is not None):
            raise LmpackError(f"{where} has no soft-capping, and this model caps its scores or logits")
        if self.gemma_scale:
            if (config.query_pre_attn_scalar or config.head_dim) != self.attn_scalar(config):
                raise LmpackError(f"{where} scales q.k by {self.attn_scalar(config)}^-1/2 for this shape; this model "
                                  f"by query_pre_attn_scalar {config.query_pre_attn_scalar or config.head_dim:g}^-1/2")
        elif config.query_pre_attn_scalar not in (None, config.head_dim):
            raise LmpackError(f"{where} scales q.k by head_dim^-1/2; this model does not")
        if config.rope_local_theta is not None and any(slides) and config.rope_local_theta != 10000.0:
            raise LmpackError(f"{where} rotates sliding layers with base 10000; this model with "
                              f"{config.rope_local_theta:g}")
        if config.rope_dim not in (None, config.head_dim) and not self.partial_rope:
            raise LmpackError(f"{where} rotates whole heads; this model only the first {config.rope_dim} dims")
        if config.n_experts and not self.experts:
            raise LmpackError(f"{where} has no mixture of experts")
        if self.tied_only and not config.tie_embeddings:
            raise LmpackError(f"{where} takes the output matrix from the embeddings; this model has its own "
                              f"lm_head")

    def window(self, config: ModelConfig) -> int | None:
        """The `attention.sliding_window` value to write, or None: the model's window, or, when it
        has none within its context, the context length (a window that never binds)."""
        if not (self.swa_period or self.window_key):
            return None
        if config.sliding_window is not None and config.sliding_window < config.max_context:
            return config.sliding_window
        return config.max_context

    def rope_heads(self, name: str, config: ModelConfig) -> int | None:
        """Heads whose rows RoPE rotates, for q/k tensors of a family exported with interleaved RoPE."""
        if not self.rope_interleaved:
            return None
        if name.endswith("self_attn.q_proj.weight"):
            return config.n_heads
        if name.endswith("self_attn.k_proj.weight"):
            return config.n_kv_heads
        return None

    def norm_shift(self, config: ModelConfig) -> float:
        """What llama.cpp's norm weights hold beyond lmpack's: Gemma's RMSNorm multiplies by (1 + w),
        llama.cpp's by its weight, so its converter stores w + 1."""
        return 1.0 if arch_family(config.architecture).gemma_style else 0.0


@dataclass(frozen=True)
class GgufTensor:
    """One tensor of a GGUF file and the lmpack tensors it holds: their rows one after another
    (Phi-3's fused qkv and gate/up, Mixtral's experts stacked along a leading axis)."""

    name: str
    parts: tuple[str, ...]
    shape: tuple[int, ...]  # numpy order
    part_shapes: tuple[tuple[int, ...], ...]
    shift: float = 0.0      # added to every value on the way out (Gemma's norms)

    def rows(self, i: int) -> tuple[int, int]:
        """First and end row of part i within the tensor's rows (all axes but the last, flattened)."""
        n = [s[0] if len(s) > 1 else 1 for s in self.part_shapes]
        return sum(n[:i]), sum(n[:i + 1])


def layout(config: ModelConfig, family: Family) -> list[GgufTensor]:
    """The GGUF tensors of a file for `config`, in file order, each with the lmpack tensors it holds.

    lmpack keeps Hugging Face's tensors one by one; llama.cpp's converter fuses those the family
    table marks fused (`fused_parts`) and stacks per-expert ones, and names the result with
    gguf-py's tensor-name map, which knows the fused and stacked HF names."""
    gguf = gguf_module()
    mapping = gguf.get_tensor_name_map(gguf.MODEL_ARCH[family.gguf_arch], config.n_layers)
    shapes = expected_tensors(config)
    fused = fused_parts(config)
    shift = family.norm_shift(config)
    groups: dict[str, list[str]] = {}
    for name, t in arch_family(config.architecture).tensors(config):
        if name in fused:
            key = fused[name][0]
        elif t.per_expert:
            layer = name[:len(LAYER_PREFIX)] + name[len(LAYER_PREFIX):].split(".", 1)[0]
            key = f"{layer}.{t.name.replace('.{e}', '')}"
        else:
            key = name
        groups.setdefault(key, []).append(name)
    out = []
    for key, parts in groups.items():
        gname = mapping.get_name(key, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise LmpackError(f"internal: gguf-py has no {family.gguf_arch} name for '{key}'")
        ps = shapes[parts[0]]
        if parts[0] in fused:
            shape = (sum(shapes[p][0] for p in parts), *ps[1:])
        elif len(parts) > 1 or key != parts[0]:
            shape = (len(parts), *ps)
        else:
            shape = ps
        out.append(GgufTensor(gname, tuple(parts), shape, tuple(shapes[p] for p in parts),
                              shift if len(ps) == 1 else 0.0))
    return out


FAMILIES = {
    "llama": Family("llama", "LLAMA", rope_interleaved=True, reads_as="llama"),
    # Mistral is llama.cpp's llama architecture (as its own converter writes it), without the window
    "mistral": Family("mistral", "LLAMA", rope_interleaved=True),
    # Qwen runs half-split ("NeoX") RoPE in llama.cpp, as in HF: no permutation
    "qwen2": Family("qwen2", "QWEN2", rope_interleaved=False, reads_as="qwen2"),
    "qwen3": Family("qwen3", "QWEN3", rope_interleaved=False, reads_as="qwen3"),
    "gemma2": Family("gemma2", "GEMMA2", rope_interleaved=False, reads_as="gemma2", swa_period=2, window_key=True,
                     default_window=4096, softcaps=True, gemma_scale=True, tied_only=True),
    "gemma3": Family("gemma3", "GEMMA3", rope_interleaved=False, reads_as="gemma3", swa_period=6, window_key=True,
                     gemma_scale=True),
    # Phi-3: fused qkv and gate/up (the family table's `fused`); llama.cpp runs no window for it
    "phi3": Family("phi3", "PHI3", rope_interleaved=False, reads_as="phi3", window_key=True, partial_rope=True),
    "olmo2": Family("olmo2", "OLMO2", rope_interleaved=False, reads_as="olmo2"),
    # Mixtral is llama.cpp's llama architecture with expert_count set
    "mixtral": Family("mixtral", "LLAMA", rope_interleaved=True, reads_as="mixtral", experts=True),
}


def family_of(config: ModelConfig) -> Family:
    try:
        family = FAMILIES[config.architecture]
    except KeyError:
        raise LmpackError(f"GGUF export of architecture '{config.architecture}' is not supported "
                          f"(supported: {', '.join(FAMILIES)})") from None
    family.check(config)
    return family


def family_of_gguf(arch: str, experts: int, where: str) -> Family:
    """The family a GGUF architecture is read as (llama.cpp's llama with experts is Mixtral)."""
    for f in FAMILIES.values():
        if f.reads_as is not None and f.gguf_name == arch and f.experts == (experts > 0):
            return f
    names = ", ".join(sorted({f.gguf_name for f in FAMILIES.values() if f.reads_as}))
    raise LmpackError(f"{where}: GGUF architecture '{arch}'{' with experts' if experts else ''} is not one lmpack "
                      f"runs (supported: {names})")


# --------------------------------------------------------------------------------------------
# config <-> metadata

def llama3_rope_divisors(config: ModelConfig) -> np.ndarray:
    """The `rope_freqs` tensor llama.cpp reads for Llama 3 rope scaling: per frequency of a head,
    the factor its base frequency is divided by (1 for short wavelengths, `factor` for long ones,
    a smooth blend between), as HF's `_compute_llama3_parameters` defines the scaled frequencies."""
    rs = config.rope_scaling
    factor, low, high = float(rs["factor"]), float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
    orig = float(rs["original_max_position_embeddings"])
    hd = config.head_dim
    out = []
    for i in range(0, hd, 2):
        freq = 1.0 / config.rope_theta ** (i / hd)
        wavelen = 2 * math.pi / freq
        if wavelen < orig / high:
            out.append(1.0)
        elif wavelen > orig / low:
            out.append(factor)
        else:
            s = (orig / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - s) / factor + s))
    return np.array(out, dtype=np.float32)


def write_config(w: Any, config: ModelConfig, family: Family) -> None:
    """The architecture's hyperparameter keys, from lmpack's config (gguf-py's typed writers)."""
    gguf = gguf_module()
    w.add_context_length(config.max_context)
    w.add_embedding_length(config.dim)
    w.add_block_count(config.n_layers)
    w.add_feed_forward_length(config.ffn_dim)
    w.add_head_count(config.n_heads)
    w.add_head_count_kv(config.n_kv_heads)
    w.add_rope_dimension_count(config.rope_dim or config.head_dim)
    w.add_key_length(config.head_dim)
    w.add_value_length(config.head_dim)
    w.add_layer_norm_rms_eps(config.norm_eps)
    w.add_rope_freq_base(config.rope_theta)
    w.add_vocab_size(config.vocab_size)
    window = family.window(config)
    if window is not None:
        w.add_sliding_window(window)
    if config.rope_local_theta is not None:
        w.add_rope_freq_base_swa(config.rope_local_theta)
    if config.attn_softcap is not None:
        w.add_attn_logit_softcapping(config.attn_softcap)
    if config.final_softcap is not None:
        w.add_final_logit_softcapping(config.final_softcap)
    if config.n_experts:
        w.add_expert_count(config.n_experts)
        w.add_expert_used_count(config.n_experts_used)
    rs = config.rope_scaling
    if rs is not None and rs["type"] == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(rs["factor"]))
    if rs is not None and rs["type"] == "llama3":
        # the scaling itself travels as the rope_freqs tensor (llama3_rope_divisors); llama.cpp
        # reads this key only for YaRN, and it lets the parameters be read back as they were
        w.add_rope_scaling_orig_ctx_len(int(rs["original_max_position_embeddings"]))


def _f32(x: float, where: str = "GGUF") -> float:
    """A float32 metadata value as the shortest decimal that rounds to it (1e-5, not 9.99999e-06)."""
    with np.errstate(over="ignore"):
        value = float(str(np.float32(x)))
    if not math.isfinite(value):
        raise LmpackError(f"{where}: {x!r} is not a finite float32 number")
    return value


def read_config(f: GgufFile, family: Family, vocab_size: int, tie: bool, bos_id: int, eos_ids: list[int],
                chat_format: str | None) -> ModelConfig:
    """lmpack's config from a GGUF's architecture keys (the caller has read the tokenizer and tensors)."""
    gguf = gguf_module()
    arch = family.gguf_name

    def key(k: str) -> str:
        return k.format(arch=arch)

    K = gguf.Keys
    dim = f.get(key(K.LLM.EMBEDDING_LENGTH), int)
    n_heads = f.get(key(K.Attention.HEAD_COUNT), int)
    if not isinstance(n_heads, int) or n_heads <= 0:
        raise LmpackError(f"{f.path}: bad {key(K.Attention.HEAD_COUNT)}")
    head_dim = f.get(key(K.Attention.KEY_LENGTH), int, None) or f.get(key(K.Rope.DIMENSION_COUNT), int, None) \
        or dim // n_heads
    rope_dim = f.get(key(K.Rope.DIMENSION_COUNT), int, head_dim)
    if rope_dim != head_dim and not family.partial_rope:
        raise LmpackError(f"{f.path}: partial rotary embeddings ({key(K.Rope.DIMENSION_COUNT)} != head size) "
                          f"are not supported for {arch}")
    scaling = None
    stype = f.get(key(K.Rope.SCALING_TYPE), str, "none")
    if stype == "linear":
        scaling = {"type": "linear", "factor": _f32(f.get(key(K.Rope.SCALING_FACTOR), float),
                                                   f"{f.path}: {key(K.Rope.SCALING_FACTOR)}")}
    elif stype not in ("none", ""):
        raise LmpackError(f"{f.path}: rope scaling type '{stype}' is not supported (supported: linear, llama3)")
    n_layers = f.get(key(K.LLM.BLOCK_COUNT), int)
    max_context = f.get(key(K.LLM.CONTEXT_LENGTH), int)

    def number(k: str, default: float | None) -> float | None:
        v = f.get(key(k), float, default)
        return None if v is None else _f32(v, f"{f.path}: {key(k)}")

    features: dict[str, Any] = {}
    window = f.get(key(K.Attention.SLIDING_WINDOW), int, family.default_window)
    if window is not None and window < 0:
        raise LmpackError(f"{f.path}: {key(K.Attention.SLIDING_WINDOW)} must not be negative, got {window}")
    # 0 is llama.cpp's "no window" (its converter writes it for a Phi-3 without one)
    if window and window < max_context and (family.swa_period or family.window_key):
        features["sliding_window"] = window
        if family.swa_period and isinstance(n_layers, int) and 0 < n_layers <= MAX_DIM:
            features["layer_types"] = _layer_types(f, key(K.Attention.SLIDING_WINDOW_PATTERN), family, n_layers)
    if family.softcaps:  # llama.cpp's defaults when the keys are absent
        features["attn_softcap"] = number(K.LLM.ATTN_LOGIT_SOFTCAPPING, 50.0)
        features["final_softcap"] = number(K.LLM.FINAL_LOGIT_SOFTCAPPING, 30.0)
    elif family.swa_period:  # Gemma 3: llama.cpp caps the logits when the key says so
        features["final_softcap"] = number(K.LLM.FINAL_LOGIT_SOFTCAPPING, None) or None
    if family.swa_period and "sliding_window" in features:
        # Gemma 3's sliding layers default to base 10000, Gemma 2's to the full layers' base
        local = number(K.Rope.FREQ_BASE_SWA, 10000.0 if family.gguf_arch == "GEMMA3" else None)
        if local is not None and (family.gguf_arch == "GEMMA3" or local != f.get(key(K.Rope.FREQ_BASE), float, None)):
            features["rope_local_theta"] = local
    if rope_dim != head_dim:
        features["rope_dim"] = rope_dim
    if family.experts:
        features["n_experts"] = f.get(key(K.LLM.EXPERT_COUNT), int)
        features["n_experts_used"] = f.get(key(K.LLM.EXPERT_USED_COUNT), int)
    cfg = ModelConfig(
        architecture=family.reads_as,
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=f.get(key(K.Attention.HEAD_COUNT_KV), int, n_heads),
        head_dim=head_dim,
        ffn_dim=f.get(key(K.LLM.FEED_FORWARD_LENGTH), int),
        vocab_size=vocab_size,
        norm_eps=_f32(f.get(key(K.Attention.LAYERNORM_RMS_EPS), float),
                      f"{f.path}: {key(K.Attention.LAYERNORM_RMS_EPS)}"),
        rope_theta=_f32(f.get(key(K.Rope.FREQ_BASE), float, 10000.0), f"{f.path}: {key(K.Rope.FREQ_BASE)}"),
        max_context=max_context,
        bos_id=bos_id,
        eos_ids=eos_ids,
        tie_embeddings=tie,
        rope_scaling=scaling,
        chat_format=chat_format,
        **features,
    )
    if family.gemma_scale and isinstance(dim, int) and isinstance(n_heads, int):
        # what llama.cpp's graph computes for this shape, stated explicitly
        cfg.query_pre_attn_scalar = float(family.attn_scalar(cfg))
    cfg.validate(f"{f.path}")
    return cfg


def _layer_types(f: GgufFile, pattern_key: str, family: Family, n_layers: int) -> list[str]:
    """Which layers slide, as llama.cpp's loader decides: `attention.sliding_window_pattern` as one
    flag per layer or as a period (layer i slides iff i % period < period - 1), else the
    architecture's own period."""
    value = f.get(pattern_key, (int, np.ndarray), family.swa_period)
    if isinstance(value, np.ndarray):
        if value.dtype != np.bool_ or value.shape != (n_layers,):
            raise LmpackError(f"{f.path}: {pattern_key} must be one true/false per layer ({n_layers})")
        return ["sliding" if v else "full" for v in value]
    if not 0 < value <= MAX_DIM:
        raise LmpackError(f"{f.path}: {pattern_key} must be a positive period, got {value}")
    return ["sliding" if i % value < value - 1 else "full" for i in range(n_layers)]


def llama3_from_divisors(config: ModelConfig, divisors: np.ndarray, orig: int, where: str) -> dict[str, Any]:
    """Llama 3 rope scaling parameters that reproduce a GGUF's `rope_freqs` tensor.

    llama.cpp stores only the per-frequency divisors. They depend on the low/high frequency
    factors only through low/orig and high/orig, so with `orig` (the GGUF's
    rope.scaling.original_context_length, else Llama 3's 8192) fixed, the factor is the largest
    divisor and low/high follow from the blended frequencies (s = (orig/wavelength - low) /
    (high - low) is linear in 1/wavelength) or, without enough of them, from thresholds placed
    between the neighbouring wavelengths. The result is accepted only if it gives back the tensor."""
    hd = config.head_dim
    if divisors.shape != (hd // 2,) or not np.isfinite(divisors).all() or not (divisors >= 1).all():
        raise LmpackError(f"{where}: rope_freqs must be {hd // 2} divisors >= 1, one per frequency of a head")
    d = divisors.astype(np.float64)
    factor = float(d.max())
    u = np.array([config.rope_theta ** (-i / hd) / (2 * math.pi) for i in range(0, hd, 2)])  # 1/wavelength
    if factor == 1.0:
        raise LmpackError(f"{where}: rope_freqs divides no frequency; drop it instead")
    s = (1 / d - 1 / factor) / (1 - 1 / factor)  # 0 where divided by factor, 1 where untouched
    smooth = (s > 1e-6) & (s < 1 - 1e-6)
    big, one = u[s <= 1e-6], u[s >= 1 - 1e-6]
    if smooth.sum() >= 2:
        i, j = np.flatnonzero(smooth)[[0, -1]]
        slope = (s[j] - s[i]) / (u[j] - u[i])
        L = u[i] - s[i] / slope
        H = L + 1 / slope
    else:
        # u is decreasing with i: frequencies divided by `factor` have the smallest u
        L = (big.max() + u[u > big.max()].min()) / 2 if big.size and (u > big.max()).any() else u.min() / 2
        if smooth.sum() == 1:
            k = np.flatnonzero(smooth)[0]
            H = L + (u[k] - L) / s[k]
        else:
            H = (one.min() + u[u < one.min()].max()) / 2 if one.size and (u < one.min()).any() else u.max() * 2
    rs = {"type": "llama3", "factor": _f32(factor, where), "low_freq_factor": float(f"{L * orig:.6g}"),
          "high_freq_factor": float(f"{H * orig:.6g}"), "original_max_position_embeddings": int(orig)}
    if not 0 < rs["low_freq_factor"] < rs["high_freq_factor"]:
        raise LmpackError(f"{where}: rope_freqs does not follow Llama 3 rope scaling; lmpack cannot represent it")
    cand = ModelConfig(**{**config.__dict__, "rope_scaling": rs})
    if not np.allclose(llama3_rope_divisors(cand), divisors, rtol=1e-5, atol=0):
        raise LmpackError(f"{where}: rope_freqs does not follow Llama 3 rope scaling; lmpack cannot represent it")
    return rs
