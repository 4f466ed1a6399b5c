"""A GGUF file as a conversion source: `lmpack convert MODEL.gguf -o OUT.lmp`.

The file is read with lmpack's bounded reader (`lmpack.formats.gguf.GgufFile`). Its family row
(`gguf_arch`; llama.cpp's llama with experts is Mixtral) maps the architecture keys back to
lmpack's config, and the family's GGUF layout (`gguf_arch.layout`) maps each GGUF tensor back to
the lmpack tensors it holds: a fused or stacked tensor is split into row ranges of its bytes,
Gemma's norms lose llama.cpp's + 1, q/k rows go back from interleaved RoPE order to HF's
half-split one; the tokenizer is rebuilt from `tokenizer.ggml.*` (`gguf_vocab`). F32, F16, BF16
and Q8_0 tensors come out exactly as stored (Q8_0 re-laid from ggml's blocks into lmpack's planes,
one part at a time, its scales checked finite, so the `.lmp` holds the same scales and quants);
any other ggml type is dequantized with gguf-py's reference dequantizers to float32 and must then
be given a stored type by the user (`dequantized` lists them).
"""
from __future__ import annotations

import math

from pathlib import Path

import numpy as np

from lmpack.convert.gguf_arch import GgufTensor, family_of_gguf, layout, llama3_from_divisors, read_config
from lmpack.convert.gguf_vocab import read_tokenizer
from lmpack.convert.rope_order import half_split_rows
from lmpack.convert.tokenizer_files import TokenizerFiles
from lmpack.convert.source import SourceFile, SourceInfo, TensorSpec, check_tensor_set
from lmpack import _core
from lmpack.errors import LmpackError
from lmpack.formats.dtypes import Q8_0_BLOCK, cast
from lmpack.formats.gguf import GgufFile, gguf_module
from lmpack.formats.lmp import Q8Tensor


