"""Read PyTorch zip checkpoints (`torch.save` >= 1.6) lazily, without torch and without running code.

A torch file is a zip archive holding one pickle (`<prefix>/data.pkl`) that describes the saved
object, and one raw, uncompressed record per storage (`<prefix>/data/<key>`). `TorchFile` parses
the zip directory itself, validates every offset against the file, and unpickles `data.pkl` with
an unpickler that admits only the handful of globals a tensor state dict needs; anything else
(`os.system`, `builtins.eval`, ...) raises UnsafePickleError before it can be called. Tensors come
out as `TorchTensor` handles whose `array()` is a read-only numpy view over the memory-mapped
record, so opening a 100 GB checkpoint costs only its directory and pickle.
"""
from __future__ import annotations

import io
import mmap
import os
import pickle
import pickletools
import struct
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lmpack.errors import LmpackError, UnsafePickleError, brief
from lmpack.formats.mmaps import drop_pages, open_regular_fd

# torch storage class -> (our dtype name, numpy dtype). bf16 travels as uint16 bits (numpy has
# no bfloat16). Storage classes outside this map are still admitted so the error can say which
# dtype is unsupported instead of calling the file unsafe.
STORAGE_DTYPES: dict[str, tuple[str, np.dtype]] = {
    "FloatStorage": ("f32", np.dtype("<f4")),
    "HalfStorage": ("f16", np.dtype("<f2")),
    "BFloat16Storage": ("bf16", np.dtype("<u2")),
    "DoubleStorage": ("f64", np.dtype("<f8")),
    "LongStorage": ("i64", np.dtype("<i8")),
    "IntStorage": ("i32", np.dtype("<i4")),
    "ShortStorage": ("i16", np.dtype("<i2")),
    "CharStorage": ("i8", np.dtype("i1")),
    "ByteStorage": ("u8", np.dtype("u1")),
    "BoolStorage": ("bool", np.dtype("?")),
}
OTHER_STORAGES = (
    "ComplexFloatStorage", "ComplexDoubleStorage", "QInt8Storage", "QUInt8Storage", "QInt32Storage",
    "QUInt4x2Storage", "QUInt2x4Storage", "UntypedStorage", "Float8_e4m3fnStorage", "Float8_e5m2Storage",
)
TORCH_DTYPES = {
    "float32": "f32", "float16": "f16", "bfloat16": "bf16", "float64": "f64", "int64": "i64",
    "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "bool",
}
FLOAT_DTYPES = ("f32", "f16", "bf16")

MAX_PICKLE_BYTES = 256 << 20  # a 70B state dict's data.pkl is ~100 KB
MAX_NUMEL = 1 << 48
# Opcodes that reach objects without going through find_class: the copyreg extension cache can
# hand back whatever another library registered, so a tensor pickle has no business using them.
FORBIDDEN_OPCODES = {"EXT1", "EXT2", "EXT4"}

_LEGACY_HINT = ("re-save it with torch.save(obj, path, _use_new_zipfile_serialization=True) "
                "or convert it to safetensors")


# ----------------------------------------------------------------------------------------------
# Zip directory


@dataclass(frozen=True)
class ZipMember:
    name: str
    offset: int  # absolute offset of the member's bytes in the file
    size: int  # stored (compressed) size
    file_size: int  # uncompressed size
    method: int  # 0 = stored
    crc: int


_EOCD = struct.Struct("<IHHHHIIH")
_EOCD64_LOC = struct.Struct("<IIQI")
_EOCD64 = struct.Struct("<IQHHIIQQQQ")
_CDIR = struct.Struct("<IHHHHHHIIIHHHHHII")
_LOCAL = struct.Struct("<IHHHHHIIIHH")


