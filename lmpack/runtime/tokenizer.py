"""Text <-> token ids with the tokenizer embedded in a `.lmp` file, and chat templates to ids.

Two kinds (docs/FORMAT.md): a sentencepiece model, run by sentencepiece with the file's BOS rule,
and a `tokenizer.json`, run by the `tokenizers` library exactly as transformers' fast tokenizer
runs it (the converter already applied transformers' load-time changes, so BOS/EOS come from
its post-processor). Both decode any id below the model's vocabulary size: ids past the
tokenizer's own (a padded embedding) decode to nothing.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Iterable

from lmpack.errors import LmpackError


class Tokenizer(ABC):
    """The stable API: `encode(text, bos=True)`, `decode(ids)`, `apply_chat_template(messages)`."""

    kind = ""

    def __init__(self, bos_id: int, eos_ids: Iterable[int], vocab_size: int, fields: dict[str, Any] | None = None):
        fields = fields or {}
        self.bos_id = bos_id
        self.eos_ids = frozenset(eos_ids)
        self.model_vocab_size = vocab_size
        self.special_tokens: dict[str, str] = dict(fields.get("special_tokens") or {})
        self.chat_template: str | None = fields.get("chat_template")
        self.chat_templates: dict[str, str] = dict(fields.get("chat_templates") or {})

    # -- per kind
    @abstractmethod
    def encode(self, text: str, bos: bool = True) -> list[int]:
        """Ids of `text`; `bos=True` adds what the model adds (transformers' add_special_tokens)."""

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, special tokens and padding-row ids left out."""

    @abstractmethod
    def piece(self, token_id: int) -> str:
        """The token's own spelling ("" for an id the tokenizer does not have)."""

    def _encode_plain(self, text: str) -> list[int]:
        """`text` without BOS/EOS, special-token text becoming the special tokens (for templates)."""
        return self.encode(text, bos=False)

    # -- chat templates
    def render_chat(self, messages: Any, add_generation_prompt: bool = True, template: str | None = None,
                    **template_kwargs: Any) -> str:
        """The conversation as text through the model's chat template (or a named one, or a template
        given as text); extra keyword arguments are template variables (e.g. `enable_thinking`), as in
        transformers, and override the special tokens of the same name."""
        from lmpack.formats.chat_template import render

        source = self.chat_templates.get(template, template) if template is not None else self.chat_template
        if source is None:
            raise LmpackError("this model has no chat template (its folder shipped none)")
        return render(source, messages, add_generation_prompt, {**self.special_tokens, **template_kwargs})

    def apply_chat_template(self, messages: Any, add_generation_prompt: bool = True, template: str | None = None,
                            **template_kwargs: Any) -> list[int]:
        """The conversation's ids, as transformers' `apply_chat_template(..., tokenize=True)` gives them:
        the rendered text encoded without adding BOS/EOS (the template writes its own)."""
        return self._encode_plain(self.render_chat(messages, add_generation_prompt, template, **template_kwargs))


class SentencePieceTokenizer(Tokenizer):
    """Encodes and decodes exactly as sentencepiece does, with the file's BOS id and rule."""

    kind = "sentencepiece"

    def __init__(self, model_bytes: bytes, bos_id: int, eos_ids: Iterable[int], vocab_size: int,
                 fields: dict[str, Any] | None = None):
        import sentencepiece as spm

        super().__init__(bos_id, eos_ids, vocab_size, fields)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model_bytes)
        except Exception as e:  # sentencepiece raises RuntimeError/OSError with C++ text
            raise LmpackError(f"embedded tokenizer does not load ({str(e).splitlines()[0] if str(e) else e})") from None
        if self._sp.get_piece_size() > vocab_size:
            raise LmpackError(f"tokenizer has {self._sp.get_piece_size()} pieces but the model only {vocab_size}")
        self.add_bos = (fields or {}).get("add_bos", True)
        self.legacy = (fields or {}).get("legacy", False)
        self.vocab_size = self._sp.get_piece_size()
        # Special tokens a chat template writes as text ("<s>", "</s>") that are single pieces.
        self._specials = {}
        for text in self.special_tokens.values():
            i = self._sp.piece_to_id(text)
            if self._sp.id_to_piece(i) == text:
                self._specials[text] = i

    def encode(self, text: str, bos: bool = True) -> list[int]:
        ids = self._sp.encode(text)
        return [self.bos_id, *ids] if bos and self.add_bos else ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; ids of embedding rows that have no piece (a vocabulary padded to a round
        size) decode to nothing, since a model can sample them."""
        return self._sp.decode(_in_range(ids, self.vocab_size))

    def _encode_plain(self, text: str) -> list[int]:
        """As transformers encodes a rendered chat: special-token text becomes the special token;
        the text after one gets sentencepiece's leading "▁" only for legacy tokenizers."""
        import re

        if not self._specials:
            return self._sp.encode(text)
        pattern = "|".join(re.escape(t) for t in sorted(self._specials, key=len, reverse=True))
        ids: list[int] = []
        pos, first = 0, True
        for m in re.finditer(pattern, text):
            ids += self._segment(text[pos:m.start()], first)
            ids.append(self._specials[m.group()])
            pos, first = m.end(), False
        return ids + self._segment(text[pos:], first)

    def _segment(self, text: str, first: bool) -> list[int]:
        if not text:
            return []
        if first or self.legacy:
            return self._sp.encode(text)
        # No dummy prefix: encode behind a newline (which takes the prefix and joins no piece with
        # the text after it) and drop the newline's ids.
        newline = self._sp.encode("\n")
        ids = self._sp.encode("\n" + text)
        return ids[len(newline):] if ids[:len(newline)] == newline else self._sp.encode(text)

    def piece(self, token_id: int) -> str:
        token_id = int(token_id)
        return self._sp.id_to_piece(token_id) if 0 <= token_id < self.vocab_size else ""


