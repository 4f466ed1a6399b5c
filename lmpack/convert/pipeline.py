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
from typing import Callable, Iterator, Sequence

import numpy as np

from lmpack.convert.source import Source, TensorSpec
from lmpack.errors import LmpackError
from lmpack.formats.arch import keeps_precision
from lmpack.formats.dtypes import FLOAT_DTYPES, Q8_0_BLOCK, cast, numpy_dtype, q8_0_planes
from lmpack.formats.lmp import LmpWriter, Q8Tensor

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


def check_runnable(config, tok, where: str) -> None:
    """Refuse, before writing, what would make a file that loads but cannot run: a tokenizer that
    the runtime cannot open with this config, or RoPE parameters whose frequencies are not finite
    positive float32 numbers (rope_theta 1e-300, a scaling factor of 5e-324)."""
    from lmpack.runtime.model import rope_tables
    from lmpack.runtime.tokenizer import open_tokenizer

    try:
        open_tokenizer(tok.kind, tok.blob, config.bos_id, config.eos_ids, config.vocab_size, tok.header)
    except LmpackError as e:
        raise LmpackError(f"{where}: the tokenizer cannot be used ({e})") from None
    with np.errstate(all="ignore"):
        inv = rope_tables(config)
    if not (np.isfinite(inv).all() and (inv > 0).all()):
        raise LmpackError(f"rope_theta {config.rope_theta} with rope_scaling {config.rope_scaling} gives RoPE "
                          f"frequencies that are not finite positive float32 numbers")


def check_finite(name: str, x: np.ndarray, dtype: str) -> None:
    """Refuse a tensor holding NaN or Inf: the file would load, and then every logit it computes
    would be NaN. A bit test per element in C, at memory speed."""
    if dtype not in FLOAT_DTYPES or x.size == 0:
        return
    from lmpack import _core

    bad = _core.count_nonfinite(np.ascontiguousarray(x), dtype)
    if bad:
        raise LmpackError(f"tensor '{name}' holds {bad} NaN/Inf value{'s' if bad > 1 else ''}; a model with them "
                          f"computes NaN logits (repair the checkpoint)")


