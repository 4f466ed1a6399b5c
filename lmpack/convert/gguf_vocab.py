"""Tokenizers in GGUF metadata (`tokenizer.ggml.*`), in both directions.

Out: a sentencepiece model becomes llama.cpp's `llama` tokenizer — every piece with its score and
type, the special ids, whether BOS is added and whether a space is prefixed. In: a `llama`
tokenizer is rebuilt into a sentencepiece model with exactly those pieces, scores and types
(`lmpack.formats.spm_model`), so lmpack's runtime tokenizes as the original model did.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from lmpack.errors import LmpackError
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


def write_tokenizer(w: Any, kind: str, blob: bytes, config: ModelConfig) -> None:
    """Add the tokenizer keys for a `.lmp` tokenizer of `kind` to the gguf writer `w`."""
    if kind != "sentencepiece":
        raise LmpackError(f"GGUF export of a '{kind}' tokenizer is not supported")
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
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(config.bos_id)
    w.add_eos_token_id(config.eos_ids[0])
    if unk is not None:
        w.add_unk_token_id(unk)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(norm.add_dummy_prefix)
    w.add_remove_extra_whitespaces(norm.remove_extra_whitespaces)
    if config.chat_format == "llama2":
        w.add_chat_template(LLAMA2_CHAT_TEMPLATE)


def _ids(f: GgufFile, key: str, n: int) -> int | None:
    value = f.get(key, int, None)
    if value is not None and not 0 <= value < n:
        raise LmpackError(f"{f.path}: {key} {value} is outside the vocabulary of {n} tokens")
    return value


def read_tokenizer(f: GgufFile) -> tuple[str, bytes, int, list[int], str | None]:
    """(tokenizer kind, its bytes for a `.lmp`, bos id, eos ids, chat format) from a GGUF's keys."""
    gguf = gguf_module()
    T = gguf.Keys.Tokenizer
    model = f.get(T.MODEL, str)
    if model != "llama":
        raise LmpackError(f"{f.path}: tokenizer model '{model}' is not supported (lmpack reads 'llama', "
                          f"the sentencepiece kind)")
    tokens = f.get(T.LIST, list)
    n = len(tokens)
    if not n or not all(isinstance(t, str) for t in tokens):
        raise LmpackError(f"{f.path}: {T.LIST} must be a non-empty list of strings")
    scores = f.get(T.SCORES, np.ndarray, None)
    types = f.get(T.TOKEN_TYPE, np.ndarray, None)
    if scores is None:
        scores = np.zeros(n, np.float32)
    if types is None:
        types = np.full(n, spm_model.NORMAL)
    if len(scores) != n or len(types) != n or scores.dtype.kind != "f" or types.dtype.kind not in "iu":
        raise LmpackError(f"{f.path}: {T.SCORES} and {T.TOKEN_TYPE} must be numbers, one per token ({n})")
    bad = [int(t) for t in types if int(t) not in spm_model.PIECE_TYPES]
    if bad:
        raise LmpackError(f"{f.path}: unknown token type {bad[0]} in {T.TOKEN_TYPE}")
    unk = _ids(f, T.UNK_ID, n)
    if unk is None:
        unk = next((i for i, t in enumerate(types) if t == spm_model.UNKNOWN), None)
    if unk is None or int(types[unk]) != spm_model.UNKNOWN:
        raise LmpackError(f"{f.path}: the vocabulary has no unknown token (sentencepiece needs one)")
    bos = _ids(f, T.BOS_ID, n)
    eos = _ids(f, T.EOS_ID, n)
    if bos is None or eos is None:
        raise LmpackError(f"{f.path}: {T.BOS_ID} and {T.EOS_ID} are required")
    eos_ids = [eos]
    for k in (T.EOT_ID, T.EOM_ID):
        extra = _ids(f, k, n)
        if extra is not None and extra not in eos_ids:
            eos_ids.append(extra)
    norm = spm_model.Normalizer(add_dummy_prefix=f.get(T.ADD_PREFIX, bool, True),
                                remove_extra_whitespaces=f.get(T.REMOVE_EXTRA_WS, bool, False))
    pieces = [(t.encode("utf-8"), float(s), int(k)) for t, s, k in zip(tokens, scores, types)]
    # sentencepiece refuses a piece listed twice; llama.cpp's padding rows can repeat names
    seen: set[bytes] = set()
    for i, (p, s, k) in enumerate(pieces):
        if p in seen:
            raise LmpackError(f"{f.path}: token {i} ({p[:40]!r}) is listed twice")
        seen.add(p)
    blob = spm_model.build_model(pieces, unk_id=unk, bos_id=bos, eos_id=eos, normalizer=norm)
    _check_loads(f, blob)
    template = f.get(T.CHAT_TEMPLATE, str, None)
    chat_format = "llama2" if template is not None and "[INST]" in template else None
    return "sentencepiece", blob, bos, eos_ids, chat_format


def _check_loads(f: GgufFile, blob: bytes) -> None:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(blob)
    except Exception as e:  # sentencepiece raises RuntimeError with C++ text
        raise LmpackError(f"{f.path}: its vocabulary does not make a sentencepiece model "
                          f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
