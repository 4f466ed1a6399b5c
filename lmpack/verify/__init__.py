"""Prove that an `.lmp` file is intact and faithful to the checkpoint it came from.

    from lmpack.verify import verify
    result = verify("model.lmp", against="path/to/hf-folder")
    result.ok, result.metrics.kl_mean, result.failures()

Without a source the checks are about the file alone (integrity.py): structure, checksums,
tokenizer, finite values. With `against`, the file is compared with the source checkpoint:
config and tokenizer equality, each tensor against its source (tensors.py), and the runtime's
logits against an independent numpy forward pass over the source weights (reference.py), judged
by per-dtype thresholds (report.py, docs/VERIFY.md).
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Iterator

from lmpack.errors import LmpackError
from lmpack.verify.report import (CHECKS, DEFAULT_THRESHOLDS, DTYPE_LOOSENESS, Check, LogitMetrics, Thresholds,
                                  VerifyResult, compare_logits, render, thresholds_for)

__all__ = ["verify", "VerifyResult", "Check", "LogitMetrics", "Thresholds", "DEFAULT_THRESHOLDS",
           "DEFAULT_PROMPT", "DEFAULT_MAX_TOKENS", "UsageError", "CHECKS", "render"]

# Ordinary English prose: real sentences exercise a trained model the way users do, and the
# length (~80 tokens with a Llama tokenizer) gives stable statistics at a negligible cost.
DEFAULT_PROMPT = (
    "The old lighthouse keeper climbed the narrow stairs every evening to light the lamp. "
    "From the top he could see the harbour, the fishing boats coming home, and the long line of "
    "hills beyond the town. He wrote down the weather in a small notebook, as his father had done "
    "before him, and in forty years he had never missed a single night."
)
DEFAULT_MAX_TOKENS = 256
TEXT_CHARS_PER_TOKEN = 64  # a --text-file is read only this far: more than max_tokens can use


class UsageError(LmpackError):
    """The request itself is wrong (a missing file, conflicting options): exit status 2."""


def _open_source(path: Path):
    """A Source for a checkpoint folder (or file), or a float `.lmp` file."""
    from lmpack.formats.lmp import MAGIC

    if path.is_file():
        with open(path, "rb") as f:
            is_lmp = f.read(len(MAGIC)) == MAGIC
        if is_lmp:
            from lmpack.convert.lmp_source import LmpSource

            return LmpSource(path)
    from lmpack.convert.detect import open_source

    source = open_source(path)
    if any(s.dtype == "q8_0" for s in source.tensor_specs()):
        return _Dequantized(source)
    return source


class _Dequantized:
    """A source holding q8_0 tensors (a GGUF) seen as float32: the reference and the tensor
    comparison then read every source alike. Q8_0 values are exact in float32."""

    def __init__(self, source):
        self._source = source
        self.info = source.info

    def __getattr__(self, name):
        return getattr(self._source, name)

    def tensor_specs(self):
        from dataclasses import replace

        return [replace(s, dtype="f32") if s.dtype == "q8_0" else s for s in self._source.tensor_specs()]

    def load(self, name):
        from lmpack.formats.lmp import Q8Tensor

        x = self._source.load(name)
        return x.dequantize() if isinstance(x, Q8Tensor) else x


def _prompt_ids(tokenizer, bos_id: int, prompt: str | None, text_file: Path | None, max_tokens: int) -> list[int]:
    """The comparison text's ids with the model's own BOS rule (the source's tokenizer, loaded by its
    own library), cut to max_tokens."""
    if text_file is not None:
        with open(text_file, encoding="utf-8", errors="replace") as f:
            text = f.read(max_tokens * TEXT_CHARS_PER_TOKEN)
    else:
        text = DEFAULT_PROMPT if prompt is None else prompt
    if tokenizer.kind == "sentencepiece":
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor()
        sp.LoadFromSerializedProto(tokenizer.blob)
        bos = [bos_id] if tokenizer.header.get("add_bos", True) else []
        return (bos + sp.encode(text))[:max_tokens]
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer.blob.decode("utf-8")).encode(text).ids[:max_tokens]


def _loosest_dtype(reader) -> str:
    stored = {e.dtype for e in reader.tensors if len(e.shape) > 1} or {"f32"}
    return max(stored, key=DTYPE_LOOSENESS.index)


class _Bars:
    """A rich progress bar per phase on stderr, or nothing."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._progress = None

    @contextlib.contextmanager
    def phase(self, description: str, total: int) -> Iterator[Any]:
        if not self.enabled:
            yield None
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("{task.description}", markup=False), BarColumn(), TaskProgressColumn(),
                      TimeRemainingColumn(),
                      console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)


