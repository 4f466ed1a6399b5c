"""An existing `.lmp` file as a conversion source, so `lmpack quantize` and `lmpack export` reuse the
streaming pipeline."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lmpack.convert.tokenizer_files import TokenizerFiles
from lmpack.convert.source import SourceFile, SourceInfo, TensorSpec
from lmpack.errors import LmpackError
from lmpack.formats.config import ModelConfig
from lmpack.formats.dtypes import FLOAT_DTYPES
from lmpack.formats.lmp import LmpReader, Q8Tensor


class LmpSource:
    def __init__(self, path: str | Path, allow_quantized: bool = False):
        """`allow_quantized` hands q8_0 tensors out as they are stored (for export); without it a
        quantized file is refused (quantizing it again would compound the rounding)."""
        self._reader = LmpReader(path)
        self.info = SourceInfo("lmp", [SourceFile(Path(path).name, self._reader.file_size)])
        for e in self._reader.tensors:
            if e.dtype not in FLOAT_DTYPES and not allow_quantized:
                raise LmpackError(f"{path}: tensor '{e.name}' is already {e.dtype}; quantize a f32/f16/bf16 file")

    def config(self) -> ModelConfig:
        return self._reader.config

    def tokenizer(self) -> TokenizerFiles:
        """The file's tokenizer and the header fields that go with it, carried over unchanged."""
        r = self._reader
        return TokenizerFiles(r.tokenizer_kind, r.tokenizer_bytes, dict(r.tokenizer_fields), dict(r.generation))

    def tokenizer_bytes(self) -> bytes:
        return self._reader.tokenizer_bytes

    def tensor_specs(self) -> list[TensorSpec]:
        return [TensorSpec(e.name, e.shape, e.dtype) for e in self._reader.tensors]

    def load(self, name: str) -> np.ndarray | Q8Tensor:
        return self._reader.tensor(name)

    def release(self, name: str) -> None:
        self._reader.release(name)

    def close(self) -> None:
        self._reader.close()
