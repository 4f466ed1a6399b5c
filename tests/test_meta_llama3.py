"""Meta Llama 3 folders: the tiktoken tokenizer.model becomes the byte-level BPE that transformers'
TikTokenConverter makes of it (and that tiktoken itself runs): same ids for awkward text, Llama 3's
pre-tokenizer pattern, its 256 special tokens at their ids, every end-of-turn id as EOS."""
from __future__ import annotations

import json

import pytest

import hf_tokenizers as H
import lmpack
import torch_sources
from lmpack.convert.meta import MetaSource
from test_hf_tokenizers import AWKWARD


@pytest.fixture(scope="module", params=[True, False], ids=["llama3.1", "llama3.0"])
def meta_llama3(request, tmp_path_factory, hf_checkpoint, converted):
    llama31 = request.param
    tok_dir = H.llama3_tiktoken(tmp_path_factory.mktemp("tiktoken") / "tok", llama31)
    n = H.n_tokens(tok_dir)
    ckpt = hf_checkpoint(tokenizer=None, tokenizer_files=tok_dir, vocab=n, dims=dict(dim=64, n_heads=2, ffn_dim=160),
                         special_ids={"bos_token_id": n - 256, "eos_token_id": n - 255})
    meta = torch_sources.hf_to_meta(ckpt.path, tmp_path_factory.mktemp("meta") / "original", mp=2, embed_dim=0,
                                    extra_params={"vocab_size": n, "use_scaled_rope": llama31} if llama31 else
                                    {"vocab_size": n})
    assert not (meta / "tokenizer.json").exists()  # the Meta folder has only the tiktoken file
    return llama31, ckpt, meta, tok_dir


def test_tiktoken_becomes_hf_equivalent_bpe(meta_llama3, tmp_path):
    llama31, ckpt, meta, tok_dir = meta_llama3
    m = lmpack.load(lmpack.convert.convert(meta, tmp_path / "m.lmp"), threads=1)
    ref = H.auto_tokenizer(tok_dir)
    enc = H.tiktoken_encoding(tok_dir, llama31)
    assert m.tokenizer.kind == "tokenizers"
    for text in AWKWARD:
        ids = m.tokenizer.encode(text, bos=False)
        assert ids == ref(text, add_special_tokens=False)["input_ids"], text
        assert ids == enc.encode(text, allowed_special="all"), text
        assert m.tokenizer.encode(text, bos=True) == ref(text)["input_ids"]
        assert m.tokenizer.decode(ids) == ref.decode(ids, skip_special_tokens=True)


def test_llama3_pattern_and_special_tokens(meta_llama3, tmp_path):
    llama31, ckpt, meta, _ = meta_llama3
    src = MetaSource(meta)
    try:
        tok = src.tokenizer()
        doc = json.loads(tok.blob)
        assert doc["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] == H.LLAMA3_PATTERN
        base = src.config().vocab_size - 256
        added = {t["id"]: t["content"] for t in doc["added_tokens"]}
        assert [added[base + i] for i in range(256)] == H.llama3_specials(llama31)
        assert all(t["special"] for t in doc["added_tokens"])
        cfg = src.config()
        assert cfg.bos_id == base
        want_eos = {base + 1, base + 9} | ({base + 8} if llama31 else set())
        assert set(cfg.eos_token_ids) == want_eos
        assert "<|start_header_id|>" in tok.header["chat_template"]
    finally:
        src.close()


def test_meta_llama3_chat_and_logits(meta_llama3, tmp_path):
    import numpy as np

    llama31, ckpt, meta, _ = meta_llama3
    m = lmpack.load(lmpack.convert.convert(meta, tmp_path / "m.lmp"), threads=1)
    ids = m.tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "Hello"}])
    text = m.tokenizer._tok.decode(ids, skip_special_tokens=False)
    assert text == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    if llama31:  # use_scaled_rope gives the Meta file Llama 3.1's RoPE scaling, which the HF twin lacks
        return
    want = ckpt.reference_logits(ids)
    np.testing.assert_allclose(m.logits(ids), want, rtol=0, atol=2e-4 * float(np.std(want)) + 1e-5)
