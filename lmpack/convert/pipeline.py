"""The streaming conversion: a Source's tensors, one at a time, cast or quantized, into an `.lmp`.

Each tensor is mapped from the source, encoded in row blocks (cast to the target float type, or
Q8_0-quantized), written and dropped before the next is touched, so peak memory is about one row
block plus what the operating system keeps cached — never the model. The same pipeline serves
`lmpack convert` (checkpoint folders) and `lmpack quantize` (an existing `.lmp` as the source).
"""
from __future__ import annotations

import contextlib
import fnmatch
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from lmpack.convert.source import Source, TensorSpec
from lmpack.errors import LmpackError
from lmpack.formats.arch import keeps_precision
from lmpack.formats.dtypes import FLOAT_DTYPES, cast, numpy_dtype
from lmpack.formats.lmp import LmpWriter

TARGET_DTYPES = ("auto", "f32", "f16", "bf16", "q8_0")
CAST_CHUNK_BYTES = 16 << 20


def target_dtype(spec: TensorSpec, dtype: str, keep: Sequence[str] = ()) -> str:
    """The stored dtype of one tensor: norms are f32; `keep` patterns, and the tensors the family
    table marks exact (MoE routers), keep the source precision."""
    if len(spec.shape) == 1:
        return "f32"
    if dtype == "auto" or any(fnmatch.fnmatchcase(spec.name, p) for p in keep) or keeps_precision(spec.name):
        return spec.dtype
    if dtype == "q8_0" and spec.shape[-1] % 32:
        raise LmpackError(f"tensor '{spec.name}' has {spec.shape[-1]} columns, not a multiple of 32: "
                          f"it cannot be q8_0 (keep it with --keep '{spec.name}')")
    return dtype


def cast_chunks(x: np.ndarray, src: str, dst: str) -> Iterator[memoryview]:
    """Yield the stored bytes of `x` cast from `src` to `dst`, a block of rows at a time."""
    rows = x.shape[0] if x.ndim > 1 else 1
    flat = x.reshape(rows, -1)
    step = max(1, CAST_CHUNK_BYTES // max(1, flat.shape[1] * 4))
    for r0 in range(0, rows, step):
        out = np.ascontiguousarray(cast(flat[r0:r0 + step], src, dst), dtype=numpy_dtype(dst))
        yield memoryview(out).cast("B")


def encode(name: str, x: np.ndarray, src: str, dst: str, threads: int | None) -> Iterator[memoryview]:
    if dst == "q8_0":
        from lmpack.quantize import q8_0_chunks
        return q8_0_chunks(name, x, src, threads)
    if src not in FLOAT_DTYPES:
        raise LmpackError(f"tensor '{name}': cannot convert {src} to {dst}")
    return cast_chunks(x, src, dst)


def run(source: Source, out: str | Path, dtype: str = "auto", keep: Sequence[str] = (),
        progress: bool = False, threads: int | None = None, description: str = "converting") -> Path:
    """Stream every tensor of `source` into a new `.lmp` at `out` (atomically)."""
    if dtype not in TARGET_DTYPES:
        raise LmpackError(f"unknown dtype '{dtype}' (choose from {', '.join(TARGET_DTYPES)})")
    out = Path(out)
    config = source.config()
    specs = source.tensor_specs()
    plan = [(s.name, target_dtype(s, dtype, keep), s.shape) for s in specs]
    stored = {d for _, d, shape in plan if len(shape) > 1}
    provenance = {
        "source_kind": source.info.kind,
        "source_files": [{"name": f.name, "size": f.size} for f in source.info.files],
        "dtype": stored.pop() if len(stored) == 1 else "mixed",
    }
    tok = source.tokenizer()
    writer = LmpWriter(out, config, tok.blob, plan, provenance, tokenizer_kind=tok.kind,
                       tokenizer_fields=tok.header, generation=tok.generation)
    total = sum(e.nbytes for e in writer.entries)
    bar = _progress(description) if progress else None
    with bar or contextlib.nullcontext(), writer:
        task = bar.add_task(description, total=total, name=out.name) if bar else None
        for (name, dst, _), spec in zip(plan, specs):
            x = source.load(name)
            if tuple(x.shape) != spec.shape:
                raise LmpackError(f"tensor '{name}': source gave shape {list(x.shape)}, expected {list(spec.shape)}")
            if bar:
                bar.update(task, description=f"{description} {name}")
            release = getattr(source, "release", None)
            writer.write_tensor(name, encode(name, x, spec.dtype, dst, threads),
                                progress=(lambda n: bar.advance(task, n)) if bar else None,
                                on_written=(lambda name=name: release(name)) if release else None)
            del x
    return out


def _progress(description: str):
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)
    from rich.console import Console

    # file and tensor names are data: the text columns must not read them as markup
    return Progress(TextColumn("{task.fields[name]}", markup=False), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(),
                    TextColumn("{task.description}", style="dim", markup=False),
                    console=Console(stderr=True), transient=False)


def convert(src: str | Path, out: str | Path, dtype: str = "auto", keep: Sequence[str] = (),
            progress: bool = False, threads: int | None = None, kind: str | None = None,
            rope_scaling_factor: float | None = None) -> Path:
    """Convert a checkpoint folder (HF safetensors / HF .bin / Meta) into one `.lmp` file.

    `kind` forces the source kind instead of detecting it; `rope_scaling_factor` overrides the
    Llama 3 rope scaling factor of Meta checkpoints (Meta's code says 8, Llama 3.2 needs 32)."""
    from lmpack.convert.detect import open_source

    source = open_source(Path(src), kind=kind, rope_scaling_factor=rope_scaling_factor)
    try:
        return run(source, out, dtype, keep, progress, threads, "converting")
    finally:
        source.close()
