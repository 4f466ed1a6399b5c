"""llama2.c checkpoints (`model.bin`: stories15M/42M/110M and `export.py`'s outputs) as a Source.

Three layouts exist (llama2.c's export.py): the legacy v0 (7 int32 config, then every float32
tensor grouped by kind, the RoPE tables, and the classifier when a negative vocab size says it is
not shared), v1 (a 256-byte header with magic "ak42", float32, norms first) and v2 (the same
header plus a group size; norms float32, every matrix int8 quants followed by float32 scales per
group). The header is checked and the file size must equal exactly what it implies, so a wrong or
truncated file fails before anything is read. Tensors come out in HF layout: llama2.c keeps
Meta's interleaved RoPE order, so q/k rows are permuted. v2 matrices are dequantized exactly to
float32; `--dtype q8_0` re-quantizes them to ggml's Q8_0 (32-element blocks, fp16 scales), and
the error that costs is measured against the file's own values and reported.

llama2.c stores no tokenizer: `tokenizer.model` beside the file, or a file given explicitly, is
used — a sentencepiece model, or llama2.c's own `tokenizer.bin` (rebuilt into one).
"""
from __future__ import annotations

import mmap
from contextlib import contextmanager
import struct
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from lmpack.convert.rope_order import half_split_rows
from lmpack.convert.tokenizer_files import TokenizerFiles
from lmpack.convert.source import SourceFile, SourceInfo, TensorSpec
from lmpack.errors import LmpackError
from lmpack.formats import spm_model
from lmpack.formats.config import ModelConfig, expected_tensors
from lmpack.formats.mmaps import drop_pages, open_readonly

MAGIC = 0x616B3432  # "ak42"
HEADER_V1 = 256
CONFIG = struct.Struct("<7i")  # dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
# llama2.c hard-codes these in run.c
NORM_EPS, ROPE_THETA, BOS, EOS = 1e-5, 10000.0, 1, 2


def _layer_names(i: int) -> dict[str, str]:
    p = f"model.layers.{i}."
    return {"rms_att": p + "input_layernorm.weight", "wq": p + "self_attn.q_proj.weight",
            "wk": p + "self_attn.k_proj.weight", "wv": p + "self_attn.v_proj.weight",
            "wo": p + "self_attn.o_proj.weight", "rms_ffn": p + "post_attention_layernorm.weight",
            "w1": p + "mlp.gate_proj.weight", "w2": p + "mlp.down_proj.weight", "w3": p + "mlp.up_proj.weight"}


