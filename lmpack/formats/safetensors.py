"""A validating, lazy, memory-mapped reader for `.safetensors` files.

The header is checked whole before any tensor is exposed: its length against the file, every
`data_offsets` range inside the byte buffer, byte counts equal to dtype x shape, no overlaps.
Tensors come out as read-only numpy views over the map (bf16 as uint16 bits), so a reader over a
large shard costs address space, not memory.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmpack.errors import LmpackError, brief
from lmpack.formats.jsonfile import parse_json
from lmpack.formats.mmaps import drop_pages, open_readonly

MAX_HEADER = 100 << 20

# safetensors dtype -> (lmpack source dtype, numpy storage dtype)
_DTYPES = {
    "F32": ("f32", np.dtype("<f4")),
    "F16": ("f16", np.dtype("<f2")),
    "BF16": ("bf16", np.dtype("<u2")),
}
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
             "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass(frozen=True)
class SafetensorsEntry:
    name: str
    dtype: str  # safetensors spelling, e.g. "BF16"
    shape: tuple[int, ...]
    begin: int  # absolute file offset
    nbytes: int


class SafetensorsFile:
    """One `.safetensors` file, validated and mapped."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file, size = open_readonly(self.path)
        self._map = None
        try:
            self.entries = self._parse(size)
            if size:
                self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        except BaseException:
            self.close()
            raise

    def _fail(self, what: str) -> LmpackError:
        return LmpackError(f"{self.path}: {what}")

    def _parse(self, size: int) -> dict[str, SafetensorsEntry]:
        if size < 8:
            raise self._fail(f"not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", self._file.read(8))
        if n > MAX_HEADER or 8 + n > size:
            raise self._fail(f"truncated or corrupt safetensors header (header length {n}, file size {size})")
        raw = self._file.read(n)
        try:
            header = parse_json(raw, "header")
        except LmpackError as e:
            raise self._fail(f"corrupt safetensors {e}") from None
        if not isinstance(header, dict):
            raise self._fail("corrupt safetensors header (not a JSON object)")
        header.pop("__metadata__", None)
        base, buf_len = 8 + n, size - 8 - n
        entries, spans = {}, []
        for name, info in header.items():
            if not isinstance(info, dict):
                raise self._fail(f"tensor '{name}': corrupt header entry")
            dtype, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
            if not isinstance(dtype, str) or dtype not in _ITEMSIZE:
                raise self._fail(f"tensor '{name}': unknown dtype {brief(dtype)}")
            if not isinstance(shape, list) or len(shape) > 16 or \
                    not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 62 for d in shape):
                raise self._fail(f"tensor '{name}': bad shape {brief(shape)}")
            if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) and not isinstance(o, bool) for o in offs)):
                raise self._fail(f"tensor '{name}': bad data_offsets {brief(offs)}")
            begin, end = offs
            numel = 1
            for d in shape:
                numel = min(numel * d, buf_len + 1)  # more than the buffer holds is wrong anyway
            if 0 in shape:
                numel = 0
            if not 0 <= begin <= end:
                raise self._fail(f"tensor '{name}': bad data_offsets {brief(offs)}")
            if end > buf_len:
                raise self._fail(f"tensor '{name}': data ends at byte {end} but the buffer has {buf_len} (truncated file?)")
            if end - begin != numel * _ITEMSIZE[dtype]:
                raise self._fail(f"tensor '{name}': {end - begin} bytes for {dtype} {shape}")
            entries[name] = SafetensorsEntry(name, dtype, tuple(shape), base + begin, end - begin)
            spans.append((begin, end, name))
        spans.sort()
        for (b1, e1, a), (b2, _, b) in zip(spans, spans[1:]):
            if e1 > b2:
                raise self._fail(f"tensors '{a}' and '{b}' overlap")
        return entries

    def dtype_of(self, name: str) -> str | None:
        """The lmpack source dtype of a tensor (f32/f16/bf16), or None for any other type."""
        return _DTYPES.get(self.entries[name].dtype, (None,))[0]

    def source_dtype(self, name: str) -> str:
        dtype = self.dtype_of(name)
        if dtype is None:
            raise self._fail(f"tensor '{name}' has dtype {self.entries[name].dtype}; only F32, F16 and BF16 are supported")
        return dtype

    def load(self, name: str) -> np.ndarray:
        """A read-only view of one tensor (bf16 as uint16 bits)."""
        e = self.entries[name]
        self.source_dtype(name)
        np_dtype = _DTYPES[e.dtype][1]
        if e.nbytes == 0:
            return np.zeros(e.shape, np_dtype)
        if e.begin % np_dtype.itemsize:
            # Unpadded headers (some writers) leave data unaligned: copy rather than fault.
            return np.frombuffer(self._map[e.begin:e.begin + e.nbytes], np_dtype).reshape(e.shape)
        return np.frombuffer(self._map, np_dtype, e.nbytes // np_dtype.itemsize, e.begin).reshape(e.shape)

    def release(self, name: str) -> None:
        """Drop a loaded tensor's pages from this process (they stay in the OS page cache)."""
        e = self.entries[name]
        drop_pages(self._map, e.begin, e.nbytes)

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                pass
        self._file.close() if getattr(self, "_file", None) else None
