"""How each model family lmpack runs is described in GGUF: one table row per family.

A row names the gguf-py architecture (`gguf.MODEL_ARCH`) and whether llama.cpp runs it with
adjacent-pair ("normal") RoPE, which needs the q/k rows of each head permuted from Hugging Face's
half-split order. Everything else is derived, in both directions, from gguf-py's own tables:
tensor names from its tensor-name map (HF name -> `blk.N.attn_q.weight`, ...), metadata keys from
`gguf.Keys` (`llama.embedding_length`, ...). Adding a family is a row here plus whatever keys its
config adds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmpack.errors import LmpackError
from lmpack.formats.config import ModelConfig, expected_tensors
from lmpack.formats.gguf import GgufFile, gguf_module


@dataclass(frozen=True)
class Family:
    architecture: str     # lmpack's ModelConfig.architecture
    gguf_arch: str        # the gguf.MODEL_ARCH member
    rope_interleaved: bool  # llama.cpp rotates pairs (2i, 2i+1): q/k rows are permuted on the way out
    # GGUF of this family is read back as this lmpack architecture (None: not read; several
    # lmpack families can share one llama.cpp architecture, e.g. Mistral is llama.cpp's llama)
    reads_as: str | None = None

    def check(self, config: ModelConfig) -> None:
        """Refuse a config whose features llama.cpp's architecture does not run (and would ignore)."""
        sliding = config.sliding_window is not None and config.sliding_window < config.max_context and \
            (config.layer_types is None or "sliding" in config.layer_types)
        if sliding:
            raise LmpackError(f"GGUF export: llama.cpp's {self.gguf_name} architecture has no sliding-window "
                              f"attention, and this {config.architecture} model uses a window of "
                              f"{config.sliding_window} positions")

    @property
    def gguf_name(self) -> str:
        gguf = gguf_module()
        return gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[self.gguf_arch]]

    def tensor_names(self, config: ModelConfig) -> dict[str, str]:
        """{lmpack (HF) tensor name: GGUF tensor name} for every tensor a file for `config` holds."""
        gguf = gguf_module()
        mapping = gguf.get_tensor_name_map(gguf.MODEL_ARCH[self.gguf_arch], config.n_layers)
        out = {}
        for name in expected_tensors(config):
            gname = mapping.get_name(name, try_suffixes=(".weight", ".bias"))
            if gname is None:
                raise LmpackError(f"internal: gguf-py has no {self.gguf_arch} name for '{name}'")
            out[name] = gname
        return out

    def rope_heads(self, name: str, config: ModelConfig) -> int | None:
        """Heads whose rows RoPE rotates, for q/k tensors of a family exported with interleaved RoPE."""
        if not self.rope_interleaved:
            return None
        if name.endswith("self_attn.q_proj.weight"):
            return config.n_heads
        if name.endswith("self_attn.k_proj.weight"):
            return config.n_kv_heads
        return None


FAMILIES = {
    "llama": Family("llama", "LLAMA", rope_interleaved=True, reads_as="llama"),
    # Mistral is llama.cpp's llama architecture (as its own converter writes it), without the window
    "mistral": Family("mistral", "LLAMA", rope_interleaved=True),
    # Qwen runs half-split ("NeoX") RoPE in llama.cpp, as in HF: no permutation
    "qwen2": Family("qwen2", "QWEN2", rope_interleaved=False, reads_as="qwen2"),
    "qwen3": Family("qwen3", "QWEN3", rope_interleaved=False, reads_as="qwen3"),
}


def family_of(config: ModelConfig) -> Family:
    try:
        family = FAMILIES[config.architecture]
    except KeyError:
        raise LmpackError(f"GGUF export of architecture '{config.architecture}' is not supported "
                          f"(supported: {', '.join(FAMILIES)})") from None
    family.check(config)
    return family


def family_of_gguf(arch: str, where: str) -> Family:
    for f in FAMILIES.values():
        if f.reads_as is not None and f.gguf_name == arch:
            return f
    names = ", ".join(sorted({f.gguf_name for f in FAMILIES.values() if f.reads_as}))
    raise LmpackError(f"{where}: GGUF architecture '{arch}' is not one lmpack runs (supported: {names})")


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


def write_config(w: Any, config: ModelConfig) -> None:
    """The architecture's hyperparameter keys, from lmpack's config (gguf-py's typed writers)."""
    gguf = gguf_module()
    w.add_context_length(config.max_context)
    w.add_embedding_length(config.dim)
    w.add_block_count(config.n_layers)
    w.add_feed_forward_length(config.ffn_dim)
    w.add_head_count(config.n_heads)
    w.add_head_count_kv(config.n_kv_heads)
    w.add_rope_dimension_count(config.head_dim)
    w.add_key_length(config.head_dim)
    w.add_value_length(config.head_dim)
    w.add_layer_norm_rms_eps(config.norm_eps)
    w.add_rope_freq_base(config.rope_theta)
    w.add_vocab_size(config.vocab_size)
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
    if head_dim != f.get(key(K.Rope.DIMENSION_COUNT), int, head_dim):
        raise LmpackError(f"{f.path}: partial rotary embeddings ({key(K.Rope.DIMENSION_COUNT)} != head size) "
                          f"are not supported")
    scaling = None
    stype = f.get(key(K.Rope.SCALING_TYPE), str, "none")
    if stype == "linear":
        scaling = {"type": "linear", "factor": _f32(f.get(key(K.Rope.SCALING_FACTOR), float),
                                                   f"{f.path}: {key(K.Rope.SCALING_FACTOR)}")}
    elif stype not in ("none", ""):
        raise LmpackError(f"{f.path}: rope scaling type '{stype}' is not supported (supported: linear, llama3)")
    cfg = ModelConfig(
        architecture=family.reads_as,
        dim=dim,
        n_layers=f.get(key(K.LLM.BLOCK_COUNT), int),
        n_heads=n_heads,
        n_kv_heads=f.get(key(K.Attention.HEAD_COUNT_KV), int, n_heads),
        head_dim=head_dim,
        ffn_dim=f.get(key(K.LLM.FEED_FORWARD_LENGTH), int),
        vocab_size=vocab_size,
        norm_eps=_f32(f.get(key(K.Attention.LAYERNORM_RMS_EPS), float),
                      f"{f.path}: {key(K.Attention.LAYERNORM_RMS_EPS)}"),
        rope_theta=_f32(f.get(key(K.Rope.FREQ_BASE), float, 10000.0), f"{f.path}: {key(K.Rope.FREQ_BASE)}"),
        max_context=f.get(key(K.LLM.CONTEXT_LENGTH), int),
        bos_id=bos_id,
        eos_ids=eos_ids,
        tie_embeddings=tie,
        rope_scaling=scaling,
        chat_format=chat_format,
    )
    cfg.validate(f"{f.path}")
    return cfg


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