class HFTokenizer(Tokenizer):
    """A `tokenizer.json` run by the `tokenizers` library (the engine of transformers' fast tokenizers)."""

    kind = "tokenizers"

    def __init__(self, json_bytes: bytes, bos_id: int, eos_ids: Iterable[int], vocab_size: int,
                 fields: dict[str, Any] | None = None):
        from tokenizers import Tokenizer as Backend

        super().__init__(bos_id, eos_ids, vocab_size, fields)
        from lmpack.formats.tokenizer_json import check_tokenizer_json

        try:
            text = json_bytes.decode("utf-8")
            check_tokenizer_json(text, "embedded tokenizer.json")
            self._tok = Backend.from_str(text)
        except LmpackError:
            raise
        except BaseException as e:  # tokenizers raises a bare Exception with serde's text, or a Rust panic
            if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
                raise  # Ctrl-C and friends
            raise LmpackError(f"embedded tokenizer.json does not load ({str(e).splitlines()[0][:200] if str(e) else e})") from None
        self.vocab_size = token_count(self._tok)
        if self.vocab_size > vocab_size:
            raise LmpackError(f"tokenizer has {self.vocab_size} tokens but the model only {vocab_size}")
        self._clean_up = bool((fields or {}).get("clean_up_tokenization_spaces", False)) and \
            type(self._tok.model).__name__ != "BPE"  # transformers skips the clean-up for BPE models

    def encode(self, text: str, bos: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise LmpackError(f"encode takes a string, got {type(text).__name__}")
        return self._tok.encode(text, add_special_tokens=bool(bos)).ids

    def encode_batch(self, texts: list[str], bos: bool = True) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=bool(bos))]

    def decode(self, ids: Iterable[int]) -> str:
        # tokenizers skips ids it does not know (padding rows); only ids it cannot take as u32 go
        text = self._tok.decode(_in_range(ids, self.model_vocab_size), skip_special_tokens=True)
        return _clean_up(text) if self._clean_up else text

    def piece(self, token_id: int) -> str:
        return self._tok.id_to_token(int(token_id)) or ""


def token_count(tok) -> int:
    """1 + the largest id a `tokenizers` Tokenizer knows. Ids are almost always 0..n-1, which two
    lookups confirm; only otherwise is the whole vocabulary listed (slow for 100k+ tokens)."""
    n = tok.get_vocab_size(with_added_tokens=True)
    if n == 0 or (tok.id_to_token(n - 1) is not None and tok.id_to_token(n) is None):
        return n
    return 1 + max(tok.get_vocab(with_added_tokens=True).values(), default=-1)


def _in_range(ids: Iterable[int], n: int) -> list[int]:
    """`ids` without those outside 0..n-1 (padding rows); the common case, all in range, costs two
    C-speed passes (min, max) rather than a Python loop per token."""
    ids = ids if type(ids) is list else list(ids)
    if ids and (min(ids) < 0 or max(ids) >= n):
        return [i for i in ids if 0 <= i < n]
    return ids


def _clean_up(text: str) -> str:
    """transformers' `clean_up_tokenization`: no space before punctuation and English contractions."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
                 (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


KINDS = {"sentencepiece": SentencePieceTokenizer, "tokenizers": HFTokenizer}


def open_tokenizer(kind: str, blob: bytes, bos_id: int, eos_ids: Iterable[int], vocab_size: int,
                   fields: dict[str, Any] | None = None) -> Tokenizer:
    if kind not in KINDS:
        raise LmpackError(f"unsupported tokenizer kind {kind!r}")
    return KINDS[kind](blob, bos_id, eos_ids, vocab_size, fields)


class StreamDecoder:
    """Turns a growing list of generated ids into text pieces as soon as they are complete.

    sentencepiece drops the leading space of the first piece it decodes and byte-fallback tokens
    only form characters in groups (byte-level BPE too: one character's bytes may span tokens),
    so each step decodes from a fixed anchor token and emits the new suffix, holding back a
    trailing incomplete character.
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
        """What is still held back (an incomplete character at the end), as the tokenizer decodes it."""
        text = self._tok.decode(self._ids)
        piece = text[self._emitted:]
        self._emitted = len(text)
        return piece
