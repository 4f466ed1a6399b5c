"""The tokenizer embedded in a `.lmp` file against sentencepiece on the original tokenizer.model:
same ids from encode, same text from decode, BOS handling, and round trips — with a tokenizer
trained at test time (always) and the real Llama 2 tokenizer (when ../shared/fixtures has it).
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sentencepiece as spm

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "numbers 12345 and 3.14159, x=42",
    "café naïve résumé über Straße señor",
    "Ελληνικά русский",
    "日本語のテキストです。中文字符测试",
    "한국어 문장",
    "emoji 🙂🚀🎉🦙 👍🏽 family 👨‍👩‍👧",
    " leading space",
    "   three leading spaces",
    "multiple   spaces    inside",
    "trailing space ",
    "line one\nline two\n\nline four",
    "\nstarts with a newline",
    "tabs\tand\ttabs",
    "\u00a0non-breaking\u2009thin space",
    "mixed: 🙂 café 日本 \n  end",
    " ",
    "\n",
    "",
]


def tokenizer_file_model(path, hf_checkpoint, converted, **kwargs):
    import lmpack

    ckpt = hf_checkpoint(tokenizer=path, **kwargs)
    return lmpack.load(converted(ckpt))


@pytest.fixture(scope="module")
def trained(sp_model_path, hf_checkpoint, converted):
    return spm.SentencePieceProcessor(model_file=str(sp_model_path)), tokenizer_file_model(
        sp_model_path, hf_checkpoint, converted)


@pytest.fixture(scope="module")
def llama2(llama2_tokenizer_path, hf_checkpoint, converted):
    # Tiny dims with the real 32000-piece vocabulary; bf16 and tied keep the file ~4 MB.
    m = tokenizer_file_model(llama2_tokenizer_path, hf_checkpoint, converted, dtype="bfloat16", tie=True,
                             dims=dict(dim=64, n_heads=2, ffn_dim=160))
    return spm.SentencePieceProcessor(model_file=str(llama2_tokenizer_path)), m


@pytest.fixture(params=["trained", "llama2"])
def pair(request):
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("text", TEXTS, ids=lambda t: repr(t)[:30])
def test_encode_equals_sentencepiece(pair, text):
    sp, m = pair
    expected = sp.encode(text)
    assert m.tokenizer.encode(text, bos=False) == expected
    assert m.tokenizer.encode(text, bos=True) == [m.config.bos_id] + expected
    assert m.tokenizer.encode(text) == [m.config.bos_id] + expected  # bos=True is the default


@pytest.mark.parametrize("text", TEXTS, ids=lambda t: repr(t)[:30])
def test_decode_equals_sentencepiece(pair, text):
    sp, m = pair
    ids = sp.encode(text)
    assert m.tokenizer.decode(ids) == sp.decode(ids)
    # BOS/EOS are control pieces: sentencepiece decodes them to nothing
    with_controls = [m.config.bos_id] + ids + [m.config.eos_ids[0]]
    assert m.tokenizer.decode(with_controls) == sp.decode(with_controls)
    if sp.decode(ids) == text:
        assert m.tokenizer.decode(m.tokenizer.encode(text, bos=True)) == text


def test_round_trips_where_sentencepiece_does(pair):
    sp, m = pair
    round_trip = [t for t in TEXTS if sp.decode(sp.encode(t)) == t]
    # byte fallback + identity normalisation: almost everything survives (leading spaces too)
    assert len(round_trip) >= len(TEXTS) - 3, [t for t in TEXTS if t not in round_trip]
    for text in round_trip:
        assert m.tokenizer.decode(m.tokenizer.encode(text, bos=False)) == text


def test_byte_fallback_pieces_are_exercised(trained):
    """The trained vocabulary is small, so emoji go through <0xNN> byte pieces; decode must join
    the bytes back into one character rather than print them one by one."""
    sp, m = trained
    ids = sp.encode("🦙")
    assert any(sp.id_to_piece(i).startswith("<0x") for i in ids)
    assert m.tokenizer.decode(ids) == sp.decode(ids) == "🦙"


def test_decode_arbitrary_ids(pair):
    """Any in-vocabulary id sequence decodes as sentencepiece does (unpaired byte pieces included)."""
    sp, m = pair
    import random

    rng = random.Random(0)
    for _ in range(30):
        ids = [rng.randrange(sp.get_piece_size()) for _ in range(rng.randint(1, 12))]
        assert m.tokenizer.decode(ids) == sp.decode(ids), ids


def test_vocab_and_special_ids(pair):
    sp, m = pair
    assert m.config.vocab_size == sp.get_piece_size()
    assert m.config.bos_id == sp.bos_id() == 1
    assert sp.eos_id() in m.config.eos_ids


ALPHABET = st.sampled_from(list("abcdefghij ABC  \n\t.,!?0123") + ["é", "ü", "日", "本", "🙂", "🦙", "€", "\u00a0"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=st.lists(ALPHABET, max_size=40).map("".join))
def test_encode_random_text(trained, text):
    sp, m = trained
    assert m.tokenizer.encode(text, bos=False) == sp.encode(text)
    ids = sp.encode(text)
    assert m.tokenizer.decode(ids) == sp.decode(ids)


@pytest.mark.parametrize("prompt", ["Hello world", "", "日本語 🙂", "  spaced\n"], ids=repr)
def test_generated_text_with_llama2_vocab(prompt, llama2_tokenizer_path, hf_checkpoint, converted):
    """Streaming detokenization with the real 32000-piece vocabulary: generate()'s text equals
    sentencepiece's decoding of transformers' greedy ids after the prompt."""
    import lmpack

    ckpt = hf_checkpoint(tokenizer=llama2_tokenizer_path, dtype="bfloat16", tie=True,
                         dims=dict(dim=64, n_heads=2, ffn_dim=160))
    sp = spm.SentencePieceProcessor(model_file=str(llama2_tokenizer_path))
    m = lmpack.load(converted(ckpt))
    prompt_ids = [1] + sp.encode(prompt)
    ref = [i for i in ckpt.reference_greedy(prompt_ids, 16) if i != 2]
    before = sp.decode(prompt_ids[1:])
    after = sp.decode(prompt_ids[1:] + ref)
    assert after.startswith(before)
    assert "".join(m.generate(prompt, max_tokens=16, temperature=0.0)) == after[len(before):]
