"""The canonical tensor stream into a GGUF file: `lmpack export` and `lmpack convert ... -o X.gguf`.

Any Source (an `.lmp`, an HF or Meta folder, ...) is written as the GGUF that llama.cpp loads for
its family (`gguf_arch`): tensors laid out and renamed as its converter does (`gguf_arch.layout`:
fused and per-expert tensors as one GGUF tensor of their rows, Gemma's norms + 1, MoE routers f32),
q/k rows permuted where llama.cpp rotates adjacent pairs, the config as the architecture's keys and
the tokenizer as `tokenizer.ggml.*` (`gguf_vocab`). Tensors stream through in row blocks exactly as
`lmpack convert` does (memory ~ one row block): f32/f16/bf16 are cast (bit copies when the type is
kept); Q8_0 is the C quantizer's ggml-exact output, or an existing Q8_0 tensor's planes, re-laid
into ggml's 34-byte blocks (fp16 scale, 32 int8) without re-quantizing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from lmpack.convert.gguf_arch import family_of, layout, llama3_rope_divisors, write_config
from lmpack.convert.gguf_vocab import write_tokenizer
from lmpack.convert.rope_order import interleaved_rows
from lmpack.convert.pipeline import (CAST_CHUNK_BYTES, TARGET_DTYPES, _progress, check_finite, input_paths,
                                     q8_rows, quiet_on_failure, refuse_overwriting_inputs, target_dtype)
from lmpack.convert.source import Source
from lmpack import _core
from lmpack.errors import LmpackError
from lmpack.formats.dtypes import Q8_0_BLOCK, cast, numpy_dtype
from lmpack.formats.arch import keeps_precision
from lmpack.formats.gguf import GgufWriter, gguf_module
from lmpack.formats.lmp import Q8Tensor

Q8_0_BLOCK_BYTES = 2 + Q8_0_BLOCK


def ggml_types() -> dict[str, int]:
    T = gguf_module().GGMLQuantizationType
    return {"f32": T.F32, "f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0}


def file_type(dtypes: set[str]) -> int:
    """general.file_type: what most of the weights are (llama.cpp's LLAMA_FTYPE)."""
    F = gguf_module().LlamaFileType
    types = {"f32": F.ALL_F32, "f16": F.MOSTLY_F16, "bf16": F.MOSTLY_BF16, "q8_0": F.MOSTLY_Q8_0}
    for d in ("q8_0", "bf16", "f16", "f32"):  # the smallest type present names the file
        if d in dtypes:
            return types[d]
    return F.ALL_F32


def q8_0_blocks(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """ggml's Q8_0 rows from lmpack's planes: per block of 32, the fp16 scale's 2 bytes then the 32 quants."""
    rows, cols = q.shape
    out = np.empty((rows, cols // Q8_0_BLOCK, Q8_0_BLOCK_BYTES), np.uint8)
    _core.q8_0_relayout(np.ascontiguousarray(q), np.ascontiguousarray(d), out, True)
    return out


def gguf_chunks(name: str, x: np.ndarray | Q8Tensor, src: str, dst: str, rows_order: np.ndarray | None,
                threads: int | None) -> Iterator[memoryview]:
    """A tensor's GGUF bytes, a block of rows at a time, rows taken in `rows_order` if given."""
    from lmpack.quantize.q8_0 import default_threads

    quantized = isinstance(x, Q8Tensor)
    rows = x.quants.shape[0] if quantized else (x.shape[0] if x.ndim > 1 else 1)
    flat = x if quantized else x.reshape(rows, -1)
    cols = x.scales.shape[1] * Q8_0_BLOCK if quantized else flat.shape[1]
    step = max(1, CAST_CHUNK_BYTES // max(1, cols * 4))
    if dst == "q8_0" and not quantized:
        # the planes are re-laid into a fresh block buffer at once, so one pair serves every row block
        q_buf = np.empty((min(step, rows), cols), np.int8)
        d_buf = np.empty((min(step, rows), cols // Q8_0_BLOCK), np.uint16)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        pick = slice(r0, r1) if rows_order is None else rows_order[r0:r1]
        if quantized:
            if rows_order is not None:
                q, d = (np.ascontiguousarray(a[pick]).reshape(r1 - r0, -1) for a in x)
            else:
                q, d = q8_rows(x, r0, r1)
            if dst == "q8_0":
                out = q8_0_blocks(q, d.view(np.uint16))
            else:
                out = cast(Q8Tensor(q, d.view(np.float16)).dequantize(), "f32", dst)
        else:
            block = np.ascontiguousarray(flat[pick])
            if dst == "q8_0":
                q, d = q_buf[:r1 - r0], d_buf[:r1 - r0]
                try:
                    _core.quantize_q8_0(block, src, q, d, threads=threads or default_threads())
                except ValueError as e:
                    raise LmpackError(f"tensor '{name}': cannot quantize to q8_0 ({e})") from None
                out = q8_0_blocks(q, d)
            else:
                out = cast(block, src, dst)
        if dst != "q8_0":
            out = np.ascontiguousarray(out, dtype=numpy_dtype(dst))
        yield memoryview(out).cast("B")


def export(source: Source, out: str | Path, dtype: str = "auto", keep: Sequence[str] = (), progress: bool = False,
           threads: int | None = None, name: str | None = None) -> Path:
    """Write every tensor of `source` into a new GGUF file at `out` (atomically)."""
    gguf = gguf_module()
    if dtype not in TARGET_DTYPES:
        raise LmpackError(f"unknown dtype '{dtype}' (choose from {', '.join(TARGET_DTYPES)})")
    out = Path(out)
    refuse_overwriting_inputs(out, input_paths(source))
    config = source.config()
    family = family_of(config)
    specs = {spec.name: spec for spec in source.tensor_specs()}
    types = ggml_types()
    plan = []
    for g in layout(config, family):
        dst = {target_dtype(specs[p], dtype, keep) for p in g.parts}
        if any(keeps_precision(p) for p in g.parts):
            dst = {"f32"}  # a MoE router: llama.cpp's converter keeps it f32, so its top-k sees exact scores
        if len(dst) != 1:
            raise LmpackError(f"GGUF tensor '{g.name}' would hold parts of different types ({', '.join(sorted(dst))}); "
                              f"give them one --keep pattern")
        plan.append((g, dst.pop()))
    tensors = [(g.name, g.shape, types[dst]) for g, dst in plan]
    rope_freqs = None
    if config.rope_scaling is not None and config.rope_scaling["type"] == "llama3":
        rope_freqs = llama3_rope_divisors(config)
        tensors.append((gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", rope_freqs.shape, types["f32"]))
    tok = source.tokenizer()

    def metadata(w) -> None:
        w.add_type("model")
        w.add_name(name or out.stem)
        w.add_file_type(file_type({dst for g, dst in plan if len(g.shape) > 1}))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        write_config(w, config, family)
        write_tokenizer(w, tok.kind, tok.blob, config, tok.header)

    writer = GgufWriter(out, family.gguf_name, metadata, tensors)
    bar = _progress("exporting") if progress else None
    release = getattr(source, "release", None)

    def chunks(g, dst):
        for part in g.parts:
            spec = specs[part]
            x = source.load(part)
            check_finite(part, x, spec.dtype)
            src = spec.dtype
            if g.shift:
                x, src = cast(np.asarray(x), src, "f32") + np.float32(g.shift), "f32"
            heads = family.rope_heads(part, config)
            order = None if heads is None else interleaved_rows(spec.shape[0], heads)
            if bar:
                bar.update(task, description=f"exporting {part}")
            yield from gguf_chunks(part, x, src, dst, order, threads)
            del x

    with quiet_on_failure(bar), writer:
        task = bar.add_task("exporting", total=writer.total_bytes, name=out.name) if bar else None
        for g, dst in plan:
            done = (lambda parts=g.parts: [release(p) for p in parts]) if release else None
            writer.write_tensor(g.name, chunks(g, dst), progress=(lambda n: bar.advance(task, n)) if bar else None,
                                on_written=done)
        if rope_freqs is not None:
            writer.write_tensor(tensors[-1][0], [rope_freqs.tobytes()])
    return out
