"""Is an `.lmp` file intact? Structure, checksums, tokenizer and values, without a source.

The structural checks are the reader's own (`LmpReader` validates everything docs/FORMAT.md
lists before it exposes a byte); this module adds what a load deliberately skips: the CRC-32C of
every byte of the tokenizer and of every tensor, a load of the tokenizer with its own library (ids
round-trip, special tokens, chat templates render), and a scan
of every float for NaN and infinity (and of q8_0 blocks for non-finite scales and the -128 quant
that ggml's quantizer never produces). The scans are chunked, so memory stays small whatever the
file size, and read the mapped file at memory speed.
"""
from __future__ import annotations

import mmap
import time
from pathlib import Path
from typing import Callable

import numpy as np

from lmpack import _core
from lmpack.errors import LmpackError
from lmpack.formats.dtypes import Q8_0_BLOCK, q8_0_planes
from lmpack.formats.lmp import LmpReader, TensorEntry
from lmpack.verify.report import Check

CHUNK = 16 << 20  # bytes per step of a scan: large enough for full speed, small enough for the cache

# Per float dtype: the unsigned view of its bits, and the smallest (bits & ~sign) that is inf or NaN
# (an all-ones exponent).
_NONFINITE = {
    "f32": (np.uint32, 0x7FFFFFFF, 0x7F800000),
    "f16": (np.uint16, 0x7FFF, 0x7C00),
    "bf16": (np.uint16, 0x7FFF, 0x7F80),
}

Progress = Callable[[int], None]  # called with the number of bytes just scanned


def open_structure(path: Path, check: Check) -> LmpReader | None:
    """Open and validate the file; on failure record why in `check` and return None."""
    t0 = time.perf_counter()
    try:
        reader = LmpReader(path)
    except LmpackError as e:
        check.fail(str(e))
        check.summary = "the file is not a valid .lmp"
        reader = None
    else:
        check.status = "pass"
        check.summary = (f"format v{reader.header.get('version')}, {len(reader.tensors)} tensors, "
                         f"{reader.file_size / 1e6:.1f} MB")
        check.data = {"tensors": len(reader.tensors), "file_size": reader.file_size}
    check.seconds = time.perf_counter() - t0
    return reader


def _entries(reader: LmpReader) -> list[TensorEntry]:
    return [reader.tokenizer_entry, *reader.tensors]


def _advise(reader: LmpReader, advice: str) -> None:
    if hasattr(mmap, advice) and hasattr(reader.buffer, "madvise"):
        reader.buffer.madvise(getattr(mmap, advice))


def check_checksums(reader: LmpReader, check: Check, progress: Progress | None = None) -> None:
    """CRC-32C of every byte of the tokenizer and each tensor against the directory."""
    t0 = time.perf_counter()
    total = 0
    _advise(reader, "MADV_SEQUENTIAL")  # one front-to-back pass: deeper read-ahead from a cold disk
    buf = memoryview(reader.buffer)
    try:
        for e in _entries(reader):
            crc = 0
            for start in range(e.offset, e.offset + e.nbytes, CHUNK):
                end = min(start + CHUNK, e.offset + e.nbytes)
                piece = buf[start:end]
                crc = _core.crc32c(piece, crc)
                piece.release()
                if progress:
                    progress(end - start)
            total += e.nbytes
            if f"{crc:08x}" != e.crc32c:
                check.fail(f"checksum mismatch: stored {e.crc32c}, computed {crc:08x}", e.name)
    finally:
        buf.release()
        _advise(reader, "MADV_NORMAL")
    check.seconds = time.perf_counter() - t0
    gbps = total / check.seconds / 1e9 if check.seconds > 0 else float("inf")
    check.data = {"bytes": total, "gb_per_s": gbps, "hash": "crc32c"}
    if check.status != "fail":
        check.status = "pass"
    check.summary = (f"{len(_entries(reader))} ranges, {total / 1e6:.1f} MB at {gbps:.2f} GB/s"
                     + (f"; {check.problem_count} mismatched" if check.problem_count else ""))


ROUND_TRIP = "Hello, world! 12345 \u00e9t\u00e9 \u65e5\u672c \U0001f999\n  two  spaces\tand a tab."


def _load_tokenizer(kind: str, blob: bytes):
    """(encode(text) -> ids without BOS/EOS, decode(ids) -> text, number of ids, id -> token or None),
    straight from the library that runs each kind (not through the runtime)."""
    if kind == "sentencepiece":
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor()
        sp.LoadFromSerializedProto(blob)
        n = sp.get_piece_size()
        return sp.encode, sp.decode, n, lambda i: sp.id_to_piece(i) if 0 <= i < n else None
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(blob.decode("utf-8"))
    n = 1 + max(tok.get_vocab(with_added_tokens=True).values(), default=-1)
    return (lambda text: tok.encode(text, add_special_tokens=False).ids,
            lambda ids: tok.decode(ids, skip_special_tokens=False), n, tok.id_to_token)


