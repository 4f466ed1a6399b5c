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


# GGUF tensor (after "blk.N.") -> the HF tensors (after "model.layers.N.") whose rows it holds, as
# llama.cpp's converter lays them out; per family where they differ. "{e}" runs over the experts.
_GGUF_PARTS = {
    "attn_norm": ["input_layernorm"], "attn_q": ["self_attn.q_proj"], "attn_k": ["self_attn.k_proj"],
    "attn_v": ["self_attn.v_proj"], "attn_output": ["self_attn.o_proj"], "attn_q_norm": ["self_attn.q_norm"],
    "attn_k_norm": ["self_attn.k_norm"], "ffn_norm": ["post_attention_layernorm"],
    "post_attention_norm": ["post_attention_layernorm"], "post_ffw_norm": ["post_feedforward_layernorm"],
    "ffn_gate": ["mlp.gate_proj"], "ffn_up": ["mlp.up_proj"], "ffn_down": ["mlp.down_proj"],
    "attn_qkv": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
    "ffn_gate_inp": ["block_sparse_moe.gate"], "ffn_gate_exps": ["block_sparse_moe.experts.{e}.w1"],
    "ffn_down_exps": ["block_sparse_moe.experts.{e}.w2"], "ffn_up_exps": ["block_sparse_moe.experts.{e}.w3"],
}
_FAMILY_PARTS = {
    "gemma2": {"ffn_norm": ["pre_feedforward_layernorm"]},
    "gemma3_text": {"ffn_norm": ["pre_feedforward_layernorm"]},
    "phi3": {"ffn_up": ["mlp.gate_proj", "mlp.up_proj"]},
}
_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# metadata keys each family's GGUF must hold beyond the common ones: key -> (gguf-py value type, value)
_KEYS = {
    "gemma2": {"attn_logit_softcapping": ("FLOAT32", 2.0), "final_logit_softcapping": ("FLOAT32", 5.0),
               "attention.sliding_window": ("UINT32", 16), "attention.key_length": ("UINT32", 32)},
    "gemma3_text": {"attention.sliding_window": ("UINT32", 16), "rope.freq_base_swa": ("FLOAT32", 10000.0)},
    "phi3": {"rope.dimension_count": ("UINT32", 16), "attention.sliding_window": ("UINT32", 512)},
    "olmo2": {"attention.head_count_kv": ("UINT32", 1)},
    "mixtral": {"expert_count": ("UINT32", 4), "expert_used_count": ("UINT32", 2)},
}


