"""Byte-level BPE vocabularies between `tokenizer.json` and GGUF's `gpt2` tokenizer.

llama.cpp keeps a byte-level BPE tokenizer as its tokens (in id order), their types, the merges
("a b" strings, best first) and the name of a pre-tokenizer it implements in C++ (how text is
split before merging). `tokenizer.json` holds the same vocabulary and merges and spells the
pre-tokenizer out as regexes. The names llama.cpp knows are matched here against the JSON of the
`tokenizers` pre-tokenizer that does the same split (PRE_TOKENIZERS), in both directions: a
tokenizer whose split is none of them is refused rather than exported with a wrong name.
"""
from __future__ import annotations

import json
from typing import Any

from lmpack.errors import LmpackError

# GGUF token types (gguf.TokenType)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5

_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _split_then_bytes(regex: str) -> dict[str, Any]:
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}


# llama.cpp's pre-tokenizer name -> (the tokenizers pre-tokenizer with the same split, whether the
# BPE model looks a whole word up before merging: Llama 3's `ignore_merges`, which llama.cpp's
# llama-bpe pre-tokenizer implies; the normalizer the family's tokenizer.json has: Qwen2's NFC,
# which llama.cpp does not apply, so only text that is not already NFC tokenizes differently there)
PRE_TOKENIZERS: dict[str, tuple[dict[str, Any], bool, dict[str, Any] | None]] = {
    "llama-bpe": (_split_then_bytes(_LLAMA3_SPLIT), True, None),
    "qwen2": (_split_then_bytes(_QWEN2_SPLIT), False, {"type": "NFC"}),
    "gpt-2": ({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}, False, None),
}


def _canonical(pre: Any) -> Any:
    """A pre-tokenizer's JSON without the fields that only affect offsets."""
    if isinstance(pre, dict):
        return {k: _canonical(v) for k, v in pre.items() if k != "trim_offsets"}
    if isinstance(pre, list):
        return [_canonical(v) for v in pre]
    return pre


def pre_tokenizer_name(tokenizer: dict[str, Any]) -> str:
    """llama.cpp's name for a tokenizer.json's pre-tokenizer, or an LmpackError."""
    pre = _canonical(tokenizer.get("pre_tokenizer"))
    ignore = bool((tokenizer.get("model") or {}).get("ignore_merges", False))
    norm = tokenizer.get("normalizer")
    for name, (want, want_ignore, want_norm) in PRE_TOKENIZERS.items():
        if pre == _canonical(want) and ignore == want_ignore and norm in (None, want_norm):
            return name
    raise LmpackError("the tokenizer's pre-tokenizer is not one llama.cpp implements "
                      f"(lmpack maps: {', '.join(PRE_TOKENIZERS)})")


def adds_bos(tokenizer: dict[str, Any]) -> bool:
    """Whether a tokenizer.json's post-processor puts a special token before the text (BOS)."""
    post = tokenizer.get("post_processor") or {}
    steps = post.get("processors", []) if post.get("type") == "Sequence" else [post]
    for step in steps:
        if isinstance(step, dict) and step.get("type") == "TemplateProcessing":
            single = step.get("single") or []
            return bool(single) and isinstance(single[0], dict) and "SpecialToken" in single[0]
    return False


def to_gguf(tokenizer_json: bytes, n_rows: int) -> tuple[list[str], list[int], list[str], str, bool]:
    """(tokens in id order, token types, merges, pre-tokenizer name, whether BOS is added) of a
    byte-level BPE tokenizer.json, padded with unused tokens to the model's `n_rows` embedding rows."""
    try:
        tok = json.loads(tokenizer_json)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LmpackError(f"tokenizer.json is not valid JSON ({e})") from None
    model = tok.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise LmpackError(f"GGUF export handles BPE tokenizers (this one is {model.get('type')!r})")
    if model.get("byte_fallback"):
        raise LmpackError("GGUF's gpt2 tokenizer is byte-level BPE; this tokenizer.json has byte fallback")
    pre = pre_tokenizer_name(tok)
    by_id: dict[int, tuple[str, int]] = {}
    for text, i in model["vocab"].items():
        by_id[int(i)] = (text, NORMAL)
    for added in tok.get("added_tokens") or []:
        by_id[int(added["id"])] = (added["content"], CONTROL if added.get("special") else USER_DEFINED)
    n = max(n_rows, max(by_id) + 1)
    if n > n_rows:
        raise LmpackError(f"the tokenizer has ids up to {n - 1} but the model only {n_rows} embedding rows")
    tokens, types = [], []
    for i in range(n):
        text, kind = by_id.get(i, (f"[PAD{i}]", UNUSED))
        tokens.append(text)
        types.append(kind)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return tokens, types, merges, pre, adds_bos(tok)


def from_gguf(tokens: list[str], types: list[int], merges: list[str], pre: str, bos_id: int | None,
              add_bos: bool) -> bytes:
    """A tokenizer.json equivalent to GGUF's gpt2 tokenizer fields (for the `tokenizers` library)."""
    if pre not in PRE_TOKENIZERS:
        raise LmpackError(f"pre-tokenizer '{pre}' is not one lmpack can rebuild (known: {', '.join(PRE_TOKENIZERS)})")
    pre_json, ignore_merges, normalizer = PRE_TOKENIZERS[pre]
    vocab, added = {}, []
    for i, (text, kind) in enumerate(zip(tokens, types)):
        if kind in (CONTROL, USER_DEFINED):
            added.append({"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": kind == USER_DEFINED, "special": kind == CONTROL})
        if kind != UNUSED:
            if text in vocab:
                raise LmpackError(f"token {i} ({text[:40]!r}) is listed twice")
            vocab[text] = i
    pairs = []
    for m in merges:
        parts = m.split(" ")
        if len(parts) != 2:
            raise LmpackError(f"merge {m[:40]!r} is not two tokens")
        pairs.append(parts)
    post = None
    if add_bos and bos_id is not None:
        bos = tokens[bos_id]
        post = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}
    doc = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": normalizer,
        "pre_tokenizer": pre_json, "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": ignore_merges, "vocab": vocab, "merges": pairs},
    }
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")