class Llama2cSource:
    """A llama2.c `.bin` checkpoint opened for streaming conversion."""

    def __init__(self, path: str | Path, tokenizer: str | Path | None = None):
        self.path = Path(path)
        self._file, size = open_readonly(self.path)
        self.buffer = None
        try:
            if size < CONFIG.size:
                raise self._fail(f"not a llama2.c checkpoint (only {size} bytes)")
            self.buffer = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            self._parse(size)
            self._tokenizer = self._read_tokenizer(tokenizer)
        except BaseException:
            self.close()
            raise
        self.info = SourceInfo(f"llama2c-v{self.version}", [SourceFile(self.path.name, size)])

    def _fail(self, what: str) -> LmpackError:
        return LmpackError(f"{self.path}: {what}")

    # -- layout
    def _parse(self, size: int) -> None:
        (magic,) = struct.unpack_from("<I", self.buffer, 0)
        self.group_size = None
        if magic == MAGIC:
            if size < HEADER_V1:
                raise self._fail(f"truncated llama2.c header ({size} bytes, 256 expected)")
            (self.version,) = struct.unpack_from("<i", self.buffer, 4)
            if self.version not in (1, 2):
                raise self._fail(f"unsupported llama2.c version {self.version} (lmpack reads 0, 1 and 2)")
            dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = CONFIG.unpack_from(self.buffer, 8)
            shared = self.buffer[36]
            if shared > 1:
                raise self._fail(f"corrupt header (shared_classifier byte is {shared})")
            if self.version == 2:
                (self.group_size,) = struct.unpack_from("<i", self.buffer, 37)
            offset = HEADER_V1
        else:
            self.version = 0
            dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = CONFIG.unpack_from(self.buffer, 0)
            shared = vocab > 0
            vocab = abs(vocab)
            offset = CONFIG.size
        for key, v in (("dim", dim), ("hidden_dim", hidden), ("n_layers", n_layers), ("n_heads", n_heads),
                       ("n_kv_heads", n_kv), ("vocab_size", vocab), ("seq_len", seq_len)):
            if not 0 < v <= 1 << 24:
                raise self._fail(f"not a llama2.c checkpoint ({key} = {v} in the header)")
        if dim % n_heads or n_heads % n_kv or (dim // n_heads) % 2:
            raise self._fail(f"not a llama2.c checkpoint (dim {dim}, {n_heads} heads, {n_kv} kv heads do not fit)")
        head_dim = dim // n_heads
        self._config = ModelConfig(dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv, head_dim=head_dim,
                                   ffn_dim=hidden, vocab_size=vocab, norm_eps=NORM_EPS, rope_theta=ROPE_THETA,
                                   max_context=seq_len, bos_id=BOS, eos_ids=[EOS], tie_embeddings=bool(shared))
        self._config.validate(str(self.path))
        if self.version == 2:
            gs = self.group_size
            if not 0 < gs <= dim or dim % gs:
                raise self._fail(f"corrupt header (group size {gs} does not divide dim {dim})")

        shapes = expected_tensors(self._config)
        L = n_layers
        per_layer = ["rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3"]
        if self.version == 0:
            order = ["embed"] + [(k, i) for k in per_layer for i in range(L)] + ["norm", "freq_cis"]
        else:
            order = ([("rms_att", i) for i in range(L)] + [("rms_ffn", i) for i in range(L)] + ["norm", "embed"] +
                     [(k, i) for k in ("wq", "wk", "wv", "wo", "w1", "w2", "w3") for i in range(L)])
        if not shared:
            order.append("head")
        self._where: dict[str, tuple[int, tuple[int, ...], bool]] = {}  # name -> (offset, shape, int8 + scales)
        for item in order:
            if item == "freq_cis":  # two float32 tables of seq_len * head_dim/2 that run.c ignores
                offset += 2 * seq_len * (head_dim // 2) * 4
                continue
            name = {"embed": "model.embed_tokens.weight", "norm": "model.norm.weight", "head": "lm_head.weight"}.get(item) \
                if isinstance(item, str) else _layer_names(item[1])[item[0]]
            shape = shapes[name]
            numel = int(np.prod(shape))
            quantized = self.version == 2 and len(shape) == 2
            if quantized and numel % self.group_size:
                raise self._fail(f"'{name}' of {numel} weights is not whole groups of {self.group_size}")
            self._where[name] = (offset, shape, quantized)
            offset += numel + numel // self.group_size * 4 if quantized else numel * 4
        if offset != size:
            raise self._fail(f"not a llama2.c v{self.version} checkpoint of this shape, or truncated: the header "
                             f"implies {offset} bytes, the file has {size}")
        self._specs = [TensorSpec(name, shape, "f32") for name, shape in shapes.items()]

    # -- Source
    def config(self) -> ModelConfig:
        return self._config

    def tokenizer(self) -> TokenizerFiles:
        return self._tokenizer

    def tokenizer_bytes(self) -> bytes:
        return self._tokenizer.blob

    def tensor_specs(self) -> list[TensorSpec]:
        return list(self._specs)

    def _values(self, name: str) -> np.ndarray:
        offset, shape, quantized = self._where[name]
        numel = int(np.prod(shape))
        if not quantized:
            return np.frombuffer(self.buffer, "<f4", numel, offset).reshape(shape)
        gs = self.group_size
        q = np.frombuffer(self.buffer, np.int8, numel, offset).reshape(-1, gs)
        s = np.frombuffer(self.buffer, "<f4", numel // gs, offset + numel)
        return (q.astype(np.float32) * s[:, None]).reshape(shape)  # exactly runq.c's dequantization

    def load(self, name: str) -> np.ndarray:
        if name not in self._where:
            raise self._fail(f"no tensor '{name}'")
        x = self._values(name)
        c = self._config
        heads = {"self_attn.q_proj.weight": c.n_heads, "self_attn.k_proj.weight": c.n_kv_heads}.get(
            name.split(".", 3)[-1] if name.startswith("model.layers.") else "")
        if heads is not None:
            x = x[half_split_rows(x.shape[0], heads)]
        return x

    def release(self, name: str) -> None:
        offset, shape, quantized = self._where[name]
        numel = int(np.prod(shape))
        drop_pages(self.buffer, offset, numel + numel // self.group_size * 4 if quantized else numel * 4)

    def close(self) -> None:
        if self.buffer is not None:
            try:
                self.buffer.close()
            except BufferError:
                pass
            self.buffer = None
        self._file.close()

    def report(self, out: Path, dtype: str) -> list[str]:
        """Lines for the user after a conversion: what v2's int8 weights became, and at what error."""
        if self.version != 2:
            return []
        gs = self.group_size
        if dtype != "q8_0":
            return [f"llama2.c int8 weights (groups of {gs}, f32 scales) dequantized exactly to f32"
                    if dtype in ("auto", "f32") else f"llama2.c int8 weights (groups of {gs}) dequantized, stored as {dtype}"]
        from lmpack.formats.lmp import Q8Tensor

        worst, err2, ref2 = 0.0, 0.0, 0.0
        with _written(out) as (read, release):
            for name, (_, shape, quantized) in self._where.items():
                if not quantized:
                    continue
                src = self.load(name)
                got = read(name)
                got = got.dequantize() if isinstance(got, Q8Tensor) else np.asarray(got, np.float32)
                diff = got.astype(np.float64) - src
                worst = max(worst, float(np.abs(diff).max()))
                err2 += float((diff * diff).sum())
                ref2 += float((src.astype(np.float64) ** 2).sum())
                release(name)
        rel = (err2 / ref2) ** 0.5 if ref2 else 0.0
        return [f"llama2.c int8 weights (groups of {gs}, f32 scales) re-quantized to ggml Q8_0 (groups of 32, "
                f"fp16 scales): max |error| {worst:.3g}, rms error {100 * rel:.3g}% of the weights' rms"]

    # -- tokenizer
    def _read_tokenizer(self, given: str | Path | None) -> bytes:
        if given is not None:
            path = Path(given)
            if not path.is_file():
                raise LmpackError(f"{path}: no such tokenizer file")
        else:
            candidates = [self.path.parent / "tokenizer.model", self.path.parent / "tokenizer.bin"]
            path = next((p for p in candidates if p.is_file()), None)
            if path is None:
                raise self._fail("llama2.c files hold no tokenizer: put its tokenizer.model (or llama2.c's "
                                 "tokenizer.bin) beside it, or pass --tokenizer")
        self.tokenizer_file = path  # an input the output must not replace
        data = path.read_bytes()
        pieces = read_tokenizer_bin(data, self._config.vocab_size)
        if pieces is not None:
            data = spm_model.build_model(pieces, unk_id=0, bos_id=BOS, eos_id=EOS)
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(data)
        except Exception:  # sentencepiece raises RuntimeError with C++ text
            raise LmpackError(f"{path}: neither a sentencepiece model nor a llama2.c tokenizer.bin for "
                              f"{self._config.vocab_size} tokens") from None
        n = sp.get_piece_size()
        if n > self._config.vocab_size:
            raise LmpackError(f"{path}: {n} pieces, but the model has {self._config.vocab_size} rows")
        specials = {"bos_token": sp.id_to_piece(BOS), "eos_token": sp.id_to_piece(EOS)}
        return TokenizerFiles("sentencepiece", data, {"add_bos": True, "special_tokens": specials}, {}, BOS, [EOS], n)


@contextmanager
def _written(out: Path) -> Iterator[Any]:
    """The file just written, as (read(name), release(name)) in lmpack's names and row order: an
    `.lmp` reader's, or those of a GGUF read back by the GGUF source."""
    if out.suffix.lower() == ".gguf":
        from lmpack.convert.gguf_source import GgufSource

        src = GgufSource(out)
        try:
            yield src.load, src.release
        finally:
            src.close()
    else:
        from lmpack.formats.lmp import LmpReader

        with LmpReader(out) as r:
            yield r.tensor, r.release


def read_tokenizer_bin(data: bytes, vocab_size: int) -> list[tuple[bytes, float, int]] | None:
    """The sentencepiece pieces of a llama2.c `tokenizer.bin` of `vocab_size` tokens, or None if
    `data` is not one (its entries must fill the file exactly).

    llama2.c's tokenizer.py writes u32 max_token_length, then per token f32 score, i32 length and
    the bytes, with BOS and EOS spelled "\\n<s>\\n" / "\\n</s>\\n" and sentencepiece's '▁' as a space."""
    if len(data) < 4:
        return None
    (max_len,) = struct.unpack_from("<I", data, 0)
    pos, out = 4, []
    for i in range(vocab_size):
        if pos + 8 > len(data):
            return None
        score, n = struct.unpack_from("<fi", data, pos)
        pos += 8
        if not 0 <= n <= max_len or pos + n > len(data):
            return None
        raw = data[pos:pos + n]
        pos += n
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if i == 0:
            kind = spm_model.UNKNOWN
        elif i in (BOS, EOS):
            kind, text = spm_model.CONTROL, text.strip("\n")
        elif len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            kind = spm_model.BYTE
        else:
            kind = spm_model.NORMAL
            text = text.replace(" ", spm_model.WHITESPACE)
        out.append((text.encode("utf-8"), float(score), kind))
    return out if pos == len(data) else None