def check_tokenizer(reader: LmpReader, check: Check) -> None:
    """The embedded tokenizer (either kind) loads, has no more ids than the vocabulary has rows,
    round-trips a mixed text, names the header's special tokens at the ids the config gives, and
    the chat templates compile and render a one-message conversation."""
    t0 = time.perf_counter()
    cfg = reader.config
    kind, fields = reader.tokenizer_kind, reader.tokenizer_fields
    try:
        encode, decode, n, token_of = _load_tokenizer(kind, reader.tokenizer_bytes)
    except Exception as e:  # sentencepiece and tokenizers raise bare exceptions with C++/serde text
        check.fail(f"{kind} cannot load it ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})",
                   "<tokenizer>")
        check.seconds = time.perf_counter() - t0
        return
    check.data = {"kind": kind, "pieces": n, "vocab_size": cfg.vocab_size}
    if n > cfg.vocab_size:
        check.fail(f"{n} tokens but the model's vocabulary has only {cfg.vocab_size} rows", "<tokenizer>")
    # sentencepiece models may normalize whitespace, so they round-trip a plain sentence instead
    text = ROUND_TRIP if kind != "sentencepiece" else "Hello world."
    ids = encode(text)
    if any(not 0 <= i < n for i in ids):
        check.fail("encoding gives ids outside the tokenizer", "<tokenizer>")
    elif decode(ids) != text:
        check.fail(f"ids do not round-trip: {text!r} decodes as {decode(ids)[:80]!r}", "<tokenizer>")
    for name, i in [("bos_id", cfg.bos_id), *(("eos_ids", e) for e in cfg.eos_ids)]:
        if not 0 <= i < cfg.vocab_size:
            check.fail(f"{name} {i} is outside the vocabulary", "<tokenizer>")
    specials = fields.get("special_tokens") or {}
    for key, ids in (("bos_token", [cfg.bos_id]), ("eos_token", cfg.eos_ids)):
        if specials.get(key) is not None and all(token_of(i) != specials[key] for i in ids):
            check.fail(f"{key} {specials[key]!r} is not the token at the config's {key[:3]} id(s) {ids}",
                       "<tokenizer>")
    templates = {"default": fields.get("chat_template"), **(fields.get("chat_templates") or {})}
    rendered = 0
    from lmpack.formats.chat_template import check_template

    for name, source in templates.items():
        if source is None:
            continue
        try:
            check_template(source, specials)
            rendered += 1
        except LmpackError as e:
            check.fail(f"chat template {name!r}: {e}", "<tokenizer>")
    if check.status != "fail":
        check.status = "pass"
        check.summary = f"{kind}, {n} tokens for a vocabulary of {cfg.vocab_size}"
        if n < cfg.vocab_size:  # embeddings padded to a round row count: common, and harmless
            check.summary += f" ({cfg.vocab_size - n} padding rows without a piece)"
        if rendered:
            check.summary += f"; {rendered} chat template{'s' if rendered > 1 else ''}"
    check.seconds = time.perf_counter() - t0


def _scan_float(reader: LmpReader, e: TensorEntry, progress: Progress | None) -> int:
    """Number of NaN/inf elements of a float tensor (0 fast: a max over masked bits per chunk)."""
    kind, mask, inf_bits = _NONFINITE[e.dtype]
    item = np.dtype(kind).itemsize
    step = CHUNK // item
    count = e.nbytes // item
    bad = 0
    scratch = np.empty(min(step, count), kind)
    for i in range(0, count, step):
        n = min(step, count - i)
        bits = np.frombuffer(reader.buffer, kind, n, e.offset + i * item)
        masked = np.bitwise_and(bits, kind(mask), out=scratch[:n])
        if masked.max() >= inf_bits:
            bad += int(np.count_nonzero(masked >= inf_bits))
        if progress:
            progress(n * item)
    return bad


def _scan_q8(reader: LmpReader, e: TensorEntry, progress: Progress | None) -> tuple[int, int]:
    """(non-finite fp16 scales, quants equal to -128) of a q8_0 tensor."""
    rows, cols = e.shape
    scales_at, _ = q8_0_planes(e.shape)
    nq, ns = rows * cols, rows * cols // Q8_0_BLOCK
    bad_q = 0
    for i in range(0, nq, CHUNK):
        n = min(CHUNK, nq - i)
        q = np.frombuffer(reader.buffer, np.int8, n, e.offset + i)
        if q.min() == -128:
            bad_q += int(np.count_nonzero(q == -128))
        if progress:
            progress(n)
    s = np.frombuffer(reader.buffer, np.uint16, ns, e.offset + scales_at)
    bad_s = int(np.count_nonzero((s & np.uint16(0x7FFF)) >= 0x7C00)) if ns else 0
    if progress:
        progress(ns * 2)
    return bad_s, bad_q


def check_values(reader: LmpReader, check: Check, progress: Progress | None = None) -> None:
    """No NaN or infinity in any float tensor; q8_0 scales finite and quants in [-127, 127]."""
    t0 = time.perf_counter()
    total = 0
    for e in reader.tensors:
        if e.dtype == "q8_0":
            bad_s, bad_q = _scan_q8(reader, e, progress)
            if bad_s:
                check.fail(f"{bad_s} q8_0 scales are NaN or infinite", e.name)
            if bad_q:
                check.fail(f"{bad_q} q8_0 quants are -128 (the quantizer only writes -127..127)", e.name)
        else:
            bad = _scan_float(reader, e, progress)
            if bad:
                check.fail(f"{bad} of {e.nbytes // np.dtype(_NONFINITE[e.dtype][0]).itemsize} values are NaN or infinite",
                           e.name)
        total += e.nbytes
    check.seconds = time.perf_counter() - t0
    gbps = total / check.seconds / 1e9 if check.seconds > 0 else float("inf")
    check.data = {"bytes": total, "gb_per_s": gbps}
    if check.status != "fail":
        check.status = "pass"
        check.summary = f"{len(reader.tensors)} tensors, all finite ({gbps:.2f} GB/s)"
