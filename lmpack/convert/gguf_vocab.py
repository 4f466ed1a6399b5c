"""Tokenizers in GGUF metadata (`tokenizer.ggml.*`), in both directions.

Out: a sentencepiece model becomes llama.cpp's `llama` tokenizer — every piece with its score and
type, whether a space is prefixed — and a byte-level BPE tokenizer.json its `gpt2` tokenizer
(`gguf_bpe`); with either go the special ids, whether BOS is added and the chat template. In: a
`llama` tokenizer is rebuilt into a sentencepiece model with exactly those pieces, scores and
types (`lmpack.formats.spm_model`), a `gpt2` one into a tokenizer.json, so lmpack's runtime
tokenizes as the original model did.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from lmpack.errors import LmpackError, LmpackWarning
from lmpack.convert import gguf_bpe
from lmpack.convert.tokenizer_files import TokenizerFiles
from lmpack.formats import spm_model
from lmpack.formats.config import ModelConfig
from lmpack.formats.gguf import GgufFile, gguf_module


# The Llama 2 chat format lmpack's chat runs (runtime/chat.py) as a Jinja chat template, for files
# whose config names the format but carries no template: llama.cpp recognises it by its [INST].
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = '<<SYS>>\n' + messages[0]['content'] + '\n<</SYS>>\n\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
    "{% for m in turns %}"
    "{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + (system if loop.first else '') + m['content'] + ' [/INST]' }}"
    "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)


def write_tokenizer(w: Any, kind: str, blob: bytes, config: ModelConfig, fields: dict[str, Any] | None = None) -> None:
    """Add the tokenizer keys for a `.lmp` tokenizer of `kind` (with the header's tokenizer
    `fields`: add_bos, chat_template) to the gguf writer `w`."""
    fields = fields or {}
    if kind == "sentencepiece":
        tokens = _write_sentencepiece(w, blob, config)
        add_bos = fields.get("add_bos", True)
    elif kind == "tokenizers":
        tokens, types, merges, pre, bos_added = gguf_bpe.to_gguf(blob, config.vocab_size)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        add_bos = fields.get("add_bos", bos_added)
    else:
        raise LmpackError(f"GGUF export of a '{kind}' tokenizer is not supported")
    w.add_bos_token_id(config.bos_id)
    _write_end_ids(w, config.eos_ids, tokens)
    w.add_add_bos_token(bool(add_bos))
    w.add_add_eos_token(False)
    template = fields.get("chat_template")
    if template is None and config.chat_format == "llama2":
        template = LLAMA2_CHAT_TEMPLATE
    if template:
        w.add_chat_template(template)


def _write_sentencepiece(w: Any, blob: bytes, config: ModelConfig) -> list[bytes]:
    gguf = gguf_module()
    vocab = spm_model.vocabulary(blob)
    norm = spm_model.read_normalizer(blob)
    if len(vocab) > config.vocab_size:
        raise LmpackError(f"the tokenizer has {len(vocab)} pieces but the model only {config.vocab_size} rows")
    tokens = [p.encode("utf-8") for p, _, _ in vocab]
    scores = [s for _, s, _ in vocab]
    types = [t for _, _, t in vocab]
    # an embedding larger than the vocabulary (rows padded for speed): llama.cpp wants a token per row
    for i in range(len(vocab), config.vocab_size):
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    unk = next((i for i, t in enumerate(types) if t == spm_model.UNKNOWN), None)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    if unk is not None:
        w.add_unk_token_id(unk)
    w.add_add_space_prefix(norm.add_dummy_prefix)
    w.add_remove_extra_whitespaces(norm.remove_extra_whitespaces)
    return tokens


# The text of the end-of-message token (Llama 3.1's tool calls end with it); llama.cpp keeps an
# id for it beside end-of-text and end-of-turn.
EOM_TEXTS = ("<|eom_id|>",)
# End-of-turn tokens of the chat formats of the families lmpack runs (Llama 3, Qwen, Gemma, Phi-3):
# preferred for the eot id when a config lists more end ids than GGUF has keys for.
EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>")


def _write_end_ids(w: Any, eos_ids: list[int], tokens: list) -> None:
    """Every id generation stops at, in the keys llama.cpp has for them: the first is EOS, one
    whose text is an end-of-message token is EOM, the next other one EOT. llama.cpp stops at all
    three (and at tokens it recognises by their text)."""
    def text(i: int) -> str:
        t = tokens[i] if i < len(tokens) else ""
        return t.decode("utf-8", "replace") if isinstance(t, bytes) else t

    w.add_eos_token_id(eos_ids[0])
    rest = list(dict.fromkeys(i for i in eos_ids[1:] if i != eos_ids[0]))
    eom = next((i for i in rest if text(i) in EOM_TEXTS), None)
    if eom is not None:
        w.add_eom_token_id(eom)
        rest.remove(eom)
    if rest:
        eot = next((i for i in rest if text(i) in EOT_TEXTS), rest[0])
        w.add_eot_token_id(eot)
        rest.remove(eot)
    if rest:
        warnings.warn(f"GGUF holds three end-of-generation ids (eos, eot, eom); id{'s' if len(rest) > 1 else ''} "
                      f"{', '.join(map(str, rest))} ({', '.join(repr(text(i)) for i in rest)}) stop llama.cpp only "
                      f"if it recognises the text", LmpackWarning, stacklevel=2)


def _ids(f: GgufFile, key: str, n: int) -> int | None:
    value = f.get(key, int, None)
    if value is not None and not 0 <= value < n:
        raise LmpackError(f"{f.path}: {key} {value} is outside the vocabulary of {n} tokens")
    return value


def read_tokenizer(f: GgufFile) -> TokenizerFiles:
    """The tokenizer a `.lmp` embeds for a GGUF's keys: its kind and bytes, the header fields
    (add_bos, special tokens, chat template), BOS and EOS ids. `header["chat_format"]` is the
    config's chat format (taken out by the caller)."""
    gguf = gguf_module()
    T = gguf.Keys.Tokenizer
    model = f.get(T.MODEL, str)
    tokens = f.get(T.LIST, list)
    n = len(tokens)
    if not n or not all(isinstance(t, str) for t in tokens):
        raise LmpackError(f"{f.path}: {T.LIST} must be a non-empty list of strings")
    types = f.get(T.TOKEN_TYPE, np.ndarray, None)
    if types is None:
        types = np.full(n, spm_model.NORMAL)
    if len(types) != n or types.dtype.kind not in "iu":
        raise LmpackError(f"{f.path}: {T.TOKEN_TYPE} must be integers, one per token ({n})")
    bad = [int(t) for t in types if int(t) not in spm_model.PIECE_TYPES]
    if bad:
        raise LmpackError(f"{f.path}: unknown token type {bad[0]} in {T.TOKEN_TYPE}")
    bos = _ids(f, T.BOS_ID, n)
    eos = _ids(f, T.EOS_ID, n)
    if bos is None or eos is None:
        raise LmpackError(f"{f.path}: {T.BOS_ID} and {T.EOS_ID} are required")
    # EOS first, then EOT and EOM in id order (as configs list them: Llama 3.1's end of text, end of
    # message, end of turn)
    extra = {_ids(f, k, n) for k in (T.EOT_ID, T.EOM_ID)} - {None, eos}
    eos_ids = [eos, *sorted(extra)]
    template = f.get(T.CHAT_TEMPLATE, str, None)
    chat_format = "llama2" if template is not None and "[INST]" in template else None
    fields: dict[str, Any] = {"special_tokens": {"bos_token": tokens[bos], "eos_token": tokens[eos]}}
    if template is not None:
        fields["chat_template"] = template
    if model == "llama":
        kind, blob = "sentencepiece", _sentencepiece(f, tokens, types)
        fields["add_bos"] = f.get(T.ADD_BOS, bool, True)
    elif model == "gpt2":
        merges = f.get(T.MERGES, list)
        if not all(isinstance(m, str) for m in merges):
            raise LmpackError(f"{f.path}: {T.MERGES} must be a list of strings")
        add_bos = f.get(T.ADD_BOS, bool, False)
        kind = "tokenizers"
        blob = gguf_bpe.from_gguf(tokens, [int(t) for t in types], merges, f.get(T.PRE, str, "default"),
                                  bos, add_bos)
        fields["add_bos"] = add_bos
    else:
        raise LmpackError(f"{f.path}: tokenizer model '{model}' is not supported (lmpack reads 'llama', "
                          f"the sentencepiece kind, and 'gpt2', byte-level BPE)")
    return TokenizerFiles(kind, blob, {**fields, "chat_format": chat_format}, {}, bos, eos_ids, n)