def _zip64_extra(extra: bytes, need: list[str], where: str) -> dict[str, int]:
    """Values of the zip64 extended-information field (id 1) for the fields that overflowed."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4: pos + 4 + size]
        if len(body) != size:
            break
        if tag == 1:
            out = {}
            for i, key in enumerate(need):
                if key == "disk":
                    continue
                if 8 * i + 8 > size:
                    raise LmpackError(f"{where}: zip64 extra field too short")
                out[key] = struct.unpack_from("<Q", body, 8 * i)[0]
            return out
        pos += 4 + size
    raise LmpackError(f"{where}: zip64 sizes announced but no zip64 extra field")


def read_zip_directory(buf: Any, where: str) -> dict[str, ZipMember]:
    """Parse the central directory of the zip in `buf` (bytes-like) and locate every member's data.

    Only what a torch archive needs: single disk, no encryption, zip64 for big files. Every
    offset and size is checked against the buffer before it is used.
    """
    n = len(buf)
    if n < _EOCD.size:
        raise LmpackError(f"{where}: too small to be a zip archive ({n} bytes)")
    tail_start = max(0, n - _EOCD.size - 0xFFFF)
    tail = bytes(buf[tail_start:n])
    pos = tail.rfind(b"PK\x05\x06")
    while pos >= 0 and pos + _EOCD.size > len(tail):
        pos = tail.rfind(b"PK\x05\x06", 0, pos)
    if pos < 0:
        raise LmpackError(f"{where}: no zip end-of-central-directory record (truncated or not a zip)")
    eocd_at = tail_start + pos
    _, disk, cd_disk, _, count, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, pos)
    if count == 0xFFFF or cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF:
        loc_at = eocd_at - _EOCD64_LOC.size
        if loc_at < 0:
            raise LmpackError(f"{where}: zip64 archive without a zip64 locator")
        sig, _, eocd64_at, _ = _EOCD64_LOC.unpack_from(buf, loc_at)
        if sig != 0x07064B50 or eocd64_at + _EOCD64.size > loc_at:
            raise LmpackError(f"{where}: bad zip64 end-of-central-directory locator")
        sig, _, _, _, disk, cd_disk, _, count, cd_size, cd_offset = _EOCD64.unpack_from(buf, eocd64_at)
        if sig != 0x06064B50:
            raise LmpackError(f"{where}: bad zip64 end-of-central-directory record")
    if disk != 0 or cd_disk != 0:
        raise LmpackError(f"{where}: multi-disk zip archives are not supported")
    if cd_offset + cd_size > eocd_at or count * _CDIR.size > cd_size:
        raise LmpackError(f"{where}: zip central directory out of bounds")

    members: dict[str, ZipMember] = {}
    pos = cd_offset
    end = cd_offset + cd_size
    for _ in range(count):
        if pos + _CDIR.size > end:
            raise LmpackError(f"{where}: zip central directory truncated")
        (sig, _, _, flags, method, _, _, crc, csize, usize, name_len, extra_len, comment_len,
         disk_start, _, _, local_at) = _CDIR.unpack_from(buf, pos)
        if sig != 0x02014B50:
            raise LmpackError(f"{where}: bad zip central directory entry at byte {pos}")
        name_at = pos + _CDIR.size
        rec_end = name_at + name_len + extra_len + comment_len
        if rec_end > end:
            raise LmpackError(f"{where}: zip central directory entry overruns the directory")
        raw_name = bytes(buf[name_at:name_at + name_len])
        name = raw_name.decode("utf-8", errors="replace")
        need = [k for k, v in (("file_size", usize), ("size", csize), ("local", local_at), ("disk", disk_start))
                if v == (0xFFFF if k == "disk" else 0xFFFFFFFF)]
        if need:
            big = _zip64_extra(bytes(buf[name_at + name_len:name_at + name_len + extra_len]), need, f"{where}: {name}")
            usize, csize, local_at = big.get("file_size", usize), big.get("size", csize), big.get("local", local_at)
        if flags & 1:
            raise LmpackError(f"{where}: zip member '{name}' is encrypted")
        if local_at + _LOCAL.size > cd_offset:
            raise LmpackError(f"{where}: zip member '{name}' has its local header out of bounds")
        lsig, _, _, _, _, _, _, _, _, lname_len, lextra_len = _LOCAL.unpack_from(buf, local_at)
        if lsig != 0x04034B50:
            raise LmpackError(f"{where}: zip member '{name}' has a bad local header")
        data_at = local_at + _LOCAL.size + lname_len + lextra_len
        if bytes(buf[local_at + _LOCAL.size:local_at + _LOCAL.size + lname_len]) != raw_name:
            raise LmpackError(f"{where}: zip member '{name}' has a different name in its local header")
        if data_at + csize > cd_offset:
            raise LmpackError(f"{where}: zip member '{name}' extends past the archive data ({csize} bytes at {data_at})")
        if method == 0 and csize != usize:
            raise LmpackError(f"{where}: stored zip member '{name}' has mismatched sizes")
        if name in members:
            raise LmpackError(f"{where}: zip member '{name}' appears twice")
        members[name] = ZipMember(name, data_at, csize, usize, method, crc)
        pos = rec_end
    return members


# ----------------------------------------------------------------------------------------------
# Restricted unpickling


class _Sealed:
    """Base of every object the unpickler hands out: no __dict__, and BUILD cannot mutate it."""

    __slots__ = ()

    def __setstate__(self, state):
        raise UnsafePickleError(f"pickle tried to set state on {self!r}")

    def __reduce__(self):
        raise TypeError(f"{type(self).__name__} cannot be pickled")


class StorageType(_Sealed):
    """A `torch.*Storage` class named by the pickle: only its element type matters here."""

    __slots__ = ("name", "dtype", "np_dtype")

    def __init__(self, name: str):
        self.name = name
        self.dtype, self.np_dtype = STORAGE_DTYPES.get(name, (None, None))

    def __repr__(self):
        return f"torch.{self.name}"


class _Marker(_Sealed):
    """A harmless stand-in for a torch global that is only ever compared, never called."""

    __slots__ = ("name", "value")

    def __init__(self, name: str, value: Any = None):
        self.name = name
        self.value = value

    def __repr__(self):
        return self.name


class _Call(_Sealed):
    """An admitted callable global: a fresh wrapper per unpickler, so a pickle cannot touch the function."""

    __slots__ = ("name", "fn")

    def __init__(self, name: str, fn: Callable):
        self.name = name
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)

    def __repr__(self):
        return self.name


class Storage(_Sealed):
    """One `data/<key>` record of the archive, typed by its storage class."""

    __slots__ = ("archive", "key", "type", "numel", "member")

    def __init__(self, archive: "TorchFile", key: str, stype: StorageType, numel: int, member: ZipMember):
        self.archive = archive
        self.key = key
        self.type = stype
        self.numel = numel
        self.member = member

    def __repr__(self):
        return f"Storage({self.key!r}, {self.type!r}, numel={self.numel})"


class TorchTensor(_Sealed):
    """A tensor in a torch file: where its elements live, without reading them."""

    __slots__ = ("storage", "offset", "shape", "stride")

    def __init__(self, storage: Storage, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]):
        self.storage = storage
        self.offset = offset
        self.shape = shape
        self.stride = stride

    @property
    def dtype(self) -> str | None:
        """'f32', 'f16', 'bf16', 'f64', 'i64', ... or None for a storage type numpy cannot view."""
        return self.storage.type.dtype

    @property
    def storage_type(self) -> str:
        return self.storage.type.name

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def is_contiguous(self) -> bool:
        expect = 1
        for d, s in zip(reversed(self.shape), reversed(self.stride)):
            if d != 1 and s != expect:
                return False
            expect *= d
        return True

    def array(self) -> np.ndarray:
        """The values as a read-only numpy view over the mapped file (bf16 as uint16 bits).

        The view honours the stride, so it may be non-contiguous (a saved transpose, say); callers
        that need C order copy it with np.ascontiguousarray."""
        st = self.storage
        if st.type.np_dtype is None:
            raise LmpackError(f"{st.archive.path}: storage '{st.key}' has dtype torch.{st.type.name}, which lmpack does not read")
        if st.member.method != 0:
            raise LmpackError(f"{st.archive.path}: record '{st.member.name}' is compressed; torch writes records "
                              f"uncompressed, so re-save the checkpoint with torch.save")
        item = st.type.np_dtype.itemsize
        return np.ndarray(self.shape, dtype=st.type.np_dtype, buffer=st.archive._buffer(),
                          offset=st.member.offset + self.offset * item,
                          strides=tuple(s * item for s in self.stride))

    def release(self) -> None:
        """Drop this tensor's pages from the process (they stay in the OS page cache), so a pass
        over a large checkpoint keeps resident memory at about one tensor."""
        st = self.storage
        if st.type.np_dtype is None or not self.numel or st.archive._mm is None:
            return
        item = st.type.np_dtype.itemsize
        span = 1 + sum((d - 1) * s for d, s in zip(self.shape, self.stride))
        drop_pages(st.archive._mm, st.member.offset + self.offset * item, span * item)

    def __repr__(self):
        return f"TorchTensor({self.dtype or self.storage_type}, shape={list(self.shape)}, storage={self.storage.key!r})"


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 63:
        raise LmpackError(f"{what} must be a non-negative integer below 2^63, got {brief(value)}")
    return value


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or len(value) > 16:
        raise LmpackError(f"{what} must be a tuple of at most 16 integers, got {brief(value)}")
    return tuple(_int(v, what) for v in value)


def _empty_ordered_dict(*args: Any) -> OrderedDict:
    """`collections.OrderedDict()` as torch pickles it: empty, filled by SETITEMS afterwards. A
    copy of an argument would let a pickle copy one big memoized dict again and again."""
    if args:
        raise LmpackError("OrderedDict called with arguments (a state dict is pickled empty, then filled)")
    return OrderedDict()


def _empty_hooks(value: Any, what: str) -> None:
    if value is not None and not (isinstance(value, dict) and not value):
        raise LmpackError(f"{what}: tensors with backward hooks or extra state are not supported")


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits exactly the globals `torch.save` emits for a state dict; refuses everything else."""

    def __init__(self, data: bytes, archive: "TorchFile"):
        super().__init__(io.BytesIO(data))
        self.archive = archive
        self.storages: dict[str, Storage] = {}
        self.rebuild_v2 = _Call("torch._utils._rebuild_tensor_v2", self._rebuild_tensor_v2)
        self.allowed: dict[tuple[str, str], Callable[[], Any]] = {
            ("collections", "OrderedDict"): lambda: _Call("collections.OrderedDict", _empty_ordered_dict),
            ("torch._utils", "_rebuild_tensor_v2"): lambda: self.rebuild_v2,
            ("torch._utils", "_rebuild_parameter"): lambda: _Call("torch._utils._rebuild_parameter", self._rebuild_parameter),
            ("torch._tensor", "_rebuild_from_type_v2"): lambda: _Call("torch._tensor._rebuild_from_type_v2", self._rebuild_from_type_v2),
            ("torch", "Size"): lambda: _Call("torch.Size", lambda t=(): _int_tuple(t, "torch.Size")),
            ("torch", "Tensor"): lambda: _Marker("torch.Tensor"),
            ("torch.nn.parameter", "Parameter"): lambda: _Marker("torch.nn.parameter.Parameter"),
        }

    def find_class(self, module: str, name: str) -> Any:
        make = self.allowed.get((module, name))
        if make is not None:
            return make()
        if module == "torch" and (name in STORAGE_DTYPES or name in OTHER_STORAGES):
            return StorageType(name)
        if module == "torch" and name in TORCH_DTYPES:
            return _Marker(f"torch.{name}", TORCH_DTYPES[name])
        raise UnsafePickleError(f"{self.archive.path}: refusing pickle global {module}.{name}")

    def persistent_load(self, pid: Any) -> Storage:
        where = f"{self.archive.path}: storage reference"
        if not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage":
            raise LmpackError(f"{where} {brief(pid)} is not ('storage', type, key, location, numel)")
        _, stype, key, location, numel = pid
        if not isinstance(stype, StorageType):
            raise LmpackError(f"{where} names {brief(stype, 60)} instead of a torch storage type")
        if not isinstance(key, str) or not isinstance(location, str):
            raise LmpackError(f"{where} has a non-string key or location")
        numel = _int(numel, f"{where} '{key}' element count")
        have = self.storages.get(key)
        if have is not None:
            if have.type.name != stype.name or have.numel != numel:
                raise LmpackError(f"{where} '{key}' is used as both {have.type!r} and {stype!r}")
            return have
        member = self.archive.members.get(self.archive.prefix + "data/" + key)
        if member is None:
            raise LmpackError(f"{self.archive.path}: storage '{key}' has no record {self.archive.prefix}data/{key}")
        if stype.np_dtype is not None and numel * stype.np_dtype.itemsize > member.file_size:
            raise LmpackError(f"{self.archive.path}: storage '{key}' claims {numel} x {stype.dtype} elements "
                              f"but its record holds {member.file_size} bytes")
        storage = Storage(self.archive, key, stype, numel, member)
        self.storages[key] = storage
        return storage

    def _rebuild_tensor_v2(self, storage, storage_offset, size, stride, requires_grad=False, hooks=None, metadata=None, *rest):
        where = f"{self.archive.path}: tensor"
        if rest:
            raise LmpackError(f"{where} rebuild has {6 + len(rest)} arguments, expected at most 7")
        if not isinstance(storage, Storage):
            raise LmpackError(f"{where} is not backed by a storage record")
        offset = _int(storage_offset, f"{where} storage offset")
        shape = _int_tuple(size, f"{where} size")
        strides = _int_tuple(stride, f"{where} stride")
        if len(shape) != len(strides):
            raise LmpackError(f"{where} has {len(shape)} dims but {len(strides)} strides")
        if not isinstance(requires_grad, bool):
            raise LmpackError(f"{where} requires_grad must be a bool")
        _empty_hooks(hooks, where)
        if metadata is not None and not isinstance(metadata, dict):
            raise LmpackError(f"{where} metadata must be a dict")
        numel = 1
        for d in shape:
            numel *= d
        if numel > MAX_NUMEL:
            raise LmpackError(f"{where} of shape {list(shape)} is too large")
        if offset > storage.numel:
            raise LmpackError(f"{where} starts at element {offset}, past its storage '{storage.key}' ({storage.numel} elements)")
        if numel:
            last = offset + sum((d - 1) * s for d, s in zip(shape, strides))
            if last >= storage.numel:
                raise LmpackError(f"{where} of shape {list(shape)} at offset {offset} with stride {list(strides)} "
                                  f"reads past its storage '{storage.key}' ({storage.numel} elements)")
        return TorchTensor(storage, offset, shape, strides)

    def _rebuild_parameter(self, data, requires_grad=False, hooks=None, *rest):
        if rest or not isinstance(data, TorchTensor):
            raise LmpackError(f"{self.archive.path}: a parameter does not wrap a plain tensor")
        _empty_hooks(hooks, f"{self.archive.path}: parameter")
        return data

    def _rebuild_from_type_v2(self, func, new_type, args, state, *rest):
        # torch routes tensors with Python attributes or subclasses through here; a state dict
        # only ever has plain Tensor/Parameter with no state, and anything else is refused.
        if rest or func is not self.rebuild_v2:
            raise UnsafePickleError(f"{self.archive.path}: _rebuild_from_type_v2 with function {brief(func, 60)}")
        if not isinstance(new_type, _Marker) or new_type.name not in ("torch.Tensor", "torch.nn.parameter.Parameter"):
            raise UnsafePickleError(f"{self.archive.path}: _rebuild_from_type_v2 with type {brief(new_type, 60)}")
        if not isinstance(args, tuple) or len(args) > 7:
            raise LmpackError(f"{self.archive.path}: _rebuild_from_type_v2 arguments must be a tuple of at most 7")
        _empty_hooks(state, f"{self.archive.path}: tensor state")
        return func(*args)


