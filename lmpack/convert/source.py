"""What every checkpoint reader hands the converter: a config, a tokenizer and lazy tensors.

A `Source` is the boundary between the many on-disk checkpoint layouts (HF safetensors, HF
PyTorch `.bin`, Meta `consolidated.NN.pth`) and the one canonical tensor stream that the
container writer consumes. Tensors come out with Hugging Face Llama names and layout (q/k rows
in HF's half-split RoPE order) and are loaded one at a time, so memory stays bounded by one
tensor.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from lmpack.formats.config import ModelConfig

if TYPE_CHECKING:
    from lmpack.convert.tokenizer_files import TokenizerFiles

# Source dtypes a reader may produce. numpy has no bfloat16, so bf16 data travels as np.uint16
# holding the raw bits; `TensorSpec.dtype` says how to read the array. Sources that already hold
# ggml Q8_0 (an .lmp, a GGUF) hand those tensors out as `Q8Tensor`s (dtype "q8_0"), so they are
# copied, never re-quantized.
SOURCE_DTYPES = ("f32", "f16", "bf16")
QUANTIZED_DTYPES = ("q8_0",)


@dataclass(frozen=True)
class TensorSpec:
    """A tensor as the source stores it: canonical HF name, shape and element type."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # one of SOURCE_DTYPES


@dataclass
class SourceFile:
    """A file the conversion read, for the output's provenance."""

    name: str
    size: int


@dataclass
class SourceInfo:
    kind: str  # "hf-safetensors" | "hf-bin" | "meta"
    files: list[SourceFile] = field(default_factory=list)


class Source(Protocol):
    """A checkpoint opened for streaming conversion."""

    info: SourceInfo

    def config(self) -> ModelConfig:
        """The model config, validated; raises LmpackError naming the missing field."""

    def tokenizer(self) -> "TokenizerFiles":
        """The tokenizer to embed, with its special tokens, chat template and sampling defaults."""

    def tokenizer_bytes(self) -> bytes:
        """The embedded tokenizer's bytes (`tokenizer().blob`)."""

    def tensor_specs(self) -> list[TensorSpec]:
        """Every tensor the file will hold (canonical names), without reading data."""

    def load(self, name: str) -> np.ndarray:
        """One tensor's values in canonical layout: float32, float16, or uint16 bits for bf16
        (or a `lmpack.formats.lmp.Q8Tensor` for a "q8_0" spec).

        May be a read-only view over a memory map; the caller copies or casts it and drops it
        before asking for the next one."""

    def release(self, name: str) -> None:
        """Optional: drop a loaded tensor's mapped pages once it is written, so resident memory
        stays at about one tensor on a pass over a large file (the pipeline calls it if present)."""

    def close(self) -> None:
        """Release maps and file handles."""


class FolderSource:
    """What every checkpoint-folder source shares once it has parsed its config, found its
    tokenizer file and checked its tensor set: the three Source accessors over that state."""

    _config: ModelConfig
    _tokenizer: "TokenizerFiles"
    _specs: list[TensorSpec]

    def config(self) -> ModelConfig:
        return self._config

    def tokenizer(self) -> "TokenizerFiles":
        return self._tokenizer

    def tokenizer_bytes(self) -> bytes:
        return self._tokenizer.blob

    def tensor_specs(self) -> list[TensorSpec]:
        return list(self._specs)