def q8_rows(x: Q8Tensor, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows r0..r1 of a q8_0 tensor as contiguous (int8 quants (n, cols), fp16 scales (n, cols/32))."""
    q = np.ascontiguousarray(x.quants[r0:r1]).reshape(r1 - r0, -1)
    d = np.ascontiguousarray(x.scales[r0:r1]).reshape(r1 - r0, -1)
    return q, d


def q8_passthrough_chunks(x: Q8Tensor) -> Iterator[memoryview]:
    """The stored bytes of a q8_0 tensor that already is q8_0: its planes, copied, never re-quantized."""
    rows = x.quants.shape[0]
    cols = x.scales.shape[1] * Q8_0_BLOCK
    scales_at, _ = q8_0_planes((rows, cols))
    step = max(1, CAST_CHUNK_BYTES // cols)
    for r0 in range(0, rows, step):
        q, _ = q8_rows(x, r0, min(rows, r0 + step))
        yield memoryview(q).cast("B")
    yield memoryview(bytes(scales_at - rows * cols))
    yield memoryview(np.ascontiguousarray(x.scales).view(np.uint8)).cast("B")


def q8_dequantized_chunks(x: Q8Tensor, dst: str) -> Iterator[memoryview]:
    """A q8_0 tensor's values (fp16 scale times quant, exact in f32) cast to a float dtype, row blocks at a time."""
    rows = x.quants.shape[0]
    cols = x.scales.shape[1] * Q8_0_BLOCK
    step = max(1, CAST_CHUNK_BYTES // (cols * 4))
    for r0 in range(0, rows, step):
        values = Q8Tensor(*q8_rows(x, r0, min(rows, r0 + step))).dequantize()
        yield memoryview(np.ascontiguousarray(cast(values, "f32", dst), dtype=numpy_dtype(dst))).cast("B")


def encode(name: str, x: np.ndarray | Q8Tensor, src: str, dst: str, threads: int | None) -> Iterator[memoryview]:
    if isinstance(x, Q8Tensor):
        return q8_passthrough_chunks(x) if dst == "q8_0" else q8_dequantized_chunks(x, dst)
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
    refuse_overwriting_inputs(out, input_paths(source))
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
    check_runnable(config, tok, str(getattr(source, "folder", None) or f"{source.info.kind} source"))
    writer = LmpWriter(out, config, tok.blob, plan, provenance, tokenizer_kind=tok.kind,
                       tokenizer_fields=tok.header, generation=tok.generation)
    total = sum(e.nbytes for e in writer.entries)
    bar = _progress(description) if progress else None
    with quiet_on_failure(bar), writer:
        task = bar.add_task(description, total=total, name=out.name) if bar else None
        for (name, dst, _), spec in zip(plan, specs):
            x = source.load(name)
            shape = (x.quants.shape[0], x.scales.shape[1] * Q8_0_BLOCK) if isinstance(x, Q8Tensor) else x.shape
            if tuple(shape) != spec.shape:
                raise LmpackError(f"tensor '{name}': source gave shape {list(shape)}, expected {list(spec.shape)}")
            check_finite(name, x, spec.dtype)
            if bar:
                bar.update(task, description=f"{description} {name}")
            release = getattr(source, "release", None)
            writer.write_tensor(name, encode(name, x, spec.dtype, dst, threads),
                                progress=(lambda n: bar.advance(task, n)) if bar else None,
                                on_written=(lambda name=name: release(name)) if release else None)
            del x
    return out


# Files beside a checkpoint that a source reads besides its shards.
_SIDE_FILES = ("config.json", "params.json", "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
               "generation_config.json", "special_tokens_map.json", "chat_template.jinja", "chat_template.json",
               "model.safetensors.index.json", "pytorch_model.bin.index.json")


def input_paths(source: Source) -> list[Path]:
    """Every file `source` reads: its shards, its config and tokenizer files, or its `.lmp`."""
    paths = []
    folder = getattr(source, "folder", None)
    if folder is not None:
        paths += [Path(folder) / f.name for f in source.info.files]
        paths += [Path(folder) / name for name in _SIDE_FILES]
    tokenizer = getattr(source, "_tokenizer", None)
    if isinstance(tokenizer, (str, Path)):
        paths.append(Path(tokenizer))
    reader = getattr(source, "_reader", None)
    if reader is not None:
        paths.append(Path(reader.path))
    for attr in ("path", "tokenizer_file"):  # one-file sources: a GGUF or llama2.c checkpoint
        single = getattr(source, attr, None)
        if isinstance(single, (str, Path)):
            paths.append(Path(single))
    return paths


def refuse_overwriting_inputs(out: Path, inputs: Sequence[Path]) -> None:
    """An LmpackError if `out` is, or resolves to (through symbolic or hard links), one of `inputs`:
    the atomic rename at the end would otherwise replace a source file with the output."""
    import os

    try:
        target = out.resolve()
        out_stat = os.stat(out) if out.exists() else None
    except (OSError, RuntimeError):  # a symlink loop: the writer reports it when it opens the path
        return
    for p in inputs:
        try:
            if not p.exists():
                continue
            same = p.resolve() == target or (out_stat is not None and os.path.samestat(os.stat(p), out_stat))
        except (OSError, RuntimeError):
            continue
        if same:
            raise LmpackError(f"{out}: is one of the input files ({p}); write the output to a different file")


@contextlib.contextmanager
def quiet_on_failure(bar):
    """Run `bar` (or nothing) around the conversion; if it fails, the bar leaves no line behind, so
    the error is the only thing a failed command prints."""
    if bar is None:
        yield
        return
    with bar:
        try:
            yield
        except BaseException:
            bar.live.transient = True  # a terminal: the drawn bar is erased
            if not bar.console.is_terminal:
                bar.console.quiet = True  # a pipe or file: the final frame is not printed
            raise


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
            rope_scaling_factor: float | None = None, tokenizer: str | Path | None = None,
            log: Callable[[str], None] | None = None) -> Path:
    """Convert a checkpoint (HF / Meta folder, GGUF file, llama2.c file) into one `.lmp` file, or
    into a GGUF file when `out` ends in `.gguf`.

    `kind` forces the source kind instead of detecting it; `rope_scaling_factor` overrides the
    Llama 3 rope scaling factor of Meta checkpoints (Meta's code says 8, Llama 3.2 needs 32);
    `tokenizer` is a llama2.c checkpoint's tokenizer file; `log` receives lines worth telling
    the user (what was dequantized or re-quantized, and at what error)."""
    from lmpack.convert.detect import open_source

    source = open_source(Path(src), kind=kind, rope_scaling_factor=rope_scaling_factor, tokenizer=tokenizer)
    try:
        dequantized = getattr(source, "dequantized", None)
        if dequantized and dtype == "auto":
            kinds = "/".join(sorted(set(dequantized.values())))
            raise LmpackError(f"{src}: {len(dequantized)} tensors are {kinds}, which lmpack does not store; "
                              f"choose what they become with --dtype bf16, f32 or q8_0")
        if is_gguf(out):
            from lmpack.convert.gguf_export import export

            result = export(source, out, dtype, keep, progress, threads, name=Path(src).stem)
        else:
            result = run(source, out, dtype, keep, progress, threads, "converting")
        report = getattr(source, "report", None)
        if report is not None and log is not None:
            for line in report(Path(result), dtype):
                log(line)
        return result
    finally:
        source.close()


def is_gguf(path: str | Path) -> bool:
    """Whether an output path asks for a GGUF file rather than an `.lmp` (by its suffix)."""
    return Path(path).suffix.lower() == ".gguf"
