"""Reading and writing GGUF files (llama.cpp's container), bounded and streamed.

The format's own library, gguf-py (`pip install 'lmpack[gguf]'`), provides the constants (value
and tensor types, block sizes, key names) and writes the header; lmpack adds what it needs on
top. `GgufWriter` writes the header, metadata and tensor directory with `gguf.GGUFWriter`, then
streams each tensor's bytes from chunks into a temporary file that is renamed into place only
when complete, like `LmpWriter`. `GgufFile` is a reader for files from strangers: every count,
string length, dimension, type and offset is checked against the file's size before it is used
(gguf-py's own reader trusts them), so a truncated or lying file fails with one line naming what
was wrong instead of allocating or reading out of bounds.
"""
from __future__ import annotations

import mmap
import os
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

import numpy as np

from lmpack.errors import LmpackError
from lmpack.formats.mmaps import drop_pages, open_readonly

MAX_DIMS = 4           # GGML_MAX_DIMS
MAX_NAME = 256         # llama.cpp itself caps tensor names at 63 bytes
MAX_ARRAY_DEPTH = 2    # arrays of arrays exist (rarely); deeper nesting is refused
MAX_ALIGNMENT = 1 << 16


def gguf_module():
    """gguf-py, or an LmpackError saying how to install it."""
    try:
        import gguf
    except ImportError:
        raise LmpackError("GGUF support needs the gguf package (llama.cpp's gguf-py): "
                          "pip install 'lmpack[gguf]'") from None
    return gguf


