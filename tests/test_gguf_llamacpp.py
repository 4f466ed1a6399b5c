"""Exported GGUFs against llama.cpp itself, where it is available (skipped otherwise).

With llama-cpp-python (the `bench` extra), exported GGUFs load in llama.cpp and agree with lmpack.
With llama.cpp's own converter (`convert_hf_to_gguf.py`: a script in llama.cpp's repository, not a
pip package; point LMPACK_LLAMA_CPP_CONVERT at it), lmpack's HF -> GGUF output holds the same
tensors, byte for byte, and the same model keys.

Each supported family is exported from a tiny random checkpoint (f32, bf16 and q8_0 weights);
llama.cpp and lmpack then compute the last position's logits for the same ids. The bounds are what
the two engines' rounding explains: f32 weights, 0.01 x std (llama.cpp keeps its KV cache in f16;
measured 0.0035-0.0045); bf16 weights, 0.1 x std (llama.cpp also rounds activations to bf16;
measured 0.05-0.07); q8_0, 0.2 x std (the two quantize activations with different rounding;
measured 0.074). The top-1
token must be the same. llama.cpp's tokenizer must also split text as lmpack's does.
"""
from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

import checkpoints  # noqa: E402
from test_e2e_hf import token_ids  # noqa: E402


def convert_script() -> str:
    """llama.cpp's convert_hf_to_gguf.py, named by LMPACK_LLAMA_CPP_CONVERT; the test skips without it."""
    import os

    script = os.environ.get("LMPACK_LLAMA_CPP_CONVERT")
    if not script:
        pytest.skip("set LMPACK_LLAMA_CPP_CONVERT to llama.cpp's convert_hf_to_gguf.py")
    return script


def llama_cpp_gguf(script: str, folder, out, outtype: str):
    """The GGUF llama.cpp's own converter writes for an HF folder."""
    import subprocess
    import sys

    subprocess.run([sys.executable, script, str(folder), "--outfile", str(out), "--outtype", outtype],
                   check=True, capture_output=True)
    return out

VARIANTS = {
    "llama-f32-gqa": (dict(n_kv_heads=2), "f32", 0.01),
    "llama-bf16-tied-llama3rope": (dict(dtype="bfloat16", tie=True, rope_scaling=checkpoints.LLAMA3_ROPE), "bf16", 0.1),
    "llama-q8_0-mqa": (dict(dtype="bfloat16", n_kv_heads=1), "q8_0", 0.2),
    "llama-f32-llama3rope": (dict(n_kv_heads=2, rope_scaling=checkpoints.LLAMA3_ROPE), "f32", 0.01),
    "llama-bf16-plain": (dict(dtype="bfloat16", n_kv_heads=2), "bf16", 0.1),
    "llama-f32-linear-rope-headdim64": (dict(n_kv_heads=2, rope_scaling=checkpoints.LINEAR_ROPE,
                                             dims=dict(head_dim=64)), "f32", 0.01),
}


def agree_with_llama_cpp(llama_cpp, gguf_path, lmp, ids, bound: float, variant: str, texts=()) -> None:
    """llama.cpp on `gguf_path` and lmpack on `lmp` give the last position's logits within `bound` x std
    with the same top-1, and llama.cpp tokenizes `texts` as lmpack does."""
    import lmpack

    m = lmpack.load(lmp, threads=1)
    want = m.logits(ids)[-1]
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=64, n_batch=64, n_threads=1, verbose=False)
    try:
        llm.eval(ids)
        got = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()
        err = float(np.abs(got - want).max()) / float(want.std())
        print(f"{variant}: max |llama.cpp - lmpack| = {err:.3g} x std")
        assert err < bound, f"{variant}: max |llama.cpp - lmpack| = {err:.3g} x std (bound {bound})"
        assert int(got.argmax()) == int(want.argmax()), variant
        for text in texts:
            assert llm.tokenize(text.encode(), add_bos=True) == m.tokenizer.encode(text, bos=True), text
    finally:
        llm.close()
        m.close()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_llama_cpp_agrees(variant, hf_checkpoint, converted, tmp_path, run_lmpack):
    llama_cpp = pytest.importorskip("llama_cpp")
    kwargs, dtype, bound = VARIANTS[variant]
    ckpt = hf_checkpoint(**kwargs)
    lmp = converted(ckpt, dtype)
    res = run_lmpack("export", lmp, "-o", tmp_path / "m.gguf")
    assert res.returncode == 0, res.stderr
    agree_with_llama_cpp(llama_cpp, tmp_path / "m.gguf", lmp, token_ids(ckpt.vocab_size, n=40), bound, variant,
                         texts=["Hello world, the model runs fast.", "  two  spaces", "🦙 ünïcode 2024"])