class _Shape:
    """What the opcode scan knows of one value on the pickle stack or in its memo: its kind, and
    for a tuple its length. Values are shared through the memo exactly as the real ones are."""

    __slots__ = ("kind", "size")

    def __init__(self, kind: str, size: int = 0):
        self.kind = kind  # "scalar", "tuple", "list", "dict", "global", "object", "mark"
        self.size = size


_MARK = _Shape("mark")
# Opcodes a torch state dict never needs: object construction outside REDUCE, sets (their elements
# are hashed: a tuple DAG of depth 40 costs 2^40), out-of-band buffers, text persistent ids.
_REFUSED_OPCODES = FORBIDDEN_OPCODES | {"NEWOBJ", "NEWOBJ_EX", "OBJ", "INST", "EMPTY_SET", "ADDITEMS", "FROZENSET",
                                        "NEXT_BUFFER", "READONLY_BUFFER", "PERSID"}
MAX_MARK_DEPTH = 64
MAX_LONG_BYTES = 16  # no integer in a state dict is wider than 64 bits; big ones cost big arithmetic


def pickle_budget(n_records: int) -> tuple[int, int]:
    """(bytes, opcodes) that the pickle of an archive with `n_records` storage records may use:
    a real state dict takes ~150 bytes and ~40 opcodes per tensor, and tensors <= records."""
    n = max(0, n_records)
    return min(MAX_PICKLE_BYTES, (1 << 20) + (16 << 10) * n), 250_000 + 1000 * n