def check_tensor_set(config: ModelConfig, found: dict[str, tuple[tuple[int, ...], str, str]],
                     folder: Path, config_file: str) -> list[TensorSpec]:
    """The specs of exactly the tensors `config` implies, in file order, or an LmpackError naming
    the first tensor that is missing, misshapen, of an unreadable dtype, or unexpected.

    `found` maps each tensor the checkpoint holds to (shape, dtype as the source names it — one of
    SOURCE_DTYPES when readable —, where it is: a file name or description for the message)."""
    from lmpack.errors import LmpackError
    from lmpack.formats.config import expected_tensors

    # Sizes from a config are claims: check the layer count against the tensors the files hold
    # before building the name set (a claimed 2^24 layers would otherwise cost minutes and GBs).
    want = 2 + 9 * config.n_layers + (not config.tie_embeddings)
    if want > len(found) + 9:
        raise LmpackError(f"{folder}: {config_file} describes {config.n_layers} layers ({want} tensors), "
                          f"but the checkpoint holds {len(found)} tensors")
    expected = expected_tensors(config)
    specs = []
    for name, shape in expected.items():
        if name not in found:
            raise LmpackError(f"{folder}: tensor '{name}' is missing from the checkpoint")
        got_shape, dtype, where = found[name]
        if tuple(got_shape) != shape:
            raise LmpackError(f"{where}: tensor '{name}' has shape {list(got_shape)}, {config_file} implies {list(shape)}")
        if dtype not in SOURCE_DTYPES + QUANTIZED_DTYPES:
            raise LmpackError(f"{where}: tensor '{name}' has dtype {dtype}; lmpack reads f32, f16 and bf16")
        specs.append(TensorSpec(name, shape, dtype))
    extra = sorted(set(found) - set(expected))
    if extra:
        raise LmpackError(f"{folder}: unexpected tensor '{extra[0]}' (beyond what {config_file} describes)")
    return specs


def split_fused(config: ModelConfig, found: dict[str, tuple[tuple[int, ...], str, str]]
                ) -> tuple[dict[str, tuple[tuple[int, ...], str, str]], dict[str, tuple[str, int, int, bool]]]:
    """`found` (as check_tensor_set takes it) with each fused tensor the family table names
    (Phi-3's qkv_proj, gate_up_proj) replaced by its parts, and the parts: name -> (fused name,
    first row, end row, whether it is the fused tensor's last part). A source hands a part out as
    a row range of the fused tensor, a view: nothing is copied or held twice."""
    from lmpack.errors import LmpackError
    from lmpack.formats.arch import fused_parts

    parts = {name: p for name, p in fused_parts(config).items() if p[0] in found}
    rows: dict[str, int] = {}
    for fused, _, r1 in parts.values():
        rows[fused] = max(rows.get(fused, 0), r1)
    out = {k: v for k, v in found.items() if k not in rows}
    for fused, total in rows.items():
        shape, _, where = found[fused]
        if len(shape) != 2 or shape[0] != total:
            raise LmpackError(f"{where}: tensor '{fused}' has shape {list(shape)}, the config implies {total} rows")
    for name, (fused, r0, r1) in parts.items():
        shape, dtype, where = found[fused]
        out[name] = ((r1 - r0, shape[1]), dtype, where)
    return out, {name: (f, r0, r1, r1 == rows[f]) for name, (f, r0, r1) in parts.items()}


def load_sentencepiece(path: Path):
    """The sentencepiece model in `path`, or an LmpackError that says what the file is instead.

    Checked when a conversion starts, so a wrong file (Llama 3's tiktoken ranks, Mistral's tekken
    JSON under the old name) is refused with one line rather than embedded and failing at load."""
    import sentencepiece as spm

    from lmpack.errors import LmpackError

    from lmpack.formats.jsonfile import MAX_TOKENIZER_BYTES, read_regular

    data = read_regular(path, MAX_TOKENIZER_BYTES, "a tokenizer model")
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(data)
        ok = sp.get_piece_size() > 0
    except Exception:  # sentencepiece raises RuntimeError/OSError with C++ text
        ok = False
    if not ok:
        raise LmpackError(f"{path}: not a sentencepiece model ({_looks_like(data)})")
    return sp


def _looks_like(data: bytes) -> str:
    """A short guess at what a file that is not a sentencepiece model holds, for the message."""
    head = data[:4096].lstrip()
    if not head:
        return "the file is empty"
    if head[:1] in (b"{", b"["):
        return "it is JSON, such as a tokenizer.json or Mistral's tekken.json"
    first = head.split(b"\n", 1)[0].split(b" ")
    if len(first) == 2 and first[1].strip().isdigit() and first[0] and all(
            c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=" for c in first[0]):
        return "it is a tiktoken BPE ranks file, like Llama 3's"
    return "unrecognised contents"