def _interleave(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter's q/k permutation: the two halves of each head's rows interleaved."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.mark.parametrize("model_type", ["gemma2", "gemma3_text", "phi3", "olmo2", "mixtral"])
def test_gguf_bytes_are_gguf_py_s_own(model_type, family_checkpoint, converted, tmp_path):
    """Every tensor of a q8_0 GGUF export is what gguf-py's quantizer (or f32 cast) gives for the
    source's values laid out as llama.cpp's converter lays them, and the family's keys are there
    with gguf-py's value types."""
    kwargs = FAMILIES[model_type][0]
    ckpt = family_checkpoint(model_type, dtype="bfloat16", **kwargs)
    with LmpReader(converted(ckpt, "auto")) as src:  # the source's bf16 values, by HF name
        values = {e.name: cast(src.tensor(e.name), e.dtype, "f32") for e in src.tensors}
        cfg = src.config
    out = convert(ckpt.path, tmp_path / "m.gguf", dtype="q8_0")
    r = gguf.GGUFReader(out)
    arch = r.fields["general.architecture"].contents()
    parts = {**_GGUF_PARTS, **_FAMILY_PARTS.get(model_type, {})}
    gemma = model_type.startswith("gemma")
    seen = set()
    for t in r.tensors:
        head, _, _ = t.name.rpartition(".")
        if head.startswith("blk."):
            _, layer, kind = head.split(".", 2)
            names = [f"model.layers.{layer}.{p.format(e=e)}.weight" for p in parts[kind]
                     for e in (range(cfg.n_experts) if "{e}" in p else [0])]
        else:
            kind, names = head, [_TOP[head] + ".weight"]
        stacked = "{e}" in "".join(parts.get(kind, []))
        x = np.stack([values[n] for n in names]) if stacked else np.concatenate([values[n] for n in names])
        if kind in ("attn_q", "attn_k") and arch == "llama":
            x = _interleave(x, cfg.n_heads if kind == "attn_q" else cfg.n_kv_heads)
        if gemma and x.ndim == 1:
            x = x + np.float32(1)  # Gemma's (1 + w) norms, as llama.cpp stores them
        want = gguf.quants.quantize(np.ascontiguousarray(x, np.float32), t.tensor_type)
        assert bytes(t.data.tobytes()) == want.tobytes(), t.name
        seen.update(names)
    assert seen == set(values)
    for key, (vtype, value) in _KEYS[model_type].items():
        f = r.fields[f"{arch}.{key}"]
        assert f.types == [gguf.GGUFValueType[vtype]], key
        assert f.contents() == pytest.approx(value), key
    assert r.fields["tokenizer.ggml.eos_token_id"].types == [gguf.GGUFValueType.UINT32]


def test_every_family_has_a_gguf_row_and_export_help_lists_it(run_lmpack):
    from lmpack.convert import gguf_arch
    from lmpack.formats import arch

    assert set(gguf_arch.FAMILIES) == set(arch.FAMILIES)
    res = run_lmpack("export", "--help")
    assert res.returncode == 0
    help_text = " ".join(res.stdout.split())
    for name in arch.FAMILIES:
        assert name in help_text, name


@pytest.mark.parametrize("model_type", ["gemma2", "gemma3_text"])
def test_f32_gemma_norms_verify_against_their_gguf(model_type, family_checkpoint, converted, tmp_path):
    """A GGUF holds Gemma's norms as w + 1 (llama.cpp's convention), rounded to f32; read back they
    are (w + 1) - 1, which need not be w's bits, so verify compares them where the GGUF holds them."""
    from lmpack.convert.gguf_source import GgufSource
    from lmpack.verify import verify

    ckpt = family_checkpoint(model_type, **FAMILIES[model_type][0])
    lmp = converted(ckpt, "auto")
    gg = convert(lmp, tmp_path / "m.gguf")
    src = GgufSource(gg)
    try:
        with LmpReader(lmp) as r:
            shifted = [e.name for e in r.tensors if src.value_shift(e.name)]
            assert shifted and all(len(r.tensor(n).shape) == 1 for n in shifted)
            # the bits do move (so the comparison must be made where the GGUF holds them) ...
            assert any(not np.array_equal(src.load(n), r.tensor(n)) for n in shifted)
            # ... and 1 + the read-back value is exactly the GGUF's value
            assert all(np.array_equal(src.load(n) + np.float32(1), r.tensor(n) + np.float32(1)) for n in shifted)
    finally:
        src.close()
    result = verify(lmp, against=gg)
    assert not [f for f in result.failures() if f.startswith("tensors")], result.failures()


@pytest.mark.parametrize("pattern,want", [
    (3, ["sliding", "sliding", "full"] * 2),
    (np.array([True, False, False, True, True, False]), ["sliding", "full", "full", "sliding", "sliding", "full"]),
])
def test_sliding_window_pattern_key_decides_the_sliding_layers(pattern, want, family_checkpoint, tmp_path):
    """llama.cpp's loader takes `attention.sliding_window_pattern` (a period or a flag per layer)
    over the architecture's own pattern; so does the import."""
    from test_gguf_bad import rewrite

    ckpt = family_checkpoint("gemma3_text", dtype="bfloat16", **FAMILIES["gemma3_text"][0])
    gg = convert(ckpt.path, tmp_path / "m.gguf", dtype="q8_0")
    vtype = gguf.GGUFValueType.UINT32 if isinstance(pattern, int) else gguf.GGUFValueType.ARRAY
    rewrite(gg, tmp_path / "p.gguf", fields={"gemma3.attention.sliding_window_pattern": (
        pattern if isinstance(pattern, int) else [bool(v) for v in pattern], vtype)})
    back = convert(tmp_path / "p.gguf", tmp_path / "back.lmp")
    with LmpReader(back) as r:
        assert r.config.layer_types == want
        assert r.config.sliding_window == 16 and r.config.rope_local_theta == 10000.0
