"""Whole model folders as the Hub ships them: each family's architecture with its own tokenizer.json,
special tokens, chat template and generation_config, converted once and checked end to end against
transformers: the chat prompt's ids (AutoTokenizer) and their logits (the model), greedy generation
stopping at the family's EOS ids, and a two-turn chat over one cache."""
from __future__ import annotations

import json

import numpy as np
import pytest

import hf_tokenizers as H
import lmpack
from lmpack.runtime.chat import ChatSession

pytest.importorskip("transformers")

# family folder -> (model_type, architecture overrides, tokenizer builder)
FOLDERS = {
    "qwen2.5": ("qwen2", dict(tie=True), "qwen2"),
    "qwen3": ("qwen3", dict(head_dim=32), "qwen2"),
    "gemma2": ("gemma2", dict(head_dim=32, sliding_window=16, query_pre_attn_scalar=32, tie=True), "gemma"),
    "phi3": ("phi3", dict(), "phi3"),
    "olmo2": ("olmo2", dict(), "olmo2"),
    "mistral-nemo": ("mistral", dict(head_dim=32, sliding_window=None), "mistral-tekken"),
    "smollm2": ("llama", dict(tie=True), "smollm2"),
}
CONV = [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "An apple."},
        {"role": "user", "content": "And a colour? 🙂"}]


@pytest.fixture(scope="module")
def folder(request, tmp_path_factory, family_checkpoint, converted):
    cache = {}

    def build(name):
        if name not in cache:
            model_type, arch, tok_name = FOLDERS[name]
            tok_dir = H.FAMILIES[tok_name](tmp_path_factory.mktemp("tok") / tok_name)
            gen = json.loads((tok_dir / "generation_config.json").read_text())
            eos = gen.get("eos_token_id")
            ckpt = family_checkpoint(model_type, tokenizer=None, tokenizer_files=tok_dir,
                                     vocab_size=H.n_tokens(tok_dir) + 7, bos_token_id=gen.get("bos_token_id") or 0,
                                     eos_token_id=eos, pad_token_id=0, **arch)
            cache[name] = (H.auto_tokenizer(ckpt.path), ckpt, lmpack.load(converted(ckpt), threads=1))
        return cache[name]

    return build


@pytest.mark.parametrize("name", list(FOLDERS))
def test_chat_prompt_ids_and_logits(folder, name):
    ref, ckpt, m = folder(name)
    want = ref.apply_chat_template(CONV, add_generation_prompt=True, tokenize=True)
    want = want["input_ids"] if hasattr(want, "keys") else want
    ids = m.tokenizer.apply_chat_template(CONV)
    assert ids == want
    expected = ckpt.reference_logits(ids)
    np.testing.assert_allclose(m.logits(ids), expected, rtol=0, atol=1e-4 * float(np.std(expected)) + 1e-5)


@pytest.mark.parametrize("name", list(FOLDERS))
def test_greedy_generation_stops_where_transformers_does(folder, name):
    import torch

    ref, ckpt, m = folder(name)
    ids = m.tokenizer.apply_chat_template(CONV)
    eos = sorted(m.config.eos_token_ids)
    with torch.no_grad():
        out = ckpt.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                  do_sample=False, max_new_tokens=12, eos_token_id=eos, pad_token_id=0)
    want = out[0, len(ids):].tolist()
    got = []
    list(m.continue_from(ids, 0, m.sampler(temperature=0, repetition_penalty=1.0), 12, generated=got))
    assert got == want
    if got[-1] in eos:
        assert m.last_stats.stopped_by == "eos"


@pytest.mark.parametrize("name", ["qwen2.5", "mistral-nemo", "phi3"])
def test_two_turn_chat_over_one_cache(folder, name):
    ref, _, m = folder(name)
    s = ChatSession(m)
    list(s.reply("Hello!", max_tokens=6, temperature=0))
    list(s.reply("Tell me more.", max_tokens=6, temperature=0))
    rendered = ref.apply_chat_template(s.messages[:-1], add_generation_prompt=True, tokenize=True)
    rendered = rendered["input_ids"] if hasattr(rendered, "keys") else rendered
    assert s.history[:len(rendered)] == rendered
    fresh = m.logits(s.history + s._pending)[-1]
    np.testing.assert_allclose(m.forward(s._pending, s.pos)[-1], fresh, rtol=0, atol=1e-4 * float(np.std(fresh)))
