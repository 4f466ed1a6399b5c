"""Does an `.lmp` file hold its source's numbers? Config, tokenizer and tensor-by-tensor checks.

Cheap evidence that comes before any logits: the file's config and tokenizer must equal the
source's, and each tensor must be the source tensor of the same name encoded in the file's dtype —
bit for bit for float dtypes (the source rounded to nearest even), and within the Q8_0 error bound
for q8_0 (|x - value| <= d/2 per block, d = max|x|/127, plus the fp16 rounding of d). A wrong
permutation, a transposed or swapped tensor fails here with the tensor's name, before the logits
would show it only as "something is off". Tensors are compared a block of rows at a time.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from lmpack.convert.source import Source
from lmpack.errors import LmpackError
from lmpack.formats.dtypes import Q8_0_BLOCK, cast, numpy_dtype, to_f32
from lmpack.formats.lmp import LmpReader
from lmpack.verify.report import Check

BLOCK_BYTES = 16 << 20  # float32 bytes of source rows compared per step

FP16_REL = 2.0 ** -11  # half an ulp of fp16, relative (normal range)
FP16_SUBNORMAL_ABS = 2.0 ** -25  # half the smallest fp16 subnormal
Q_SLACK = 1e-4  # x * (1/d) in float32 may round a near-tie the other way: |x - d*q| <= d * (1/2 + tiny)


def check_config(reader: LmpReader, source: Source, check: Check) -> bool:
    """File config, tokenizer (bytes, special tokens, templates) and sampling defaults equal the
    source's; True when the shapes can be compared."""
    t0 = time.perf_counter()
    mine, theirs = reader.config.to_dict(), source.config().to_dict()
    for key in sorted(set(mine) | set(theirs)):
        if mine.get(key) != theirs.get(key):
            check.fail(f"config '{key}' is {mine.get(key)!r} in the file, {theirs.get(key)!r} in the source")
    tok = source.tokenizer()
    if reader.tokenizer_kind != tok.kind or reader.tokenizer_bytes != tok.blob:
        check.fail(f"the embedded tokenizer ({reader.tokenizer_kind}) differs from the source's ({tok.kind})",
                   "<tokenizer>")
    for key in sorted(set(reader.tokenizer_fields) | set(tok.header)):
        if reader.tokenizer_fields.get(key) != tok.header.get(key):
            check.fail(f"tokenizer '{key}' differs from the source's", "<tokenizer>")
    if reader.generation != tok.generation:
        check.fail(f"sampling defaults {reader.generation} differ from the source's {tok.generation}", "<tokenizer>")
    shapes_agree = all(mine.get(k) == theirs.get(k) for k in
                       ("dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim", "vocab_size",
                        "tie_embeddings"))
    if check.status != "fail":
        check.status = "pass"
        check.summary = f"{len(mine)} config fields and {len(reader.tokenizer_bytes)} tokenizer bytes equal"
    check.seconds = time.perf_counter() - t0
    return shapes_agree


def _compare_float(stored: np.ndarray, src: np.ndarray, src_dtype: str, dtype: str) -> tuple[int, float]:
    """(elements whose stored bits differ from the source cast to `dtype`, max |difference|)."""
    want = np.ascontiguousarray(cast(src, src_dtype, dtype), dtype=numpy_dtype(dtype))
    got = np.ascontiguousarray(stored)
    bits = {2: np.uint16, 4: np.uint32}[want.dtype.itemsize]
    differ = int(np.count_nonzero(want.view(bits) != got.view(bits)))
    if not differ:
        return 0, 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        delta = np.abs(to_f32(got, dtype) - to_f32(want, dtype))
    return differ, float(np.nanmax(delta)) if np.isfinite(delta).any() else float("inf")