def tensor_nbytes(ggml_type: int, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor of this ggml type and numpy-order shape (the last dimension is the row)."""
    gguf = gguf_module()
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
    numel = 1
    for d in shape:
        numel *= d
    return numel // block * size


def align_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


# --------------------------------------------------------------------------------------------
# Reading


class GgufTensor(NamedTuple):
    name: str
    ggml_type: int
    shape: tuple[int, ...]   # numpy order: GGUF's ne reversed, rows last-but-one
    offset: int              # absolute, from the start of the file
    nbytes: int

    @property
    def type_name(self) -> str:
        return gguf_module().GGMLQuantizationType(self.ggml_type).name


class GgufFile:
    """A validated, read-only, memory-mapped GGUF file (v2 or v3, little-endian).

    `metadata` maps each key to (GGUFValueType, value): numbers as Python numbers, strings as
    str, arrays as lists (numeric arrays as numpy arrays)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._gguf = gguf_module()
        self._file, size = open_readonly(self.path)
        self.buffer = None
        try:
            if size < 24:
                raise self._fail(f"not a GGUF file (only {size} bytes)")
            self.buffer = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            self._size = size
            self._parse()
        except BaseException:
            self.close()
            raise

    def _fail(self, what: str) -> LmpackError:
        return LmpackError(f"{self.path}: {what}")

    # -- bounded primitive reads
    def _take(self, n: int, what: str) -> int:
        pos = self._pos
        if n < 0 or n > self._size - pos:
            raise self._fail(f"truncated or corrupt: {what} runs past the end of the file (at byte {pos})")
        self._pos = pos + n
        return pos

    def _unpack(self, fmt: str, what: str):
        s = struct.Struct("<" + fmt)
        return s.unpack_from(self.buffer, self._take(s.size, what))

    def _string(self, what: str, limit: int | None = None) -> str:
        (n,) = self._unpack("Q", f"the length of {what}")
        if limit is not None and n > limit:
            raise self._fail(f"{what} is {n} bytes long (at most {limit} allowed)")
        at = self._take(n, what)
        try:
            return bytes(self.buffer[at:at + n]).decode("utf-8")
        except UnicodeDecodeError:
            raise self._fail(f"{what} is not valid UTF-8") from None

    def _value(self, vtype: int, what: str, depth: int = 0) -> Any:
        T = self._gguf.GGUFValueType
        scalar = {T.UINT8: "B", T.INT8: "b", T.UINT16: "H", T.INT16: "h", T.UINT32: "I", T.INT32: "i",
                  T.FLOAT32: "f", T.UINT64: "Q", T.INT64: "q", T.FLOAT64: "d", T.BOOL: "B"}
        if vtype in scalar:
            (v,) = self._unpack(scalar[vtype], what)
            if vtype == T.BOOL:
                if v > 1:
                    raise self._fail(f"{what}: boolean byte {v} is neither 0 nor 1")
                return bool(v)
            return v
        if vtype == T.STRING:
            return self._string(what)
        if vtype == T.ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                raise self._fail(f"{what}: arrays nested more than {MAX_ARRAY_DEPTH} deep")
            etype, count = self._unpack("IQ", f"the array header of {what}")
            if etype in scalar:
                fmt = scalar[etype]
                itemsize = struct.calcsize(fmt)
                if count > (self._size - self._pos) // itemsize:
                    raise self._fail(f"{what}: array of {count} elements runs past the end of the file")
                at = self._take(count * itemsize, what)
                arr = np.frombuffer(self.buffer, np.dtype("<" + ("?" if etype == T.BOOL else fmt)), count, at)
                return arr.copy()
            if etype not in (T.STRING, T.ARRAY):
                raise self._fail(f"{what}: unknown array element type {etype}")
            # every string or array element takes at least 8 bytes: refuse a lying count up front
            if count > (self._size - self._pos) // 8:
                raise self._fail(f"{what}: array of {count} elements runs past the end of the file")
            return [self._value(etype, what, depth + 1) for _ in range(count)]
        raise self._fail(f"{what}: unknown value type {vtype}")

    # -- the file, in order
    def _parse(self) -> None:
        gguf = self._gguf
        self._pos = 0
        magic, version = self._unpack("II", "the header")
        if magic != gguf.GGUF_MAGIC:
            raise self._fail("not a GGUF file (bad magic)")
        if version not in (2, 3):
            if struct.unpack("<I", struct.pack(">I", version))[0] in (2, 3):
                raise self._fail("big-endian GGUF files are not supported")
            raise self._fail(f"unsupported GGUF version {version} (lmpack reads versions 2 and 3)")
        self.version = version
        n_tensors, n_kv = self._unpack("QQ", "the header")
        # each key/value takes at least 13 bytes and each tensor entry at least 32
        if n_kv > self._size // 13 or n_tensors > self._size // 32:
            raise self._fail(f"corrupt header: {n_kv} metadata entries and {n_tensors} tensors "
                             f"cannot fit in {self._size} bytes")
        self.metadata: dict[str, tuple[int, Any]] = {}
        for i in range(n_kv):
            key = self._string(f"metadata key {i}", MAX_NAME)
            if key in self.metadata:
                raise self._fail(f"metadata key '{key}' appears twice")
            (vtype,) = self._unpack("I", f"the type of '{key}'")
            self.metadata[key] = (vtype, self._value(vtype, f"metadata '{key}'"))

        alignment = self.get("general.alignment", int, gguf.GGUF_DEFAULT_ALIGNMENT)
        if not 0 < alignment <= MAX_ALIGNMENT or alignment & (alignment - 1):
            raise self._fail(f"general.alignment {alignment} is not a power of two up to {MAX_ALIGNMENT}")
        self.alignment = alignment

        entries = []
        for i in range(n_tensors):
            name = self._string(f"the name of tensor {i}", MAX_NAME)
            (n_dims,) = self._unpack("I", f"tensor '{name}'")
            if not 1 <= n_dims <= MAX_DIMS:
                raise self._fail(f"tensor '{name}' has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
            ne = self._unpack(f"{n_dims}Q", f"tensor '{name}'")
            ggml_type, offset = self._unpack("IQ", f"tensor '{name}'")
            entries.append((name, ne, ggml_type, offset))
        data_start = align_up(self._pos, alignment)
        if data_start > self._size:
            raise self._fail("truncated: the file ends before its data section")
        self.data_start = data_start

        self.tensors: list[GgufTensor] = []
        self._by_name: dict[str, GgufTensor] = {}
        for name, ne, ggml_type, offset in entries:
            t = self._tensor(name, ne, ggml_type, offset)
            if name in self._by_name:
                raise self._fail(f"tensor '{name}' listed twice")
            self._by_name[name] = t
            self.tensors.append(t)
        spans = sorted((t.offset, t.nbytes, t.name) for t in self.tensors)
        for (o1, n1, a), (o2, _, b) in zip(spans, spans[1:]):
            if o1 + n1 > o2:
                raise self._fail(f"tensors '{a}' and '{b}' overlap")

    def _tensor(self, name: str, ne: tuple[int, ...], ggml_type: int, offset: int) -> GgufTensor:
        gguf = self._gguf
        try:
            qtype = gguf.GGMLQuantizationType(ggml_type)
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise self._fail(f"tensor '{name}' has unknown ggml type {ggml_type}") from None
        numel = 1
        for d in ne:
            if not 0 < d <= self._size * 8:  # no tensor type packs more than 8 elements in a byte
                raise self._fail(f"tensor '{name}' has a bad dimension {d}")
            numel *= d
        if ne[0] % block:
            raise self._fail(f"tensor '{name}': {qtype.name} rows must be a multiple of {block}, got {ne[0]}")
        nbytes = numel // block * type_size
        if offset % self.alignment:
            raise self._fail(f"tensor '{name}' offset {offset} is not {self.alignment}-byte aligned")
        if offset > self._size or nbytes > self._size - self.data_start - offset:
            raise self._fail(f"tensor '{name}' lies outside the file (offset {offset}, {nbytes} bytes); "
                             f"the file is truncated or corrupt")
        return GgufTensor(name, ggml_type, tuple(reversed(ne)), self.data_start + offset, nbytes)

    # -- access
    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        """A metadata value checked to be of `kind` (int, float, str, bool, list or np.ndarray)."""
        if key not in self.metadata:
            if default is ...:
                raise self._fail(f"metadata '{key}' is missing")
            return default
        value = self.metadata[key][1]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        ok = False
        for k in kinds:
            if k is int:
                ok |= isinstance(value, int) and not isinstance(value, bool)
            elif k is float:
                ok |= isinstance(value, (int, float)) and not isinstance(value, bool)
            else:
                ok |= isinstance(value, k)
        if not ok:
            raise self._fail(f"metadata '{key}' has the wrong type ({type(value).__name__})")
        return value

    def tensor_info(self, name: str) -> GgufTensor:
        try:
            return self._by_name[name]
        except KeyError:
            raise self._fail(f"no tensor named '{name}'") from None

    def raw(self, name: str) -> np.ndarray:
        """A tensor's stored bytes as a read-only uint8 view."""
        t = self.tensor_info(name)
        return np.frombuffer(self.buffer, np.uint8, t.nbytes, t.offset)

    def release(self, name: str) -> None:
        t = self.tensor_info(name)
        drop_pages(self.buffer, t.offset, t.nbytes)

    def close(self) -> None:
        if self.buffer is not None:
            try:
                self.buffer.close()
            except BufferError:
                pass  # numpy views still use the map; it is unmapped when they are gone
            self.buffer = None
        if getattr(self, "_file", None) is not None:
            self._file.close()

    def __enter__(self) -> "GgufFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# Writing


class GgufWriter:
    """Writes one GGUF file; use as a context manager, then `write_tensor` each planned tensor.

    `metadata` is called with the `gguf.GGUFWriter` to add the key/values (with its typed
    `add_*` methods); `tensors` plans (name, numpy-order shape, ggml type) in file order."""

    def __init__(self, path: str | os.PathLike, arch: str, metadata: Callable[[Any], None],
                 tensors: Iterable[tuple[str, tuple[int, ...], int]]):
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise LmpackError(f"{self.path}: output folder {self.path.parent} does not exist")
        if self.path.is_dir():
            raise LmpackError(f"{self.path}: is a folder, expected a file path")
        self._gguf = gguf_module()
        self.arch = arch
        self._metadata = metadata
        self.plan = [(name, tuple(int(d) for d in shape), int(t), tensor_nbytes(t, shape)) for name, shape, t in tensors]
        self.total_bytes = sum(p[3] for p in self.plan)
        self._next = 0
        self._tmp: Path | None = None
        self._f = None
        self._out = None

    def __enter__(self) -> "GgufWriter":
        from lmpack.formats.lmp import _BackgroundWriter

        gguf = self._gguf
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        try:
            self._start(gguf, _BackgroundWriter)
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def _start(self, gguf, background) -> None:
        w = gguf.GGUFWriter(self._tmp, self.arch)
        self._metadata(w)
        for name, shape, t, nbytes in self.plan:
            # the shape is given in elements (not the byte shape), so any non-uint8 dtype will do
            w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=gguf.GGMLQuantizationType(t))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        self.alignment = w.data_alignment
        self._f = w.fout[0]  # the header is written; the data section is streamed below
        w.fout = None
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self._f.fileno(), 0o666 & ~umask)
        self._out = background(self._f)
        self._pad()

    def _pad(self) -> None:
        pos = self._out.pos
        self._out.write(bytes(align_up(pos, self.alignment) - pos))

    def write_tensor(self, name: str, chunks: Iterable[Any], progress: Callable[[int], None] | None = None,
                     on_written: Callable[[], None] | None = None) -> None:
        """Write the next planned tensor from byte chunks, in plan order."""
        if self._next >= len(self.plan) or self.plan[self._next][0] != name:
            raise LmpackError(f"internal: tensor '{name}' written out of order")
        nbytes = self.plan[self._next][3]
        written = 0
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            written += len(view)
            if written > nbytes:
                raise LmpackError(f"internal: tensor '{name}' got more than its {nbytes} bytes")
            self._out.write(view)
            if progress:
                progress(len(view))
        if written != nbytes:
            raise LmpackError(f"internal: tensor '{name}' got {written} bytes, expected {nbytes}")
        if on_written is not None:
            self._out.then(on_written)
        self._next += 1
        if self._next < len(self.plan):
            self._pad()

    def __exit__(self, exc_type, exc, tb) -> None:
        from lmpack.formats.lmp import _fsync_dir

        try:
            if exc_type is None:
                if self._next != len(self.plan):
                    raise LmpackError(f"internal: only {self._next} of {len(self.plan)} tensors written")
                self._out.close()
                self._f.flush()
                os.fsync(self._f.fileno())
                self._f.close()
                os.replace(self._tmp, self.path)
                _fsync_dir(self.path.parent)
        finally:
            if self._out is not None:
                try:
                    self._out.close()
                except BaseException:  # noqa: BLE001 - the original error wins
                    pass
            if self._f is not None and not self._f.closed:
                self._f.close()
            if self._tmp is not None and self._tmp.exists():
                self._tmp.unlink()
