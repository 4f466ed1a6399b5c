"""Meta Llama 3's tiktoken `tokenizer.model` as the equivalent byte-level BPE `tokenizer.json`.

Meta's file is one `base64(token bytes) rank` line per token: tiktoken splits text with Llama 3's
regular expression and then, inside each piece, repeatedly joins the adjacent pair whose joined
bytes have the lowest rank. The same tokenization in a `tokenizers` BPE model: every token's bytes
spelled with the GPT-2 byte-to-character map, one merge for each way a token splits into two lower-
ranked tokens, ordered by the rank of the result, and `ignore_merges` (a piece that is a whole
token is taken as it is, as tiktoken does). Llama 3's 256 special tokens follow the ranks.
"""
from __future__ import annotations

import base64
import binascii
import json
import re

from lmpack.errors import LmpackError

# Llama 3's pre-tokenizer: contractions, words with one leading non-letter, numbers of 1-3 digits,
# punctuation runs, newlines, and whitespace (a run of spaces gives its last space to the next word).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
NUM_SPECIAL = 256
# The named special tokens at the start of the 256 (Llama 3.1 and later); the rest are reserved.
LLAMA31_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                   "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
                   "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
LLAMA30_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                   "<|reserved_special_token_1|>", "<|reserved_special_token_2|>", "<|reserved_special_token_3|>",
                   "<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
END_OF_GENERATION = ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")
# Llama 3's header format: <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|> per message.
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}\n"
    "{%- for message in messages %}\n"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n"
)
_LINE = re.compile(rb"([A-Za-z0-9+/]+={0,2}) (\d+)")


def byte_chars() -> list[str]:
    """GPT-2's byte -> character map: printable Latin-1 bytes stand for themselves, the other 68
    bytes take the characters from U+0100 on, so every byte string is a printable string."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [""] * 256, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def looks_like_tiktoken(data: bytes) -> bool:
    """True when the first line is `base64 rank`, the shape of a tiktoken ranks file."""
    first = data[:512].split(b"\n", 1)[0].strip()
    return bool(_LINE.fullmatch(first))


def read_ranks(data: bytes, where: str) -> list[bytes]:
    """The token byte strings in rank order; ranks must be 0..n-1, each once."""
    tokens: dict[int, bytes] = {}
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.fullmatch(line.strip())
        if not m:
            raise LmpackError(f"{where}: line {lineno} is not 'base64 rank' (not a tiktoken file)")
        try:
            token = base64.b64decode(m.group(1), validate=True)
        except (binascii.Error, ValueError):
            raise LmpackError(f"{where}: line {lineno}: bad base64") from None
        rank = int(m.group(2))
        if rank in tokens or not token:
            raise LmpackError(f"{where}: line {lineno}: rank {rank} repeated or an empty token")
        tokens[rank] = token
    if not tokens or sorted(tokens) != list(range(len(tokens))):
        raise LmpackError(f"{where}: ranks are not 0..{len(tokens) - 1}")
    ordered = [tokens[i] for i in range(len(tokens))]
    if len(set(ordered)) != len(ordered):
        raise LmpackError(f"{where}: a token appears under two ranks")
    present = set(ordered)
    missing = [b for b in range(256) if bytes([b]) not in present]
    if missing:  # byte-level BPE needs every byte as a token, or some text cannot be encoded
        raise LmpackError(f"{where}: a tiktoken file where byte 0x{missing[0]:02x} is not a token "
                          f"(byte-level BPE needs all 256)")
    return ordered


def merges_of(tokens: list[bytes]) -> list[tuple[bytes, bytes]]:
    """One merge per split of a token into two lower-ranked tokens, by rank of the result, then
    of the left and right parts."""
    rank = {t: i for i, t in enumerate(tokens)}
    merges = []
    for r, t in enumerate(tokens):
        splits = []
        for i in range(1, len(t)):
            a, b = rank.get(t[:i]), rank.get(t[i:])
            if a is not None and b is not None and a < r and b < r:
                splits.append((a, b))
        merges += [(tokens[a], tokens[b]) for a, b in sorted(splits)]
    return merges


def llama3_special_tokens(base: int, llama31: bool = True) -> list[str]:
    named = LLAMA31_SPECIAL if llama31 else LLAMA30_SPECIAL
    reserved_from = 3 if llama31 else 5
    return named + [f"<|reserved_special_token_{reserved_from + i}|>" for i in range(NUM_SPECIAL - len(named))]


def llama3_tokenizer_json(data: bytes, where: str, llama31: bool = True) -> str:
    """The `tokenizer.json` (as text) equivalent to a Meta Llama 3 tiktoken file, BOS added like HF's."""
    tokens = read_ranks(data, where)
    chars = byte_chars()

    def spell(b: bytes) -> str:
        return "".join(chars[x] for x in b)

    vocab = {spell(t): i for i, t in enumerate(tokens)}
    specials = llama3_special_tokens(len(tokens), llama31)
    base = len(tokens)
    bos = specials[0]
    doc = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": base + i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i, s in enumerate(specials)],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {bos: {"id": bos, "ids": [base], "tokens": [bos]}}}]},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": [[spell(a), spell(b)] for a, b in merges_of(tokens)]},
    }
    return json.dumps(doc, ensure_ascii=False)
