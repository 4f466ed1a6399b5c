"""The model config stored in a `.lmp` header.

`ModelConfig` is the one description of a model that the converter writes, the reader validates
and the runtime runs. Which tensors it implies, and how a family's config.json maps onto it, is
the family table's job (`lmpack.formats.arch`, re-exported here as `expected_tensors`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from lmpack.errors import LmpackError, brief
from lmpack.formats.arch import MAX_DIM, MAX_EXPERTS, expected_tensors, family

__all__ = ["ModelConfig", "expected_tensors"]
CHAT_FORMATS = ("llama2",)
ROPE_SCALING_KEYS = {
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "linear": ("factor",),
}


FEATURE_DEFAULTS: dict[str, Any] = {"sliding_window": None, "layer_types": None, "rope_local_theta": None,
                                    "query_pre_attn_scalar": None, "attn_softcap": None, "final_softcap": None,
                                    "rope_dim": None, "n_experts": 0, "n_experts_used": 0}
LAYER_TYPES = ("full", "sliding")


def _finite(value: int | float) -> bool:
    """A finite float, or an int that converts to one (math.isfinite overflows on huge ints)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


@dataclass
class ModelConfig:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    vocab_size: int
    norm_eps: float
    rope_theta: float
    max_context: int
    bos_id: int
    eos_ids: list[int]
    tie_embeddings: bool = False
    rope_scaling: dict[str, Any] | None = None
    chat_format: str | None = None
    architecture: str = "llama"
    # Family features (docs/FORMAT.md); a header leaves out those at their default.
    sliding_window: int | None = None  # positions a sliding layer attends to, itself included
    layer_types: list[str] | None = None  # per layer "full" | "sliding"; None: all one kind
    rope_local_theta: float | None = None  # RoPE base of sliding layers, unscaled (Gemma 3); None: as full ones
    query_pre_attn_scalar: float | None = None  # q.k scale is its -1/2 power (Gemma); None: head_dim's
    attn_softcap: float | None = None  # attention scores become cap*tanh(s/cap) (Gemma 2)
    final_softcap: float | None = None  # the same on the logits
    rope_dim: int | None = None  # RoPE rotates the first rope_dim dims of each head (Phi-3); None: all
    n_experts: int = 0  # MoE: experts per layer (0: a dense MLP)
    n_experts_used: int = 0  # MoE: experts each token takes (top-k)
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys, kept verbatim

    @property
    def eos_token_ids(self) -> list[int]:
        """Every id generation stops at (config.json's, generation_config.json's and the tokenizer's EOS)."""
        return list(self.eos_ids)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        for key in FEATURE_DEFAULTS:
            if d[key] == FEATURE_DEFAULTS[key]:
                del d[key]
        return {**extra, **d}

    def window(self, layer: int) -> int:
        """The attention window of `layer` in positions; 0 for full causal attention."""
        if self.sliding_window is None:
            return 0
        if self.layer_types is None or self.layer_types[layer] == "sliding":
            return self.sliding_window
        return 0

    @classmethod
    def from_dict(cls, d: Any, where: str = "config") -> "ModelConfig":
        """Build and validate from a header's `config` object; errors name `where` and the key."""
        if not isinstance(d, dict):
            raise LmpackError(f"{where}: expected an object, got {type(d).__name__}")

        def get(key, kind, default=..., optional=False):
            if key not in d or (d[key] is None and optional):
                if default is ...:
                    raise LmpackError(f"{where}: missing field '{key}'")
                return default
            value = d[key]
            if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise LmpackError(f"{where}: field '{key}' must be an integer, got {brief(value)}")
            if kind is float:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
                    raise LmpackError(f"{where}: field '{key}' must be a finite number, got {brief(value)}")
                value = float(value)
            if kind is bool and not isinstance(value, bool):
                raise LmpackError(f"{where}: field '{key}' must be true or false, got {brief(value)}")
            if kind is str and not isinstance(value, str):
                raise LmpackError(f"{where}: field '{key}' must be a string, got {brief(value)}")
            return value

        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        eos = d.get("eos_ids")
        if not isinstance(eos, list) or not eos or not all(isinstance(e, int) and not isinstance(e, bool) for e in eos):
            raise LmpackError(f"{where}: field 'eos_ids' must be a non-empty list of integers, got {brief(eos)}")
        cfg = cls(
            architecture=get("architecture", str),
            dim=get("dim", int),
            n_layers=get("n_layers", int),
            n_heads=get("n_heads", int),
            n_kv_heads=get("n_kv_heads", int),
            head_dim=get("head_dim", int),
            ffn_dim=get("ffn_dim", int),
            vocab_size=get("vocab_size", int),
            norm_eps=get("norm_eps", float),
            rope_theta=get("rope_theta", float),
            max_context=get("max_context", int),
            bos_id=get("bos_id", int),
            eos_ids=list(eos),
            tie_embeddings=get("tie_embeddings", bool, False),
            rope_scaling=d.get("rope_scaling"),
            chat_format=get("chat_format", str, None, optional=True),
            sliding_window=get("sliding_window", int, None, optional=True),
            layer_types=d.get("layer_types"),
            rope_local_theta=get("rope_local_theta", float, None, optional=True),
            query_pre_attn_scalar=get("query_pre_attn_scalar", float, None, optional=True),
            attn_softcap=get("attn_softcap", float, None, optional=True),
            final_softcap=get("final_softcap", float, None, optional=True),
            rope_dim=get("rope_dim", int, None, optional=True),
            n_experts=get("n_experts", int, 0),
            n_experts_used=get("n_experts_used", int, 0),
            extra={k: v for k, v in d.items() if k not in known},
        )
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "config") -> None:
        """Raise LmpackError unless every field is consistent and in range."""
        family(self.architecture, where)
        for key in ("dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim", "vocab_size", "max_context"):
            value = getattr(self, key)
            if not 0 < value <= MAX_DIM:
                raise LmpackError(f"{where}: field '{key}' out of range: {value}")
        if self.n_heads * self.head_dim > MAX_DIM:
            raise LmpackError(f"{where}: n_heads * head_dim ({self.n_heads * self.head_dim}) is above {MAX_DIM}")
        if self.n_heads % self.n_kv_heads:
            raise LmpackError(f"{where}: n_heads ({self.n_heads}) is not a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.head_dim % 2:
            raise LmpackError(f"{where}: head_dim must be even, got {self.head_dim}")
        if not 0 < self.norm_eps < 1:
            raise LmpackError(f"{where}: norm_eps out of range: {self.norm_eps}")
        if not self.rope_theta > 0:
            raise LmpackError(f"{where}: rope_theta must be positive, got {self.rope_theta}")
        for key, ids in (("bos_id", [self.bos_id]), ("eos_ids", self.eos_ids)):
            for i in ids:
                if not 0 <= i < self.vocab_size:
                    raise LmpackError(f"{where}: {key} {i} is outside the vocabulary (size {self.vocab_size})")
        if self.chat_format is not None and self.chat_format not in CHAT_FORMATS:
            raise LmpackError(f"{where}: unknown chat_format '{self.chat_format}'")
        for key in ("rope_local_theta", "query_pre_attn_scalar", "attn_softcap", "final_softcap"):
            value = getattr(self, key)
            if value is not None and not 0 < value <= 1e9:
                raise LmpackError(f"{where}: field '{key}' must be positive, got {value}")
        if self.n_experts or self.n_experts_used:
            if not (2 <= self.n_experts <= MAX_EXPERTS and 1 <= self.n_experts_used <= self.n_experts):
                raise LmpackError(f"{where}: n_experts must be in [2, {MAX_EXPERTS}] and n_experts_used in "
                                  f"[1, n_experts], got {self.n_experts} and {self.n_experts_used}")
        if self.rope_dim is not None and not (0 < self.rope_dim <= self.head_dim and self.rope_dim % 2 == 0):
            raise LmpackError(f"{where}: field 'rope_dim' must be even and in [2, head_dim], got {self.rope_dim}")
        if self.sliding_window is not None and not 0 < self.sliding_window <= MAX_DIM:
            raise LmpackError(f"{where}: field 'sliding_window' out of range: {self.sliding_window}")
        if self.layer_types is not None:
            lt = self.layer_types
            if not isinstance(lt, list) or len(lt) != self.n_layers or any(t not in LAYER_TYPES for t in lt):
                raise LmpackError(f"{where}: field 'layer_types' must list 'full' or 'sliding' for each of the "
                                  f"{self.n_layers} layers")
            if "sliding" in lt and self.sliding_window is None:
                raise LmpackError(f"{where}: sliding layers need a 'sliding_window'")
        if self.rope_scaling is not None:
            rs = self.rope_scaling
            if not isinstance(rs, dict) or rs.get("type") not in ROPE_SCALING_KEYS:
                raise LmpackError(f"{where}: unsupported rope_scaling {brief(rs)} (supported: llama3, linear)")
            for key in ROPE_SCALING_KEYS[rs["type"]]:
                value = rs.get(key)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value) or not value > 0:
                    raise LmpackError(f"{where}: rope_scaling.{key} must be a positive number, got {brief(value)}")