class GgufSource:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._f = GgufFile(self.path)
        try:
            self._open()
        except BaseException:
            self._f.close()
            raise
        self.info = SourceInfo("gguf", [SourceFile(self.path.name, self._f._size)])

    def _open(self) -> None:
        gguf = gguf_module()
        f = self._f
        T = gguf.GGMLQuantizationType
        arch = f.get(gguf.Keys.General.ARCHITECTURE, str)
        experts = f.get(gguf.Keys.LLM.EXPERT_COUNT.format(arch=arch), int, 0)
        self.family = family_of_gguf(arch, experts, str(self.path))
        self._tok = read_tokenizer(f)
        bos, eos_ids = self._tok.bos_id, self._tok.eos_ids
        chat_format = self._tok.header.pop("chat_format", None)
        by_gguf = {t.name: t for t in f.tensors}
        rope_freqs_name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        embd = by_gguf.get(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_EMBD] + ".weight")
        if embd is None or len(embd.shape) != 2:
            raise LmpackError(f"{self.path}: no 2-D token_embd.weight tensor")
        n_tokens = len(f.get(gguf.Keys.Tokenizer.LIST, list))
        if n_tokens > embd.shape[0]:
            raise LmpackError(f"{self.path}: {n_tokens} tokens but token_embd.weight has only {embd.shape[0]} rows")
        tie = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.OUTPUT] + ".weight" not in by_gguf
        self._config = read_config(f, self.family, embd.shape[0], tie, bos, eos_ids, chat_format)
        if rope_freqs_name in by_gguf:
            t = by_gguf.pop(rope_freqs_name)
            if t.ggml_type != T.F32:
                raise LmpackError(f"{self.path}: rope_freqs.weight must be F32, is {t.type_name}")
            orig = f.get(gguf.Keys.Rope.SCALING_ORIG_CTX_LEN.format(arch=self.family.gguf_name), int, 8192)
            self._config.rope_scaling = llama3_from_divisors(self._config, f.raw(t.name).view("<f4"), orig,
                                                             str(self.path))
        # the layer count is a claim: every layer holds at least four tensors, so a count the file
        # cannot back is refused before names are built for it
        cfg = self._config
        if cfg.n_layers * 4 > len(by_gguf):
            raise LmpackError(f"{self.path}: {cfg.n_layers} layers claimed, but the file holds only "
                              f"{len(by_gguf)} tensors")
        # so is the expert count: every expert of every layer holds three dim x ffn_dim matrices, one
        # name each, and all of them must fit in the weights the file holds
        if cfg.n_experts:
            held = sum(math.prod(t.shape) for t in by_gguf.values())
            if cfg.n_layers * cfg.n_experts * 3 * max(cfg.dim, 1) * max(cfg.ffn_dim, 1) > held:
                raise LmpackError(f"{self.path}: {cfg.n_experts} experts in each of {cfg.n_layers} layers claimed, "
                                  f"but the file holds only {held} weights")
        self._layout = {g.name: g for g in layout(self._config, self.family)}
        exact = {T.F32: "f32", T.F16: "f16", T.BF16: "bf16", T.Q8_0: "q8_0"}
        found = {}
        self._where: dict[str, tuple[GgufTensor, int]] = {}  # lmpack name -> (GGUF tensor, index among its parts)
        self.dequantized: dict[str, str] = {}
        for gname, t in by_gguf.items():
            g = self._layout.get(gname)
            if g is None:
                raise LmpackError(f"{self.path}: unexpected tensor '{gname}' for a {self.family.gguf_name} model "
                                  f"of this shape")
            if tuple(t.shape) != g.shape:
                raise LmpackError(f"{self.path}: tensor '{gname}' has shape {list(t.shape)}, its metadata implies "
                                  f"{list(g.shape)}")
            dtype = exact.get(t.ggml_type)
            if dtype == "q8_0" and len(t.shape) < 2:  # lmpack's Q8_0 is for matrices (docs/FORMAT.md)
                raise LmpackError(f"{self.path}: tensor '{gname}' is a vector stored as Q8_0; only matrices "
                                  f"may be")
            if dtype is None:
                if not hasattr(gguf.quants, t.type_name):
                    raise LmpackError(f"{self.path}: tensor '{gname}' is {t.type_name}, which is not a weight type "
                                      f"lmpack can read")
                dtype = "f32"
            for i, part in enumerate(g.parts):
                if dtype == "f32" and t.ggml_type not in exact:
                    self.dequantized[part] = t.type_name
                found[part] = (g.part_shapes[i], dtype, f"{self.path}")
                self._where[part] = (g, i)
        missing = [g.name for g in self._layout.values() if g.name not in by_gguf]
        if missing:
            raise LmpackError(f"{self.path}: tensor '{missing[0]}' is missing")
        self._specs = check_tensor_set(self._config, found, self.path, "its metadata")
        self._specs_by_name = {s.name: s for s in self._specs}

    # -- Source
    def config(self):
        return self._config

    def tokenizer(self) -> TokenizerFiles:
        return self._tok

    def tokenizer_bytes(self) -> bytes:
        return self._tok.blob

    def tensor_specs(self) -> list[TensorSpec]:
        return list(self._specs)

    def load(self, name: str) -> np.ndarray | Q8Tensor:
        gguf = gguf_module()
        T = gguf.GGMLQuantizationType
        g, i = self._where[name]
        t = self._f.tensor_info(g.name)
        shape = g.part_shapes[i]
        r0, r1 = g.rows(i)
        rows, cols = r1 - r0, shape[-1]
        # this part's rows of the GGUF tensor: every type stores whole rows one after another
        row_bytes = t.nbytes // g.rows(len(g.parts) - 1)[1]
        raw = self._f.raw(t.name)[r0 * row_bytes:r1 * row_bytes]
        if t.ggml_type == T.Q8_0:
            # ggml's 34-byte blocks into lmpack's planes: a byte copy, never a re-quantization
            q = np.empty((rows, cols), np.int8)
            d = np.empty((rows, cols // Q8_0_BLOCK), np.float16)
            _core.q8_0_relayout(q, d, np.ascontiguousarray(raw), False)
            bad = int(np.count_nonzero(~np.isfinite(d)))
            if bad:
                raise LmpackError(f"{self.path}: tensor '{g.name}' holds {bad} NaN/Inf Q8_0 scale"
                                  f"{'s' if bad > 1 else ''}; a model with them computes NaN logits")
            x = Q8Tensor(q, d)
        elif t.ggml_type in (T.F32, T.F16, T.BF16):
            x = raw.view({T.F32: "<f4", T.F16: "<f2", T.BF16: "<u2"}[t.ggml_type]).reshape(shape)
        else:
            x = np.asarray(gguf.quants.dequantize(raw, T(t.ggml_type)), dtype=np.float32).reshape(shape)
        if g.shift:
            x = (cast(x, self._specs_by_name[name].dtype, "f32") - np.float32(g.shift)).astype(np.float32)
        heads = self.family.rope_heads(name, self._config)
        if heads is not None:
            order = half_split_rows(rows, heads)
            x = Q8Tensor(x.quants[order], x.scales[order]) if isinstance(x, Q8Tensor) else x[order]
        return x

    def release(self, name: str) -> None:
        self._f.release(self._where[name][0].name)

    def value_shift(self, name: str) -> float:
        """What the file stores beyond lmpack's value (1 for Gemma's norms, llama.cpp's w + 1):
        `load` gives back (w + 1) - 1, which in f32 can differ from w in the last bits while
        1 + it is exactly the stored value, so a comparison with the source belongs there."""
        return self._where[name][0].shift

    def close(self) -> None:
        self._f.close()

    def report(self, out: Path, dtype: str) -> list[str]:
        if not self.dequantized:
            return []
        kinds = sorted(set(self.dequantized.values()))
        return [f"dequantized {len(self.dequantized)} {'/'.join(kinds)} tensors (gguf-py's reference dequantizers) "
                f"and stored them as {dtype}"]
