"""The model config stored in a `.lmp` header, and the tensors it implies.

`ModelConfig` is the one description of a Llama-family model that the converter writes, the
reader validates and the runtime runs; `expected_tensors` derives from it the exact set of tensor
names and shapes a file must hold (docs/FORMAT.md, "Tensors").
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from lmpack.errors import LmpackError

ARCHITECTURES = ("llama",)
CHAT_FORMATS = ("llama2",)
ROPE_SCALING_KEYS = {
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "linear": ("factor",),
}


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
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys, kept verbatim

    @property
    def eos_token_ids(self) -> list[int]:
        """Every id generation stops at (config.json's, generation_config.json's and the tokenizer's EOS)."""
        return list(self.eos_ids)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        return {**extra, **d}

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
                raise LmpackError(f"{where}: field '{key}' must be an integer, got {value!r}")
            if kind is float:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise LmpackError(f"{where}: field '{key}' must be a finite number, got {value!r}")
                value = float(value)
            if kind is bool and not isinstance(value, bool):
                raise LmpackError(f"{where}: field '{key}' must be true or false, got {value!r}")
            if kind is str and not isinstance(value, str):
                raise LmpackError(f"{where}: field '{key}' must be a string, got {value!r}")
            return value

        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        eos = d.get("eos_ids")
        if not isinstance(eos, list) or not eos or not all(isinstance(e, int) and not isinstance(e, bool) for e in eos):
            raise LmpackError(f"{where}: field 'eos_ids' must be a non-empty list of integers, got {eos!r}")
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
            extra={k: v for k, v in d.items() if k not in known},
        )
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "config") -> None:
        """Raise LmpackError unless every field is consistent and in range."""
        if self.architecture not in ARCHITECTURES:
            raise LmpackError(f"{where}: unsupported architecture '{self.architecture}' (supported: llama)")
        for key in ("dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim", "vocab_size", "max_context"):
            value = getattr(self, key)
            if not 0 < value <= 1 << 24:
                raise LmpackError(f"{where}: field '{key}' out of range: {value}")
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
        if self.rope_scaling is not None:
            rs = self.rope_scaling
            if not isinstance(rs, dict) or rs.get("type") not in ROPE_SCALING_KEYS:
                raise LmpackError(f"{where}: unsupported rope_scaling {rs!r} (supported: llama3, linear)")
            for key in ROPE_SCALING_KEYS[rs["type"]]:
                value = rs.get(key)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                    raise LmpackError(f"{where}: rope_scaling.{key} must be a positive number, got {value!r}")


def expected_tensors(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name a file for `cfg` must hold, with its shape, in canonical file order."""
    q_rows = cfg.n_heads * cfg.head_dim
    kv_rows = cfg.n_kv_heads * cfg.head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg.vocab_size, cfg.dim)}
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (cfg.dim,)
        shapes[p + "self_attn.q_proj.weight"] = (q_rows, cfg.dim)
        shapes[p + "self_attn.k_proj.weight"] = (kv_rows, cfg.dim)
        shapes[p + "self_attn.v_proj.weight"] = (kv_rows, cfg.dim)
        shapes[p + "self_attn.o_proj.weight"] = (cfg.dim, q_rows)
        shapes[p + "post_attention_layernorm.weight"] = (cfg.dim,)
        shapes[p + "mlp.gate_proj.weight"] = (cfg.ffn_dim, cfg.dim)
        shapes[p + "mlp.up_proj.weight"] = (cfg.ffn_dim, cfg.dim)
        shapes[p + "mlp.down_proj.weight"] = (cfg.dim, cfg.ffn_dim)
    shapes["model.norm.weight"] = (cfg.dim,)
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, cfg.dim)
    return shapes