def _scan_opcodes(data: bytes, where: str, max_ops: int | None = None) -> None:
    """Walk the pickle's opcodes without executing them, following the shape of every value, and
    refuse what a state dict never holds before the C unpickler does any work: forbidden opcodes,
    calls other than REDUCE with a short argument tuple, dict keys that are not plain scalars
    (hashing a shared tuple DAG takes exponential time), persistent ids that are not 5-tuples,
    integers wider than 64 bits, more than `max_ops` opcodes or deeply nested marks. Length fields
    that promise more bytes than exist are caught here too, before anything is allocated."""
    def bad(what: str) -> LmpackError:
        return UnsafePickleError(f"{where}: {what}")

    stack: list[_Shape] = []
    memo: dict[int, _Shape] = {}
    marks = 0

    def pop_mark() -> list[_Shape]:
        nonlocal marks
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is _MARK:
                items = stack[i + 1:]
                del stack[i:]
                marks -= 1
                return items
        raise bad("MARK expected on the stack")

    def pop(n: int = 1) -> list[_Shape]:
        at = len(stack) - n
        items = stack[at:]
        if at < 0 or _MARK in items:  # _Shape has no __eq__: `in` compares identity, in C
            raise bad("pickle stack underflow")
        del stack[at:]
        return items

    def keys_ok(items: list[_Shape]) -> None:
        if len(items) % 2 or any(k.kind != "scalar" for k in items[0::2]):
            raise bad("a dict key that is not a string or number (a state dict has plain keys)")

    try:
        for n_ops, (op, arg, _) in enumerate(pickletools.genops(data)):
            name = op.name
            if max_ops is not None and n_ops >= max_ops:
                raise bad(f"more than {max_ops} pickle opcodes (more than a state dict of this archive needs)")
            if name in _REFUSED_OPCODES:
                raise bad(f"refusing pickle opcode {name}")
            if name == "MARK":
                marks += 1
                if marks > MAX_MARK_DEPTH:
                    raise bad(f"pickle nests more than {MAX_MARK_DEPTH} levels")
                stack.append(_MARK)
            elif name == "EMPTY_TUPLE":
                stack.append(_Shape("tuple", 0))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                stack.append(_Shape("tuple", len(pop(int(name[-1])))))
            elif name == "TUPLE":
                stack.append(_Shape("tuple", len(pop_mark())))
            elif name == "EMPTY_LIST":
                stack.append(_Shape("list"))
            elif name == "LIST":
                pop_mark()
                stack.append(_Shape("list"))
            elif name == "EMPTY_DICT":
                stack.append(_Shape("dict"))
            elif name == "DICT":
                keys_ok(pop_mark())
                stack.append(_Shape("dict"))
            elif name in ("APPEND", "APPENDS"):
                if name == "APPEND":
                    pop()
                else:
                    pop_mark()
                if not stack or stack[-1].kind != "list":
                    raise bad(f"{name} to something that is not a list")
            elif name in ("SETITEM", "SETITEMS"):
                keys_ok(pop(2) if name == "SETITEM" else pop_mark())
                if not stack or stack[-1].kind not in ("dict", "object"):
                    raise bad(f"{name} on something that is not a dict")
            elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                if not stack or stack[-1] is _MARK:
                    raise bad(f"{name} with nothing to store")
                memo[len(memo) if name == "MEMOIZE" else int(arg)] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                value = memo.get(int(arg))
                if value is None:
                    raise bad(f"{name} of memo entry {int(arg)}, which was never stored")
                stack.append(value)
            elif name == "GLOBAL":
                stack.append(_Shape("global"))
            elif name == "STACK_GLOBAL":
                if any(v.kind != "scalar" for v in pop(2)):
                    raise bad("STACK_GLOBAL with a module or name that is not a string")
                stack.append(_Shape("global"))
            elif name == "REDUCE":
                fn, args = pop(2)
                if fn.kind != "global" or args.kind != "tuple" or args.size > 8:
                    raise bad("REDUCE other than a torch global called with a short argument tuple")
                stack.append(_Shape("object"))
            elif name == "BUILD":
                (state,) = pop()
                if not stack or stack[-1].kind != "object" or state.kind not in ("dict", "scalar"):
                    raise bad("BUILD other than a dict of attributes on a rebuilt object")
            elif name == "BINPERSID":
                (pid,) = pop()
                if pid.kind != "tuple" or pid.size != 5:
                    raise bad("a persistent id that is not a ('storage', type, key, location, numel) tuple")
                stack.append(_Shape("object"))
            elif name in ("LONG1", "LONG4") and isinstance(arg, int) and arg.bit_length() > 8 * MAX_LONG_BYTES:
                raise bad(f"an integer of {arg.bit_length()} bits")
            elif name in ("LONG", "INT") and isinstance(arg, int) and arg.bit_length() > 8 * MAX_LONG_BYTES:
                raise bad(f"an integer of {arg.bit_length()} bits")
            elif name == "POP":
                if stack and stack[-1] is _MARK:
                    pop_mark()
                else:
                    pop()
            elif name == "POP_MARK":
                pop_mark()
            elif name == "DUP":
                if not stack or stack[-1] is _MARK:
                    raise bad("DUP with nothing to duplicate")
                stack.append(stack[-1])
            elif name in ("PROTO", "FRAME", "STOP"):
                pass
            else:  # a scalar: pops what pickletools says, pushes plain values
                if pickletools.markobject in op.stack_before:
                    pop_mark()
                else:
                    pop(len(op.stack_before))
                stack.extend(_Shape("scalar") for _ in op.stack_after)
    except LmpackError:
        raise
    except Exception as e:  # genops raises ValueError and friends on malformed data
        raise LmpackError(f"{where}: malformed pickle ({type(e).__name__}: {brief(str(e), 200)})") from None


