"""Byte-level BPE tokenizers through GGUF's gpt2 fields and back: tokenizers trained here with the
`tokenizers` library in each pre-tokenizer layout lmpack maps (Llama 3's, Qwen2's, GPT-2's),
turned into GGUF tokens/types/merges/pre-name and rebuilt into a tokenizer.json that must encode
and decode every test line exactly as the original does.
"""
from __future__ import annotations

import json

import pytest

tokenizers = pytest.importorskip("tokenizers")

import checkpoints  # noqa: E402
from lmpack.convert import gguf_bpe  # noqa: E402
from lmpack.errors import LmpackError  # noqa: E402

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]


def train(pre: str, vocab_size: int = 600) -> tokenizers.Tokenizer:
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers

    want, ignore_merges, normalizer = gguf_bpe.PRE_TOKENIZERS[pre]
    t = tokenizers.Tokenizer(models.BPE(ignore_merges=ignore_merges))
    if want["type"] == "Sequence":
        regex = want["pretokenizers"][0]["pattern"]["Regex"]
        t.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if normalizer is not None:
        from tokenizers import normalizers

        t.normalizer = normalizers.NFC()
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t.train_from_iterator(checkpoints.corpus_lines(2000), trainer)
    t.add_tokens(["<tool>"])  # a non-special added token
    return t


LINES = checkpoints.corpus_lines(300, seed=5) + [
    "  two  spaces\n\nand lines\r\n", "🦙🦙 ünïcode 1234567 ", "<|eot_id|>inside<|end_of_text|> text <tool> x", "",
]


@pytest.mark.parametrize("pre", list(gguf_bpe.PRE_TOKENIZERS))
def test_round_trip_through_gguf_fields(pre):
    t = train(pre)
    blob = t.to_str().encode()
    n_rows = t.get_vocab_size() + 5  # a padded embedding
    tokens, types, merges, name, bos_added = gguf_bpe.to_gguf(blob, n_rows)
    assert bos_added is False
    assert name == pre
    assert len(tokens) == n_rows and types[-1] == gguf_bpe.UNUSED
    assert types[t.token_to_id("<|eot_id|>")] == gguf_bpe.CONTROL
    assert types[t.token_to_id("<tool>")] == gguf_bpe.USER_DEFINED
    assert all(len(m.split(" ")) == 2 for m in merges)
    bos = t.token_to_id("<|begin_of_text|>")
    back = tokenizers.Tokenizer.from_str(gguf_bpe.from_gguf(tokens, types, merges, name, bos, False).decode())
    for line in LINES:
        ids = t.encode(line).ids
        assert back.encode(line).ids == ids, line
        assert back.decode(ids, skip_special_tokens=False) == t.decode(ids, skip_special_tokens=False)
    with_bos = tokenizers.Tokenizer.from_str(gguf_bpe.from_gguf(tokens, types, merges, name, bos, True).decode())
    assert with_bos.encode("hello world").ids == [bos] + t.encode("hello world").ids


def test_unknown_pre_tokenizers_and_models_are_refused():
    t = train("qwen2")
    doc = json.loads(t.to_str())
    doc["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\w+|\s+"
    with pytest.raises(LmpackError, match="not one llama.cpp implements"):
        gguf_bpe.to_gguf(json.dumps(doc).encode(), 1000)
    doc = json.loads(t.to_str())
    doc["model"]["ignore_merges"] = True  # Qwen2's split with Llama 3's whole-word lookup: no such name
    with pytest.raises(LmpackError, match="not one llama.cpp implements"):
        gguf_bpe.to_gguf(json.dumps(doc).encode(), 1000)
    with pytest.raises(LmpackError, match="embedding rows"):
        gguf_bpe.to_gguf(t.to_str().encode(), 10)
    with pytest.raises(LmpackError, match="pre-tokenizer 'tekken'"):
        gguf_bpe.from_gguf(["a"], [1], [], "tekken", None, False)


@pytest.mark.parametrize("tok_family,model_type,pre", [("qwen2", "qwen2", "qwen2"), ("llama3", "llama", "llama-bpe")])
def test_tokenizer_json_model_through_gguf(tok_family, model_type, pre, tmp_path):
    """A model with a family's tokenizer.json -> GGUF (gpt2 tokenizer) -> .lmp: the tokenizer and
    chat template come back and encode, decode and render exactly as the direct conversion's."""

    gguf = pytest.importorskip("gguf")
    import hf_tokenizers
    import lmpack
    from lmpack.convert import convert

    tok_dir = hf_tokenizers.FAMILIES[tok_family](tmp_path / "tok")
    model = checkpoints.make_family_checkpoint(tmp_path / "model", model_type, tokenizer=None, tokenizer_files=tok_dir,
                                               vocab_size=hf_tokenizers.n_tokens(tok_dir))
    direct = convert(model.path, tmp_path / "direct.lmp")
    gg = convert(model.path, tmp_path / "m.gguf", dtype="q8_0")
    r = gguf.GGUFReader(gg)
    assert r.fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert r.fields["tokenizer.ggml.pre"].contents() == pre
    assert r.fields["tokenizer.ggml.add_bos_token"].contents() == (tok_family == "llama3")
    assert "tokenizer.chat_template" in r.fields
    back = convert(gg, tmp_path / "back.lmp")
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    with lmpack.load(direct) as a, lmpack.load(back) as b:
        for line in LINES:
            ids = a.tokenizer.encode(line)
            assert b.tokenizer.encode(line) == ids, line
            assert b.tokenizer.decode(ids) == a.tokenizer.decode(ids)
        assert b.tokenizer.apply_chat_template(msgs, add_generation_prompt=True) == \
            a.tokenizer.apply_chat_template(msgs, add_generation_prompt=True)
        assert b.config.bos_id == a.config.bos_id
