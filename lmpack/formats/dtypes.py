"""Element types of `.lmp` tensors: their byte sizes and the numpy casts between them.

numpy has no bfloat16, so bf16 values travel as np.uint16 arrays holding the raw bits; the
helpers here are the only place that knows how to widen and round them (round to nearest even,
NaN kept quiet, as ggml and torch do).
"""
from __future__ import annotations

import numpy as np

from lmpack.errors import LmpackError

FLOAT_DTYPES = ("f32", "f16", "bf16")
DTYPES = FLOAT_DTYPES + ("q8_0",)
Q8_0_BLOCK = 32
ALIGN = 64

_NUMPY = {"f32": np.dtype("<f4"), "f16": np.dtype("<f2"), "bf16": np.dtype("<u2")}


def align_up(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) // a * a


def numpy_dtype(dtype: str) -> np.dtype:
    """The numpy dtype that holds a float dtype's stored elements (bf16 -> uint16 bits)."""
    try:
        return _NUMPY[dtype]
    except KeyError:
        raise LmpackError(f"no plain numpy view for dtype '{dtype}'") from None


def q8_0_planes(shape: tuple[int, ...]) -> tuple[int, int]:
    """(scales plane offset within the tensor, total nbytes) of a q8_0 tensor of `shape`."""
    rows, cols = shape
    qbytes = align_up(rows * cols)
    return qbytes, qbytes + rows * (cols // Q8_0_BLOCK) * 2


def tensor_nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    """Bytes a tensor of this dtype and shape occupies in a file (docs/FORMAT.md, Dtypes)."""
    numel = 1
    for d in shape:
        numel *= d
    if dtype in _NUMPY:
        return numel * _NUMPY[dtype].itemsize
    if dtype == "q8_0":
        if len(shape) != 2 or shape[1] % Q8_0_BLOCK:
            raise LmpackError(f"q8_0 needs a 2-D shape with columns a multiple of 32, got {list(shape)}")
        return q8_0_planes(shape)[1]
    raise LmpackError(f"unknown dtype '{dtype}'")


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 bits, nearest even; NaNs stay (quiet) NaNs."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    if nan.any():
        rounded[nan] = ((u[nan] >> 16) | np.uint32(0x40)).astype(np.uint16)
    return rounded


def to_f32(x: np.ndarray, dtype: str) -> np.ndarray:
    """Widen a source array of a float dtype to float32 (exact)."""
    if dtype == "bf16":
        return bf16_to_f32(x)
    return np.asarray(x, dtype=np.float32)


def cast(x: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Cast a float array between f32/f16/bf16 storage, rounding to nearest even."""
    if src == dst:
        return x
    if dst == "f32":
        return to_f32(x, src)
    if dst == "bf16":
        return f32_to_bf16(to_f32(x, src))
    if dst == "f16":
        wide = to_f32(x, src)
        with np.errstate(over="ignore"):
            out = wide.astype(np.float16)
        if not np.isfinite(out).all() and np.isfinite(wide).all():
            raise LmpackError("values overflow f16 (|x| > 65504); keep bf16 or f32 for this model")
        return out
    raise LmpackError(f"cannot cast {src} to {dst}")
