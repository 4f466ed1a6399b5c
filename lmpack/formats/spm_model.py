"""sentencepiece model files (`tokenizer.model`) built from, and read as, a plain vocabulary.

GGUF's `llama` tokenizer and llama2.c's `tokenizer.bin` keep only what encoding needs: each
piece's text, score and type, plus a few flags. sentencepiece reads a serialized `ModelProto`
(protobuf), so bringing those vocabularies into lmpack (whose runtime tokenizes with
sentencepiece itself) means writing that protobuf: a BPE model whose pieces, scores and types are
exactly the given ones. This module writes the few fields that takes, and reads back the
normalizer flags of an existing model, with protobuf's wire format (varints and length-prefixed
fields) and no protobuf dependency. Field numbers are those of sentencepiece_model.proto.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterator, Sequence

from lmpack.errors import LmpackError

# SentencePiece.Type, numbered as GGUF's TokenType numbers them too
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
PIECE_TYPES = (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE)
BPE = 2  # TrainerSpec.ModelType
WHITESPACE = "\u2581"  # how sentencepiece spells a space inside pieces

# ModelProto fields
_PIECES, _TRAINER, _NORMALIZER = 1, 2, 3
# SentencePiece fields
_PIECE, _SCORE, _TYPE = 1, 2, 3
# TrainerSpec fields
_MODEL_TYPE, _VOCAB_SIZE, _ALLOW_WS_ONLY, _BYTE_FALLBACK = 3, 4, 26, 35
_UNK_ID, _BOS_ID, _EOS_ID, _PAD_ID = 40, 41, 42, 43
# NormalizerSpec fields
_NAME, _CHARSMAP, _ADD_DUMMY_PREFIX, _REMOVE_EXTRA_WS, _ESCAPE_WS = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class Normalizer:
    """The normalizer settings that change how text is split: a leading space, and collapsing
    runs of spaces. `name` is sentencepiece's rule name ("identity" for Llama's)."""

    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = False
    name: str = "identity"
    has_charsmap: bool = False


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # protobuf encodes negative int32 as their 64-bit two's complement
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_varint(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _field_bytes(field: int, value: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(value)) + value


def _field_float(field: int, value: float) -> bytes:
    return _varint(field << 3 | 5) + struct.pack("<f", value)


def build_model(pieces: Sequence[tuple[bytes, float, int]], *, unk_id: int, bos_id: int, eos_id: int,
                normalizer: Normalizer = Normalizer(), pad_id: int = -1) -> bytes:
    """A serialized BPE sentencepiece model with exactly these (piece UTF-8, score, type) entries.

    Byte fallback is on when BYTE pieces exist. Whitespace-only pieces are allowed, as in Llama's
    own model (llama.cpp's SPM tokenizer never splits words apart before merging, so a vocabulary
    from a GGUF may hold such pieces)."""
    if not pieces:
        raise LmpackError("a tokenizer vocabulary is empty")
    body = bytearray()
    byte_fallback = False
    for text, score, kind in pieces:
        if kind not in PIECE_TYPES:
            raise LmpackError(f"token type {kind} is not a sentencepiece piece type")
        byte_fallback |= kind == BYTE
        body += _field_bytes(_PIECES, _field_bytes(_PIECE, text) + _field_float(_SCORE, score) +
                             _field_varint(_TYPE, kind))
    trainer = (_field_varint(_MODEL_TYPE, BPE) + _field_varint(_VOCAB_SIZE, len(pieces)) +
               _field_varint(_ALLOW_WS_ONLY, 1) + _field_varint(_BYTE_FALLBACK, int(byte_fallback)) +
               _field_varint(_UNK_ID, unk_id) + _field_varint(_BOS_ID, bos_id) + _field_varint(_EOS_ID, eos_id) +
               _field_varint(_PAD_ID, pad_id))
    norm = (_field_bytes(_NAME, normalizer.name.encode()) +
            _field_varint(_ADD_DUMMY_PREFIX, int(normalizer.add_dummy_prefix)) +
            _field_varint(_REMOVE_EXTRA_WS, int(normalizer.remove_extra_whitespaces)) +
            _field_varint(_ESCAPE_WS, 1))
    body += _field_bytes(_TRAINER, trainer) + _field_bytes(_NORMALIZER, norm)
    return bytes(body)


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of each field in one protobuf message; LmpackError if malformed."""
    pos, end = 0, len(buf)

    def varint() -> int:
        nonlocal pos
        shift = value = 0
        while True:
            if pos >= end or shift > 63:
                raise LmpackError("tokenizer.model: malformed (truncated varint)")
            b = buf[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7

    while pos < end:
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            yield field, wire, varint()
        elif wire == 1 or wire == 5:
            n = 8 if wire == 1 else 4
            if pos + n > end:
                raise LmpackError("tokenizer.model: malformed (truncated field)")
            yield field, wire, buf[pos:pos + n]
            pos += n
        elif wire == 2:
            n = varint()
            if n > end - pos:
                raise LmpackError("tokenizer.model: malformed (a field runs past the end)")
            yield field, wire, buf[pos:pos + n]
            pos += n
        else:
            raise LmpackError(f"tokenizer.model: malformed (wire type {wire})")


def read_normalizer(model: bytes) -> Normalizer:
    """The normalizer settings of a serialized sentencepiece model (proto2 defaults where absent)."""
    spec = b""
    for field, wire, value in _fields(model):
        if field == _NORMALIZER and wire == 2:
            spec = value
    settings = {"add_dummy_prefix": True, "remove_extra_whitespaces": True, "name": "", "has_charsmap": False}
    for field, wire, value in _fields(spec):
        if field == _NAME and wire == 2:
            settings["name"] = bytes(value).decode("utf-8", "replace")
        elif field == _CHARSMAP and wire == 2:
            settings["has_charsmap"] = len(value) > 0
        elif field == _ADD_DUMMY_PREFIX and wire == 0:
            settings["add_dummy_prefix"] = bool(value)
        elif field == _REMOVE_EXTRA_WS and wire == 0:
            settings["remove_extra_whitespaces"] = bool(value)
    return Normalizer(**settings)


def vocabulary(model: bytes) -> list[tuple[str, float, int]]:
    """(piece, score, type) of every piece of a serialized sentencepiece model, as stored in it."""
    out = []
    for field, wire, value in _fields(model):
        if field != _PIECES or wire != 2:
            continue
        text, score, kind = b"", 0.0, NORMAL
        for f, w, v in _fields(value):
            if f == _PIECE and w == 2:
                text = bytes(v)
            elif f == _SCORE and w == 5:
                score = struct.unpack("<f", v)[0]
            elif f == _TYPE and w == 0:
                kind = v
        if kind not in PIECE_TYPES:
            raise LmpackError(f"tokenizer.model: piece {len(out)} has unknown type {kind}")
        try:
            out.append((text.decode("utf-8"), score, kind))
        except UnicodeDecodeError:
            raise LmpackError(f"tokenizer.model: piece {len(out)} is not UTF-8") from None
    return out
