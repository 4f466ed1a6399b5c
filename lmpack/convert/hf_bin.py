"""Hugging Face Llama folders whose weights are PyTorch pickles (`pytorch_model*.bin`).

The config comes from `config.json` exactly as for safetensors folders (`read_hf_config`); the
weights are read with lmpack's torch zip reader, so nothing is unpickled with the stock unpickler
and no tensor is copied unless torch saved it as a non-contiguous view.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lmpack.convert.hf import IGNORED_SUFFIXES, check_weight_map, read_hf_config, shard_files
from lmpack.convert.source import FolderSource, SourceFile, SourceInfo, TensorSpec, check_tensor_set, split_fused
from lmpack.convert.tokenizer_files import read_tokenizer, with_tokenizer
from lmpack.errors import LmpackError, brief
from lmpack.formats.jsonfile import read_json
from lmpack.formats.torchzip import TorchFile, TorchTensor

BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_PATTERN = "pytorch_model*.bin"


def read_bin_index(folder: Path) -> dict[str, str] | None:
    """The index's {tensor: shard file name}, or None without an index; shard names must be plain
    file names in `folder` (an index is data, and must not point elsewhere on the disk)."""
    path = folder / BIN_INDEX
    if not path.is_file():
        return None
    index = read_json(path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise LmpackError(f"{path}: no weight_map")
    for name, file in weight_map.items():
        if not isinstance(file, str) or not file or Path(file).name != file or file in (".", ".."):
            raise LmpackError(f"{path}: tensor '{name}' maps to {brief(file)}, not a file name in the folder")
    return weight_map


class HFBinSource(FolderSource):
    """An HF Llama folder with `pytorch_model.bin`, or sharded `.bin` files plus their index."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        config = read_hf_config(self.folder)
        self._tokenizer = read_tokenizer(self.folder)
        self._config = with_tokenizer(config, self._tokenizer, str(self.folder / "config.json"))
        weight_map = read_bin_index(self.folder)
        paths = shard_files(self.folder, BIN_INDEX, BIN_SINGLE, BIN_PATTERN)
        self.files: list[TorchFile] = []
        self._where: dict[str, tuple[TorchFile, TorchTensor]] = {}
        try:
            for p in paths:
                f = TorchFile(p)
                self.files.append(f)
                for name, t in f.tensors().items():
                    if name.endswith(IGNORED_SUFFIXES):
                        continue
                    if name in self._where:
                        raise LmpackError(f"{self.folder}: tensor '{name}' appears in two shards")
                    self._where[name] = (f, t)
            if weight_map is not None:
                self._check_index(weight_map)
            if self._config.tie_embeddings:
                # A tied model's head is the embedding; some writers save it twice anyway.
                self._where.pop("lm_head.weight", None)
            self._specs = self._check_tensors()
        except BaseException:
            self.close()
            raise
        self.info = SourceInfo("hf-bin", [SourceFile(p.name, p.stat().st_size) for p in paths])

    def _check_index(self, weight_map: dict[str, str]) -> None:
        check_weight_map(self.folder / BIN_INDEX, weight_map, {n: f.path.name for n, (f, _) in self._where.items()})

    def _check_tensors(self) -> list[TensorSpec]:
        found = {name: (t.shape, t.dtype or f"torch.{t.storage_type}", str(f.path))
                 for name, (f, t) in self._where.items()}
        found, self._parts = split_fused(self._config, found)
        return check_tensor_set(self._config, found, self.folder, "config.json")

    def load(self, name: str) -> np.ndarray:
        rows = None
        if name in self._parts:  # a row range of a fused tensor
            name, r0, r1, _ = self._parts[name]
            rows = slice(r0, r1)
        got = self._where.get(name)
        if got is None:
            raise LmpackError(f"{self.folder}: no tensor '{name}'")
        arr = got[1].array() if rows is None else got[1].array()[rows]
        # torch may save a transposed or strided view; hand out C order like every other source.
        return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)

    def release(self, name: str) -> None:
        if name in self._parts:
            fused, _, _, last = self._parts[name]
            if not last:
                return
            name = fused
        got = self._where.get(name)
        if got is not None:
            got[1].release()

    def close(self) -> None:
        for f in self.files:
            f.close()