@pytest.mark.parametrize("kwargs,outtype", [
    (dict(dtype="bfloat16", n_kv_heads=2), "q8_0"),
    (dict(dtype="bfloat16", n_kv_heads=1, tie=True), "bf16"),
    (dict(n_kv_heads=2), "f16"),
])
def test_same_tensors_as_convert_hf_to_gguf(hf_checkpoint, tmp_path, kwargs, outtype):
    script = convert_script()
    from lmpack.convert import convert

    ckpt = hf_checkpoint(**kwargs)
    theirs = llama_cpp_gguf(script, ckpt.path, tmp_path / "llama.cpp.gguf", outtype)
    ours = convert(ckpt.path, tmp_path / "lmpack.gguf", dtype=outtype)
    a, b = gguf.GGUFReader(theirs), gguf.GGUFReader(ours)
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    assert sorted(ta) == sorted(tb)
    for name, t in ta.items():
        assert tb[name].tensor_type == t.tensor_type, name
        assert bytes(tb[name].data.tobytes()) == bytes(t.data.tobytes()), name
    for key, field in a.fields.items():
        if key.startswith("llama.") or key in ("general.architecture", "general.file_type", "tokenizer.ggml.model",
                                               "tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                                               "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id",
                                               "tokenizer.ggml.eos_token_id"):
            assert key in b.fields, key
            assert b.fields[key].types == field.types, key
            assert b.fields[key].contents() == field.contents(), key


def test_gguf_from_convert_hf_to_gguf_comes_in_exactly(hf_checkpoint, converted, tmp_path):
    script = convert_script()
    from lmpack.convert import convert
    from lmpack.formats.lmp import LmpReader

    ckpt = hf_checkpoint(dtype="bfloat16", n_kv_heads=2, rope_scaling=checkpoints.LLAMA3_ROPE)
    theirs = llama_cpp_gguf(script, ckpt.path, tmp_path / "llama.cpp.gguf", "q8_0")
    back = convert(theirs, tmp_path / "back.lmp")
    direct = converted(ckpt, "q8_0")
    with LmpReader(back) as a, LmpReader(direct) as b:
        want = b.config.to_dict()
        got = a.config.to_dict()
        # llama.cpp's converter does not record Llama 3's original context; the divisors it
        # writes are the same, and come back as an equivalent parameterization
        assert got.pop("rope_scaling")["factor"] == want.pop("rope_scaling")["factor"]
        assert got == want
        for e in b.tensors:
            assert bytes(a.tensor_bytes(e.name)) == bytes(b.tensor_bytes(e.name)), e.name
    import lmpack

    ids = token_ids(ckpt.vocab_size, n=48)
    with lmpack.load(back) as a, lmpack.load(direct) as b:
        la, lb = a.logits(ids), b.logits(ids)
    assert float(np.abs(la - lb).max()) < 1e-4 * float(lb.std())


GEMMA2 = dict(head_dim=32, sliding_window=16, query_pre_attn_scalar=32, attn_logit_softcapping=2.0,
              final_logit_softcapping=5.0)