def _sentencepiece(f: GgufFile, tokens: list[str], types: np.ndarray) -> bytes:
    """A sentencepiece model with a `llama` vocabulary's pieces, scores and types."""
    T = gguf_module().Keys.Tokenizer
    n = len(tokens)
    scores = f.get(T.SCORES, np.ndarray, None)
    if scores is None:
        scores = np.zeros(n, np.float32)
    if len(scores) != n or scores.dtype.kind != "f":
        raise LmpackError(f"{f.path}: {T.SCORES} must be numbers, one per token ({n})")
    unk = _ids(f, T.UNK_ID, n)
    if unk is None:
        unk = next((i for i, t in enumerate(types) if t == spm_model.UNKNOWN), None)
    if unk is None or int(types[unk]) != spm_model.UNKNOWN:
        raise LmpackError(f"{f.path}: the vocabulary has no unknown token (sentencepiece needs one)")
    bos = _ids(f, T.BOS_ID, n)
    eos = _ids(f, T.EOS_ID, n)
    norm = spm_model.Normalizer(add_dummy_prefix=f.get(T.ADD_PREFIX, bool, True),
                                remove_extra_whitespaces=f.get(T.REMOVE_EXTRA_WS, bool, False))
    pieces = [(t.encode("utf-8"), float(s), int(k)) for t, s, k in zip(tokens, scores, types)]
    # sentencepiece refuses a piece listed twice
    seen: set[bytes] = set()
    for i, (p, _, _) in enumerate(pieces):
        if p in seen:
            raise LmpackError(f"{f.path}: token {i} ({p[:40]!r}) is listed twice")
        seen.add(p)
    blob = spm_model.build_model(pieces, unk_id=unk, bos_id=bos, eos_id=eos, normalizer=norm)
    _check_loads(f, blob)
    return blob


def _check_loads(f: GgufFile, blob: bytes) -> None:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(blob)
    except Exception as e:  # sentencepiece raises RuntimeError with C++ text
        raise LmpackError(f"{f.path}: its vocabulary does not make a sentencepiece model "
                          f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
