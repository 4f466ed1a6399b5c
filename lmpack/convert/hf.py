"""Hugging Face Llama folders: `config.json` to ModelConfig, and the safetensors tensor source.

`read_hf_config` accepts both the older (`rope_theta` + `rope_scaling`) and the newer
(`rope_parameters`) spellings and refuses what the runtime cannot run (other architectures,
biases, other activations) with a message naming the field. `HFSafetensorsSource` streams
tensors from a single or sharded safetensors checkpoint without copying them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lmpack.convert.source import FolderSource, SourceFile, SourceInfo, TensorSpec, check_tensor_set, tokenizer_path
from lmpack.errors import LmpackError
from lmpack.formats.config import ModelConfig
from lmpack.formats.safetensors import SafetensorsFile

SUPPORTED_MODEL_TYPES = ("llama",)
# Tensors that HF checkpoints may carry but the model does not use.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LmpackError(f"{path.parent}: no {path.name}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LmpackError(f"{path}: not valid JSON ({e})") from None


def _rope(cfg: dict[str, Any], where: str) -> tuple[float, dict[str, Any] | None]:
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    if not isinstance(params, dict) or not isinstance(scaling, dict):
        raise LmpackError(f"{where}: rope_parameters/rope_scaling must be objects")
    merged = {**scaling, **params}
    theta = merged.get("rope_theta", cfg.get("rope_theta", 10000.0))
    kind = merged.get("rope_type", merged.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind == "llama3":
        keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        missing = [k for k in keys if k not in merged]
        if missing:
            raise LmpackError(f"{where}: llama3 rope scaling is missing '{missing[0]}'")
        return theta, {"type": "llama3", **{k: merged[k] for k in keys}}
    if kind == "linear":
        if "factor" not in merged:
            raise LmpackError(f"{where}: linear rope scaling is missing 'factor'")
        return theta, {"type": "linear", "factor": merged["factor"]}
    raise LmpackError(f"{where}: unsupported rope scaling type '{kind}' (supported: llama3, linear)")


def _chat_format(folder: Path) -> str | None:
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return None
    try:
        template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return "llama2" if isinstance(template, str) and "[INST]" in template else None


def config_from_hf(cfg: Any, where: str, chat_format: str | None = None) -> ModelConfig:
    """ModelConfig from a parsed HF `config.json` dict."""
    if not isinstance(cfg, dict):
        raise LmpackError(f"{where}: expected a JSON object")
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise LmpackError(f"{where}: unsupported model_type {model_type!r} (lmpack supports: llama)")
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key):
            raise LmpackError(f"{where}: {key}=true is not supported")
    if cfg.get("hidden_act", "silu") != "silu":
        raise LmpackError(f"{where}: hidden_act {cfg.get('hidden_act')!r} is not supported (only silu)")

    def need(key: str) -> Any:
        if cfg.get(key) is None:
            raise LmpackError(f"{where}: missing field '{key}'")
        return cfg[key]

    dim, heads = need("hidden_size"), need("num_attention_heads")
    if not isinstance(dim, int) or not isinstance(heads, int) or heads <= 0:
        raise LmpackError(f"{where}: hidden_size and num_attention_heads must be positive integers")
    theta, scaling = _rope(cfg, where)
    eos = cfg.get("eos_token_id", 2)
    eos_ids = eos if isinstance(eos, list) else [eos]
    bos = cfg.get("bos_token_id", 1)
    config = {
        "architecture": "llama",
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
        "tie_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "max_context": cfg.get("max_position_embeddings", 2048),
        "bos_id": 1 if bos is None else bos,
        "eos_ids": [e for e in eos_ids if e is not None] or [2],
        "chat_format": chat_format,
    }
    return ModelConfig.from_dict(config, where=where)


def read_hf_config(folder: str | Path) -> ModelConfig:
    """Parse and validate `folder/config.json` (plus the chat template, if any)."""
    folder = Path(folder)
    path = folder / "config.json"
    return config_from_hf(_load_json(path), str(path), _chat_format(folder))


def shard_files(folder: Path, index_name: str, single_name: str, pattern: str) -> list[Path]:
    """The checkpoint files of an HF folder: from its index if present, else the single file."""
    index = folder / index_name
    if index.is_file():
        data = _load_json(index)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise LmpackError(f"{index}: no weight_map")
        names = set(weight_map.values())
        bad = [n for n in names if not isinstance(n, str) or Path(n).name != n or n in ("", ".", "..")]
        if bad:
            raise LmpackError(f"{index}: shard name {bad[0]!r} is not a plain file name in the folder")
        files = sorted(folder / f for f in names)
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise LmpackError(f"{index}: shard {missing[0].name} is missing")
        return files
    single = folder / single_name
    if single.is_file():
        return [single]
    found = sorted(folder.glob(pattern))
    if len(found) == 1:
        return found
    if found:
        raise LmpackError(f"{folder}: several {pattern} files but no {index_name}")
    raise LmpackError(f"{folder}: no {single_name}")


class HFSafetensorsSource(FolderSource):
    """An HF Llama folder with `model.safetensors` or sharded safetensors plus their index."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._config = read_hf_config(self.folder)
        self._tokenizer = tokenizer_path(self.folder, self._config.vocab_size)
        paths = shard_files(self.folder, "model.safetensors.index.json", "model.safetensors", "model*.safetensors")
        self.files = [SafetensorsFile(p) for p in paths]
        self._where: dict[str, SafetensorsFile] = {}
        for f in self.files:
            for name in f.entries:
                if name.endswith(IGNORED_SUFFIXES):
                    continue
                if name in self._where:
                    raise LmpackError(f"{self.folder}: tensor '{name}' appears in two shards")
                self._where[name] = f
        self.info = SourceInfo("hf-safetensors", [SourceFile(p.name, p.stat().st_size) for p in paths])
        if self._config.tie_embeddings:
            self._where.pop("lm_head.weight", None)
        self._specs = self._check_tensors()

    def _check_tensors(self) -> list[TensorSpec]:
        found = {name: (f.entries[name].shape, f.dtype_of(name) or f.entries[name].dtype, str(f.path))
                 for name, f in self._where.items()}
        return check_tensor_set(self._config, found, self.folder, "config.json")

    def load(self, name: str) -> np.ndarray:
        return self._where[name].load(name)

    def release(self, name: str) -> None:
        self._where[name].release(name)

    def close(self) -> None:
        for f in self.files:
            f.close()
