"""Q8_0 encoding of a tensor into the two planes of docs/FORMAT.md, in bounded-memory chunks.

The arithmetic is the C core's ggml-exact quantizer (`_core.quantize_q8_0`, vectorized and
multithreaded); this module only feeds it row blocks and lays the result out: the int8 quants
plane streamed block by block, then padding, then the fp16 scales plane (1/16 of the quants'
size, so it is kept in memory until the quants are written).
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from lmpack import _core
from lmpack.errors import LmpackError
from lmpack.formats.dtypes import Q8_0_BLOCK, q8_0_planes

CHUNK_BYTES = 8 << 20  # quants written per step; bounds the working set whatever the tensor size


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def quantize(x: np.ndarray, src_dtype: str = "f32", threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Quantize a 2-D array (cols % 32 == 0) to (int8 quants, fp16 scales) — ggml's Q8_0 numbers."""
    if x.ndim != 2 or x.shape[1] % Q8_0_BLOCK:
        raise LmpackError(f"q8_0 needs a 2-D tensor with columns a multiple of 32, got shape {list(x.shape)}")
    x = np.ascontiguousarray(x)
    q = np.empty(x.shape, np.int8)
    d = np.empty((x.shape[0], x.shape[1] // Q8_0_BLOCK), np.uint16)
    _quantize_into(x, src_dtype, q, d, threads, "tensor")
    return q, d.view(np.float16)


def _quantize_into(x, src_dtype, q, d, threads, name) -> None:
    try:
        _core.quantize_q8_0(x, src_dtype, q, d, threads=threads or default_threads())
    except ValueError as e:
        raise LmpackError(f"tensor '{name}': cannot quantize to q8_0 ({e})") from None


def q8_0_chunks(name: str, x: np.ndarray, src_dtype: str, threads: int | None = None) -> Iterator[memoryview]:
    """Yield the stored bytes of `x` as a q8_0 tensor, quantizing a block of rows at a time."""
    rows, cols = x.shape
    scales_at, total = q8_0_planes(x.shape)
    d = np.empty((rows, cols // Q8_0_BLOCK), np.uint16)
    step = max(1, CHUNK_BYTES // cols)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        block = np.ascontiguousarray(x[r0:r1])
        q = np.empty((r1 - r0, cols), np.int8)
        _quantize_into(block, src_dtype, q, d[r0:r1], threads, name)
        yield memoryview(q).cast("B")
    yield memoryview(bytes(scales_at - rows * cols))
    yield memoryview(d).cast("B")
