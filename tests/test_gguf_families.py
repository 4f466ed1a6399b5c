"""GGUF out and back in for each family beyond Llama (Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3,
Phi-3, OLMo 2, Mixtral): HF -> GGUF with lmpack, read with gguf-py (architecture, names, the
family's own tensors and keys: Qwen2's q/k/v biases, Qwen3's q/k norms, Gemma's soft-caps and
window, Phi-3's fused qkv, Mixtral's stacked experts), then GGUF -> `.lmp` must hold the direct
conversion's bytes and give its logits bit for bit. Models llama.cpp's matching architecture
cannot run as lmpack does (a sliding window it would ignore, another layer pattern) are refused
in one line.
"""
from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from lmpack.convert import convert  # noqa: E402
from lmpack.formats.arch import keeps_precision  # noqa: E402
from lmpack.formats.dtypes import cast  # noqa: E402
from lmpack.formats.lmp import LmpReader  # noqa: E402
from test_e2e_hf import token_ids  # noqa: E402

FAMILIES = {
    # model_type: (kwargs, GGUF architecture, architecture read back, a tensor only this family has)
    "mistral": (dict(sliding_window=4096), "llama", "llama", None),
    "qwen2": (dict(tie=True), "qwen2", "qwen2", "blk.0.attn_q.bias"),
    "qwen3": (dict(head_dim=64), "qwen3", "qwen3", "blk.1.attn_k_norm.weight"),
    "gemma2": (dict(head_dim=32, sliding_window=16, query_pre_attn_scalar=32, attn_logit_softcapping=2.0,
                    final_logit_softcapping=5.0, tie=True), "gemma2", "gemma2", "blk.0.post_ffw_norm.weight"),
    "gemma3_text": (dict(head_dim=32, sliding_window=16, num_hidden_layers=6, query_pre_attn_scalar=32, tie=True),
                    "gemma3", "gemma3", "blk.5.attn_q_norm.weight"),
    "phi3": (dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}),
             "phi3", "phi3", "blk.1.attn_qkv.weight"),
    "olmo2": (dict(num_key_value_heads=1), "olmo2", "olmo2", "blk.0.attn_k_norm.weight"),
    "mixtral": (dict(num_local_experts=4, num_experts_per_tok=2), "llama", "mixtral", "blk.1.ffn_gate_exps.weight"),
}


@pytest.mark.parametrize("model_type", list(FAMILIES))
@pytest.mark.parametrize("dtype", ["q8_0", "bf16"])
def test_family_round_trip(model_type, dtype, family_checkpoint, converted, tmp_path):
    import lmpack

    kwargs, arch, back_arch, special = FAMILIES[model_type]
    ckpt = family_checkpoint(model_type, dtype="bfloat16", **kwargs)
    out = convert(ckpt.path, tmp_path / "m.gguf", dtype=dtype)
    r = gguf.GGUFReader(out)
    assert r.fields["general.architecture"].contents() == arch
    names = {t.name for t in r.tensors}
    if special:
        assert special in names
    assert ("output.weight" in names) == (not kwargs.get("tie", False))
    back = convert(out, tmp_path / "back.lmp")
    direct = converted(ckpt, dtype)
    with LmpReader(back) as a, LmpReader(direct) as b:
        assert a.config.architecture == back_arch
        for e in b.tensors:
            if keeps_precision(e.name):  # a MoE router goes to GGUF as f32 (as llama.cpp's converter has it)
                assert a.tensor(e.name).dtype == np.float32
                assert np.array_equal(np.asarray(a.tensor(e.name)), cast(b.tensor(e.name), e.dtype, "f32"))
                continue
            assert bytes(a.tensor_bytes(e.name)) == bytes(b.tensor_bytes(e.name)), e.name
    ids = token_ids(ckpt.vocab_size, n=32)
    with lmpack.load(back) as a, lmpack.load(direct) as b:
        assert np.array_equal(a.logits(ids), b.logits(ids))


REFUSED = {
    # model_type, kwargs, what the one line names
    "mistral-window": ("mistral", dict(sliding_window=64), "sliding-window"),
    "gemma3-other-layer-pattern": ("gemma3_text", dict(head_dim=32, sliding_window=16, query_pre_attn_scalar=32,
                                                       layer_types=["sliding_attention", "full_attention"]),
                                   "i % 6 < 5"),
    "gemma2-untied": ("gemma2", dict(head_dim=32, query_pre_attn_scalar=32), "lm_head"),
    "gemma2-scale": ("gemma2", dict(head_dim=32, query_pre_attn_scalar=24, tie=True), "query_pre_attn_scalar"),
    "phi3-window": ("phi3", dict(sliding_window=16), "sliding-window"),
    "mixtral-window": ("mixtral", dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=16),
                       "sliding-window"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_what_llama_cpp_would_run_differently_is_refused(case, family_checkpoint, tmp_path, run_lmpack):
    model_type, kwargs, words = REFUSED[case]
    ckpt = family_checkpoint(model_type, **kwargs)
    res = run_lmpack("convert", ckpt.path, "-o", tmp_path / "m.gguf")
    assert res.returncode == 1 and words in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not list(tmp_path.iterdir())


def test_every_end_id_travels(tmp_path):
    """A Llama 3.1 vocabulary ends generation at end-of-text, end-of-message and end-of-turn: the
    GGUF holds them as llama.cpp's eos, eom and eot ids, and reading it back stops at all three."""
    import checkpoints
    import hf_tokenizers
    import lmpack

    tok_dir = hf_tokenizers.FAMILIES["llama3"](tmp_path / "tok")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    ends = ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"]
    model = checkpoints.make_family_checkpoint(tmp_path / "model", "llama", tokenizer=None, tokenizer_files=tok_dir,
                                               vocab_size=hf_tokenizers.n_tokens(tok_dir),
                                               eos_token_id=tok.token_to_id(ends[0]))
    lmp = convert(model.path, tmp_path / "m.lmp")
    with LmpReader(lmp) as r:
        want = r.config.eos_ids
    gg = convert(lmp, tmp_path / "m.gguf")
    fields = gguf.GGUFReader(gg).fields
    got = {k: fields[f"tokenizer.ggml.{k}_token_id"].contents() for k in ("eos", "eot", "eom")}
    assert fields["tokenizer.ggml.eos_token_id"].types == [gguf.GGUFValueType.UINT32]
    assert sorted(want) == sorted(tok.token_to_id(t) for t in ends)
    assert [tok.id_to_token(got[k]) for k in ("eos", "eom", "eot")] == ends
    back = convert(gg, tmp_path / "back.lmp")
    with lmpack.load(back) as m:
        assert m.config.eos_token_ids == want
