"""Meta Llama folders (`params.json` + `consolidated.NN.pth` + `tokenizer.model`) as a Source.

The tokenizer.model is sentencepiece (Llama 1/2) or tiktoken (Llama 3, see tiktoken.py).

Meta's reference code saves one file per model-parallel rank. This source renames Meta's tensors
to the Hugging Face names, merges the ranks' slices tensor by tensor (never holding more than one
merged tensor), and permutes the q/k rows from Meta's interleaved RoPE order into HF's half-split
order, so a Meta folder yields exactly the numbers of its HF twin.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmpack.convert.source import FolderSource, SourceFile, SourceInfo, TensorSpec, check_tensor_set
from lmpack.convert.tokenizer_files import read_tokenizer
from lmpack.errors import LmpackError, brief
from lmpack.formats.config import ModelConfig, _finite
from lmpack.formats.jsonfile import read_json
from lmpack.formats.torchzip import FLOAT_DTYPES, TorchFile, TorchTensor

SHARD_RE = re.compile(r"consolidated\.(\d+)\.pth")
IGNORED = ("rope.freqs",)
_LAYER_RE = re.compile(r"layers\.(\d+)\.(.+)")
# Meta per-layer name -> (HF per-layer name, how model-parallel ranks split it).
# "rows": ColumnParallelLinear, split on dim 0; "cols": RowParallelLinear, split on dim 1;
# "same": replicated on every rank.
_LAYER_MAP = {
    "attention.wq.weight": ("self_attn.q_proj.weight", "rows"),
    "attention.wk.weight": ("self_attn.k_proj.weight", "rows"),
    "attention.wv.weight": ("self_attn.v_proj.weight", "rows"),
    "attention.wo.weight": ("self_attn.o_proj.weight", "cols"),
    "feed_forward.w1.weight": ("mlp.gate_proj.weight", "rows"),
    "feed_forward.w3.weight": ("mlp.up_proj.weight", "rows"),
    "feed_forward.w2.weight": ("mlp.down_proj.weight", "cols"),
    "attention_norm.weight": ("input_layernorm.weight", "same"),
    "ffn_norm.weight": ("post_attention_layernorm.weight", "same"),
}
_TOP_MAP = {
    "tok_embeddings.weight": ("model.embed_tokens.weight", "embed"),
    "norm.weight": ("model.norm.weight", "same"),
    "output.weight": ("lm_head.weight", "rows"),
}
LLAMA3_SCALING = {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192}


def hf_name(meta_name: str) -> tuple[str, str] | None:
    """(HF name, split rule) for a Meta tensor name; None for tensors the model does not use."""
    if meta_name in IGNORED:
        return None
    if meta_name in _TOP_MAP:
        return _TOP_MAP[meta_name]
    m = _LAYER_RE.fullmatch(meta_name)
    if m and m.group(2) in _LAYER_MAP and str(int(m.group(1))) == m.group(1):
        name, rule = _LAYER_MAP[m.group(2)]
        return f"model.layers.{m.group(1)}.{name}", rule
    raise LmpackError(f"unexpected tensor '{meta_name}' in a Meta checkpoint (not a plain Llama model?)")


def meta_to_hf_rope(w: np.ndarray, n_heads: int, out: np.ndarray) -> None:
    """Write q/k rows `w` (Meta's interleaved pairs 2i, 2i+1 per head) into `out` in HF's
    half-split order (pairs i, i + head_dim/2): HF_row[h, c*hd/2 + i] = Meta_row[h, 2i + c]."""
    rows, cols = w.shape
    hd = rows // n_heads
    out.reshape(n_heads, 2, hd // 2, cols)[...] = w.reshape(n_heads, hd // 2, 2, cols).transpose(0, 2, 1, 3)


@dataclass
class _Merged:
    """One HF tensor and the per-rank slices it is assembled from."""

    name: str
    parts: list[tuple[TorchFile, TorchTensor]]
    axis: int | None  # concatenation axis; None when replicated (or a single rank)
    shape: tuple[int, ...]
    dtype: str


def _merge_shape(name: str, shapes: list[tuple[int, ...]], rule: str, dim: int, where: str) -> int | None:
    """The concatenation axis for a tensor's rank slices (None = replicated), checked against the shapes."""
    if len(shapes) == 1:
        return None
    if rule == "same":
        if len(set(shapes)) != 1:
            raise LmpackError(f"{where}: replicated tensor '{name}' has different shapes on different ranks: {shapes}")
        return None
    if any(len(s) != 2 for s in shapes):
        raise LmpackError(f"{where}: tensor '{name}' is not 2-D on every rank: {shapes}")
    if rule == "embed":
        # Llama 1/2 split the embedding on dim 1 (ParallelEmbedding), Llama 3 on dim 0
        # (VocabParallelEmbedding); whichever axis adds up to the model width is the one not split.
        if all(c == dim for _, c in shapes):
            rule = "rows"
        elif sum(c for _, c in shapes) == dim and len({r for r, _ in shapes}) == 1:
            rule = "cols"
        else:
            raise LmpackError(f"{where}: cannot tell how '{name}' is split across ranks: shapes {shapes}, dim {dim}")
    axis = 0 if rule == "rows" else 1
    other = 1 - axis
    if len({s[other] for s in shapes}) != 1:
        raise LmpackError(f"{where}: tensor '{name}' slices disagree on dim {other}: {shapes}")
    return axis


class MetaSource(FolderSource):
    """A Meta Llama checkpoint folder, merged and renamed into the canonical HF tensor stream.

    `rope_scaling_factor` overrides the Llama 3 rope scaling factor, which params.json does not
    record (Meta's code assumes 8; Llama 3.2 1B/3B need 32)."""

    def __init__(self, folder: str | Path, rope_scaling_factor: float | None = None):
        self.folder = Path(folder)
        self.params = self._read_params()
        paths = self._shard_paths()
        scaled = self.params.get("use_scaled_rope", False)
        # Llama 3's tiktoken tokenizer.model becomes byte-level BPE; 3.1 and later (the ones with
        # scaled RoPE) name more of the 256 special tokens than 3.0 does.
        self._tokenizer = read_tokenizer(self.folder, meta_llama3=scaled is True)
        self.files: list[TorchFile] = []
        try:
            states = []
            for p in paths:
                f = TorchFile(p)
                self.files.append(f)
                states.append((f, f.tensors()))
            self._tensors = self._collect(states)
            self._config = self._build_config(rope_scaling_factor)
            self._specs = self._check_tensors()
            self._names = {s.name for s in self._specs}
        except BaseException:
            self.close()
            raise
        self.info = SourceInfo("meta", [SourceFile(p.name, p.stat().st_size) for p in paths])

    # -- discovery -------------------------------------------------------------------------

    def _read_params(self) -> dict[str, Any]:
        path = self.folder / "params.json"
        params = read_json(path)
        if not isinstance(params, dict):
            raise LmpackError(f"{path}: expected a JSON object")
        return params

    def _shard_paths(self) -> list[Path]:
        found = {}
        for p in self.folder.glob("consolidated.*.pth"):
            m = SHARD_RE.fullmatch(p.name)
            if not m:
                raise LmpackError(f"{p}: unexpected shard name (expected consolidated.NN.pth)")
            found[int(m.group(1))] = p
        if not found:
            raise LmpackError(f"{self.folder}: no consolidated.NN.pth files")
        if sorted(found) != list(range(len(found))):
            missing = next(i for i in range(len(found)) if i not in found)
            raise LmpackError(f"{self.folder}: model-parallel shard {missing} of {max(found) + 1} is missing")
        return [found[i] for i in range(len(found))]

    def _collect(self, states: list[tuple[TorchFile, dict[str, TorchTensor]]]) -> dict[str, _Merged]:
        names = set()
        for f, tensors in states:
            names |= set(tensors)
        dim = self._int("dim")
        merged: dict[str, _Merged] = {}
        for meta_name in sorted(names):
            try:
                target = hf_name(meta_name)
            except LmpackError as e:
                raise LmpackError(f"{self.folder}: {e}") from None
            if target is None:
                continue
            name, rule = target
            parts = []
            for f, tensors in states:
                t = tensors.get(meta_name)
                if t is None:
                    raise LmpackError(f"{f.path}: tensor '{meta_name}' is missing from this shard")
                parts.append((f, t))
            dtypes = {t.dtype for _, t in parts}
            dtype = parts[0][1].dtype
            if len(dtypes) != 1 or dtype not in FLOAT_DTYPES:
                got = ", ".join(sorted(str(d) for d in dtypes))
                raise LmpackError(f"{self.folder}: tensor '{meta_name}' has dtype {got}; lmpack reads f32, f16 and bf16")
            shapes = [t.shape for _, t in parts]
            axis = _merge_shape(meta_name, shapes, rule, dim, str(self.folder))
            shape = list(shapes[0])
            if axis is not None:
                shape[axis] = sum(s[axis] for s in shapes)
            merged[name] = _Merged(name, parts, axis, tuple(shape), dtype)
        return merged

    # -- config ----------------------------------------------------------------------------

    def _int(self, key: str, default: Any = ...) -> int:
        value = self.params.get(key)
        if value is None:
            if default is ...:
                raise LmpackError(f"{self.folder / 'params.json'}: missing field '{key}'")
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise LmpackError(f"{self.folder / 'params.json'}: field '{key}' must be an integer, got {brief(value)}")
        return value

    def _float(self, key: str, default: Any = ...) -> float:
        value = self.params.get(key)
        if value is None:
            if default is ...:
                raise LmpackError(f"{self.folder / 'params.json'}: missing field '{key}'")
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
            raise LmpackError(f"{self.folder / 'params.json'}: field '{key}' must be a number, got {brief(value)}")
        return float(value)

    def _build_config(self, rope_scaling_factor: float | None) -> ModelConfig:
        where = str(self.folder / "params.json")
        dim, n_heads = self._int("dim"), self._int("n_heads")
        if n_heads <= 0 or dim % n_heads:
            raise LmpackError(f"{where}: dim {dim} is not a multiple of n_heads {n_heads}")
        for name in ("model.embed_tokens.weight", "model.layers.0.mlp.gate_proj.weight"):
            if name not in self._tensors:
                raise LmpackError(f"{self.folder}: tensor '{name}' is missing from the checkpoint")
        rows = self._tensors["model.embed_tokens.weight"].shape[0]
        vocab = self._int("vocab_size", -1)
        if vocab <= 0:  # Llama 1/2 write -1: the tokenizer decides, and the embedding has its rows
            vocab = rows
        scaled = self.params.get("use_scaled_rope", False)
        if not isinstance(scaled, bool):
            raise LmpackError(f"{where}: field 'use_scaled_rope' must be true or false")
        scaling = None
        if scaled:
            scaling = dict(LLAMA3_SCALING)
            if rope_scaling_factor is not None:
                scaling["factor"] = float(rope_scaling_factor)
        elif rope_scaling_factor is not None:
            raise LmpackError(f"{where}: a rope scaling factor was given but params.json has no use_scaled_rope")
        tok = self._tokenizer
        if tok.n_ids > vocab:
            raise LmpackError(f"{self.folder / 'tokenizer.model'}: {tok.n_ids} tokens but the model has only "
                              f"{vocab} embedding rows")
        if tok.bos_id is None or not tok.eos_ids:
            raise LmpackError(f"{self.folder / 'tokenizer.model'}: the tokenizer defines no BOS/EOS tokens")
        cfg = {
            "architecture": "llama",
            "dim": dim,
            "n_layers": self._int("n_layers"),
            "n_heads": n_heads,
            "n_kv_heads": self._int("n_kv_heads", n_heads),
            "head_dim": dim // n_heads,
            "ffn_dim": self._tensors["model.layers.0.mlp.gate_proj.weight"].shape[0],
            "vocab_size": vocab,
            "norm_eps": self._float("norm_eps"),
            "rope_theta": self._float("rope_theta", 10000.0),
            "rope_scaling": scaling,
            "tie_embeddings": False,
            "max_context": self._int("max_seq_len", 4096),
            "bos_id": tok.bos_id,
            "eos_ids": list(dict.fromkeys(tok.eos_ids)),
            "chat_format": None,
        }
        return ModelConfig.from_dict(cfg, where=where)

    def _check_tensors(self) -> list[TensorSpec]:
        found = {name: (m.shape, m.dtype, f"{self.folder} (merged)") for name, m in self._tensors.items()}
        return check_tensor_set(self._config, found, self.folder, "params.json")

    # -- Source ----------------------------------------------------------------------------

    def _rope_heads(self, name: str) -> int | None:
        if name.endswith("self_attn.q_proj.weight"):
            return self._config.n_heads
        if name.endswith("self_attn.k_proj.weight"):
            return self._config.n_kv_heads
        return None

    def load(self, name: str) -> np.ndarray:
        m = self._tensors.get(name)
        if m is None or name not in self._names:
            raise LmpackError(f"{self.folder}: no tensor '{name}'")
        arrays = [t.array() for _, t in m.parts]
        heads = self._rope_heads(name)
        if heads is not None:
            # Each rank holds whole heads, and the permutation stays inside a head, so every
            # slice is permuted straight into its rows of the merged output.
            hd = self._config.head_dim
            out = np.empty(m.shape, dtype=arrays[0].dtype)
            r0 = 0
            for (f, _), a in zip(m.parts, arrays):
                if a.shape[0] % hd:
                    raise LmpackError(f"{f.path}: '{name}' slice of {a.shape[0]} rows is not whole heads of {hd}")
                meta_to_hf_rope(a, a.shape[0] // hd, out[r0:r0 + a.shape[0]])
                r0 += a.shape[0]
            return out
        if m.axis is None:
            if len(arrays) > 1:
                first = arrays[0].tobytes()
                for (f, _), a in zip(m.parts[1:], arrays[1:]):
                    if a.tobytes() != first:
                        raise LmpackError(f"{f.path}: replicated tensor '{name}' differs from {m.parts[0][0].path.name}")
            a = arrays[0]
            return a if a.flags.c_contiguous else np.ascontiguousarray(a)
        return np.concatenate(arrays, axis=m.axis)

    def release(self, name: str) -> None:
        m = self._tensors.get(name)
        if m is not None:
            for _, t in m.parts:
                t.release()

    def close(self) -> None:
        for f in self.files:
            f.close()
