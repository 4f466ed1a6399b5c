"""What a `tokenizer.json` may hold before the `tokenizers` library is given it.

The library trusts its input: it sizes tables by the largest token id and panics (in Rust, past
Python's reach) on some malformed BPE models. Files from strangers are checked here first, by the
converter when it reads a folder and by the runtime when it loads an embedded tokenizer.
"""
from __future__ import annotations

from pathlib import Path

from lmpack.errors import LmpackError, brief

MAX_TOKEN_ID = (1 << 24) - 1  # the largest vocabulary a config may have (formats/arch.py MAX_DIM)


def check_tokenizer_json(text: str, path: Path | str) -> None:
    """Refuse what makes tokenizers misbehave before it sees the file: token ids past any possible
    vocabulary (tokenizers sizes tables by the largest id: 2^31 took 47 s and GBs), and a BPE
    continuing_subword_prefix longer than the second half of a merge (tokenizers panics in Rust)."""
    from lmpack.formats.jsonfile import parse_json

    doc = parse_json(text, str(path))
    added = doc.get("added_tokens") if isinstance(doc, dict) else None
    vocab = doc.get("model", {}).get("vocab") if isinstance(doc, dict) and isinstance(doc.get("model"), dict) else None
    ids = [t.get("id") for t in added if isinstance(t, dict)] if isinstance(added, list) else []
    if isinstance(vocab, dict):
        ids += list(vocab.values())
    elif isinstance(vocab, list):  # Unigram: [piece, score] pairs, ids are positions
        ids.append(len(vocab) - 1)
    big = [i for i in ids if isinstance(i, int) and not isinstance(i, bool) and not -1 <= i <= MAX_TOKEN_ID]
    if big:
        raise LmpackError(f"{path}: token id {brief(big[0])} is beyond any vocabulary (at most {MAX_TOKEN_ID})")
    model = doc.get("model") if isinstance(doc, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE":
        return
    prefix = model.get("continuing_subword_prefix")
    if not isinstance(prefix, str) or not prefix:
        return
    for merge in model.get("merges") or []:
        parts = merge.split(" ", 1) if isinstance(merge, str) else merge
        if isinstance(parts, list) and len(parts) == 2 and isinstance(parts[1], str) and \
                len(parts[1].encode("utf-8")) < len(prefix.encode("utf-8")):
            raise LmpackError(f"{path}: BPE continuing_subword_prefix {brief(prefix, 40)} is longer than the merge "
                              f"part {brief(parts[1], 40)}")
