"""Hugging Face folders: `config.json` to ModelConfig, and the safetensors tensor source.

`read_hf_config` reads the folder's JSON; the mapping of each family's fields onto the canonical
config, and the refusal of what the runtime cannot run, is the family table's
(`lmpack.formats.arch.config_from_hf`). `HFSafetensorsSource` streams tensors from a single or
sharded safetensors checkpoint without copying them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lmpack.convert.source import FolderSource, SourceFile, SourceInfo, TensorSpec, check_tensor_set, split_fused
from lmpack.convert.tokenizer_files import read_tokenizer, with_tokenizer
from lmpack.errors import LmpackError, brief
from lmpack.formats import arch
from lmpack.formats.config import ModelConfig
from lmpack.formats.jsonfile import read_json
from lmpack.formats.safetensors import SafetensorsFile

# Tensors that HF checkpoints may carry but the model does not use.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def _load_json(path: Path) -> Any:
    return read_json(path)


def _chat_format(folder: Path) -> str | None:
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return None
    try:
        template = read_json(path).get("chat_template")
    except (LmpackError, AttributeError):
        return None
    return "llama2" if isinstance(template, str) and "[INST]" in template else None


def config_from_hf(cfg: Any, where: str, chat_format: str | None = None) -> ModelConfig:
    """ModelConfig from a parsed HF `config.json` dict (the mapping is the family table's)."""
    return ModelConfig.from_dict({**arch.config_from_hf(cfg, where), "chat_format": chat_format}, where=where)


def read_hf_config(folder: str | Path) -> ModelConfig:
    """Parse and validate `folder/config.json` (plus the chat template, if any)."""
    folder = Path(folder)
    path = folder / "config.json"
    return config_from_hf(_load_json(path), str(path), _chat_format(folder))


def _is_file(path: Path) -> bool:
    """Path.is_file, with names the OS refuses (too long, say) counted as not there."""
    try:
        return path.is_file()
    except OSError:
        return False


def shard_files(folder: Path, index_name: str, single_name: str, pattern: str) -> list[Path]:
    """The checkpoint files of an HF folder: from its index if present, else the single file."""
    index = folder / index_name
    if index.is_file():
        data = _load_json(index)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise LmpackError(f"{index}: no weight_map")
        bad = [n for n in weight_map.values() if not isinstance(n, str) or Path(n).name != n or n in ("", ".", "..")]
        if bad:
            raise LmpackError(f"{index}: shard name {brief(bad[0])} is not a plain file name in the folder")
        names = set(weight_map.values())
        files = sorted(folder / f for f in names)
        missing = [f for f in files if not _is_file(f)]
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


def check_weight_map(index: Path, weight_map: dict[str, Any], stored_in: dict[str, str]) -> None:
    """The index's {tensor: shard} map against where each tensor really is ({tensor: file name}):
    a tensor listed in one shard but stored in another, or not stored at all, is refused."""
    for name, file in weight_map.items():
        if name.endswith(IGNORED_SUFFIXES):
            continue
        got = stored_in.get(name)
        if got is None:
            raise LmpackError(f"{index}: tensor '{name}' is listed in {file} but not stored there")
        if got != file:
            raise LmpackError(f"{index}: tensor '{name}' is listed in {file} but stored in {got}")


class HFSafetensorsSource(FolderSource):
    """An HF Llama folder with `model.safetensors` or sharded safetensors plus their index."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        config = read_hf_config(self.folder)
        self._tokenizer = read_tokenizer(self.folder)
        self._config = with_tokenizer(config, self._tokenizer, str(self.folder / "config.json"))
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
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():  # shard_files read and checked it; here its map meets the shards
            check_weight_map(index, read_json(index)["weight_map"], {n: f.path.name for n, f in self._where.items()})
        self.info = SourceInfo("hf-safetensors", [SourceFile(p.name, p.stat().st_size) for p in paths])
        if self._config.tie_embeddings:
            self._where.pop("lm_head.weight", None)
        self._specs = self._check_tensors()

    def _check_tensors(self) -> list[TensorSpec]:
        found = {name: (f.entries[name].shape, f.dtype_of(name) or f.entries[name].dtype, str(f.path))
                 for name, f in self._where.items()}
        found, self._parts = split_fused(self._config, found)
        return check_tensor_set(self._config, found, self.folder, "config.json")

    def load(self, name: str) -> np.ndarray:
        if name in self._parts:  # a row range of a fused tensor: a view of the map
            fused, r0, r1, _ = self._parts[name]
            return self._where[fused].load(fused)[r0:r1]
        return self._where[name].load(name)

    def release(self, name: str) -> None:
        if name in self._parts:  # the fused tensor's pages go once its last part is written
            fused, _, _, last = self._parts[name]
            if last:
                self._where[fused].release(fused)
            return
        self._where[name].release(name)

    def close(self) -> None:
        for f in self.files:
            f.close()