def verify(file: str | Path, against: str | Path | None = None, prompt: str | None = None,
           text_file: str | Path | None = None, max_tokens: int = DEFAULT_MAX_TOKENS,
           thresholds: dict[str, float | None] | None = None, threads: int | None = None,
           progress: bool = False) -> VerifyResult:
    """Check `file`; with `against` (a checkpoint folder or a float .lmp), also its faithfulness.

    `prompt` or `text_file` (not both) gives the text the logits are compared on (default: a fixed
    English paragraph), cut to `max_tokens` tokens. `thresholds` overrides the file dtype's
    defaults by field name of `Thresholds`. Raises UsageError for a bad request; everything wrong
    with the file itself is reported in the result (`ok`, `failures()`), never raised.
    """
    file = Path(file)
    if not file.is_file():
        raise UsageError(f"{file}: no such file")
    if prompt is not None and text_file is not None:
        raise UsageError("give either a prompt or a text file, not both")
    if text_file is not None and not Path(text_file).is_file():
        raise UsageError(f"{text_file}: no such file")
    if max_tokens < 2:
        raise UsageError("max_tokens must be at least 2 (one token and the next one to predict)")
    try:
        thresholds_for("f32", thresholds)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if against is not None and not Path(against).exists():
        raise UsageError(f"{against}: no such file or folder")

    from lmpack.verify import integrity

    result = VerifyResult(file=str(file), against=str(against) if against is not None else None)
    checks = result.checks
    bars = _Bars(progress)
    reader = integrity.open_structure(file, checks["structure"])
    if reader is None:
        return result
    try:
        result.dtype = _loosest_dtype(reader)
        total = sum(e.nbytes for e in reader.tensors)
        with bars.phase("checksums", total + reader.tokenizer_entry.nbytes) as advance:
            integrity.check_checksums(reader, checks["checksums"], advance)
        integrity.check_tokenizer(reader, checks["tokenizer"])
        with bars.phase("values", total) as advance:
            integrity.check_values(reader, checks["values"], advance)
        if against is not None:
            _faithfulness(result, reader, Path(against), prompt, text_file, max_tokens, thresholds, threads, bars)
    finally:
        reader.close()
    return result


def _faithfulness(result: VerifyResult, reader, against: Path, prompt, text_file, max_tokens: int,
                  overrides, threads, bars: _Bars) -> None:
    from lmpack.verify import reference, tensors

    try:
        source = _open_source(against)
    except LmpackError as e:
        raise UsageError(f"cannot use {against} as the source: {e}") from None
    checks = result.checks
    try:
        if not tensors.check_config(reader, source, checks["config"]):
            for name in ("tensors", "logits"):
                checks[name].summary = "not compared: the model shapes differ"
            return
        numel = sum(int(_prod(e.shape)) for e in reader.tensors)
        with bars.phase("tensors", numel) as advance:
            tensors.check_tensors(reader, source, checks["tensors"], advance)

        check = checks["logits"]
        t0 = time.perf_counter()
        cfg = source.config()
        ids = _prompt_ids(source.tokenizer(), cfg.bos_id, prompt, text_file, max_tokens)
        if len(ids) < 2:
            raise UsageError("the prompt must give at least one token after the first (BOS, where the model adds one)")
        result.prompt_tokens = ids
        with bars.phase("reference forward", cfg.n_layers) as advance:
            ref = reference.reference_logits(source, ids, (lambda done, total: advance(1)) if advance else None)
        t_ref = time.perf_counter() - t0
        got = _runtime_logits(reader.path, ids, threads, check)
        check.seconds = time.perf_counter() - t0
        if got is None:
            return
        result.thresholds = thresholds_for(result.dtype, overrides, moe=bool(cfg.n_experts))
        result.metrics = m = compare_logits(ref, got, ids)
        check.data = {"reference_seconds": t_ref, "tokens": len(ids)}
        for message in result.thresholds.judge(m):
            check.fail(message)
        if check.status != "fail":
            check.status = "pass"
        check.summary = (f"{len(ids)} tokens: KL {m.kl_mean:.3g} mean / {m.kl_max:.3g} max, "
                         f"top-1 {m.top1_agreement:.1%}, max error {m.max_abs_error_rel_std:.3g} x std")
    finally:
        source.close()


def _runtime_logits(path: Path, ids: list[int], threads: int | None, check: Check):
    """The C runtime's logits of the file, or None with the reason recorded in `check`."""
    import lmpack

    try:
        with lmpack.load(path, threads=threads, max_context=len(ids)) as model:
            return model.logits(ids)
    except LmpackError as e:
        check.fail(f"the runtime cannot run the file: {e}")
        return None


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