def _compare_q8(quants: np.ndarray, scales: np.ndarray, src: np.ndarray) -> tuple[int, int, float]:
    """(blocks whose scale is not fp16(max|x|/127), blocks with an element past the Q8_0 bound,
    worst |x - value| / bound) for one block of rows."""
    rows, cols = quants.shape
    x = src.reshape(rows, cols // Q8_0_BLOCK, Q8_0_BLOCK).astype(np.float32)
    d = (np.abs(x).max(axis=-1) / np.float32(127)).astype(np.float64)
    d16 = scales.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        scale_err = np.abs(d16 - d)
        scale_bad = ~(scale_err <= np.maximum(d * FP16_REL, FP16_SUBNORMAL_ABS) * (1 + 1e-6))
        value = quants.reshape(rows, cols // Q8_0_BLOCK, Q8_0_BLOCK).astype(np.float64) * d16[..., None]
        err = np.abs(x.astype(np.float64) - value)
        bound = (d * (0.5 + Q_SLACK) + 127 * scale_err)[..., None] + np.abs(x) * 2.0 ** -23 + 1e-30
        ratio = err / bound
        blocks_bad = ~(ratio <= 1).all(axis=-1)
        worst = float(np.nanmax(ratio)) if np.isfinite(ratio).all() else float("inf")
    return int(np.count_nonzero(scale_bad)), int(np.count_nonzero(blocks_bad)), worst


def check_tensors(reader: LmpReader, source: Source, check: Check,
                  progress: Callable[[int], None] | None = None) -> None:
    """Every file tensor against the source tensor of the same name (see the module docstring)."""
    t0 = time.perf_counter()
    specs = {s.name: s for s in source.tensor_specs()}
    rows_out = []
    for e in reader.tensors:
        spec = specs.get(e.name)
        if spec is None:
            check.fail("not in the source checkpoint", e.name)
            continue
        if tuple(spec.shape) != e.shape:
            check.fail(f"shape {list(e.shape)} in the file, {list(spec.shape)} in the source", e.name)
            continue
        src = source.load(e.name)
        if tuple(src.shape) != e.shape:
            check.fail(f"the source gave shape {list(src.shape)}, expected {list(e.shape)}", e.name)
            continue
        flat_src = src.reshape(e.shape[0], -1) if len(e.shape) > 1 else src.reshape(1, -1)
        nrows, ncols = flat_src.shape
        step = max(1, BLOCK_BYTES // (4 * ncols))
        stored = reader.tensor(e.name)
        shift = source.value_shift(e.name) if hasattr(source, "value_shift") else 0.0
        differ, worst_delta, scale_bad, blocks_bad, worst_ratio = 0, 0.0, 0, 0, 0.0
        try:
            for r0 in range(0, nrows, step):
                r1 = min(nrows, r0 + step)
                if e.dtype == "q8_0":
                    s, b, r = _compare_q8(stored.quants[r0:r1], stored.scales[r0:r1], to_f32(flat_src[r0:r1], spec.dtype))
                    scale_bad, blocks_bad, worst_ratio = scale_bad + s, blocks_bad + b, max(worst_ratio, r)
                elif shift and e.dtype == "f32":
                    # the source holds w + shift, rounded (Gemma's norms in GGUF): compare there
                    a = (np.asarray(stored.reshape(nrows, ncols)[r0:r1], np.float32) + np.float32(shift))
                    b = to_f32(flat_src[r0:r1], spec.dtype) + np.float32(shift)
                    n, dlt = _compare_float(a, b, "f32", "f32")
                    differ, worst_delta = differ + n, max(worst_delta, dlt)
                else:
                    flat_stored = stored.reshape(nrows, ncols)
                    n, dlt = _compare_float(flat_stored[r0:r1], flat_src[r0:r1], spec.dtype, e.dtype)
                    differ, worst_delta = differ + n, max(worst_delta, dlt)
                if progress:
                    progress((r1 - r0) * ncols)
        except LmpackError as err:  # a source value that the file's dtype cannot hold
            check.fail(str(err), e.name)
            continue
        finally:
            del stored, src, flat_src
        if e.dtype == "q8_0":
            rows_out.append({"tensor": e.name, "dtype": e.dtype, "bad_scales": scale_bad,
                             "bad_blocks": blocks_bad, "worst_error_over_bound": worst_ratio})
            if scale_bad or blocks_bad:
                check.fail(f"not the source's Q8_0: {scale_bad} block scales differ from fp16(max|x|/127), "
                           f"{blocks_bad} blocks exceed the d/2 error bound (worst {worst_ratio:.3g}x the bound)",
                           e.name)
        else:
            rows_out.append({"tensor": e.name, "dtype": e.dtype, "differing": differ, "max_abs_diff": worst_delta})
            if differ:
                check.fail(f"{differ} of {nrows * ncols} values differ from the source ({spec.dtype}) cast to "
                           f"{e.dtype} (max |difference| {worst_delta:.4g})", e.name)
    missing = sorted(set(specs) - {e.name for e in reader.tensors})
    for name in missing:
        check.fail("in the source checkpoint but not in the file", name)
    check.data = {"tensors": rows_out}
    check.seconds = time.perf_counter() - t0
    if check.status != "fail":
        check.status = "pass"
        n_q8 = sum(1 for e in reader.tensors if e.dtype == "q8_0")
        check.summary = (f"{len(reader.tensors) - n_q8} float tensors bit-exact"
                         + (f", {n_q8} q8_0 tensors within the bound" if n_q8 else ""))