# ----------------------------------------------------------------------------------------------
# The file


class TorchFile:
    """A `torch.save` zip archive, opened lazily: `obj` is the unpickled object with TorchTensor leaves."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._mm: mmap.mmap | None = None
        if self.path.is_dir():
            raise LmpackError(f"{self.path}: is a folder, not a torch checkpoint file")
        fd = open_regular_fd(self.path)
        try:
            size = os.fstat(fd).st_size
            head = os.pread(fd, 8, 0)
            if not head.startswith(b"PK"):
                raise LmpackError(self._not_zip_message(head, size))
            self._mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        except OSError as e:
            raise LmpackError(f"{self.path}: cannot map ({e.strerror})") from None
        finally:
            os.close(fd)
        try:
            self.members = read_zip_directory(self._mm, str(self.path))
            self.prefix = self._find_prefix()
            self._check_byteorder()
            self.obj = self._unpickle()
        except BaseException:
            self.close()
            raise

    def _not_zip_message(self, head: bytes, size: int) -> str:
        if size == 0:
            return f"{self.path}: empty file"
        if head[:1] == b"\x80" or (size > 262 and self._is_tar()):
            return f"{self.path}: legacy (pre-1.6, non-zip) PyTorch file; {_LEGACY_HINT}"
        return f"{self.path}: not a PyTorch zip checkpoint (no zip signature)"

    def _is_tar(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(257)
            return f.read(5) == b"ustar"

    def _find_prefix(self) -> str:
        pkls = [n for n in self.members if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            what = "no" if not pkls else f"{len(pkls)}"
            raise LmpackError(f"{self.path}: {what} '*/data.pkl' records (not a torch.save archive?)")
        return pkls[0][: -len("data.pkl")]

    def _check_byteorder(self) -> None:
        member = self.members.get(self.prefix + "byteorder")
        if member is None:
            return
        value = self._read_member(member, 16).strip()
        if value not in (b"little",):
            raise LmpackError(f"{self.path}: byte order {brief(value[:16])} is not supported (only little-endian)")

    def _read_member(self, member: ZipMember, limit: int) -> bytes:
        if member.file_size > limit:
            raise LmpackError(f"{self.path}: record '{member.name}' is implausibly large ({member.file_size} bytes)")
        raw = bytes(self._mm[member.offset:member.offset + member.size])
        if member.method == 8:
            try:
                d = zlib.decompressobj(-15)
                raw = d.decompress(raw, limit + 1)
            except zlib.error as e:
                raise LmpackError(f"{self.path}: record '{member.name}' does not inflate ({e})") from None
        elif member.method != 0:
            raise LmpackError(f"{self.path}: record '{member.name}' uses zip compression method {member.method}")
        if len(raw) != member.file_size or zlib.crc32(raw) != member.crc:
            raise LmpackError(f"{self.path}: record '{member.name}' is corrupt (size or CRC mismatch)")
        return raw

    def _unpickle(self) -> Any:
        member = self.members[self.prefix + "data.pkl"]
        records = sum(1 for n in self.members if n.startswith(self.prefix + "data/"))
        max_bytes, max_ops = pickle_budget(records)
        data = self._read_member(member, max_bytes)
        where = f"{self.path}: {member.name}"
        _scan_opcodes(data, where, max_ops)
        try:
            return _RestrictedUnpickler(data, self).load()
        except LmpackError:
            raise
        except RecursionError:
            raise LmpackError(f"{where}: pickle nests too deeply") from None
        except Exception as e:  # malformed pickles raise anything from UnpicklingError to TypeError
            raise LmpackError(f"{where}: malformed pickle ({type(e).__name__}: {brief(str(e), 200)})") from None

    def _buffer(self) -> mmap.mmap:
        if self._mm is None:
            raise LmpackError(f"{self.path}: file is closed")
        return self._mm

    def tensors(self) -> dict[str, TorchTensor]:
        """The saved object as a flat state dict {name: tensor}; non-tensor entries are skipped."""
        obj = self.obj
        if not isinstance(obj, dict):
            raise LmpackError(f"{self.path}: holds a {type(obj).__name__}, not a state dict")
        out: dict[str, TorchTensor] = {}
        for key, value in obj.items():
            if isinstance(value, TorchTensor):
                if not isinstance(key, str):
                    raise LmpackError(f"{self.path}: state dict key {brief(key, 60)} is not a string")
                out[key] = value
        if obj and not out:
            keys = ", ".join(brief(k, 60) for k in list(obj)[:5])
            raise LmpackError(f"{self.path}: no tensors at the top level (keys: {keys}); not a plain state dict")
        return out

    def close(self) -> None:
        mm, self._mm = self._mm, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass  # numpy views still export it; the map goes away with the last of them

    def __enter__(self) -> "TorchFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_state_dict(path: str | Path) -> tuple[TorchFile, dict[str, TorchTensor]]:
    """Open a torch checkpoint and return it with its flat {name: TorchTensor} state dict."""
    f = TorchFile(path)
    try:
        return f, f.tensors()
    except BaseException:
        f.close()
        raise