GEMMA3 = dict(head_dim=32, sliding_window=16, num_hidden_layers=6, query_pre_attn_scalar=32)
FAMILY_VARIANTS = {
    "mistral-f32": ("mistral", dict(sliding_window=4096), "f32", 0.01),
    "qwen2-bf16-tied": ("qwen2", dict(dtype="bfloat16", tie=True), "bf16", 0.1),
    "qwen3-q8_0": ("qwen3", dict(dtype="bfloat16", head_dim=64), "q8_0", 0.2),
    "qwen3-f32": ("qwen3", dict(), "f32", 0.01),
    # the window (16) binds within the 40 ids, so llama.cpp's sliding layers are exercised too
    "gemma2-f32-softcaps-window16": ("gemma2", dict(GEMMA2, tie=True), "f32", 0.01),
    "gemma2-q8_0": ("gemma2", dict(GEMMA2, tie=True, dtype="bfloat16"), "q8_0", 0.2),
    "gemma3-f32-6layers-window16": ("gemma3_text", dict(GEMMA3, tie=True), "f32", 0.01),
    "gemma3-f32-untied": ("gemma3_text", dict(GEMMA3), "f32", 0.01),
    "gemma3-bf16-linear-rope": ("gemma3_text", dict(GEMMA3, tie=True, dtype="bfloat16", rope_parameters={
        "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}), "bf16", 0.1),
    "phi3-f32-partial-rotary": ("phi3", dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                              "partial_rotary_factor": 0.5}), "f32", 0.01),
    "phi3-q8_0-tied": ("phi3", dict(tie=True, dtype="bfloat16"), "q8_0", 0.2),
    "olmo2-f32": ("olmo2", dict(), "f32", 0.01),
    "olmo2-bf16-mqa": ("olmo2", dict(num_key_value_heads=1, dtype="bfloat16"), "bf16", 0.1),
    "mixtral-f32-4x2": ("mixtral", dict(num_local_experts=4, num_experts_per_tok=2), "f32", 0.01),
    "mixtral-q8_0-8x3": ("mixtral", dict(num_local_experts=8, num_experts_per_tok=3, intermediate_size=96,
                                         dtype="bfloat16"), "q8_0", 0.2),
}


@pytest.mark.parametrize("variant", list(FAMILY_VARIANTS))
def test_llama_cpp_agrees_on_other_families(variant, family_checkpoint, converted, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    from lmpack.convert import convert

    model_type, kwargs, dtype, bound = FAMILY_VARIANTS[variant]
    ckpt = family_checkpoint(model_type, **kwargs)
    lmp = converted(ckpt, dtype)
    convert(lmp, tmp_path / "m.gguf")
    agree_with_llama_cpp(llama_cpp, tmp_path / "m.gguf", lmp, token_ids(ckpt.vocab_size, n=40), bound, variant)


@pytest.mark.parametrize("model_type,kwargs", [
    ("mistral", {}), ("qwen2", dict(tie=True)), ("qwen3", {}), ("gemma2", dict(GEMMA2, tie=True)),
    ("gemma3_text", dict(GEMMA3, tie=True)), ("phi3", {}),
    ("mixtral", dict(num_local_experts=4, num_experts_per_tok=2)),
    # (not OLMo 2: llama.cpp's converter takes only a BPE tokenizer it recognises by hash for it)
])
def test_same_tensors_as_convert_hf_to_gguf_other_families(family_checkpoint, tmp_path, model_type, kwargs):
    script = convert_script()
    from lmpack.convert import convert

    ckpt = family_checkpoint(model_type, dtype="bfloat16", **kwargs)
    theirs = llama_cpp_gguf(script, ckpt.path, tmp_path / "llama.cpp.gguf", "q8_0")
    ours = convert(ckpt.path, tmp_path / "lmpack.gguf", dtype="q8_0")
    a, b = gguf.GGUFReader(theirs), gguf.GGUFReader(ours)
    assert a.fields["general.architecture"].contents() == b.fields["general.architecture"].contents()
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    assert sorted(ta) == sorted(tb)
    for name, t in ta.items():
        assert tb[name].tensor_type == t.tensor_type, name
        assert bytes(tb[name].data.tobytes()) == bytes(t.data.tobytes()), name


@pytest.mark.parametrize("tok_family,model_type", [("qwen2", "qwen2"), ("llama3", "llama")])
def test_llama_cpp_tokenizes_exported_bpe_as_lmpack(tok_family, model_type, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")

    import hf_tokenizers
    import lmpack
    from lmpack.convert import convert

    tok_dir = hf_tokenizers.FAMILIES[tok_family](tmp_path / "tok")
    model = checkpoints.make_family_checkpoint(tmp_path / "model", model_type, tokenizer=None, tokenizer_files=tok_dir,
                                               vocab_size=hf_tokenizers.n_tokens(tok_dir))
    lmp = convert(model.path, tmp_path / "m.lmp")
    gg = convert(lmp, tmp_path / "m.gguf")
    llm = llama_cpp.Llama(model_path=str(gg), n_ctx=64, n_threads=1, verbose=False)
    try:
        with lmpack.load(lmp) as m:
            for text in checkpoints.corpus_lines(100, seed=9) + ["  two  spaces\n\nnew lines", "digits 1234567",
                                                                 "<|im_end|> special <|endoftext|>"]:
                want = m.tokenizer.encode(text, bos=True)
                got = llm.tokenize(text.encode(), add_bos=True, special=True)
                assert got == want, text
    finally:
        llm.close()


@pytest.mark.parametrize("model_type,kwargs", [
    ("gemma2", dict(GEMMA2, tie=True)), ("gemma3_text", dict(GEMMA3, tie=True)), ("phi3", {}),
    ("mixtral", dict(num_local_experts=4, num_experts_per_tok=2)), ("qwen3", {}),
])
def test_other_family_gguf_from_convert_hf_to_gguf_comes_in_exactly(model_type, kwargs, family_checkpoint, converted,
                                                                    tmp_path):
    """llama.cpp's own Q8_0 GGUF of each family reads back into the direct conversion's tensors
    (its f32 MoE router as f32) and logits."""
    script = convert_script()
    import lmpack
    from lmpack.convert import convert
    from lmpack.formats.arch import keeps_precision
    from lmpack.formats.lmp import LmpReader

    ckpt = family_checkpoint(model_type, dtype="bfloat16", **kwargs)
    theirs = llama_cpp_gguf(script, ckpt.path, tmp_path / "llama.cpp.gguf", "q8_0")
    back = convert(theirs, tmp_path / "back.lmp")
    direct = converted(ckpt, "q8_0")
    with LmpReader(back) as a, LmpReader(direct) as b:
        assert a.config.architecture == b.config.architecture
        for e in b.tensors:
            if not keeps_precision(e.name):
                assert bytes(a.tensor_bytes(e.name)) == bytes(b.tensor_bytes(e.name)), e.name
    ids = token_ids(ckpt.vocab_size, n=40)
    with lmpack.load(back) as a, lmpack.load(direct) as b:
        assert np.array_equal(a.logits(ids), b.logits(ids))


def test_llama_cpp_agrees_on_a_gguf_with_its_own_sliding_layers(family_checkpoint, tmp_path):
    """A Gemma 3 GGUF whose `sliding_window_pattern` names other sliding layers than the
    architecture's: llama.cpp and lmpack's import of it run the same layers with the window."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from lmpack.convert import convert
    from test_gguf_bad import rewrite

    ckpt = family_checkpoint("gemma3_text", **dict(GEMMA3, tie=True))
    gg = convert(ckpt.path, tmp_path / "m.gguf")
    rewrite(gg, tmp_path / "p.gguf", fields={"gemma3.attention.sliding_window_pattern": (
        [True, False, False, True, False, True], gguf.GGUFValueType.ARRAY)})
    back = convert(tmp_path / "p.gguf", tmp_path / "back.lmp")
    agree_with_llama_cpp(llama_cpp, tmp_path / "p.gguf", back, token_ids(ckpt.vocab_size, n=40), 0.01,
                         "gemma3-f32-pattern-key")
