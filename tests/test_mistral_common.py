"""Mistral's real tokenizers, as the mistral-common wheel ships them: the tekken BPE (Mistral Nemo,
in the Hugging Face form transformers makes of it) and a v3 sentencepiece model with its [INST]
control tokens, converted with a tiny model and compared with mistral-common itself and with
transformers. Skipped where mistral-common is not installed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import hf_tokenizers as H
import lmpack
from test_hf_tokenizers import AWKWARD

mistral_common = pytest.importorskip("mistral_common")
DATA = Path(mistral_common.__file__).parent / "data"
# Text without special-token lookalikes: mistral-common encodes those as plain text, transformers
# (and lmpack, which follows the tokenizer.json) as the special tokens.
PLAIN = [t for t in AWKWARD if "<" not in t and "[" not in t]


@pytest.fixture(scope="module")
def tekken(tmp_path_factory, hf_checkpoint, converted):
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer
    from transformers.integrations.mistral.tokenizer import MistralConverter

    path = DATA / "tekken_240718.json"
    if not path.is_file():
        pytest.skip(f"{path} not in this mistral-common")
    folder = tmp_path_factory.mktemp("nemo-tok")
    from tokenizers import processors

    tok = MistralConverter(str(path)).converted()
    # As in Mistral Nemo's Hub tokenizer.json: BOS before the text
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B:1",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": H.MISTRAL_TEMPLATE}))
    n = H.n_tokens(folder)
    ckpt = hf_checkpoint(tokenizer=None, tokenizer_files=folder, vocab=n, dtype="bfloat16", tie=True,
                         dims=dict(dim=64, n_heads=2, ffn_dim=160))
    return Tekkenizer.from_file(str(path)), H.auto_tokenizer(folder), lmpack.load(converted(ckpt), threads=1)


def test_tekken_ids_equal_mistral_common_and_transformers(tekken):
    mc, ref, m = tekken
    assert m.config.vocab_size == mc.n_words
    for text in PLAIN:
        assert m.tokenizer.encode(text, bos=True) == mc.encode(text, bos=True, eos=False), text
        assert m.tokenizer.encode(text, bos=False) == mc.encode(text, bos=False, eos=False), text
    for text in AWKWARD:
        ids = ref(text)["input_ids"]
        assert m.tokenizer.encode(text) == ids, text
        assert m.tokenizer.decode(ids) == ref.decode(ids, skip_special_tokens=True)


def test_tekken_chat_template(tekken):
    _, ref, m = tekken
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    want = ref.apply_chat_template(conv, tokenize=True)
    want = want["input_ids"] if hasattr(want, "keys") else want
    assert m.tokenizer.apply_chat_template(conv) == want
    assert m.tokenizer.decode(want[:1]) == "" and want[0] == m.config.bos_id


def test_v3_sentencepiece_with_control_tokens(tmp_path, hf_checkpoint, converted):
    from mistral_common.tokens.tokenizers.sentencepiece import SentencePieceTokenizer

    path = DATA / "mistral_instruct_tokenizer_240323.model.v3"
    if not path.is_file():
        pytest.skip(f"{path} not in this mistral-common")
    mc = SentencePieceTokenizer(str(path))
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(path.read_bytes())
    ckpt = hf_checkpoint(tokenizer=folder / "tokenizer.model", dtype="bfloat16", tie=True,
                         dims=dict(dim=64, n_heads=2, ffn_dim=160))
    m = lmpack.load(converted(ckpt), threads=1)
    assert m.tokenizer.kind == "sentencepiece"
    for text in PLAIN:
        assert m.tokenizer.encode(text, bos=True) == mc.encode(text, bos=True, eos=False), text
        ids = mc.encode(text, bos=True, eos=False)
        assert m.tokenizer.decode(ids) == mc.decode(ids), text
