"""Text <-> token ids with the sentencepiece model embedded in a `.lmp` file."""
from __future__ import annotations

from typing import Iterable

import sentencepiece as spm

from lmpack.errors import LmpackError


class Tokenizer:
    """Encodes and decodes exactly as sentencepiece does, with the file's BOS id."""

    def __init__(self, model_bytes: bytes, bos_id: int, eos_ids: Iterable[int], vocab_size: int):
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model_bytes)
        except Exception as e:  # sentencepiece raises RuntimeError/OSError with C++ text
            raise LmpackError(f"embedded tokenizer does not load ({str(e).splitlines()[0] if str(e) else e})") from None
        if self._sp.get_piece_size() > vocab_size:
            raise LmpackError(f"tokenizer has {self._sp.get_piece_size()} pieces but the model only {vocab_size}")
        self.bos_id = bos_id
        self.eos_ids = frozenset(eos_ids)
        self.vocab_size = self._sp.get_piece_size()

    def encode(self, text: str, bos: bool = True) -> list[int]:
        ids = self._sp.encode(text)
        return [self.bos_id, *ids] if bos else ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; ids of embedding rows that have no piece (a vocabulary padded to a round
        size) decode to nothing, since a model can sample them."""
        n = self.vocab_size
        return self._sp.decode([i for i in map(int, ids) if 0 <= i < n])

    def piece(self, token_id: int) -> str:
        token_id = int(token_id)
        return self._sp.id_to_piece(token_id) if 0 <= token_id < self.vocab_size else ""


class StreamDecoder:
    """Turns a growing list of generated ids into text pieces as soon as they are complete.

    sentencepiece drops the leading space of the first piece it decodes and byte-fallback tokens
    only form characters in groups, so each step decodes from a fixed anchor token and emits the
    new suffix, holding back a trailing incomplete character.
    """

    def __init__(self, tokenizer: Tokenizer, anchor: list[int]):
        self._tok = tokenizer
        self._ids = list(anchor[-1:])  # one context token keeps the next piece's leading space
        self._emitted = len(tokenizer.decode(self._ids))

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        text = self._tok.decode(self._ids)
        if text.endswith("\ufffd"):
            return ""
        piece = text[self._emitted:]
        self._emitted = len(text)
        return piece

    def flush(self) -> str:
        """What is still held back (an incomplete character at the end), as sentencepiece decodes it."""
        text = self._tok.decode(self._ids)
        piece = text[self._emitted:]
        self._emitted = len(text)
        return piece
